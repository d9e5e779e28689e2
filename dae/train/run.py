"""The train stage's driver, :func:`run`: checks, plans, starts Ray Train's TorchTrainer over
:func:`dae.train.loop.train_loop_per_worker` and writes the run's outputs.

    python -m jobs.train --data shards/fashion --model conv28k --noise gaussian:0.5 --workers 2
    # or from Python:
    from dae.train import TrainConfig, run
    result = run(TrainConfig(data="shards/fashion", model="conv28k", noise="gaussian:0.5", workers=2))

  1. checks the config (:func:`dae.train.config.check_config`), storage access, a rerun's settings
     against the run it resumes (:func:`dae.train.config.check_resume`), and the shards (sizes,
     channels, noisy-only); sizes the workers from the cluster (:func:`dae.train.plan.plan_resources`),
     failing fast when they cannot fit (Ray would otherwise wait forever for the resources);
  2. reads the shards with Ray Data (:func:`dae.train.data.make_datasets`); in cache mode they are
     materialized BEFORE the trainer starts, so no Ray Data task competes with the worker actors;
  3. fits (rank 0 redraws ``curves.png`` and ``samples.png`` and writes TensorBoard events in
     ``OUT/tensorboard`` every epoch; with ``--tracker mlflow`` the driver opens the MLflow run first,
     or continues the one RUN_DIR/mlflow.json names, and rank 0 logs every epoch to it), then copies
     the last and the best checkpoint's model to ``OUT/final_model`` and ``OUT/best_model``, writes
     ``curves.png``, ``samples.png`` (best model) and ``summary.json``, and logs them, the metrics and
     the best model to the MLflow run, which it ends (FAILED when the fit raised).

Rule it keeps: everything that can be refused is refused before Ray Train starts, and a refused rerun
leaves its run directory untouched.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Callable

from .. import checkpoint as ckpt_lib, shards, storage
from ..config import config_dict
from .checkpoint import export_model, stored_run_config
from .config import LoopConfig, TrainConfig, check_config, check_resume
from .data import describe_data, make_datasets
from .loop import train_loop_per_worker
from .plan import plan_resources
from .report import collapsed, read_metrics, save_curves, save_samples, score_metric
from .tracking import MlflowTracker, Tracker, mlflow_env, tracking_uri

log = logging.getLogger("dae")


def run(cfg: TrainConfig, on_epoch_start: Callable[[int, int, int], None] | None = None,
        callbacks: tuple = ()) -> dict:
    """Train with Ray Train; returns {"out", "best_model", "best_epoch", "best", "history", ...}.
    ``on_epoch_start`` (tests only): called on every worker as ``(epoch, rank, world)`` before each epoch
    (epoch counted from 1); it must pickle (see :class:`dae.train.config.LoopConfig`). ``callbacks``:
    Ray Train callbacks for the run (dae.tune passes Tune's report callback)."""
    from ..jobutil import save_resolved_config
    from ..raylib import init_ray

    cfg = check_config(cfg)
    uri = tracking_uri() if cfg.tracker == "mlflow" else ""  # unset: refused before any work
    _check_access(cfg)
    run_dir = storage.join(cfg.storage, cfg.run_name)
    if (stored := stored_run_config(run_dir)) is not None:  # a rerun resumes that run: the same settings only
        check_resume(stored[0], cfg, stored[1])
    init_ray(training=True)
    t_start = time.perf_counter()
    train_desc, val_desc, mode = describe_data(cfg)
    if cfg.workers > train_desc["rows"]:
        raise ValueError(f"--workers {cfg.workers} is more than the {train_desc['rows']} {cfg.train_split} image(s) "
                         f"of {cfg.data}: every worker needs images to train on; lower --workers")
    res = plan_resources(cfg.workers, cfg.gpus_per_worker, cfg.cpus_per_worker,
                         reserve_cpus=0.0 if mode == "cache" else 1.0)  # stream: see make_datasets
    threads = cfg.torch_threads or res["torch_threads"]
    out = cfg.out or run_dir
    storage.makedirs(out)
    save_resolved_config(cfg, out, data_mode=mode, resources=res, torch_threads=threads,
                         train_rows=train_desc["rows"], val_rows=val_desc["rows"], run_dir=run_dir)
    log.info("train: %d %s images (%dx%dx%d, %.0f MB decoded, %s mode), %d %s images; %d worker(s) x %g CPU "
             "%g GPU, %d torch thread(s); run %s", train_desc["rows"], cfg.train_split, train_desc["height"],
             train_desc["width"], train_desc["channels"], train_desc["decoded_mb"], mode, val_desc["rows"],
             cfg.val_split, cfg.workers, res["cpus_per_worker"], cfg.gpus_per_worker, threads, run_dir)

    if cfg.init and int(ckpt_lib.load_config(cfg.init)["channels"]) != train_desc["channels"]:
        raise ValueError(f"--init {cfg.init} takes {ckpt_lib.load_config(cfg.init)['channels']}-channel images, "
                         f"{cfg.data} has {train_desc['channels']}-channel ones")
    t0 = time.perf_counter()
    datasets = make_datasets(cfg, train_desc, val_desc, mode)
    data_s = time.perf_counter() - t0
    log.info("data ready in %.1fs", data_s)
    tracker, mlflow_run = Tracker(), None
    if uri:
        tracker = MlflowTracker.open(run_dir, cfg.mlflow_experiment, cfg.run_name, uri)
        tracker.start(params=storage.redact(config_dict(cfg)))
        tracker.log_artifacts({"config.resolved.json": storage.join(out, "config.resolved.json")})
        mlflow_run = {"run_id": tracker.run_id, "uri": uri, "env": mlflow_env()}
    lc = LoopConfig(cfg, mode=mode, torch_threads=threads, channels=train_desc["channels"],
                    size=(train_desc["height"], train_desc["width"]), train_rows=train_desc["rows"], out=out,
                    clean_val=not val_desc["noisy_only"], on_epoch_start=on_epoch_start,
                    val_files=tuple(val_desc["files"]), mlflow=mlflow_run)
    t_fit = time.perf_counter()
    try:
        result = _trainer(lc, res, datasets, callbacks).fit()
    except BaseException:
        with contextlib.suppress(Exception):  # the fit's error is the one to see
            tracker.end("FAILED")  # a rerun of the run name sets it RUNNING again
        raise
    fit_s = time.perf_counter() - t_fit
    facts = {"run_dir": run_dir, "data_mode": mode, "data_s": data_s, "fit_s": fit_s, "resources": res,
             "torch_threads": threads, **({"mlflow_run_id": mlflow_run["run_id"]} if mlflow_run else {})}
    summary = _outputs(result, lc, val_desc["files"], t_start, facts)
    try:
        tracker.log_artifacts({name: storage.join(out, name) for name in (
            "curves.png", "samples.png", "metrics.jsonl", "summary.json", "best_model")})
        tracker.end()
    except Exception as e:  # noqa: BLE001 - the run and its outputs are complete: say so, do not fail it
        log.warning("MLflow: logging the run's outputs failed (they are in %s): %s: %s", out, type(e).__name__,
                    str(e).splitlines()[0])
    return summary


def _check_access(cfg: TrainConfig) -> None:
    """Every input and output reachable, and every input root a finished prepare: fails before any work,
    naming the cause."""
    storage.check_access(cfg.data, must_exist=True)
    shards.require_prepared(cfg.data)  # a prepare killed half way: refused, not trained on part of a split
    storage.check_access(cfg.storage, write=True)
    if cfg.pair_data:
        storage.check_access(cfg.pair_data, must_exist=True)
        shards.require_prepared(cfg.pair_data)
    if cfg.out:
        storage.check_access(cfg.out, write=True)


def _trainer(lc: LoopConfig, res: dict, datasets: dict, callbacks: tuple = ()):
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = lc.cfg
    resources = {"CPU": res["cpus_per_worker"]}
    if cfg.gpus_per_worker > 0:
        resources["GPU"] = cfg.gpus_per_worker
    # Ray Train gets (path, filesystem): on s3:// the filesystem carries dae.storage's endpoint and
    # credentials to the controller and workers (a bare URI would be re-resolved there from their env).
    storage_path, storage_fs = storage.ray_storage(cfg.storage)
    return TorchTrainer(
        functools.partial(train_loop_per_worker, lc),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep,
                                                         checkpoint_score_attribute=score_metric(lc.clean_val)[0],
                                                         checkpoint_score_order=score_metric(lc.clean_val)[1]),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures), callbacks=list(callbacks)),
        datasets=datasets,
        # cache mode: every worker sees the whole (materialized) split and picks its rows by rank
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if lc.mode == "stream" else []),
    )


def _outputs(result, lc: LoopConfig, val_files: list[str], t_start: float, facts: dict) -> dict:
    """final_model, best_model, curves.png, samples.png and summary.json of a finished fit; the summary."""
    cfg, out = lc.cfg, lc.out
    history = read_metrics(out)
    best_model_dir = storage.join(out, "best_model")
    final_model_dir = storage.join(out, "final_model")
    # final_model (the last epoch) is what to score on the held-out split when val_split is that
    # same split: best_model was picked on it.
    export_model(result.checkpoint, final_model_dir)
    metric, order = score_metric(lc.clean_val)
    model = export_model(result.get_best_checkpoint(metric, order) or result.checkpoint, best_model_dir)
    best = (max if order == "max" else min)(history, key=lambda h: h[metric])
    save_curves(history, cfg, lc.clean_val, storage.join(out, "curves.png"))
    if cfg.samples > 0:
        save_samples(model, cfg, val_files, storage.join(out, "samples.png"), clean=lc.clean_val)
    summary = {"out": out, "run_dir": facts["run_dir"], "best_model": best_model_dir, "final_model": final_model_dir,
               "best_epoch": best["epoch"], "collapsed": collapsed(history[-1]),
               "best": best, "last": history[-1], "history": history, "data_mode": facts["data_mode"],
               "data_s": facts["data_s"], "fit_s": facts["fit_s"], "total_s": time.perf_counter() - t_start,
               "resources": facts["resources"], "torch_threads": facts["torch_threads"], "config": config_dict(cfg),
               **{k: facts[k] for k in ("mlflow_run_id",) if k in facts}}
    storage.write_json(storage.join(out, "summary.json"), {k: v for k, v in summary.items() if k != "history"})
    return summary
