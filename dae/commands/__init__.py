"""The jobs: each module has ``get_args_parser()`` and ``main(args)``; ``dae NAME`` (dae.cli) and the
checkout's ``python -m jobs.NAME`` run them (locally, by ``ray job submit``, as a KubeRay RayJob)."""

# Command -> module of dae.commands, in the order `dae --help` lists them (the user's path first).
COMMANDS = {
    "denoise": "denoise", "train": "train", "prepare": "prepare", "evaluate": "evaluate", "models": "models",
    "tune": "tune", "demo": "demo",
    "bench-train": "bench_train", "bench-denoise": "bench_denoise", "gpu-check": "gpu_check",
    "quality-natural": "quality_natural", "quality-selfsup": "quality_selfsup",
    "quality-sweep": "quality_sweep", "quality-train": "quality_train",
}
