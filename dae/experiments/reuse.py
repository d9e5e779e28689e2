"""A step of an experiment, run or reused: the prepare, train and evaluate stages called with their
config objects, each skipped when its output is already there. A stopped experiment picks up where
it stopped; a result made with other settings is an error, never a result to reuse.

    from dae.experiments.reuse import prepare_or_reuse, train_or_reuse, evaluate_or_reuse
    trained = train_or_reuse(TrainConfig(...), "fashion-mnist/conv28k")   # {model_dir, seconds, reused, last}
"""

from __future__ import annotations

import logging

from dae import shards, storage
from dae.config import command_line, config_dict
from dae.same_run import describe, differences

log = logging.getLogger("dae")

# The fields of the train job's config that make two runs the same experiment (a run found under
# the same name with other values is an error, not a result to reuse).
SAME_RUN = ("data", "train_split", "model", "model_kwargs", "init", "noise", "loss", "optimizer", "schedule", "lr",
            "weight_decay", "epochs", "batch_size", "seed")


# Prepared data is the same when every setting but these two is (they change no shard).
PREPARE_FREE = ("overwrite", "preview")


def prepare_or_reuse(pcfg, name: str) -> str:
    """pcfg.out from the prepare stage, unless a finished one is there (shards.is_prepared)."""
    from dae.prepare import format_summary, run as prepare_run

    if shards.is_prepared(pcfg.out):
        resolved = storage.join(pcfg.out, "config.resolved.json")
        stored = storage.read_json(resolved) if storage.exists(resolved) else {}
        keys = [k for k in config_dict(pcfg) if k not in PREPARE_FREE]
        diff = differences(stored, pcfg, keys) if stored else {}
        if diff:
            raise ValueError(f"{pcfg.out} holds data prepared with other settings ({describe(diff)}): give "
                             f"another --out, or delete it to prepare it again")
        log.info("sweep: data %s: reusing %s", name, pcfg.out)
        return pcfg.out
    log.info("sweep: data %s: %s", name, command_line("prepare", pcfg))
    log.info("%s", format_summary(prepare_run(pcfg)))
    return pcfg.out


def _check_same_run(tcfg, run_dir: str, same_run: tuple) -> None:
    """A run in run_dir made with other ``same_run`` settings is an error naming them."""
    resolved_path = storage.join(run_dir, "config.resolved.json")
    if not storage.exists(resolved_path):
        return
    diff = differences(storage.read_json(resolved_path), tcfg, same_run)
    if diff:
        raise ValueError(f"{run_dir} holds a run with other settings ({describe(diff)}): give another "
                         f"--out, or delete that run to retrain it")


def _epochs_seconds(run_dir: str) -> float:
    """The training and validation seconds of every epoch in the run's metrics.jsonl, over all its
    attempts (0 when there is none)."""
    from dae.train.report import read_metrics

    if not storage.exists(storage.join(run_dir, "metrics.jsonl")):
        return 0.0
    return sum(r.get("train_s", 0.0) + r.get("val_s", 0.0) for r in read_metrics(run_dir))


def train_or_reuse(tcfg, what: str, same_run: tuple = SAME_RUN) -> dict:
    """Train ``tcfg`` or reuse its finished run (a run there with other ``same_run`` settings is an
    error, not a result). Returns {model_dir, seconds, reused, last}.

    seconds: the run's summary counts the attempts made here; a run resumed by hand (``dae train
    --config RUN/config.resolved.json``, e.g. to cut its epochs) adds attempts it does not count, so
    seconds is at least the sum of its epochs' training and validation time (metrics.jsonl)."""
    from dae.train import check_config, run as train_run

    tcfg = check_config(tcfg)
    run_dir = storage.join(tcfg.storage, tcfg.run_name)
    final = storage.join(run_dir, "final_model")
    _check_same_run(tcfg, run_dir, same_run)
    done, before = 0, 0.0
    if storage.exists(storage.join(final, "config.json")) and storage.exists(storage.join(run_dir, "summary.json")):
        s = storage.read_json(storage.join(run_dir, "summary.json"))
        done, before = (s.get("last") or {}).get("epoch", 0), s.get("total_s") or 0.0
        if done >= tcfg.epochs:
            log.info("sweep: %s: reusing the finished run", what)
            return {"model_dir": final, "seconds": max(before, _epochs_seconds(run_dir)), "reused": True,
                    "last": s.get("last")}
    # (with epochs not among same_run, a finished shorter run is continued: resumed by its name)
    log.info("sweep: train %s (%s, %d epochs%s)", what, tcfg.model, tcfg.epochs,
             f", continuing after epoch {done}" if done else "")
    s = train_run(tcfg)
    if before:  # seconds of the whole lineage (the summary written now counts this attempt only)
        storage.write_json(storage.join(run_dir, "summary.json"), {
            **storage.read_json(storage.join(run_dir, "summary.json")), "total_s": before + s["total_s"]})
    return {"model_dir": s["final_model"], "seconds": max(before + s["total_s"], _epochs_seconds(run_dir)),
            "reused": False, "last": s["last"]}


def evaluate_or_reuse(ecfg, name: str) -> dict:
    """The evaluate stage's report for ``ecfg``, reused when one made with exactly these settings
    and these very weights is there (a retrained model keeps its dir, not its weights), and no method
    it skipped (an optional package missing then, e.g. the bm3d extra) can run now."""
    from dae.baselines import availability
    from dae.checkpoint import weights_digest
    from dae.evaluate import run as eval_run

    model_dirs, levels = list(ecfg.models), list(ecfg.noise)
    report_path = storage.join(ecfg.out, "report.json")
    if storage.exists(report_path):
        old = storage.read_json(report_path)
        runnable_now = [s["method"] for s in old.get("skipped", []) if availability(s["method"])[0]]
        if not differences(old.get("config", {}), ecfg) and {m["dir"]: m.get("weights") for m in old.get(
                "models", [])} == {d: weights_digest(d) for d in model_dirs} and not runnable_now:
            log.info("sweep: eval %s: reusing %s", name, report_path)
            return old
        if runnable_now:
            log.info("sweep: eval %s: %s skipped there can run now", name, ", ".join(runnable_now))
    log.info("sweep: evaluate %s: %d models, %d levels", name, len(model_dirs), len(levels))
    return eval_run(ecfg, command_line("evaluate", ecfg, full=True))
