"""The train stage's settings: :class:`TrainConfig` (every field is a ``jobs.train`` flag: defaults <-
``--config`` preset <- flags), the checks that need no cluster (:func:`check_config`), the resume rules
(:data:`RESUME_SAME`, :data:`RESUME_FREE`, :func:`check_resume`), the run's objective
(:func:`objective_of`) and :class:`LoopConfig`, what the driver hands every worker.

    from dae.train import TrainConfig, check_config
    cfg = check_config(TrainConfig(data="shards/fashion", model="conv28k", noise="gaussian:0.5"))

Rules it keeps:
  * every field is in RESUME_SAME or RESUME_FREE (a test holds it): a rerun with a run's name and storage
    resumes that run, so what decides its weights may not change;
  * a setting missing from a stored run is one added since that run was made: it had its default;
  * the objective's own checks and options belong to the objective (dae.objectives); this module only
    hands it the config's values.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import checkpoint as ckpt_lib, objectives, storage
from ..models import create_model, list_models
from ..noise import NoiseSpec
from ..objectives import LOSSES, Objective, get_objective, list_objectives
from ..precision import HELP as PRECISION_HELP, PRECISIONS, check_compiler
from ..same_run import describe, differences
from .tracking import TRACKERS, check_tracker

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
MODES = ("auto", "cache", "stream")


@dataclass(frozen=True)
class TrainConfig:
    data: str = field(default="", metadata={"help": "shard root (local dir or URI) with ROOT/TRAIN_SPLIT/*.parquet"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    val_split: str = field(default="test", metadata={"help": "held-out split validated every epoch"})
    model: str = field(default="conv28k", metadata={"help": "model name", "choices": list_models()})
    model_kwargs: dict = field(default_factory=dict, metadata={"help": "model keyword arguments, e.g. '{width: 32}'"})
    noise: str = field(default="gaussian:0.5", metadata={
        "help": "noise spec, e.g. gaussian:0.5, salt_pepper:0.2, gaussian:0.05-0.6, awgn:25; none: the images are "
                "noisy already (noisy-only data, prepared with --noisy)"})
    loss: str = field(default="mse", metadata={"help": "training loss", "choices": LOSSES})
    objective: str = field(default="supervised", metadata={
        "help": "supervised (clean targets); without clean targets: n2n (Noise2Noise: a second, independent "
                "noise draw as the target), nb2nb (Neighbor2Neighbor), n2v (Noise2Void); see dae.objectives",
        "choices": tuple(list_objectives())})
    objective_kwargs: dict = field(default_factory=dict, metadata={
        "help": "the objective's options, e.g. '{gamma: 1.0}' (nb2nb), '{fraction: 0.02, channels: joint}' (n2v); "
                "they override --nb2nb-gamma, --n2v-fraction, --n2v-channels; unknown keys fail listing the valid "
                "ones"})
    nb2nb_gamma: float = field(default=2.0, metadata={
        "help": "nb2nb: the regularizer's weight, reached at the last epoch (a linear ramp from 0, as in the paper's "
                "code)"})
    n2v_fraction: float = field(default=objectives.N2V_FRACTION, metadata={
        "help": "n2v: fraction of pixels masked (blind spots) per channel and sample. The N2V paper masks 0.2 %; "
                "more blind spots give each step more of a loss to learn from (CBSD432 crops, 4 epochs: 0.002 "
                "25.55 dB, 0.02 26.76, 0.06 26.87)"})
    n2v_channels: str = field(default="independent", metadata={
        "help": "n2v: independent blind spots per channel (the reference code's; assumes noise independent "
                "across channels), or joint: all channels at the same pixels (noise correlated across channels)",
        "choices": objectives.N2V_CHANNELS})
    pair_data: str = field(default="", metadata={
        "help": "n2n with real pairs: a second shard root with a second noisy image of every id of DATA (same "
                "splits, ids and sizes; both prepared with --noisy): the targets, with --noise none"})
    optimizer: str = field(default="adam", metadata={"help": "optimizer", "choices": OPTIMIZERS})
    schedule: str = field(default="onecycle", metadata={"help": "learning-rate schedule (per step)",
                                                        "choices": SCHEDULES})
    lr: float = field(default=2e-3, metadata={"help": "learning rate (the peak for onecycle)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    epochs: int = field(default=10, metadata={"help": "epochs to train (in total, counting resumed ones)"})
    batch_size: int = field(default=128, metadata={"help": "GLOBAL batch size; each worker takes batch_size / workers"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers (data-parallel ranks)"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs per worker (0: train on CPU)"})
    cpus_per_worker: float = field(default=0.0, metadata={"help": "CPUs per worker (0: sized from the cluster)"})
    torch_threads: int = field(default=0, metadata={
        "help": "torch threads per worker (0: the worker's CPUs, at least 1)"})
    precision: str = field(default="auto", metadata={"help": PRECISION_HELP, "choices": PRECISIONS})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the trained network (inductor; needs a C++ compiler on the workers). Measure before "
                "using it (dae bench-train --runs compile): on 2 AMX cores in bf16 it made the 20-wide cunet's step "
                "1.1-1.45x faster and the 24-wide 3-level one's 8% slower"})
    init: str = field(default="", metadata={
        "help": "fine-tune: start from these weights (a model dir, e.g. RUN/final_model, or pretrained:NAME) "
                "instead of a random init; the same --model and --model-kwargs. A resumed run keeps its own"})
    seed: int = field(default=0, metadata={"help": "seed of model init, shuffling and training noise"})
    val_seed: int = field(default=1234, metadata={"help": "seed of the fixed validation noise"})
    val_limit: int = field(default=0, metadata={"help": "validate on the first N held-out images by id (0: all)"})
    data_mode: str = field(default="auto", metadata={
        "help": "cache: decoded split held in memory; stream: read every epoch; auto: cache when it fits cache_max_mb",
        "choices": MODES})
    cache_max_mb: float = field(default=2048.0, metadata={
        "help": "largest decoded train split (MB, float32) that auto mode caches"})
    run_name: str = field(default="", metadata={
        "help": "run name; reusing one with the same storage resumes that run (default: generated)"})
    storage: str = field(default="runs", metadata={"help": "Ray Train storage path (local dir or URI)"})
    out: str = field(default="", metadata={"help": "output dir (default: the run dir STORAGE/RUN_NAME)"})
    num_to_keep: int = field(default=2, metadata={"help": "checkpoints kept (best by val_psnr, plus the latest)"})
    max_failures: int = field(default=3, metadata={"help": "worker-group failures recovered from the last checkpoint"})
    placement_strategy: str = field(default="PACK", metadata={
        "help": "how workers are placed on nodes (SPREAD: one per node where possible)",
        "choices": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")})
    samples: int = field(default=8, metadata={"help": "validation images shown in samples.png"})
    crop: int = field(default=0, metadata={
        "help": "train on random CROP x CROP crops of images of any sizes (positions from seed, id and epoch); "
                "0: whole images, all of one size"})
    crops_per_image: int = field(default=1, metadata={"help": "with --crop: crops of each image per epoch"})
    augment: bool = field(default=True, metadata={
        "help": "with --crop: a random flip and 90-degree rotation of each crop, drawn with its position"})
    log_every_steps: int = field(default=50, metadata={
        "help": "TensorBoard (OUT/tensorboard, written by every run): rank 0's batch loss and lr every N optimizer "
                "steps, besides every epoch's figures and samples (0: per epoch only)"})
    tracker: str = field(default="none", metadata={
        "help": "mlflow: also log the settings, every epoch's figures, curves.png, samples.png and the best model "
                "to the MLflow server at MLFLOW_TRACKING_URI (a rerun continues its MLflow run; needs "
                "pip install 'dae[mlflow]')", "choices": TRACKERS})
    mlflow_experiment: str = field(default="dae", metadata={"help": "with --tracker mlflow: the MLflow experiment"})

    @functools.cached_property
    def noise_spec(self) -> NoiseSpec:
        """--noise, parsed: once per config (the stages and workers use this, never the string); pickled
        to the workers with the config."""
        return NoiseSpec.parse(self.noise)


# A rerun with a run's name and storage resumes that run from its checkpoint: these settings decide
# what its weights (and its best_model pick and metric history) are, so a rerun must keep every one,
# or the run's config.resolved.json would claim settings its weights were not trained with. The data
# and its splits, the noise, the objective and its options, the loss, the network and its start
# (init), the optimizer, schedule, lr, weight decay and global batch, the seeds, the validation
# subset (best_model is picked on it) and the crops. Paths are compared as absolute paths (data moved
# elsewhere needs a new run name).
RESUME_SAME = ("data", "pair_data", "train_split", "val_split", "noise", "objective", "objective_kwargs",
               "nb2nb_gamma", "n2v_fraction", "n2v_channels", "loss", "model", "model_kwargs", "init", "optimizer",
               "schedule", "lr", "weight_decay", "batch_size", "seed", "val_seed", "val_limit", "crop",
               "crops_per_image", "augment")
# ... and these may change on a rerun: how long (epochs may grow: the schedule is stretched and
# continued, see dae.train.checkpoint.restore), where and how fast it runs (workers: the rows per rank
# are the same with 1 and N; CPUs, GPUs, threads, precision, compile, data mode, cache size), bookkeeping and outputs
# (tracking too: a rerun that turns MLflow on gets an MLflow run with the epochs done so far).
RESUME_FREE = ("epochs", "workers", "gpus_per_worker", "cpus_per_worker", "torch_threads", "precision", "compile",
               "data_mode",
               "cache_max_mb", "run_name", "storage", "out", "num_to_keep", "max_failures", "placement_strategy",
               "samples", "log_every_steps", "tracker", "mlflow_experiment")


@dataclass(frozen=True)
class LoopConfig:
    """What every worker gets from the driver: the run's config plus what the driver found out
    about the data and the cluster. Pickled to the Ray Train workers."""

    cfg: TrainConfig
    mode: str  # "cache" or "stream" (the driver resolves "auto")
    torch_threads: int
    channels: int
    size: tuple[int, int]  # (height, width) of every image (of the largest with --crop)
    train_rows: int  # rows of the whole train split: stream mode sizes its epochs from it
    out: str  # where rank 0 writes metrics.jsonl
    clean_val: bool = True  # False: the held-out split is noisy-only (validate_noisy)
    val_files: tuple = ()  # the held-out split's shards: rank 0 redraws samples.png from the first every epoch
    # --tracker mlflow: {"run_id", "uri", "env"} of the MLflow run the driver opened (env: the MLFLOW_*
    # settings, credentials included, for workers that do not share the driver's environment).
    mlflow: dict | None = None
    # Tests only: called as on_epoch_start(epoch, rank, world) on every worker before each epoch (epoch
    # counted from 1, as metrics.jsonl counts it), e.g. to kill a worker. Pickled to the workers with
    # the rest: a module-level function, a picklable object or a functools.partial of one.
    on_epoch_start: Callable[[int, int, int], None] | None = None


# ---------------------------------------------------------------- checks (driver, no cluster)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Checks that need no cluster; returns cfg with a run name filled in."""
    if not cfg.data:
        raise ValueError("--data is required: a shard root with ROOT/train/*.parquet (see python -m jobs.prepare)")
    spec = cfg.noise_spec  # a bad --noise fails here, listing the valid kinds
    for name, val, lo in (("epochs", cfg.epochs, 1), ("workers", cfg.workers, 1), ("batch_size", cfg.batch_size, 1),
                          ("num_to_keep", cfg.num_to_keep, 1)):
        if val < lo:
            raise ValueError(f"{name} must be >= {lo}, got {val}")
    if cfg.batch_size % cfg.workers:
        raise ValueError(f"batch_size {cfg.batch_size} is the GLOBAL batch and must be divisible by workers "
                         f"{cfg.workers} (each worker takes batch_size / workers)")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    check_objective(cfg)
    if cfg.crop < 0 or cfg.crops_per_image < 1:
        raise ValueError(f"--crop must be >= 0 and --crops-per-image >= 1, got {cfg.crop} and {cfg.crops_per_image}")
    if cfg.gpus_per_worker < 0 or cfg.cpus_per_worker < 0:
        raise ValueError("gpus_per_worker and cpus_per_worker must be >= 0")
    if cfg.log_every_steps < 0:
        raise ValueError(f"--log-every-steps must be >= 0 (0: per epoch only), got {cfg.log_every_steps}")
    if cfg.compile:
        check_compiler()
    check_tracker(cfg.tracker)  # unknown names fail listing the valid ones; mlflow not installed: how to install
    model = create_model(cfg.model, **cfg.model_kwargs)  # unknown kwargs fail here, listing the valid ones
    if model.conditioned and spec.sigma(spec.low) is None:
        raise ValueError(f"{cfg.model} is conditioned on a Gaussian noise sigma; {spec.kind} noise has none "
                         f"(use awgn:LO-HI or gaussian:LO-HI)")
    if cfg.init:
        check_init(cfg)
    if not cfg.run_name:
        cfg = dataclasses.replace(cfg, run_name=f"train-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if "/" in cfg.run_name or cfg.run_name.startswith("."):
        raise ValueError(f"run_name must be a plain name, got {cfg.run_name!r}")
    # Workers write outputs and read data in their own working directory: pin local paths now.
    return dataclasses.replace(cfg, data=storage.absolute(cfg.data), storage=storage.absolute(cfg.storage),
                               out=storage.absolute(cfg.out),
                               pair_data=storage.absolute(cfg.pair_data) if cfg.pair_data else "",
                               init=storage.absolute(cfg.init) if cfg.init and not cfg.init.startswith(
                                   ckpt_lib.PRETRAINED) else cfg.init)


def check_objective(cfg: TrainConfig) -> Objective:
    """The run's objective, checked by itself: a known name, its loss, --pair-data, its options."""
    cls = get_objective(cfg.objective)  # unknown names fail listing the registered ones
    cls.check_training(cfg.loss, cfg.noise_spec, bool(cfg.pair_data))
    # The objectives' older flags (--nb2nb-gamma, --n2v-fraction, --n2v-channels) are TrainConfig fields:
    # each is checked by the objective that reads it, whichever objective runs.
    for name in list_objectives():
        for opt in get_objective(name).options.values():
            if opt.flag:
                opt.check(getattr(cfg, opt.flag), "--" + opt.flag.replace("_", "-"))
    return objective_of(cfg)  # unknown or invalid --objective-kwargs fail here, listing the valid keys


def objective_of(cfg: TrainConfig) -> Objective:
    """The objective ``cfg`` trains with: its options from the older flags, overridden by objective_kwargs."""
    cls = get_objective(cfg.objective)
    flags = {k: getattr(cfg, opt.flag) for k, opt in cls.options.items() if opt.flag}
    return cls(loss=cfg.loss, noise=cfg.noise_spec, epochs=cfg.epochs, **{**flags, **cfg.objective_kwargs})


def make_objective(cfg: TrainConfig, epoch: int = 0):
    """The step's loss of epoch ``epoch``, ``fn(run, clean, noisy, sigma, extra) -> loss``: ``run(x,
    sigma)`` is the model's forward pass (float32 out), ``extra`` what :func:`objective_inputs` made."""
    return objective_of(cfg).loss_at(epoch)


def objective_inputs(cfg: TrainConfig, clean, ids, epoch: int, seed: int | None = None, target=None) -> dict:
    """The objective's inputs besides the noisy batch (``Objective.draw``) from (seed, id, epoch) per
    sample; ``seed``: ``cfg.seed`` unless given; ``target``: --pair-data's second noisy images."""
    return objective_of(cfg).draw(clean, ids, cfg.seed if seed is None else seed, epoch, target=target)


def check_init(cfg: TrainConfig) -> dict:
    """--init's model config, checked against --model and --model-kwargs (weights must fit the network)."""
    mcfg = ckpt_lib.load_config(cfg.init)  # unknown pretrained names fail here, listing the shipped ones
    if mcfg["model"] != cfg.model or mcfg.get("model_kwargs", {}) != dict(cfg.model_kwargs):
        raise ValueError(f"--init {cfg.init} holds a {mcfg['model']} {mcfg.get('model_kwargs', {})} model, but "
                         f"the config asks for {cfg.model} {dict(cfg.model_kwargs)}: pass the same --model and "
                         f"--model-kwargs")
    return mcfg


# ---------------------------------------------------------------- resume rules


def _canonical(name: str, value):
    """A setting as compared on resume: noise specs in their canonical form (``awgn:25.0`` is ``awgn:25``)."""
    if name == "noise" and isinstance(value, str):
        try:
            return str(NoiseSpec.parse(value))
        except ValueError:
            pass
    return value


def resume_conflicts(stored: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """{field: (stored, new)} for every RESUME_SAME setting of ``cfg`` that differs from ``stored`` (a
    run's config.resolved.json or a checkpoint's train_config), by the one rule of dae.same_run: a
    setting missing from ``stored`` is one added since that run was made, so the run had its default."""
    return differences(stored, cfg, RESUME_SAME, canonical=_canonical)


def check_resume(stored: dict, cfg: TrainConfig, where: str = "") -> None:
    """Raises a one-line ValueError listing every RESUME_SAME setting of ``cfg`` that is not the stored
    run's (``field: stored -> new``); epochs, workers, resources and outputs may change."""
    diff = resume_conflicts(stored, cfg)
    if diff:
        changes = describe(diff, ", ")
        raise ValueError(f"run {cfg.run_name!r}{f' (as recorded in {where})' if where else ''} was trained with "
                         f"other settings ({changes}); rerunning a run name resumes that run, so its settings may "
                         f"not change: use a new --run-name (or that run's settings)")
