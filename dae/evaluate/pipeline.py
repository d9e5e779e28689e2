"""The scoring stage: every method on the same noisy images, side by side, on Ray Data.

Pipeline (one streaming Ray Data pipeline for all noise specs and methods)::

    read_shards -> select_rows            keep the images to score (--limit, tuning hold-out), PNG bytes
                -> repartition            blocks of batch_size rows (small shards are one block each)
                -> noisy_batch            decode, and emit one row per
                                          (image, noise spec): clean, noisy (add_noise_batch with
                                          seed + id, so every method sees the same pixels), and the
                                          noisy input's own PSNR/SSIM (the "noisy" row)
                -> baseline_batch  x M    one task stage per classical method (pure batch function):
                                          adds METHOD__psnr/ssim/sec/hash columns
                -> repartition            (stops Ray fusing the task stages into the model actors)
                -> ModelScorer            one actor stage for all model dirs (each actor loads
                                          every model once; the pool sized by
                                          dae.actors.plan_actors, as jobs.denoise's)
                -> select id, noise, *__psnr/ssim/sec/hash  -> driver

Owns the run's order (check, select, tune, score, aggregate, picture, report) and the pipeline's
assembly; the pieces are in :mod:`.config`, :mod:`.select`, :mod:`.stages`, :mod:`.scorer`,
:mod:`.methods`, :mod:`.aggregate` and :mod:`.report`.

Classical parameters are tuned (see :mod:`dae.baselines`) on the tuning set (:mod:`.select`), as
Ray tasks, before scoring; untuned methods keep their defaults.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from .. import baselines
from ..noise import NoiseSpec, add_noise_batch
from .aggregate import aggregate, collect
from .config import EvaluateConfig, check_config, check_model_channels
from .methods import Methods
from .report import make_pictures, report_command, write_report
from .scorer import ModelScorer, plan_model_actors
from .select import Selection, decode_rows, head_rows, select_images
from .stages import baseline_batch, noisy_batch, select_rows

log = logging.getLogger("dae")


def _tune_fn(name: str, clean: list, noisy: list, sigmas: list) -> dict:
    return baselines.tune(name, clean, noisy, sigmas)


def tune_baselines(cfg: EvaluateConfig, sel: Selection, specs: dict[str, NoiseSpec],
                   running: list[str]) -> tuple[dict[str, dict[str, dict]], dict]:
    """({method: {noise spec: params}}, the report's tuning section). Grids are searched as Ray
    tasks on the tuning images, which are never scored; untuned methods keep their defaults.
    ``specs``: {noise spec string: spec} (:func:`check_config`)."""
    import ray

    params: dict[str, dict[str, dict]] = {n: {} for n in running}
    tuning: dict[str, Any] = {"source": sel.tune_source, "images": 0, "ids": [], "chosen": {}}
    tune_rows: list[dict] = []
    if sel.tune_source == "holdout":
        tune_rows = head_rows(sel.files, sel.holdout_n, ("id", "image"))[0]
    elif sel.tune_source != "none":
        tune_rows = head_rows(sel.tune_files, cfg.tune_images, ("id", "image"))[0]
    if tune_rows:
        t_clean = decode_rows(tune_rows)
        t_ids = [r["id"] for r in tune_rows]
        tuning.update(images=len(t_ids), ids=t_ids)
        task = ray.remote(num_cpus=1)(_tune_fn)
        pending = {}
        for spec, noise in specs.items():
            t_noisy = list(add_noise_batch(t_clean, t_ids, noise, cfg.seed))
            sig = [baselines.noise_sigma(noise, x) for x in t_noisy]
            c_ref, n_ref = ray.put(t_clean), ray.put(t_noisy)
            for n in running:
                if baselines.get_baseline(n).grid:
                    pending[(spec, n)] = task.remote(n, c_ref, n_ref, sig)
        log.info("tuning %d (noise, method) pairs on %d %s images", len(pending), len(t_ids), sel.tune_source)
        for (spec, n), ref in pending.items():
            res = ray.get(ref)
            params[n][spec] = res["params"]
            tuning["chosen"].setdefault(spec, {})[n] = res
    for n in running:
        for spec in specs:
            params[n].setdefault(spec, baselines.get_baseline(n).params())
    return params, tuning


def block_rows(batch_size: int, n_images: int, cpus: float | None = None) -> int:
    """Rows per block of the scoring pipeline: at most ``batch_size``, and few enough that every CPU
    of the cluster gets at least two blocks (the classical methods cost seconds per photo)."""
    if cpus is None:
        import ray

        cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, min(batch_size, math.ceil(n_images / max(2 * cpus, 1))))


def build_dataset(cfg: EvaluateConfig, sel: Selection, specs: dict[str, NoiseSpec], methods: Methods, params: dict,
                  plan: dict | None):
    """The streaming pipeline of the module docstring, ending in ``methods.columns``. ``specs``: {noise
    spec string: spec} (:func:`check_config`); ``plan``: the model actor pool (:func:`plan_model_actors`),
    None without models."""
    from ..data import read_shards

    # A task never asks for more CPU than a model actor holds, or it may find no node to run on
    # (dae.inference.plan_actors says why); Ray's default of 1 without models.
    task = {"num_cpus": plan["task_cpus"]} if plan else {}
    ds = read_shards(cfg.data, files=sel.read_files, columns=["id", "image"], **task)
    if sel.keep is not None or sel.drop is not None:
        ds = ds.map_batches(select_rows, batch_format="numpy", fn_kwargs={"keep": sel.keep, "drop": sel.drop},
                            **task)
    # Small shard files are read as one block by one task; split them so the CPU-heavy stages
    # below run on every CPU (streaming: no all-to-all barrier): blocks of batch_size rows, smaller
    # when that leaves CPUs idle (68 photos in blocks of 64 ran NLM and BM3D on one of 2 CPUs).
    ds = ds.repartition(target_num_rows_per_block=block_rows(cfg.batch_size, sel.n_score))
    ds = ds.map_batches(noisy_batch, batch_size=cfg.batch_size, batch_format="numpy",
                        fn_kwargs={"specs": list(specs.values()), "seed": cfg.seed}, **task)
    for n in methods.running:
        sub = sel.bm3d_subset if n == "bm3d" else None
        ds = ds.map_batches(baseline_batch, batch_size=8 if n == "bm3d" else cfg.batch_size, batch_format="numpy",
                            fn_kwargs={"method": n, "params": params[n], "specs": specs, "subset": sub}, **task)
    if plan:
        from ray.data import ActorPoolStrategy

        # Without this Ray fuses every task stage above into the model actors, and the classical
        # methods would run serially in the few actors instead of as tasks on every free CPU (Ray
        # never fuses anything downstream of a streaming repartition).
        ds = ds.repartition(target_num_rows_per_block=cfg.batch_size * len(specs))
        ds = ds.map_batches(
            ModelScorer, batch_size=cfg.batch_size, batch_format="numpy",
            fn_constructor_kwargs={"models": [(m["key"], m["dir"], m["ensemble"]) for m in methods.models],
                                   "spec": cfg.inference_spec().placed(plan["device"], plan["torch_threads"])},
            compute=ActorPoolStrategy(min_size=plan["min_actors"], max_size=plan["max_actors"]),
            num_cpus=plan["actor_cpus"], num_gpus=plan["actor_gpus"])
    return ds.select_columns(methods.columns)


def run(cfg: EvaluateConfig, command: str = "") -> dict:
    """Score everything; write report.md, report.json, comparison*.png, per_image.parquet under
    ``cfg.out``. Returns the report dict. ``command``: how the run was started, for the report
    (default: the command that reruns ``cfg``)."""
    from .. import raylib

    specs, names = check_config(cfg)
    t_start = time.perf_counter()
    methods = Methods.resolve(names, cfg.models, cfg.ensemble)
    sel = select_images(cfg, methods.running)
    check_model_channels(cfg, methods.models, sel.channels)

    raylib.init_ray()
    log.info("evaluate: %d images x %d noise specs, baselines %s%s, models %s", sel.n_score, len(specs),
             methods.running, f" (skipped: {sorted(methods.skipped)})" if methods.skipped else "",
             [m["name"] for m in methods.models])
    params, tuning = tune_baselines(cfg, sel, specs, methods.running)
    plan = plan_model_actors(cfg, raylib.cluster_cpus(), raylib.cluster_gpus()) if methods.models else None
    ds = build_dataset(cfg, sel, specs, methods, params, plan)
    cols = collect(ds, methods.columns, sel.n_score, len(specs))
    wall = time.perf_counter() - t_start

    scores = aggregate(cols, list(specs), methods, params, sel.bm3d_subset)
    pictures = make_pictures(cfg, sel, specs, methods, params, cols)
    return write_report(cfg, command or report_command(cfg), sel=sel, specs=list(specs), methods=methods, tuning=tuning,
                        plan=plan, scores=scores, pictures=pictures, wall=wall)
