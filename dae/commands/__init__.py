"""The jobs: each module has ``get_args_parser()`` and ``main(args)``; ``dae NAME`` (dae.cli) and the
checkout's ``python -m jobs.NAME`` run them (locally, by ``ray job submit``, as a KubeRay RayJob)."""
