"""The sweep's config and its plan: the cells (dataset, model, noise) to train, every name of the
grid checked before anything runs, and the prepare and train configs of each."""

from __future__ import annotations

from dataclasses import dataclass, field

from dae import baselines, storage
from dae.config import build_config
from dae.jobutil import slug
from dae.models import list_models
from dae.noise import NoiseSpec

from .. import recipes

LEVELS = ("gaussian:0.1", "gaussian:0.3", "gaussian:0.5", "gaussian:0.7",
          "salt_pepper:0.05", "salt_pepper:0.1", "salt_pepper:0.2", "salt_pepper:0.3")
SEED_MODELS = ("keras_blog", "conv28k", "bn_leaky", "svhn_ae")
MODEL_KEYS = ("model", "model_kwargs", "loss")


def _load_defaults() -> tuple[dict, dict]:
    """(models, datasets) of recipes/quality-sweep.yaml, each entry checked by its stage's config."""
    from dae.prepare import PrepareConfig
    from dae.train import TrainConfig

    doc = recipes.load("quality-sweep")
    models = {tag: recipes.check(TrainConfig, m, f"quality-sweep models[{tag!r}]") for tag, m in doc["models"].items()}
    datasets = {name: recipes.check(PrepareConfig, d, f"quality-sweep datasets[{name!r}]", extra=("epochs",))
                for name, d in doc["datasets"].items()}
    return models, datasets


# Trained models: tag -> {model, model_kwargs, loss}; datasets: name -> PrepareConfig fields (+ epochs:
# this dataset's training epochs, every model). Both from recipes/quality-sweep.yaml.
MODELS, DATASETS = _load_defaults()


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
    reference: str = field(default="conv28k", metadata={
        "help": "tag of the seed model the +1.5 dB target compares with"})
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


def level_of(spec: str) -> tuple[str, float]:
    """('gaussian', 0.5) of gaussian:0.5."""
    s = NoiseSpec.parse(spec)
    return s.kind, s.low


def in_range(level: str, blind: str) -> bool:
    """gaussian:0.3 is in gaussian:0.1-0.7."""
    a, b = NoiseSpec.parse(level), NoiseSpec.parse(blind)
    return a.kind == b.kind and not a.blind and b.low - 1e-9 <= a.low <= b.high + 1e-9


# ---------------------------------------------------------------- the plan


def _grid_cells(cfg: SweepConfig) -> tuple[list[Cell], dict[str, list[str]]]:
    """The cells and levels of the grid's blocks, each name checked."""
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
        for text in block.get("noise", []):
            noise = NoiseSpec.parse(text)
            spec = str(noise)  # the canonical string: a cell's run name and the tables' key
            if noise.blind:
                raise ValueError(f"grid block {i}: {spec} is a range; the blind model is set with --blind")
            if spec not in levels.setdefault(data, []):
                levels[data].append(spec)
            for tag in block.get("models", []):
                c = Cell(data, tag, spec)
                if c not in cells:
                    cells.append(c)
    return cells, levels


def _check_models(cfg: SweepConfig) -> None:
    from dae.train import LOSSES

    for tag in (cfg.best, cfg.reference):
        if tag not in cfg.models:
            raise ValueError(f"model tag {tag!r} (best/reference) is not in models: {', '.join(cfg.models)}")
    for tag, m in cfg.models.items():
        if not isinstance(m, dict) or m.get("model") not in list_models():
            raise ValueError(f"models[{tag!r}] must be {{model, model_kwargs, loss}} with model one of "
                             f"{', '.join(list_models())}; got {m!r}")
        extra = set(m) - set(MODEL_KEYS)
        if extra:
            raise ValueError(f"models[{tag!r}]: unknown key(s) {sorted(extra)}; valid: {', '.join(MODEL_KEYS)}")
        if m.get("loss", "mse") not in LOSSES:
            raise ValueError(f"models[{tag!r}]: loss {m['loss']!r} is not one of {', '.join(LOSSES)}")
        if "/" in tag or tag.startswith("."):
            raise ValueError(f"model tag must be a plain name, got {tag!r}")


def plan(cfg: SweepConfig) -> tuple[list[Cell], dict[str, list[str]]]:
    """(cells to train, {dataset: noise levels to score}), checking every name in the grid."""
    if not cfg.grid:
        raise ValueError("the grid is empty: give blocks {data, models, noise}")
    cells, levels = _grid_cells(cfg)
    for name in cfg.datasets_only:
        if name not in cfg.datasets:
            raise ValueError(f"--datasets-only: unknown dataset {name!r}; datasets: {', '.join(cfg.datasets)}")
    _check_models(cfg)
    if cfg.blind:
        blind = NoiseSpec.parse(cfg.blind)
        if not blind.blind:
            raise ValueError(f"--blind {cfg.blind!r} must be a range LO-HI, e.g. gaussian:0.1-0.7")
        for data in levels:
            cells.append(Cell(data, cfg.best, str(blind)))
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


# ---------------------------------------------------------------- the stages' configs


def train_config(cfg: SweepConfig, cell: Cell):
    from dae.train import TrainConfig

    m = cfg.models[cell.tag]
    return TrainConfig(
        data=storage.join(cfg.out, "data", cell.data), model=m["model"], model_kwargs=dict(m.get("model_kwargs", {})),
        noise=cell.noise, loss=loss_of(cfg, cell.tag), optimizer="adam", schedule="onecycle", lr=cfg.lr,
        epochs=epochs_of(cfg, cell.data), batch_size=cfg.batch_size, workers=cfg.workers,
        gpus_per_worker=cfg.gpus_per_worker, seed=cfg.seed, val_limit=cfg.val_limit,
        storage=storage.join(cfg.out, "runs", cell.data), run_name=cell.run_name)


def prepare_config(cfg: SweepConfig, name: str):
    """The prepare stage's config for dataset NAME -> OUT/data/NAME (its options checked and typed
    like a preset's: an unknown key or choice fails listing the valid ones)."""
    from dae.prepare import PrepareConfig

    opts = {k: v for k, v in cfg.datasets[name].items() if k != "epochs"}
    return build_config(PrepareConfig, {**opts, "out": storage.join(cfg.out, "data", name), "overwrite": True})
