"""The tune stage's driver: Ray Tune over the train stage, ASHA stopping trials early on validation PSNR.

    python -m jobs.tune --config tune-natural --data bench_out/quality-natural/data/CBSD68 --time-budget-s 3600

Each trial is one train run (:func:`dae.train.run`, Ray Train inside the trial) of ``base`` with the
trial's sample of ``space``, for ``max_epochs`` epochs (its schedule spans them); it reports every
epoch's figures to Tune (Ray Train's ``TuneReportCallback``) and ASHA stops the trials that trail at
each rung (``grace_period`` epochs, then x ``reduction_factor``).

Rules:
- The experiment is ``STORAGE/NAME``. A rerun with the same name and storage resumes it: finished
  trials are kept, unfinished and errored ones continue, each from its train run's latest checkpoint
  (a trial's train run is ``STORAGE/NAME/trials/NAME-TRIAL_ID``: the train stage resumes a reused run
  name). The settings that decide the trials (data, base, space, max epochs, ASHA, seed, metric) must
  stay; a rerun with other ones is refused naming them. A resumed experiment keeps the samples and time
  budget it was started with (Tune restores its own config).
- A trial ASHA stops is killed with its train run, whose placement group (its CPUs) Ray Train's own
  cleaner frees only through the State API: without a dashboard, or with two Ray instances on the
  machine, the API fails, the CPUs stay reserved and the next trial waits forever (seen here;
  ray-project/ray#54305). So when trials run one at a time, :func:`free_trial_resources` removes the
  train runs' placement groups each time a trial ends.
- One trial at a time per ``cpus_per_trial`` share of the cluster's CPUs (all of them by default): the
  trial's driver takes no CPU itself, its train worker and data tasks take the share.
- Outputs next to Tune's: ``tune_results.md`` / ``.json`` (every trial: its values, epochs run, best
  and last val PSNR, stopped early or not), ``tune.png`` (val PSNR per epoch, one line per trial),
  ``best.yaml`` (a train preset: base + the best trial's values; give it to ``jobs.train --config``),
  ``config.resolved.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field

from .. import storage
from ..config import build_config, yaml_text
from ..same_run import describe, differences
from . import space as space_lib

log = logging.getLogger("dae")

# What decides the trials (a resumed experiment must keep them); the rest may change on a rerun.
SAME = ("data", "base", "space", "max_epochs", "grace_period", "reduction_factor", "seed", "metric")


@dataclass(frozen=True)
class TuneConfig:
    data: str = field(default="", metadata={"help": "shard root every trial trains on (ROOT/train, ROOT/test)"})
    name: str = field(default="tune", metadata={
        "help": "experiment name: STORAGE/NAME; a rerun with the same name and storage resumes it"})
    storage: str = field(default="runs", metadata={"help": "where experiments live (local dir or URI)"})
    base: dict = field(default_factory=dict, metadata={
        "help": "train settings every trial shares (YAML), e.g. '{model: cunet, noise: \"awgn:0-55\", crop: 64}'"})
    space: dict = field(default_factory=dict, metadata={
        "help": "search space (YAML): SETTING: {choice: [..]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} | "
                "{randint: [lo, hi]} | a value; FIELD.KEY for model_kwargs (dae.tune.space)"})
    num_samples: int = field(default=8, metadata={"help": "trials sampled from the space"})
    max_epochs: int = field(default=10, metadata={"help": "epochs of a trial that is never stopped (ASHA's max_t)"})
    grace_period: int = field(default=2, metadata={"help": "epochs every trial runs before ASHA may stop it"})
    reduction_factor: int = field(default=3, metadata={"help": "ASHA keeps the best 1/N at each rung"})
    time_budget_s: float = field(default=0.0, metadata={
        "help": "stop the experiment after this many seconds (0: none)"})
    cpus_per_trial: float = field(default=0.0, metadata={"help": "CPUs of each trial's train worker (0: all)"})
    gpus_per_trial: float = field(default=0.0, metadata={"help": "GPUs of each trial's train worker"})
    seed: int = field(default=0, metadata={"help": "seed of the sampler (the trials' values)"})
    metric: str = field(default="val_psnr", metadata={"help": "the figure ASHA and the ranking maximize",
                                                      "choices": ("val_psnr", "val_ssim")})


def check_config(cfg: TuneConfig) -> TuneConfig:
    if not cfg.data:
        raise ValueError("--data is required: a shard root with ROOT/train and ROOT/test (see jobs.prepare)")
    space_lib.check(cfg.space, "--space")
    if cfg.base:
        space_lib.check(cfg.base, "--base")
    for name in ("num_samples", "max_epochs", "grace_period"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.grace_period > cfg.max_epochs:
        raise ValueError(f"--grace-period {cfg.grace_period} is more than --max-epochs {cfg.max_epochs}")
    if cfg.reduction_factor < 2:
        raise ValueError(f"--reduction-factor must be >= 2, got {cfg.reduction_factor}")
    # Each trial runs in a working dir of its own (Tune's): local paths are pinned to this one now.
    return dataclasses.replace(cfg, data=storage.absolute(cfg.data), storage=storage.absolute(cfg.storage))


def trial_config(cfg: TuneConfig, sampled: dict, trial_id: str, cpus: float):
    """The TrainConfig of one trial: base + its sample, the run's data, epochs, name and resources."""
    from ..train import TrainConfig

    values = space_lib.overrides(cfg.base, sampled)
    values.update(data=cfg.data, epochs=cfg.max_epochs, run_name=f"{cfg.name}-{trial_id}",
                  storage=storage.join(cfg.storage, cfg.name, "trials"), workers=1, cpus_per_worker=cpus,
                  gpus_per_worker=cfg.gpus_per_trial, samples=0)
    return build_config(TrainConfig, values)


def trial(sampled: dict, cfg: TuneConfig, cpus: float) -> None:
    """One Tune trial: a train run reporting each epoch to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train import run as train_run

    train_run(trial_config(cfg, sampled, tune.get_context().get_trial_id(), cpus), callbacks=(TuneReportCallback(),))


def free_trial_resources(bundle: dict):
    """A Tune callback that, each time a trial ends (finished, stopped by ASHA, failed), removes the
    placement groups still held with the train worker's ``bundle``: the ended trial's train run's, as
    trials run one at a time."""
    import ray
    from ray import tune
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    class FreeTrialResources(tune.Callback):
        def _free(self):
            for pg_id, info in ray.util.placement_group_table().items():
                if info["state"] == "CREATED" and list(info["bundles"].values()) == [bundle]:
                    log.info("tune: freeing placement group %s %s left by an ended trial", pg_id, bundle)
                    remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._free()

        def on_trial_error(self, iteration, trials, trial, **info):
            self._free()

    return FreeTrialResources()


def _resume_check(cfg: TuneConfig, exp: str) -> bool:
    """Whether the experiment exists (and is the same one: else a one-line error naming what changed)."""
    path = storage.join(exp, "config.resolved.json")
    if not storage.exists(path):
        return False
    diff = differences(storage.read_json(path), cfg, keys=SAME)
    if diff:
        raise ValueError(f"experiment {exp} was run with other settings ({describe(diff)}); use another --name")
    return True


def run(cfg: TuneConfig) -> dict:
    """Run (or resume) the experiment; returns the summary written to tune_results.json."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ..jobutil import save_resolved_config
    from ..raylib import init_ray

    cfg = check_config(cfg)
    exp = storage.join(cfg.storage, cfg.name)
    resumed = _resume_check(cfg, exp)
    init_ray(training=True)
    total = float(ray.cluster_resources().get("CPU", 1))
    cpus = cfg.cpus_per_trial or total
    concurrent = max(1, int(total // cpus))
    storage.makedirs(exp)
    save_resolved_config(cfg, exp, cpus_per_trial=cpus, concurrent_trials=concurrent)
    # The trial's driver reserves no CPU (its train worker takes the share); Tune needs some resource
    # in a trial's bundle, so it asks for 1 MiB of memory.
    trainable = tune.with_resources(tune.with_parameters(trial, cfg=cfg, cpus=cpus), {"CPU": 0, "memory": 1 << 20})
    storage_path, storage_fs = storage.ray_storage(cfg.storage)
    bundle = {"CPU": float(cpus), **({"GPU": float(cfg.gpus_per_trial)} if cfg.gpus_per_trial else {})}
    callbacks = [free_trial_resources(bundle)] if concurrent == 1 else []
    if resumed and tune.Tuner.can_restore(exp, storage_filesystem=storage_fs):
        log.info("tune: resuming %s", exp)
        tuner = tune.Tuner.restore(exp, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_fs)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space_lib.to_tune(cfg.space),
            tune_config=tune.TuneConfig(
                metric=cfg.metric, mode="max", num_samples=cfg.num_samples, time_budget_s=cfg.time_budget_s or None,
                # the generator's own limit: Tune ignores max_concurrent_trials beside a given generator
                search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=cfg.max_epochs, grace_period=cfg.grace_period,
                                        reduction_factor=cfg.reduction_factor)),
            run_config=tune.RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                      callbacks=callbacks))
    log.info("tune: %d trial(s) of %s, %d at a time (%g CPU each), ASHA on %s over %d epochs", cfg.num_samples,
             ", ".join(cfg.space), concurrent, cpus, cfg.metric, cfg.max_epochs)
    results = tuner.fit()
    return write_outputs(cfg, exp, results)


def _trial_rows(cfg: TuneConfig, results) -> list[dict]:
    rows = []
    for r in results:
        hist = r.metrics_dataframe
        curve = [] if hist is None or cfg.metric not in hist else \
            [(int(e), float(v)) for e, v in zip(hist["epoch"], hist[cfg.metric]) if not math.isnan(v)]
        values = dict(r.config or {})
        rows.append({"trial": r.path.rstrip("/").rsplit("/", 1)[-1], "values": values, "epochs": len(curve),
                     "best": max((v for _, v in curve), default=float("nan")),
                     "last": curve[-1][1] if curve else float("nan"), "curve": curve,
                     "stopped_early": bool(curve) and len(curve) < cfg.max_epochs and r.error is None,
                     "error": str(r.error).splitlines()[0] if r.error else ""})
    return sorted(rows, key=lambda x: -x["best"] if not math.isnan(x["best"]) else math.inf)


def _label(row: dict, keys: list[str]) -> str:
    """'5: 28, 2, 0.0023, 64, psnr': the trial's number (Tune's trial_<exp>_00005_...) and its values."""
    number = re.search(r"_(\d{5})(?:_|$)", row["trial"])
    values = [f"{v:.2g}" if isinstance(v, float) else str(v) for v in (row["values"].get(k, "") for k in keys)]
    return f"{int(number.group(1)) if number else row['trial'][:12]}: {', '.join(values)}"


def _write_text(path: str, text: str) -> None:
    storage.write_bytes(path, text.encode())


def write_outputs(cfg: TuneConfig, exp: str, results) -> dict:
    """tune_results.md/.json, tune.png and best.yaml in the experiment dir (see the module's rules)."""
    from ..viz import save_lines

    rows = _trial_rows(cfg, results)
    summary = {"experiment": exp, "metric": cfg.metric, "trials": rows, "best": rows[0] if rows else None}
    keys = list(cfg.space)
    md = [f"# tune {cfg.name}: {len(rows)} trial(s), ASHA on {cfg.metric} over {cfg.max_epochs} epochs", "",
          "| trial | " + " | ".join(keys) + f" | epochs | best {cfg.metric} | last | |",
          "|---|" + "---|" * len(keys) + "---|---|---|---|"]
    for r in rows:
        note = r["error"] or ("stopped by ASHA" if r["stopped_early"] else "")
        md.append(f"| {r['trial']} | " + " | ".join(str(r["values"].get(k, "")) for k in keys)
                  + f" | {r['epochs']} | {r['best']:.3f} | {r['last']:.3f} | {note} |")
    if rows and not math.isnan(rows[0]["best"]):
        best = space_lib.overrides(cfg.base, rows[0]["values"])
        best["epochs"] = cfg.max_epochs
        _write_text(storage.join(exp, "best.yaml"),
                    f"# jobs.tune {cfg.name}: trial {rows[0]['trial']}, best {cfg.metric} "
                    f"{rows[0]['best']:.3f} after {rows[0]['epochs']} epoch(s). Train it with:\n"
                    f"#   dae train --config {storage.join(exp, 'best.yaml')} --data DATA\n"
                    + yaml_text(best))
        md += ["", f"Best: trial {rows[0]['trial']} ({cfg.metric} {rows[0]['best']:.3f}); train preset "
                   f"`{storage.join(exp, 'best.yaml')}`."]
        # Short labels (the trial's number and its values; the keys once, in the title): Tune's trial
        # names run to 150 characters and the legend hid the curves.
        save_lines({cfg.metric: {_label(r, keys): ([e for e, _ in r["curve"]], [v for _, v in r["curve"]])
                                 for r in rows if r["curve"]}}, storage.join(exp, "tune.png"), xlabel="epoch",
                   title=f"tune {cfg.name}: trial: {', '.join(k.rsplit('.', 1)[-1] for k in keys)}")
    _write_text(storage.join(exp, "tune_results.md"), "\n".join(md) + "\n")
    storage.write_json(storage.join(exp, "tune_results.json"), summary)
    return summary


def format_summary(s: dict) -> str:
    lines = [f"tune {s['experiment']}: {len(s['trials'])} trial(s)"]
    for r in s["trials"]:
        lines.append(f"  {r['trial']}: {r['values']} -> best {s['metric']} {r['best']:.3f} in {r['epochs']} epoch(s)"
                     + (" (stopped by ASHA)" if r["stopped_early"] else "") + (f" ERROR {r['error']}" if r["error"]
                                                                              else ""))
    if s["best"]:
        lines.append(f"best: {s['best']['trial']} {s['best']['values']}; preset {s['experiment']}/best.yaml")
    return "\n".join(lines)
