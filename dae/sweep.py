"""The project's quality table: seed models, the best model, a blind model and the classical
denoisers on the same noisy images, over datasets and noise levels, with the quality targets checked.

    from dae.sweep import SweepConfig, run
    result = run(build_config(SweepConfig, {"out": "runs/quality"}, preset="quality-sweep-cpu"))

    python -m jobs.quality_sweep --config quality-sweep --out runs/quality        # the full grid (GPU)
    python -m jobs.quality_sweep --config quality-sweep-cpu --out runs/quality    # what fits a 2-core CPU
    python -m jobs.quality_sweep --config quality-sweep --dry-run                 # print the plan only

On a Ray cluster: ``ray job submit --working-dir . -- python -m jobs.quality_sweep --config
quality-sweep --out s3://bucket/quality --gpus-per-worker 1``.

Steps, each one a library stage called with its config object, each skipped when its output is
already there (a stopped sweep picks up where it stopped; a changed setting fails instead of mixing
results):

1. prepare every dataset of the grid (``dae.prepare.run``) -> ``OUT/data/NAME``;
2. train every cell (dataset, model, noise) of the grid (``dae.train.run``, Ray Train), every model
   of a dataset with the same epochs, data, optimizer and schedule (the loss is the model entry's:
   the two Keras seeds use their notebooks' binary cross-entropy) -> ``OUT/runs/NAME/TAG-NOISE/``;
   plus the best model trained blind on ``--blind`` (a range of levels) on every dataset;
3. score, per dataset, every model and the classical baselines on the same noisy test images
   (``dae.evaluation.run`` on Ray Data) -> ``OUT/eval/NAME/report.md`` and comparison pictures;
4. write ``OUT/quality.md`` / ``quality.json``: one table per dataset (mean per-image PSNR for
   every method, each model at the level it was trained for, the blind one at every level of its
   range) and the quality targets, met or missed by how much.

Models are scored as they were after their last epoch (``final_model``): the train job validates
on the test split, so its best-on-validation checkpoint would be chosen on the scored images.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from . import baselines, shards, storage
from .config import build_config, command_line, config_dict
from .jobutil import save_resolved_config, slug
from .models import list_models
from .noise import NoiseSpec

log = logging.getLogger("dae")

LEVELS = ("gaussian:0.1", "gaussian:0.3", "gaussian:0.5", "gaussian:0.7",
          "salt_pepper:0.05", "salt_pepper:0.1", "salt_pepper:0.2", "salt_pepper:0.3")
SEED_MODELS = ("keras_blog", "conv28k", "bn_leaky", "svhn_ae")
# Trained models: tag -> {model, model_kwargs, loss}. The tag names the run and the table column.
# keras_blog and conv28k train with binary cross-entropy, as their Keras sources do: with MSE their
# sigmoid output saturates at 0 on MNIST (mostly black pixels; measured: a constant 9.7 dB output at
# every level, 3 seeds, either init) and MSE's gradient through a saturated sigmoid vanishes.
MODELS = {
    "keras_blog": {"model": "keras_blog", "loss": "bce"},
    "conv28k": {"model": "conv28k", "loss": "bce"},
    "bn_leaky": {"model": "bn_leaky"},
    "svhn_ae": {"model": "svhn_ae"},
    "unet32": {"model": "unet", "model_kwargs": {"width": 32}},
}
# Datasets: name -> dae.prepare.PrepareConfig fields (+ epochs: this dataset's training epochs,
# every model).
DATASETS = {
    "fashion-mnist": {"source": "fashion-mnist"},
    "mnist5k": {"source": "mnist5k"},
    "photos": {"source": "photos", "patch_size": 32, "color": "rgb"},
}
# The fields of the train job's config that make two runs the same experiment (a run found under
# the same name with other values is an error, not a result to reuse).
SAME_RUN = ("data", "train_split", "model", "model_kwargs", "init", "noise", "loss", "optimizer", "schedule", "lr",
            "weight_decay", "epochs", "batch_size", "seed")


@dataclass(frozen=True)
class SweepConfig:
    out: str = field(default="runs/quality", metadata={"help": "output root (local dir or URI)"})
    datasets: dict = field(default_factory=lambda: dict(DATASETS), metadata={
        "help": "name -> prepare options (PrepareConfig fields), plus optional 'epochs' for this dataset's models"})
    models: dict = field(default_factory=lambda: dict(MODELS), metadata={
        "help": "tag -> {model, model_kwargs, loss}: the models a grid may name (loss: mse when not given)"})
    grid: tuple = field(default_factory=lambda: tuple({"data": d, "models": list(MODELS), "noise": list(LEVELS)}
                                                      for d in DATASETS), metadata={
        "help": "blocks {data, models, noise}: each trains every model at every noise level on that data"})
    best: str = field(default="unet32", metadata={"help": "tag of the project's best model (the targets use it)"})
    reference: str = field(default="conv28k", metadata={"help": "tag of the seed model the +1.5 dB target compares with"})
    blind: str = field(default="gaussian:0.1-0.7", metadata={
        "help": "range the best model is also trained on blind, per dataset ('' = no blind model)"})
    epochs: int = field(default=10, metadata={"help": "training epochs where a dataset gives none"})
    batch_size: int = field(default=128, metadata={"help": "global training batch"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (Adam, one-cycle; every model)"})
    seed: int = field(default=0, metadata={"help": "seed of training and of the scored noise"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers per run"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs per training worker"})
    val_limit: int = field(default=1000, metadata={"help": "test images validated per epoch (monitoring only)"})
    eval_limit: int = field(default=2000, metadata={"help": "test images scored per dataset (0 = all)"})
    baselines: tuple = field(default=baselines.DEFAULT_BASELINES, metadata={
        "help": f"classical methods, of: {', '.join(baselines.BASELINES)}"})
    bm3d_limit: int = field(default=100, metadata={"help": "images BM3D scores (it is slow); 0 = all"})
    datasets_only: tuple = field(default=(), metadata={"help": "run only these datasets of the grid"})
    dry_run: bool = field(default=False, metadata={"help": "print the plan and stop"})


@dataclass(frozen=True)
class Cell:
    data: str
    tag: str
    noise: str  # a level, or a range for the blind model

    @property
    def run_name(self) -> str:
        return f"{self.tag}-{slug(self.noise)}"

    @property
    def blind(self) -> bool:
        return NoiseSpec.parse(self.noise).blind


def _level(spec: str) -> tuple[str, float]:
    s = NoiseSpec.parse(spec)
    return s.kind, s.low


def in_range(level: str, blind: str) -> bool:
    """gaussian:0.3 is in gaussian:0.1-0.7."""
    a, b = NoiseSpec.parse(level), NoiseSpec.parse(blind)
    return a.kind == b.kind and not a.blind and b.low - 1e-9 <= a.low <= b.high + 1e-9


# ---------------------------------------------------------------- the plan


def plan(cfg: SweepConfig) -> tuple[list[Cell], dict[str, list[str]]]:
    """(cells to train, {dataset: noise levels to score}), checking every name in the grid."""
    if not cfg.grid:
        raise ValueError("the grid is empty: give blocks {data, models, noise}")
    cells: list[Cell] = []
    levels: dict[str, list[str]] = {}
    for i, block in enumerate(cfg.grid):
        if not isinstance(block, dict) or set(block) - {"data", "models", "noise"} or "data" not in block:
            raise ValueError(f"grid block {i} must be a mapping with keys data, models, noise; got {block!r}")
        data = block["data"]
        if data not in cfg.datasets:
            raise ValueError(f"grid block {i}: unknown dataset {data!r}; datasets: {', '.join(cfg.datasets)}")
        if cfg.datasets_only and data not in cfg.datasets_only:
            continue
        for tag in block.get("models", []):
            if tag not in cfg.models:
                raise ValueError(f"grid block {i}: unknown model tag {tag!r}; models: {', '.join(cfg.models)}")
        for spec in block.get("noise", []):
            spec = str(NoiseSpec.parse(spec))
            if NoiseSpec.parse(spec).blind:
                raise ValueError(f"grid block {i}: {spec} is a range; the blind model is set with --blind")
            if spec not in levels.setdefault(data, []):
                levels[data].append(spec)
            for tag in block.get("models", []):
                c = Cell(data, tag, spec)
                if c not in cells:
                    cells.append(c)
    for name in cfg.datasets_only:
        if name not in cfg.datasets:
            raise ValueError(f"--datasets-only: unknown dataset {name!r}; datasets: {', '.join(cfg.datasets)}")
    for tag in (cfg.best, cfg.reference):
        if tag not in cfg.models:
            raise ValueError(f"model tag {tag!r} (best/reference) is not in models: {', '.join(cfg.models)}")
    from .train import LOSSES

    for tag, m in cfg.models.items():
        if not isinstance(m, dict) or m.get("model") not in list_models():
            raise ValueError(f"models[{tag!r}] must be {{model, model_kwargs, loss}} with model one of "
                             f"{', '.join(list_models())}; got {m!r}")
        extra = set(m) - {"model", "model_kwargs", "loss"}
        if extra:
            raise ValueError(f"models[{tag!r}]: unknown key(s) {sorted(extra)}; valid: model, model_kwargs, loss")
        if m.get("loss", "mse") not in LOSSES:
            raise ValueError(f"models[{tag!r}]: loss {m['loss']!r} is not one of {', '.join(LOSSES)}")
        if "/" in tag or tag.startswith("."):
            raise ValueError(f"model tag must be a plain name, got {tag!r}")
    if cfg.blind:
        blind = str(NoiseSpec.parse(cfg.blind))
        if not NoiseSpec.parse(blind).blind:
            raise ValueError(f"--blind {cfg.blind!r} must be a range LO-HI, e.g. gaussian:0.1-0.7")
        for data in levels:
            cells.append(Cell(data, cfg.best, blind))
    if not cells:
        raise ValueError("no cell to train: every grid block is empty or excluded by --datasets-only")
    return cells, levels


def epochs_of(cfg: SweepConfig, data: str) -> int:
    return int(cfg.datasets[data].get("epochs", cfg.epochs))


def loss_of(cfg: SweepConfig, tag: str) -> str:
    return cfg.models[tag].get("loss", "mse")


def losses_text(cfg: SweepConfig, tags: list[str]) -> str:
    """'MSE' or 'MSE; BCE for keras_blog, conv28k': the losses of the models of one table."""
    other: dict[str, list[str]] = {}  # LOSS -> tags trained with it
    for tag in dict.fromkeys(tags):
        if loss_of(cfg, tag) != "mse":
            other.setdefault(loss_of(cfg, tag).upper(), []).append(tag)
    return "; ".join(["MSE"] + [f"{loss} for {', '.join(with_loss)}" for loss, with_loss in other.items()])


def train_config(cfg: SweepConfig, cell: Cell):
    from .train import TrainConfig

    m = cfg.models[cell.tag]
    return TrainConfig(
        data=storage.join(cfg.out, "data", cell.data), model=m["model"], model_kwargs=dict(m.get("model_kwargs", {})),
        noise=cell.noise, loss=loss_of(cfg, cell.tag), optimizer="adam", schedule="onecycle", lr=cfg.lr, epochs=epochs_of(cfg, cell.data),
        batch_size=cfg.batch_size, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker, seed=cfg.seed,
        val_limit=cfg.val_limit, storage=storage.join(cfg.out, "runs", cell.data), run_name=cell.run_name)


# ---------------------------------------------------------------- the steps


def prepare_config(cfg: SweepConfig, name: str):
    """The prepare stage's config for dataset NAME -> OUT/data/NAME (its options checked and typed
    like a preset's: an unknown key or choice fails listing the valid ones)."""
    from .prepare import PrepareConfig

    opts = {k: v for k, v in cfg.datasets[name].items() if k != "epochs"}
    return build_config(PrepareConfig, {**opts, "out": storage.join(cfg.out, "data", name), "overwrite": True})


def prepare_dataset(cfg: SweepConfig, name: str) -> str:
    """OUT/data/NAME from the prepare stage, unless a finished one is there."""
    return prepare_or_reuse(prepare_config(cfg, name), name)


def prepare_or_reuse(pcfg, name: str) -> str:
    """pcfg.out from the prepare stage, unless a finished one is there (shards.is_prepared)."""
    from .prepare import format_summary, run as prepare_run

    if shards.is_prepared(pcfg.out):
        log.info("sweep: data %s: reusing %s", name, pcfg.out)
        return pcfg.out
    log.info("sweep: data %s: %s", name, command_line("jobs.prepare", pcfg))
    log.info("%s", format_summary(prepare_run(pcfg)))
    return pcfg.out


def train_cell(cfg: SweepConfig, cell: Cell) -> dict:
    """Train one cell (or reuse its finished run). Returns {model_dir, seconds, reused, last}."""
    return train_or_reuse(train_config(cfg, cell), f"{cell.data}/{cell.run_name}")


def train_or_reuse(tcfg, what: str, same_run: tuple = SAME_RUN) -> dict:
    """Train ``tcfg`` or reuse its finished run (a run there with other ``same_run`` settings is an
    error, not a result). Returns {model_dir, seconds, reused, last}."""
    from .train import check_config, run as train_run

    tcfg = check_config(tcfg)
    run_dir = storage.join(tcfg.storage, tcfg.run_name)
    final = storage.join(run_dir, "final_model")
    want = config_dict(tcfg)
    resolved_path = storage.join(run_dir, "config.resolved.json")
    if storage.exists(resolved_path):
        have = storage.read_json(resolved_path)
        # A setting missing from an older run's config is one added since: that run had its default.
        defaults = {f.name: f.default for f in dataclasses.fields(tcfg) if f.default is not dataclasses.MISSING}
        diff = {k: (have.get(k, defaults.get(k)), want[k]) for k in same_run if have.get(k, defaults.get(k)) != want[k]}
        if diff:
            raise ValueError(f"{run_dir} holds a run with other settings {diff} (found, wanted): give another "
                             f"--out, or delete that run to retrain it")
    done, before = 0, 0.0
    if storage.exists(storage.join(final, "config.json")) and storage.exists(storage.join(run_dir, "summary.json")):
        s = storage.read_json(storage.join(run_dir, "summary.json"))
        done, before = (s.get("last") or {}).get("epoch", 0), s.get("total_s") or 0.0
        if done >= tcfg.epochs:
            log.info("sweep: %s: reusing the finished run", what)
            return {"model_dir": final, "seconds": before, "reused": True, "last": s.get("last")}
    # (with epochs not among same_run, a finished shorter run is continued: resumed by its name)
    log.info("sweep: train %s (%s, %d epochs%s)", what, tcfg.model, tcfg.epochs,
             f", continuing after epoch {done}" if done else "")
    s = train_run(tcfg)
    if before:  # seconds of the whole lineage (the summary written now counts this attempt only)
        storage.write_json(storage.join(run_dir, "summary.json"), {
            **storage.read_json(storage.join(run_dir, "summary.json")), "total_s": before + s["total_s"]})
    return {"model_dir": s["final_model"], "seconds": before + s["total_s"], "reused": False, "last": s["last"]}


def evaluate_dataset(cfg: SweepConfig, name: str, levels: list[str], model_dirs: list[str]) -> dict:
    """One evaluate run per dataset (every model and baseline, every level); reused when its report
    was made with exactly these settings and these very weights (a retrained model keeps its dir)."""
    from .evaluation import EvaluateConfig

    ecfg = EvaluateConfig(data=storage.join(cfg.out, "data", name), split="test",
                          out=storage.join(cfg.out, "eval", name), noise=tuple(levels), models=tuple(model_dirs),
                          baselines=tuple(cfg.baselines), limit=cfg.eval_limit, seed=cfg.seed,
                          bm3d_limit=cfg.bm3d_limit)
    return evaluate_or_reuse(ecfg, name)


def evaluate_or_reuse(ecfg, name: str) -> dict:
    """The evaluate stage's report for ``ecfg``, reused when one made with exactly these settings
    and these very weights is there."""
    from .checkpoint import weights_digest
    from .evaluation import run as eval_run

    model_dirs, levels = list(ecfg.models), list(ecfg.noise)
    report_path = storage.join(ecfg.out, "report.json")
    if storage.exists(report_path):
        old = storage.read_json(report_path)
        want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config_dict(ecfg).items()}
        # a setting added since the report was made: it was made with the default
        defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config_dict(type(ecfg)()).items()}
        have = {**defaults, **old.get("config", {})}
        if have == want and {m["dir"]: m.get("weights") for m in old.get("models", [])} == {
                d: weights_digest(d) for d in model_dirs}:
            log.info("sweep: eval %s: reusing %s", name, report_path)
            return old
    log.info("sweep: evaluate %s: %d models, %d levels", name, len(model_dirs), len(levels))
    return eval_run(ecfg, command_line("jobs.evaluate", ecfg, full=True))


# ---------------------------------------------------------------- the table and the targets


def collect(cfg: SweepConfig, cells: list[Cell], levels: dict[str, list[str]], reports: dict[str, dict],
            trained: dict[Cell, dict]) -> dict:
    """{dataset: {level: {method: {psnr, ssim, images, ...}}}}: classical methods and the noisy input
    at every level, each per-level model at its own level, the blind model at the levels in its range."""
    table: dict[str, dict] = {}
    for name, rep in reports.items():
        by_dir = {e["dir"]: e["name"] for e in rep["models"]}
        res = {(e["noise"], e["method"]): e for e in rep["results"]}
        tab: dict[str, dict] = {}
        for level in levels[name]:
            row: dict[str, dict] = {}
            for method in [r for r in rep["methods"] if r not in by_dir.values()]:
                e = res.get((level, method))
                if e is not None:
                    row[method] = _cell_entry(e)
            for c in cells:
                if c.data != name:
                    continue
                if c.noise != level and not (c.blind and in_range(level, c.noise)):
                    continue
                e = res.get((level, by_dir[trained[c]["model_dir"]]))
                row[column(cfg, c)] = {**_cell_entry(e), "run": c.run_name, "trained_noise": c.noise}
            tab[level] = row
        table[name] = tab
    return table


def _cell_entry(e: dict) -> dict:
    out = {k: e.get(k) for k in ("kind", "status", "psnr_mean", "psnr_std", "ssim_mean", "images", "sec_per_image")}
    if e.get("reason"):
        out["reason"] = e["reason"]
    if e.get("bm3d_subset"):
        out["bm3d_subset"] = e["bm3d_subset"]
    return out


def column(cfg: SweepConfig, c: Cell) -> str:
    return f"{c.tag} blind" if c.blind else c.tag


def _psnr(row: dict, method: str) -> float | None:
    e = row.get(method)
    return e.get("psnr_mean") if e and e.get("status") == "ok" else None


def check_targets(cfg: SweepConfig, table: dict) -> list[dict]:
    """The quality targets, each {target, where, value, needed, margin, status}; a target whose cells
    the sweep did not measure is 'not measured' (never silently passed)."""
    best, ref = cfg.best, cfg.reference
    out: list[dict] = []

    def add(target, where, value, needed, detail=""):
        if value is None or needed is None:
            out.append({"target": target, "where": where, "status": "not measured", "value": value,
                        "needed": needed, "margin": None, "detail": detail})
        else:
            out.append({"target": target, "where": where, "status": "met" if value >= needed else "missed",
                        "value": value, "needed": needed, "margin": value - needed, "detail": detail})

    fm = table.get("fashion-mnist", {})
    row = fm.get("gaussian:0.5", {})
    r = _psnr(row, ref)
    add(f"{best} >= {ref} + 1.5 dB", "fashion-mnist gaussian:0.5", _psnr(row, best), None if r is None else r + 1.5,
        f"{ref} {r:.2f} dB" if r is not None else "")
    row = fm.get("gaussian:0.1", {})
    classical = {m: _psnr(row, m) for m, e in row.items() if e.get("kind") == "classical"}
    classical = {m: v for m, v in classical.items() if v is not None and m != "bm3d"}
    # BM3D scores a subset only (--bm3d-limit): its mean is not over the same images.
    top = max(classical, key=classical.get) if classical else None
    add(f"{best} >= best classical + 3 dB", "fashion-mnist gaussian:0.1", _psnr(row, best),
        None if top is None else classical[top] + 3.0, f"best classical: {top} {classical[top]:.2f} dB" if top else "")
    for name, tab in table.items():
        row = tab.get("salt_pepper:0.2", {})
        if row:
            m = _psnr(row, "median")
            add(f"{best} >= median + 6 dB", f"{name} salt_pepper:0.2", _psnr(row, best),
                None if m is None else m + 6.0, f"median {m:.2f} dB" if m is not None else "")
    if cfg.blind:
        blind_col = f"{best} blind"
        for name, tab in table.items():
            for level, row in tab.items():
                if not in_range(level, cfg.blind):
                    continue
                per = _psnr(row, best)
                add(f"{blind_col} within 0.5 dB of {best}", f"{name} {level}", _psnr(row, blind_col),
                    None if per is None else per - 0.5, f"{best} at this level {per:.2f} dB" if per is not None else "")
    return out


def save_charts(cfg: SweepConfig, table: dict) -> dict[str, str]:
    """OUT/psnr_NAME.png per dataset: PSNR against the noise level, one panel per noise kind, one
    line per method (a per-level model is a line through the levels it was trained at)."""
    from .evaluation import NOISY
    from .viz import save_lines

    paths = {}
    for name, tab in table.items():
        points: dict[str, dict[str, list]] = {}  # panel -> method -> [(level, psnr)]
        for level, row in tab.items():
            kind, x = _level(level)
            for method in row:
                v = _psnr(row, method)
                if v is not None:
                    points.setdefault(f"{name}: {kind}", {}).setdefault(method, []).append((x, v))
        panels = {p: {m: tuple(zip(*sorted(pts))) for m, pts in ms.items()} for p, ms in points.items()}
        paths[name] = save_lines(panels, storage.join(cfg.out, f"psnr_{slug(name)}.png"), xlabel="noise level",
                                 dashed=(NOISY, *baselines.BASELINES))
    return paths


def render(cfg: SweepConfig, table: dict, targets: list[dict], reports: dict, trained: dict, command: str,
           wall: float) -> str:
    from .train import collapsed

    lines = ["# Quality sweep", "",
             "Mean per-image PSNR (dB) on the test images of each dataset; every method saw the same noisy "
             "pixels (noise from the seed and the image id; the evaluate job checks the hashes). Each "
             "trained model is shown at the level it was trained for, the blind model at every level of "
             f"its range ({cfg.blind or 'none'}). Models: their last epoch. Classical parameters tuned on "
             "training images. Bold: best in the row.", "", "```", command, "```", ""]
    for name, tab in table.items():
        rep = reports[name]
        epochs = epochs_of(cfg, name)
        losses = losses_text(cfg, [c.tag for c in trained if c.data == name])
        methods: list[str] = []
        for row in tab.values():
            for m in row:
                if m not in methods:
                    methods.append(m)
        lines += [f"## {name}", "",
                  f"{rep['data']['images_scored']} test images scored; models trained {epochs} epoch(s) on "
                  f"`{cfg.out}/data/{name}` (batch {cfg.batch_size}, Adam, one-cycle lr {cfg.lr:g}, {losses}). "
                  f"Full report: `eval/{name}/report.md`, pictures `eval/{name}/comparison_*.png`.", "",
                  f"![PSNR against noise level, {name}](psnr_{slug(name)}.png)", "",
                  "| noise | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for level, row in tab.items():
            vals = {m: _psnr(row, m) for m in methods}
            top = max((v for m, v in vals.items() if v is not None and m != "noisy"), default=None)
            cells = []
            for m in methods:
                v, e = vals[m], row.get(m)
                if e is None:
                    cells.append("")
                elif e.get("status") == "skipped":
                    cells.append("skipped")
                elif v is None:
                    cells.append("-")
                else:
                    s = f"{v:.2f}"
                    if m == "bm3d" and e.get("bm3d_subset"):
                        s += f" ({e['images']} img)"
                    cells.append(f"**{s}**" if top is not None and v == top else s)
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Targets", "", "| target | where | value (dB) | needed (dB) | margin (dB) | status | detail |",
              "|---|---|---|---|---|---|---|"]
    for t in targets:
        f = (lambda x: "-" if x is None else f"{x:.2f}")
        margin = "-" if t["margin"] is None else f"{t['margin']:+.2f}"
        lines.append(f"| {t['target']} | {t['where']} | {f(t['value'])} | {f(t['needed'])} | {margin} | "
                     f"{t['status']} | {t['detail']} |")
    lines += ["", "## Training runs", "", "| dataset | run | loss | epochs | seconds | last val PSNR (dB) |",
              "|---|---|---|---|---|---|"]
    for c, info in trained.items():
        last = info.get("last") or {}
        sec = info.get("seconds")
        note = " (collapsed: one output for every input)" if collapsed(last) else ""
        lines.append(f"| {c.data} | {c.run_name} | {loss_of(cfg, c.tag)} | {epochs_of(cfg, c.data)} | "
                     f"{'-' if sec is None else f'{sec:.0f}'} | {last.get('val_psnr', float('nan')):.2f}{note} |")
    lines += ["", f"Wall time of this invocation: {wall:.0f} s (reused steps are not counted).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the sweep


def run(cfg: SweepConfig) -> dict:
    """Prepare, train, evaluate and tabulate (or, with ``dry_run``, only plan); returns what
    ``OUT/quality.json`` holds: command, config, table, targets, charts, runs, wall_seconds."""
    from .raylib import init_ray

    cells, levels = plan(cfg)
    for name in levels:
        prepare_config(cfg, name)  # unknown prepare options fail before anything runs
    for c in cells:
        train_config(cfg, c)  # bad model kwargs etc. fail before anything runs
    log.info("sweep: %d datasets, %d training runs, %d evaluate runs -> %s", len(levels), len(cells), len(levels),
             cfg.out)
    for c in cells:
        log.info("  %-14s %-28s %d epochs", c.data, c.run_name, epochs_of(cfg, c.data))
    if cfg.dry_run:
        return {"cells": [dataclasses.asdict(c) for c in cells], "levels": levels}
    command = command_line("jobs.quality_sweep", cfg)
    storage.check_access(cfg.out, write=True)
    t0 = time.perf_counter()
    init_ray(training=True)
    save_resolved_config(cfg, cfg.out)
    for name in levels:
        prepare_dataset(cfg, name)
    trained: dict[Cell, dict] = {}
    for i, c in enumerate(cells):
        log.info("sweep: run %d/%d", i + 1, len(cells))
        trained[c] = train_cell(cfg, c)
    reports = {name: evaluate_dataset(cfg, name, lv, [trained[c]["model_dir"] for c in cells if c.data == name])
               for name, lv in levels.items()}
    table = collect(cfg, cells, levels, reports, trained)
    targets = check_targets(cfg, table)
    charts = save_charts(cfg, table)
    wall = time.perf_counter() - t0
    result = {"command": command, "config": config_dict(cfg), "table": table, "targets": targets, "charts": charts,
              "runs": [{**dataclasses.asdict(c), "run": c.run_name, **trained[c]} for c in cells],
              "wall_seconds": wall}
    storage.write_json(storage.join(cfg.out, "quality.json"), result)
    md = render(cfg, table, targets, reports, trained, command, wall)
    storage.write_bytes(storage.join(cfg.out, "quality.md"), md.encode())
    for t in targets:
        log.info("target %s @ %s: %s%s", t["target"], t["where"], t["status"],
                 "" if t["margin"] is None else f" ({t['margin']:+.2f} dB)")
    log.info("sweep: wrote %s", storage.join(cfg.out, "quality.md"))
    return result
