"""Data-parallel training of denoising autoencoders on Ray Train (TorchTrainer, Train V2).

    python -m jobs.train --data shards/fashion --model conv28k --noise gaussian:0.5 --workers 2
    # or from Python:
    from dae.train import TrainConfig, run
    result = run(TrainConfig(data="shards/fashion", model="conv28k", noise="gaussian:0.5", workers=2))

The driver (:func:`run`):
  1. checks the config and the shards (sizes, channels) and sizes the workers from the cluster,
     failing fast when they cannot fit (Ray would otherwise wait forever for the resources);
  2. reads the shards with Ray Data and decodes the PNGs; in ``cache`` mode (decoded train split
     under ``cache_max_mb``) it materializes them in the object store BEFORE the trainer starts, so
     no Ray Data task competes with the worker actors for CPUs (on a 2-CPU machine two 1-CPU workers
     plus read tasks deadlock) and no epoch pays the dataset start-up again;
  3. runs :func:`train_loop` on ``workers`` Ray Train workers with a :class:`LoopConfig`, then copies
     the best checkpoint's model to ``OUT/best_model`` and writes ``curves.png`` and ``samples.png``.

Each worker (:func:`train_loop`) runs named pieces that work without Ray (tests call them directly):
  * :func:`load_validation`: a fixed noisy copy of the held-out split (noise from (val_seed, id, 0),
    the same every epoch), split across ranks; metrics are all-reduced over the whole split;
  * :func:`load_train` and :func:`batches`: ``cache`` mode reads the whole materialized split once
    (not split by Ray), sorts it by image id and keeps every ``world``-th image from its rank on:
    the same rows per rank on every run, so training is reproducible with 1 and with N workers;
    every epoch is a seeded local permutation of an in-memory array. ``stream`` mode (too big to
    hold): ``streaming_split`` shards and ``iter_torch_batches`` with a local shuffle buffer.
    Noise is added per batch on the worker, image i of epoch e from (seed, id_i, e) only;
  * :func:`train_one_epoch`, :func:`validate` (mean per-image PSNR/SSIM of output and noisy input);
  * :func:`save_checkpoint` (rank 0: ``model/`` from :func:`dae.checkpoint.save_model` plus
    ``state.pt`` with optimizer, scheduler, epoch and metric history), registered with
    ``ray.train.report``; a replaced worker group, or a rerun with the same run name and storage,
    continues from the latest one (:func:`restore`). A rerun must keep the run's RESUME_SAME settings
    (checked on the driver before anything starts, :func:`check_resume`); epochs may grow.

Outputs (``out``, default the run directory ``STORAGE/RUN_NAME`` where Ray Train keeps its
checkpoints): ``best_model/`` (best validation PSNR; the last epoch on noisy-only data), ``final_model/``
(last epoch), ``metrics.jsonl``, ``curves.png``, ``samples.png``, ``config.resolved.json``, ``summary.json``.

Noisy-only data (``jobs.prepare --noisy``: no clean images) trains with ``--objective nb2nb`` or ``n2v``
and ``--noise none``; validation then reports the held-out self-supervised loss and the residual's std
(:func:`validate_noisy`) instead of PSNR/SSIM.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt_lib
from . import metrics, shards, storage
from .config import config_dict
from .models import create_model, list_models
from . import objectives
from .noise import NoiseSpec, add_noise_batch, image_rng, noise_sigmas

log = logging.getLogger("dae")

LOSSES = ("mse", "l1", "bce")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
MODES = ("auto", "cache", "stream")
STREAM_TASK_CPUS = 0.25  # CPUs of a stream-mode read/decode task (see _datasets)
# Test-only fault injection (read by the driver, passed to the workers in LoopConfig).
FAIL_AT_EPOCH_ENV = "DAE_TEST_FAIL_AT_EPOCH"
FAIL_MARKER_ENV = "DAE_TEST_FAIL_MARKER"


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
        "choices": objectives.OBJECTIVES})
    nb2nb_gamma: float = field(default=2.0, metadata={"help": "nb2nb: the regularizer's weight, reached at the "
                                                              "last epoch (a linear ramp from 0, as in the paper's code)"})
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
    schedule: str = field(default="onecycle", metadata={"help": "learning-rate schedule (per step)", "choices": SCHEDULES})
    lr: float = field(default=2e-3, metadata={"help": "learning rate (the peak for onecycle)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    epochs: int = field(default=10, metadata={"help": "epochs to train (in total, counting resumed ones)"})
    batch_size: int = field(default=128, metadata={"help": "GLOBAL batch size; each worker takes batch_size / workers"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers (data-parallel ranks)"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs per worker (0: train on CPU)"})
    cpus_per_worker: float = field(default=0.0, metadata={"help": "CPUs per worker (0: sized from the cluster)"})
    torch_threads: int = field(default=0, metadata={"help": "torch threads per worker (0: the worker's CPUs, at least 1)"})
    init: str = field(default="", metadata={
        "help": "fine-tune: start from these weights (a model dir, e.g. RUN/final_model, or pretrained:NAME) "
                "instead of a random init; the same --model and --model-kwargs. A resumed run keeps its own"})
    seed: int = field(default=0, metadata={"help": "seed of model init, shuffling and training noise"})
    val_seed: int = field(default=1234, metadata={"help": "seed of the fixed validation noise"})
    val_limit: int = field(default=0, metadata={"help": "validate on the first N held-out images by id (0: all)"})
    data_mode: str = field(default="auto", metadata={"help": "cache: decoded split held in memory; stream: read every epoch; auto: cache when it fits cache_max_mb", "choices": MODES})
    cache_max_mb: float = field(default=2048.0, metadata={"help": "largest decoded train split (MB, float32) that auto mode caches"})
    run_name: str = field(default="", metadata={"help": "run name; reusing one with the same storage resumes that run (default: generated)"})
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


# A rerun with a run's name and storage resumes that run from its checkpoint: these settings decide
# what its weights (and its best_model pick and metric history) are, so a rerun must keep every one,
# or the run's config.resolved.json would claim settings its weights were not trained with. The data
# and its splits, the noise, the objective and its options, the loss, the network and its start
# (init), the optimizer, schedule, lr, weight decay and global batch, the seeds, the validation
# subset (best_model is picked on it) and the crops. Paths are compared as absolute paths (data moved
# elsewhere needs a new run name).
RESUME_SAME = ("data", "pair_data", "train_split", "val_split", "noise", "objective", "nb2nb_gamma", "n2v_fraction",
               "n2v_channels", "loss", "model", "model_kwargs", "init", "optimizer", "schedule", "lr", "weight_decay",
               "batch_size", "seed", "val_seed", "val_limit", "crop", "crops_per_image", "augment")
# ... and these may change on a rerun: how long (epochs may grow: the schedule is stretched and
# continued, see restore), where and how fast it runs (workers: the rows per rank are the same with
# 1 and N; CPUs, GPUs, threads, data mode, cache size), bookkeeping and outputs.
RESUME_FREE = ("epochs", "workers", "gpus_per_worker", "cpus_per_worker", "torch_threads", "data_mode", "cache_max_mb",
               "run_name", "storage", "out", "num_to_keep", "max_failures", "placement_strategy", "samples")


# ---------------------------------------------------------------- config and planning (driver)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Checks that need no cluster; returns cfg with a run name filled in."""
    if not cfg.data:
        raise ValueError("--data is required: a shard root with ROOT/train/*.parquet (see python -m jobs.prepare)")
    NoiseSpec.parse(cfg.noise)
    for name, val, lo in (("epochs", cfg.epochs, 1), ("workers", cfg.workers, 1), ("batch_size", cfg.batch_size, 1),
                          ("num_to_keep", cfg.num_to_keep, 1)):
        if val < lo:
            raise ValueError(f"{name} must be >= {lo}, got {val}")
    if cfg.batch_size % cfg.workers:
        raise ValueError(f"batch_size {cfg.batch_size} is the GLOBAL batch and must be divisible by workers "
                         f"{cfg.workers} (each worker takes batch_size / workers)")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if cfg.objective not in objectives.OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; valid: {', '.join(objectives.OBJECTIVES)}")
    if cfg.objective in ("nb2nb", "n2v") and cfg.loss != "mse":
        raise ValueError(f"--objective {cfg.objective} is defined with the MSE loss, got --loss {cfg.loss}")
    if cfg.pair_data and (cfg.objective != "n2n" or not NoiseSpec.parse(cfg.noise).none):
        raise ValueError(f"--pair-data gives Noise2Noise its second noisy images: use it with --objective n2n and "
                         f"--noise none, got --objective {cfg.objective} --noise {cfg.noise}")
    if not 0 < cfg.n2v_fraction < 1 or cfg.nb2nb_gamma < 0:
        raise ValueError(f"--n2v-fraction must be in (0, 1) and --nb2nb-gamma >= 0, got {cfg.n2v_fraction:g} "
                         f"and {cfg.nb2nb_gamma:g}")
    if cfg.n2v_channels not in objectives.N2V_CHANNELS:
        raise ValueError(f"unknown --n2v-channels {cfg.n2v_channels!r}; valid: {', '.join(objectives.N2V_CHANNELS)}")
    if cfg.crop < 0 or cfg.crops_per_image < 1:
        raise ValueError(f"--crop must be >= 0 and --crops-per-image >= 1, got {cfg.crop} and {cfg.crops_per_image}")
    if cfg.gpus_per_worker < 0 or cfg.cpus_per_worker < 0:
        raise ValueError("gpus_per_worker and cpus_per_worker must be >= 0")
    model = create_model(cfg.model, **cfg.model_kwargs)  # unknown kwargs fail here, listing the valid ones
    spec = NoiseSpec.parse(cfg.noise)
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


def _same_form(name: str, value):
    """A setting as compared on resume: noise specs in their canonical form, tuples as lists, secrets
    redacted as config.resolved.json has them."""
    if name == "noise" and isinstance(value, str):
        try:
            value = str(NoiseSpec.parse(value))
        except ValueError:
            pass
    return storage.redact(json.loads(json.dumps(value, default=str)))


def resume_conflicts(stored: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """{field: (stored, new)} for every RESUME_SAME setting of ``cfg`` that differs from ``stored`` (a
    run's config.resolved.json or a checkpoint's train_config). A setting missing from ``stored`` is
    one added since that run was made: the run had its default."""
    defaults = {f.name: _default_of(f) for f in dataclasses.fields(TrainConfig)}
    new = config_dict(cfg)
    diff = {}
    for k in RESUME_SAME:
        have = stored.get(k, defaults[k])
        if _same_form(k, have) != _same_form(k, new[k]):
            diff[k] = (have, new[k])
    return diff


def check_resume(stored: dict, cfg: TrainConfig, where: str = "") -> None:
    """Raises a one-line ValueError listing every RESUME_SAME setting of ``cfg`` that is not the stored
    run's (``field: stored -> new``); epochs, workers, resources and outputs may change."""
    diff = resume_conflicts(stored, cfg)
    if diff:
        changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
        raise ValueError(f"run {cfg.run_name!r}{f' (as recorded in {where})' if where else ''} was trained with "
                         f"other settings ({changes}); rerunning a run name resumes that run, so its settings may "
                         f"not change: use a new --run-name (or that run's settings)")


def stored_run_config(run_dir: str) -> tuple[dict, str] | None:
    """(train config, where it was read) of the run already in ``run_dir``, or None: the latest
    checkpoint's train_config (what its weights were trained with), else the run's config.resolved.json."""
    if not storage.is_dir(run_dir):
        return None
    found = []
    for path in storage.list_files(run_dir, suffix=ckpt_lib.CONFIG, recursive=True):
        parts = path.replace("\\", "/").split("/")
        if len(parts) >= 3 and parts[-2] == "model" and parts[-3].startswith("checkpoint_"):
            mcfg = storage.read_json(path)
            if isinstance(mcfg.get("train_config"), dict):
                found.append((int(mcfg.get("epoch") or 0), parts[-3], mcfg["train_config"], path))
    if found:
        *_, train_config, path = max(found, key=lambda t: (t[0], t[1]))
        return train_config, path
    resolved = storage.join(run_dir, "config.resolved.json")
    if storage.exists(resolved):
        return storage.read_json(resolved), resolved
    return None


def _default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def check_init(cfg: TrainConfig) -> dict:
    """--init's model config, checked against --model and --model-kwargs (weights must fit the network)."""
    mcfg = ckpt_lib.load_config(cfg.init)  # unknown pretrained names fail here, listing the shipped ones
    if mcfg["model"] != cfg.model or mcfg.get("model_kwargs", {}) != dict(cfg.model_kwargs):
        raise ValueError(f"--init {cfg.init} holds a {mcfg['model']} {mcfg.get('model_kwargs', {})} model, but "
                         f"the config asks for {cfg.model} {dict(cfg.model_kwargs)}: pass the same --model and "
                         f"--model-kwargs")
    return mcfg


def describe_split(root: str, split: str, one_size: bool = True, min_side: int = 0) -> dict:
    """Rows, image sizes and channels of a split from its small columns (no image decoding).
    ``one_size``: every image must have the same size (whole-image training batches); ``min_side``:
    no image may be smaller than that on either side (random crops of that size)."""
    from .data import shard_files

    files = shard_files(root, split)
    n, pixels, sizes, chans, metadatas = 0, 0, set(), set(), []
    for f in files:
        t = shards.read_shard(f, ["height", "width", "channels"])
        metadatas.append(t.schema.metadata)
        n += t.num_rows
        h, w = t.column("height").to_numpy().astype(np.int64), t.column("width").to_numpy().astype(np.int64)
        pixels += int((h * w).sum())
        sizes.update(map(tuple, np.unique(np.stack([h, w], 1), axis=0).tolist()))
        chans.update(np.unique(t.column("channels").to_numpy()).tolist())
    if n == 0:
        raise ValueError(f"split {split!r} under {root} has no rows")
    if len(chans) != 1:
        raise ValueError(f"split {split!r} mixes {sorted(chans)} channels; training needs one channel count")
    if one_size and len(sizes) != 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:5])
        raise ValueError(f"split {split!r} has images of {len(sizes)} sizes ({shown}, ...); training on whole images "
                         "needs one size: train on random crops (--crop 64) or resize the images when preparing")
    small = sorted((h, w) for h, w in sizes if min(h, w) < min_side)
    if small:
        raise ValueError(f"split {split!r} has images smaller than --crop {min_side} (e.g. {small[0][0]}x{small[0][1]}); "
                         "use a smaller --crop")
    (h, w), c = max(sizes), chans.pop()
    return {"files": files, "rows": n, "height": int(h), "width": int(w), "channels": int(c),
            "sizes": len(sizes), "decoded_mb": pixels * c * 4 / 2**20,
            "noisy_only": shards.noisy_only(metadatas, shards.split_dir(root, split))}


def plan_resources(workers: int, gpus_per_worker: float, cpus_per_worker: float, reserve_cpus: float = 0.0) -> dict:
    """CPUs per worker and torch threads, sized from the live nodes; raises when ``workers`` cannot
    all be placed (Ray Train would otherwise wait for them forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    node_cpus = [float(r.get("CPU", 0)) for r in nodes]
    node_gpus = [float(r.get("GPU", 0)) for r in nodes]
    total_cpus = sum(node_cpus)

    def capacity(cpu: float) -> int:  # workers that fit, node by node (a worker cannot span nodes)
        fits = 0
        for c, g in zip(node_cpus, node_gpus):
            k = math.floor(c / cpu + 1e-9) if cpu > 0 else workers
            if gpus_per_worker > 0:
                k = min(k, math.floor(g / gpus_per_worker + 1e-9))
            fits += k
        return fits

    where = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in zip(node_cpus, node_gpus))
    if gpus_per_worker > 0 and capacity(0) < workers:
        raise RuntimeError(f"cannot place {workers} workers with {gpus_per_worker:g} GPU each: the cluster's nodes "
                           f"have {where}; lower --workers or --gpus-per-worker")
    if cpus_per_worker > 0:
        cpu = cpus_per_worker
    else:
        # The largest share that still places every worker, leaving reserve_cpus for Ray Data tasks.
        cpu = max(total_cpus - reserve_cpus, 0) / workers
        if gpus_per_worker > 0:
            cpu = min(cpu, 8.0)  # a GPU worker needs a few CPUs to feed it, not the whole node
        cpu = math.floor(cpu * 100) / 100
        while cpu >= 0.1 and capacity(cpu) < workers:
            cpu = math.floor(cpu * 0.9 * 100) / 100
    if cpu < 0.1 or capacity(cpu) < workers:
        raise RuntimeError(f"cannot place {workers} workers x {cpu:g} CPU on this cluster (nodes: {where}); "
                           f"lower --workers or --cpus-per-worker")
    free = float(ray.available_resources().get("CPU", 0))
    if free + 1e-9 < workers * cpu:
        log.warning("only %.2f CPUs are free now (%g needed): the workers will wait for other work to finish",
                    free, workers * cpu)
    return {"cpus_per_worker": cpu, "gpus_per_worker": gpus_per_worker, "torch_threads": max(1, int(cpu)),
            "cluster": where}


# ---------------------------------------------------------------- worker side


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
    # Test-only fault injection, from FAIL_AT_EPOCH_ENV / FAIL_MARKER_ENV on the driver (0/"": off).
    fail_at_epoch: int = 0
    fail_marker: str = ""


@dataclass(frozen=True)
class Validation:
    """This rank's slice of the fixed noisy copy of the held-out split, and the noisy input's mean
    scores over the whole split (they do not change between epochs: computed once)."""

    clean: torch.Tensor | list  # (n, C, H, W) float32; images of mixed sizes: a list of (H, W, C) arrays
    noisy: torch.Tensor | list
    sigma: torch.Tensor  # (n,) the noise sigma of each image (0-1 scale; NaN for kinds without one)
    total: int  # images over all ranks: the denominator of every mean
    noisy_psnr: float
    noisy_ssim: float
    ids: np.ndarray | None = None  # this rank's image ids (the held-out objective's blind spots, sub-samplers)


@dataclass(frozen=True)
class TrainData:
    """This rank's training rows: held in memory (cache mode) or streamed every epoch."""

    rows: int  # rows per rank per epoch, the same on every rank: DDP ranks step in lockstep
    images: np.ndarray | None = None  # cache mode: (rows, H, W, C) float32 sorted by id (object array: mixed sizes)
    ids: np.ndarray | None = None
    stream: Any = None  # stream mode: this rank's Ray DataIterator (a streaming_split shard)


@dataclass
class TrainState:
    """How far a run got: saved in every checkpoint's state.pt, restored on resume."""

    epoch: int = 0  # epochs done
    steps_done: int = 0  # optimizer steps taken: where the schedule stands
    attempt: int = 0  # 0: the first worker group; +1 on every resume
    history: list = field(default_factory=list)  # metrics rows, one per epoch done


def _to_nchw(a: np.ndarray) -> torch.Tensor:
    # (B, H, W, C) numpy -> (B, C, H, W) torch, contiguous
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32).transpose(0, 3, 1, 2)))


def _collect(it) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a DataIterator as (images (N, H, W, C) float32, or an object array of (H, W, C)
    arrays when sizes differ; ids), sorted by id so the order does not depend on block arrival order."""
    imgs, ids = [], []
    for b in it.iter_batches(batch_size=4096, batch_format="numpy", prefetch_batches=1):
        imgs.extend(np.asarray(x, dtype=np.float32) for x in b["image"])
        ids.append(np.asarray(b["id"]).astype(str))
    id_arr = np.concatenate(ids)
    order = np.argsort(id_arr, kind="stable")
    return shards.stack_or_ragged([imgs[i] for i in order]), id_arr[order]


def _collect_pairs(it, pair_it) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_collect` of both roots of n2n's real pairs, each image with its pair stacked on the
    channel axis (H, W, 2C): crops and augmentation then cut both the same way. Ids must match."""
    images, ids = _collect(it)
    if pair_it is None:
        return images, ids
    second, ids2 = _collect(pair_it)
    if not np.array_equal(ids, ids2):
        missing = sorted(set(ids.tolist()) ^ set(ids2.tolist()))[:3]
        raise ValueError(f"--pair-data must hold the same ids as --data ({len(ids)} vs {len(ids2)} images; "
                         f"in one only: {missing})")
    for i, (a, b) in enumerate(zip(images, second)):
        if a.shape != b.shape:
            raise ValueError(f"image {ids[i]!r} is {a.shape} in --data but {b.shape} in --pair-data")
    if images.dtype != object:
        return np.concatenate([images, second], axis=-1), ids
    return shards.stack_or_ragged([np.concatenate([a, b], axis=-1) for a, b in zip(images, second)]), ids


def split_pairs(images: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs, n2n's real targets or None): with --pair-data the targets ride in the last half of the
    channels (:func:`_collect_pairs`)."""
    if not cfg.pair_data:
        return images, None
    c = images.shape[-1] // 2
    return images[..., :c], images[..., c:]


def random_crop(image: np.ndarray, image_id: str, k: int, size: int, seed: int, epoch: int,
                augment: bool = True) -> tuple[np.ndarray, str]:
    """Crop ``k`` of an (H, W, C) image: ``size`` x ``size`` float32 at a position (and, with
    ``augment``, a flip and a 90-degree rotation) drawn from (seed, ``ID#K``, epoch) alone, so the
    same whatever the batch, rank or worker count; returns it with its id ``ID#K``, which then
    seeds its noise the same way."""
    cid = f"{image_id}#{k}"
    rng = image_rng(seed, "crop:" + cid, epoch)  # a stream of its own: not the noise's
    h, w = image.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    c = image[y:y + size, x:x + size]
    if augment:
        c = np.rot90(c[:, ::-1] if rng.integers(2) else c, int(rng.integers(4)), axes=(0, 1))
    return np.ascontiguousarray(c, dtype=np.float32), cid


def random_crops(images, ids, size: int, per_image: int, seed: int, epoch: int, augment: bool = True):
    """Crops 0..per_image-1 of each image (:func:`random_crop`): (N * per_image, size, size, C), ids."""
    pairs = [random_crop(img, str(i), k, size, seed, epoch, augment) for img, i in zip(images, ids)
             for k in range(per_image)]
    return np.stack([c for c, _ in pairs]), np.array([cid for _, cid in pairs])


def samples_per_epoch(cfg: TrainConfig, rows: int) -> int:
    """Training samples of ``rows`` images in one epoch: the images, or their crops."""
    return rows * (cfg.crops_per_image if cfg.crop else 1)


def reduce_sums(values: list[float], device: torch.device | str = "cpu", world: int = 1) -> list[float]:
    """Element-wise sums over the ranks (float64; a no-op with one rank)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


# Below this output spread (std across validation images, mean over pixels, in [0, 1] units) the model
# outputs one image whatever the input. Seen: conv28k/keras_blog with MSE on MNIST reach 0 exactly
# (sigmoid saturated at 0 on the mostly black digits); trained ones measured 0.10-0.26 (tests, sweep).
COLLAPSE_SPREAD = 1e-3


def collapsed(row: dict) -> bool:
    """Whether a metrics row (an epoch) comes from a collapsed model (rows without the field: no)."""
    return row.get("output_spread", 1.0) < COLLAPSE_SPREAD


def collapse_message(cfg: dict) -> str:
    return (f"the model outputs the same image for every input (it collapsed; output spread < {COLLAPSE_SPREAD:g}). "
            f"{cfg['model']} with --loss {cfg['loss']}, --lr {cfg['lr']:g}: for a sigmoid-output model on mostly dark "
            f"images try --loss bce (the seeds' loss), or a lower --lr")


def make_loss(name: str):
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    # bce on a [0, 1] output (sigmoid or clamp); clamp keeps log() finite for residual models
    return lambda out, target: F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), target)


def make_objective(cfg: TrainConfig, epoch: int = 0):
    """The step's loss, ``fn(run, clean, noisy, sigma, extra) -> loss``, for ``cfg.objective``: ``run(x,
    sigma)`` is the model's forward pass (float32 out), ``extra`` what :func:`objective_inputs` made."""
    loss_fn = make_loss(cfg.loss)
    if cfg.objective == "supervised":
        return lambda run, clean, noisy, sigma, extra: loss_fn(run(noisy, sigma), clean)
    if cfg.objective == "n2n":
        return lambda run, clean, noisy, sigma, extra: loss_fn(run(noisy, sigma), extra["target"])
    if cfg.objective == "nb2nb":
        gamma = objectives.nb2nb_gamma(epoch, cfg.epochs, cfg.nb2nb_gamma)
        return lambda run, clean, noisy, sigma, extra: objectives.nb2nb_loss(run, noisy, sigma, extra["choices"],
                                                                              gamma)[0]
    return lambda run, clean, noisy, sigma, extra: objectives.n2v_loss(run, noisy, sigma, extra["mask"],
                                                                       extra["source"])


def objective_inputs(cfg: TrainConfig, clean: np.ndarray, ids, epoch: int, seed: int | None = None,
                     target: np.ndarray | None = None) -> dict:
    """What the objective needs besides the noisy batch, from (seed, id, epoch) per sample (``seed``:
    ``cfg.seed`` unless given): n2n's second noisy image (``target``, a real pair, or a second noise
    draw on its own stream, ``n2n:ID``), nb2nb's sub-sampler cells, n2v's blind spots. ``clean``
    (B, H, W, C) is used only to synthesize n2n's second draw (the others take only its shape): no
    objective but supervised sees its pixels."""
    seed = cfg.seed if seed is None else seed
    if cfg.objective == "n2n" and target is not None:
        return {"target": _to_nchw(target)}
    if cfg.objective == "n2n":
        return {"target": _to_nchw(add_noise_batch(clean, [f"n2n:{i}" for i in ids], cfg.noise, seed, epoch))}
    h, w = clean.shape[1:3]
    if cfg.objective == "nb2nb":
        return {"choices": torch.from_numpy(objectives.nb2nb_choices(ids, seed, epoch, h, w))}
    if cfg.objective == "n2v":
        mask, source = objectives.n2v_masks(ids, seed, epoch, h, w, cfg.n2v_fraction, channels=clean.shape[3],
                                            joint=cfg.n2v_channels == "joint")
        return {"mask": torch.from_numpy(mask), "source": torch.from_numpy(source)}
    return {}


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt, total_steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")  # bf16 on GPU only


def load_validation(it, cfg: TrainConfig, rank: int = 0, world: int = 1,
                    device: torch.device | str = "cpu", clean: bool = True, pair_it=None) -> Validation:
    """The fixed noisy copy of the held-out split (noise from (val_seed, id, 0): the same every
    epoch and every run), every ``world``-th image by id from ``rank`` on. ``it``: anything with
    Ray's ``iter_batches`` yielding ``id`` and decoded ``image`` (H, W, C) columns. ``clean=False``:
    the split is noisy-only, its images are the noisy inputs and there is nothing to score against
    (``clean`` None, noisy scores NaN); with ``pair_it`` (--pair-data) each image carries its pair on
    the channels, the target of the held-out n2n loss."""
    images, ids = _collect_pairs(it, pair_it)
    if cfg.val_limit:
        images, ids = images[: cfg.val_limit], ids[: cfg.val_limit]
    total = len(ids)
    images, ids = images[rank::world], ids[rank::world]
    noisy = add_noise_batch(images, ids, NoiseSpec.parse(cfg.noise), cfg.val_seed, 0)
    sigma = torch.from_numpy(noise_sigmas(ids, cfg.noise, cfg.val_seed, 0))
    if not clean:
        noisy = list(noisy) if images.dtype == object else _to_nchw(noisy)
        return Validation(None, noisy, sigma, total, math.nan, math.nan, ids)
    if images.dtype == object:  # mixed sizes: kept as (H, W, C) arrays, scored one image at a time
        clean, noisy = list(images), list(noisy)
        sums = [sum(float(metrics.psnr(n, c)) for n, c in zip(noisy, clean)),
                sum(float(metrics.ssim(n, c)) for n, c in zip(noisy, clean))]
    else:
        clean, noisy = _to_nchw(images), _to_nchw(noisy)
        sums = [float(metrics.psnr(noisy, clean).sum()), float(metrics.ssim(noisy, clean).sum())]
    ps, ss = reduce_sums(sums, device, world)
    return Validation(clean, noisy, sigma, total, ps / total, ss / total, ids)


def load_train(it, lc: LoopConfig, rank: int = 0, world: int = 1, pair_it=None) -> TrainData:
    """This rank's training rows. Cache mode: ``it`` holds the whole split (Ray does not split
    it); every ``world``-th image by id from ``rank`` on, the same rows per rank on every run, so
    training is reproducible with 1 and with N workers. Stream mode: ``it`` is this rank's shard.
    ``pair_it``: the --pair-data split (cache mode), stacked on the channels (:func:`_collect_pairs`)."""
    if lc.mode == "stream":
        return TrainData(rows=lc.train_rows // world, stream=it)
    images, ids = _collect_pairs(it, pair_it)
    rows = len(ids) // world  # equal rows per rank: DDP needs the same number of steps everywhere
    return TrainData(rows, np.ascontiguousarray(images[rank::world][:rows]), ids[rank::world][:rows])


def batches(data: TrainData, cfg: TrainConfig, epoch: int, rank: int, batch_size: int):
    """(clean, noisy, sigma, extra) CPU tensors of this rank for one epoch: (B, C, H, W) float32 images,
    the (B,) noise sigma each sample was drawn with (what a conditioned model is told) and the
    objective's inputs (:func:`objective_inputs`). Sample i's noise comes from (seed, id_i, epoch) only,
    whatever batch or rank it lands in."""
    spec, seed = NoiseSpec.parse(cfg.noise), cfg.seed

    def pair(clean, ids):
        clean, target = split_pairs(np.asarray(clean, dtype=np.float32), cfg)
        return (_to_nchw(clean), _to_nchw(add_noise_batch(clean, ids, spec, seed, epoch)),
                torch.from_numpy(noise_sigmas(ids, spec, seed, epoch)),
                objective_inputs(cfg, clean, ids, epoch, target=target))

    if data.stream is None:
        # cache mode: a seeded permutation of the in-memory samples, no Ray Data work per epoch; with
        # --crop, sample j is crop j % K of image j // K
        k = cfg.crops_per_image if cfg.crop else 1
        perm = np.random.default_rng([seed, epoch, rank]).permutation(samples_per_epoch(cfg, data.rows))
        for b in range(0, len(perm), batch_size):
            idx = np.sort(perm[b:b + batch_size])  # sorted: faster gather, order inside a batch is irrelevant
            if not cfg.crop:
                yield pair(data.images[idx], data.ids[idx])
                continue
            crops = [random_crop(data.images[j // k], data.ids[j // k], j % k, cfg.crop, seed, epoch, cfg.augment)
                     for j in idx]
            yield pair(np.stack([c for c, _ in crops]), [cid for _, cid in crops])
        return

    def collate(batch: dict):
        images, ids = batch["image"], batch["id"].astype(str)
        if cfg.crop:
            images, ids = random_crops(images, ids, cfg.crop, cfg.crops_per_image, seed, epoch, cfg.augment)
        return pair(images, ids)

    # with crops, each row gives crops_per_image samples: batches of rows sized to give batch_size samples
    rows = max(1, batch_size // (cfg.crops_per_image if cfg.crop else 1))
    yield from data.stream.iter_torch_batches(batch_size=rows, collate_fn=collate,
                                              local_shuffle_buffer_size=max(rows * 8, 1024),
                                              local_shuffle_seed=seed * 1000 + epoch, prefetch_batches=2)


def train_one_epoch(model: torch.nn.Module, loader, opt, sched, objective, device: torch.device | str = "cpu",
                    world: int = 1, steps_left: float = math.inf, after_first_step=None) -> dict:
    """One optimizer step per (clean, noisy, sigma, extra) batch of ``loader``, with the loss of
    ``objective`` (:func:`make_objective`). ``sched`` steps at most ``steps_left`` times
    (stream mode may yield a batch more than planned). Returns the epoch's figures over all ranks
    (train_loss, images_per_s, train_s, train_cpu_s, data_s) and this rank's ``steps``."""
    device = torch.device(device)

    def run(x, sigma):  # bf16 autocast around the model only: the loss is computed in float32
        with _autocast(device):
            return model(x, sigma).float()

    t0, c0 = time.perf_counter(), time.process_time()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen = steps = 0
    t_data = 0.0
    td = time.perf_counter()
    for clean, noisy, sigma, extra in loader:
        t_data += time.perf_counter() - td
        clean, noisy = clean.to(device, non_blocking=True), noisy.to(device, non_blocking=True)
        extra = {k: v.to(device, non_blocking=True) for k, v in extra.items()}
        loss = objective(run, clean, noisy, sigma.to(device, non_blocking=True), extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if steps < steps_left:
            sched.step()
        steps += 1
        if steps == 1 and after_first_step is not None:
            after_first_step()
        loss_sum += loss.detach().double() * len(clean)  # no host sync per step
        n_seen += len(clean)
        td = time.perf_counter()
    train_s = time.perf_counter() - t0
    # CPU seconds of this process (all its threads): robust to other load on the machine
    cpu_s = time.process_time() - c0
    loss_total, seen_total, data_s, cpu_total = reduce_sums([float(loss_sum), float(n_seen), t_data, cpu_s],
                                                            device, world)
    return {"train_loss": loss_total / seen_total, "images_per_s": seen_total / train_s, "train_s": train_s,
            "train_cpu_s": cpu_total, "data_s": data_s / world, "steps": steps}


def validate(model: torch.nn.Module, val: Validation, device: torch.device | str = "cpu", world: int = 1,
             cfg: TrainConfig | None = None) -> dict:
    """Mean per-image PSNR/SSIM of the model's output (clamped to [0, 1]) and of the noisy input
    over the whole split (all ranks), and ``output_spread``: the largest per-batch mean over pixels
    of the std across images, ~0 when the model outputs one image for every input (collapsed).
    A noisy-only split (no clean images) gets :func:`validate_noisy` (needs ``cfg``) instead."""
    # Pass the unwrapped model: no DDP collective per forward, so ranks may run different batch counts.
    device = torch.device(device)
    if val.clean is None:
        return validate_noisy(model, val, cfg, device, world)
    if isinstance(val.clean, list):
        ps, ss, spread = _validate_mixed(model, val, device)
        ps, ss, spread = reduce_sums([ps, ss, spread / world], device, world)
        return {"val_psnr": ps / val.total, "val_ssim": ss / val.total, "noisy_psnr": val.noisy_psnr,
                "noisy_ssim": val.noisy_ssim, "output_spread": spread}
    model.eval()
    ps = ss = spread = 0.0
    with torch.no_grad():
        for i in range(0, len(val.clean), 256):
            with _autocast(device):
                out = model(val.noisy[i:i + 256].to(device), val.sigma[i:i + 256].to(device))
            out = out.float().clamp(0, 1).cpu()
            ps += float(metrics.psnr(out, val.clean[i:i + 256]).sum())
            ss += float(metrics.ssim(out, val.clean[i:i + 256]).sum())
            if len(out) > 1:
                spread = max(spread, float(out.std(dim=0).mean()))  # (N, C, H, W) -> (C, H, W) -> ()
    model.train()
    ps, ss, spread = reduce_sums([ps, ss, spread / world], device, world)
    return {"val_psnr": ps / val.total, "val_ssim": ss / val.total, "noisy_psnr": val.noisy_psnr,
            "noisy_ssim": val.noisy_ssim, "output_spread": spread}


def validate_noisy(model: torch.nn.Module, val: Validation, cfg: TrainConfig, device: torch.device | str = "cpu",
                   world: int = 1) -> dict:
    """Validation without clean targets: ``val_loss``, the objective's loss on the held-out noisy
    images (blind spots and sub-samplers from (val_seed, id, 0): the same every epoch, so epochs
    compare; nb2nb's reconstruction term alone: its regularizer is 0 for a model that returns its
    input, so with it the loss can prefer a model that does not denoise), and ``residual_std``, the
    mean over images of the std of (input - output) (0-1 scale): about the noise sigma once the model
    removes the noise and nothing else, lower while it leaves noise in, higher when it also removes
    detail.
    Means over the whole split (all ranks); ``output_spread`` as in :func:`validate`."""
    device = torch.device(device)
    objective = make_objective(cfg, 0)  # epoch 0: nb2nb's regularizer weight is 0

    def run(x, sigma):
        with _autocast(device):
            return model(x, sigma).float()

    images = val.noisy if isinstance(val.noisy, list) else [val.noisy[i:i + 64] for i in range(0, len(val.noisy), 64)]
    loss = resid = spread = 0.0
    start, corners = 0, []  # mixed sizes: the spread over the images' common top-left window
    model.eval()
    with torch.no_grad():
        for x in images:
            x = _to_nchw(x[None]) if isinstance(x, np.ndarray) else x  # mixed sizes: one (H, W, C) image
            n = len(x)
            ids, sigma = val.ids[start:start + n], val.sigma[start:start + n].to(device)
            start += n
            x, target = split_pairs(x.permute(0, 2, 3, 1).numpy(), cfg)
            extra = objective_inputs(cfg, x, ids, 0, seed=cfg.val_seed, target=target)
            x = _to_nchw(x).to(device)
            loss += float(objective(run, x, x, sigma, {k: v.to(device) for k, v in extra.items()})) * n
            out = run(x, sigma)
            resid += float((x - out).flatten(1).std(dim=1).sum())
            if n > 1:
                spread = max(spread, float(out.clamp(0, 1).std(dim=0).mean()))
            elif isinstance(val.noisy, list):
                corners.append(out[0, :, :64, :64].clamp(0, 1).cpu())
    if len(corners) > 1:
        h, w = min(c.shape[1] for c in corners), min(c.shape[2] for c in corners)
        spread = float(torch.stack([c[:, :h, :w] for c in corners]).std(dim=0).mean())
    model.train()
    loss, resid, spread = reduce_sums([loss, resid, spread / world], device, world)
    return {"val_loss": loss / val.total, "residual_std": resid / val.total, "output_spread": spread}


def _validate_mixed(model: torch.nn.Module, val: Validation, device: torch.device) -> tuple[float, float, float]:
    """Sums of PSNR and SSIM over this rank's images of mixed sizes, run the way the denoise job runs
    a model (dae.inference.denoise_images: pooled by shape, tiled when large, bf16 on GPU), and the
    output spread over their common top-left window."""
    from .inference import denoise_images

    model.eval()
    outs = [np.clip(o, 0, 1) for o in denoise_images(model, val.noisy, device, sigmas=val.sigma.tolist())]
    model.train()
    ps = sum(float(metrics.psnr(o, c)) for o, c in zip(outs, val.clean))
    ss = sum(float(metrics.ssim(o, c)) for o, c in zip(outs, val.clean))
    h, w = min(o.shape[0] for o in outs), min(o.shape[1] for o in outs)
    spread = float(np.stack([o[:h, :w] for o in outs]).std(axis=0).mean()) if len(outs) > 1 else 0.0
    return ps, ss, spread


def save_checkpoint(path: str, model: torch.nn.Module, opt, sched, state: TrainState, lc: LoopConfig,
                    total_steps: int) -> None:
    """A checkpoint directory: ``model/`` (:func:`dae.checkpoint.save_model`, usable alone) and
    ``state.pt`` (optimizer, schedule, epoch and metrics history: what :func:`restore` needs)."""
    cfg, row = lc.cfg, state.history[-1]
    ckpt_lib.save_model(model, os.path.join(path, "model"), noise=str(NoiseSpec.parse(cfg.noise)), epoch=state.epoch,
                        metrics={k: row[k] for k in REPORTED[1:-1] if k in row},
                        data={"root": cfg.data, "train_split": cfg.train_split, "val_split": cfg.val_split,
                              "size": list(lc.size)},
                        run_name=cfg.run_name, train_config=config_dict(cfg))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": state.epoch,
                "steps_done": state.steps_done, "total_steps": total_steps, "schedule": cfg.schedule,
                "history": state.history, "attempt": state.attempt}, os.path.join(path, "state.pt"))


def restore(path: str, model: torch.nn.Module, opt, sched, cfg: TrainConfig, total_steps: int) -> TrainState:
    """Loads a :func:`save_checkpoint` directory into the model, optimizer and schedule; returns
    the run's state as the next attempt."""
    loaded, mcfg = ckpt_lib.load_model(os.path.join(path, "model"))
    if mcfg["model"] != cfg.model or mcfg.get("model_kwargs", {}) != model.kwargs:
        raise ValueError(f"run {cfg.run_name!r} holds a {mcfg['model']} {mcfg.get('model_kwargs')} checkpoint, "
                         f"but the config asks for {cfg.model} {cfg.model_kwargs}; use another --run-name")
    model.load_state_dict(loaded.state_dict())
    saved = torch.load(os.path.join(path, "state.pt"), weights_only=True, map_location="cpu")
    opt.load_state_dict(saved["optimizer"])
    if saved.get("total_steps") == total_steps and saved.get("schedule") == cfg.schedule:
        sched.load_state_dict(saved["scheduler"])
    else:
        # More epochs (or another batch size) than the run was started with: the same schedule
        # stretched to the new length, fast-forwarded to the steps already taken. From the base lr:
        # the optimizer state holds the old schedule's last lr (~0 at a cosine's end), and cosine
        # steps are relative to the current lr, so they would stay there.
        for group in opt.param_groups:
            group["lr"] = group.get("initial_lr", cfg.lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(min(int(saved["steps_done"]), total_steps - 1)):
                sched.step()
    return TrainState(epoch=int(saved["epoch"]), steps_done=int(saved["steps_done"]),
                      attempt=int(saved["attempt"]) + 1, history=list(saved["history"]))


def init_weights(model: torch.nn.Module, path: str) -> None:
    """Loads a model directory's weights (safetensors) into ``model``, which must be the same network."""
    loaded, mcfg = ckpt_lib.load_model(path)
    if int(mcfg["channels"]) != model.channels:
        raise ValueError(f"--init {path} takes {mcfg['channels']}-channel images, the data has {model.channels}")
    model.load_state_dict(loaded.state_dict())


def sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Every rank takes rank 0's buffers. BatchNorm running stats drift per rank after the last
    step (DDP broadcasts rank 0's buffers only at the start of each forward): validation on every
    rank must use rank 0's, the ones the checkpoint holds."""
    if world > 1:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, 0)


def write_metrics(out: str, history: list[dict]) -> None:
    # one line per epoch of this run's lineage (rewritten whole: object stores cannot append)
    storage.write_bytes(storage.join(out, "metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in history).encode())


def _say(msg: str) -> None:
    """One progress line from a worker. Not print(): Ray Train V2 patches print into its root
    logger, whose handlers echo each line twice in the driver output."""
    lg = logging.getLogger("dae.worker")
    if not lg.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s dae %(message)s", "%H:%M:%S"))
        lg.addHandler(h)
        lg.propagate = False
        lg.setLevel(logging.INFO)
    lg.info(msg)
    h = lg.handlers[0]
    h.flush()


def _say_epoch(row: dict, cfg: TrainConfig, elapsed: float) -> None:
    _say(f"epoch {row['epoch']}/{cfg.epochs}: loss {row['train_loss']:.5f}, {val_line(row)}, "
         f"{row['images_per_s']:.0f} images/s, train {row['train_s']:.1f}s val {row['val_s']:.1f}s "
         f"ckpt {row['report_s']:.1f}s, {elapsed:.0f}s elapsed")
    if collapsed(row):
        _say(f"warning: {collapse_message(config_dict(cfg))}")


def _maybe_fail(lc: LoopConfig, epoch: int, rank: int, world: int, last_report: float) -> None:
    """Test hook: the last rank dies (hard exit, like a lost node) once, in the middle of an epoch
    (after its first step). It first lets 5 s pass since the previous report: Train V2's controller
    collects reports by polling the workers every 2 s, and a worker that dies before its last
    report was collected takes that report (and its checkpoint's registration) with it."""
    if (lc.fail_at_epoch and lc.fail_marker and epoch + 1 == lc.fail_at_epoch and rank == world - 1
            and not os.path.exists(lc.fail_marker)):
        time.sleep(max(0.0, 5.0 - (time.perf_counter() - last_report)))
        with open(lc.fail_marker, "w") as fh:
            fh.write(f"rank {rank} failed in epoch {epoch + 1}\n")
        _say(f"[test hook] rank {rank} exits on purpose in epoch {epoch + 1}")
        os._exit(1)


REPORTED = ("epoch", "train_loss", "val_psnr", "val_ssim", "noisy_psnr", "noisy_ssim", "val_loss", "residual_std",
            "images_per_s")


def score_metric(clean_val: bool) -> tuple[str, str]:
    """What picks the best checkpoint: validation PSNR; on a noisy-only held-out split (nothing to
    score against) the last epoch. The held-out self-supervised loss does not rank denoisers: a model
    that barely denoises can score lower (measured: a DnCNN, nb2nb on camera tiles with 8-bit AWGN 25, epoch 2
    0.0163 at -0.1 dB against the clean tiles, epoch 12 0.0180 at +2.5 dB)."""
    return ("val_psnr", "max") if clean_val else ("epoch", "max")


def val_line(row: dict) -> str:
    if "val_psnr" in row:
        return (f"val PSNR {row['val_psnr']:.2f} dB (noisy {row['noisy_psnr']:.2f}), SSIM {row['val_ssim']:.4f} "
                f"(noisy {row['noisy_ssim']:.4f})")
    return f"held-out loss {row['val_loss']:.5f}, residual std {row['residual_std'] * 255:.2f}/255 (no clean images)"


def train_loop(lc: LoopConfig) -> None:
    """Per-worker training function (runs in each Ray Train worker)."""
    import ray.train
    import ray.train.torch

    cfg, ctx = lc.cfg, ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(lc.torch_threads)
    device = ray.train.torch.get_device()
    t_setup = time.perf_counter()
    pairs = (lambda name: ray.train.get_dataset_shard(name)) if cfg.pair_data else (lambda name: None)
    val = load_validation(ray.train.get_dataset_shard("val"), cfg, rank, world, device, clean=lc.clean_val,
                          pair_it=None if lc.clean_val else pairs("pair_val"))
    data = load_train(ray.train.get_dataset_shard("train"), lc, rank, world, pair_it=pairs("pair_train"))
    setup_s = time.perf_counter() - t_setup
    per_worker = cfg.batch_size // world
    total_steps = max(1, -(-samples_per_epoch(cfg, data.rows) // per_worker)) * cfg.epochs

    torch.manual_seed(cfg.seed)
    raw_model = create_model(cfg.model, channels=lc.channels, **cfg.model_kwargs)
    if cfg.init:  # fine-tuning; a resumed run's checkpoint below replaces these weights
        init_weights(raw_model, cfg.init)
    model = ray.train.torch.prepare_model(raw_model)  # device placement + DDP when world > 1
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt, total_steps)
    state = TrainState()
    if (ckpt := ray.train.get_checkpoint()) is not None:  # a replaced worker group, or a rerun of the run
        with ckpt.as_directory() as d:
            state = restore(d, raw_model, opt, sched, cfg, total_steps)
        if rank == 0:
            _say(f"resumed run {cfg.run_name} after epoch {state.epoch} (attempt {state.attempt})")

    t_run = last_report = time.perf_counter()
    for epoch in range(start_epoch := state.epoch, cfg.epochs):
        row = train_one_epoch(model, batches(data, cfg, epoch, rank, per_worker), opt, sched,
                              make_objective(cfg, epoch), device, world,
                              steps_left=total_steps - state.steps_done,
                              after_first_step=functools.partial(_maybe_fail, lc, epoch, rank, world, last_report))
        state.steps_done += row.pop("steps")
        t1 = time.perf_counter()
        sync_buffers(raw_model, world)
        row = {"epoch": epoch + 1, **row, **validate(raw_model, val, device, world, cfg),
               "val_s": time.perf_counter() - t1, "lr": opt.param_groups[0]["lr"], "attempt": state.attempt,
               "workers": world, "setup_s": setup_s if epoch == start_epoch else 0.0}
        state.epoch = epoch + 1
        state.history.append(row)
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="dae-ckpt-") as tmp:
            if rank == 0:
                save_checkpoint(tmp, raw_model, opt, sched, state, lc, total_steps)
                write_metrics(lc.out, state.history)
            ray.train.report({k: row[k] for k in REPORTED if k in row},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
        last_report = time.perf_counter()
        row["report_s"] = last_report - t2  # after the save: metrics.jsonl gets it with the next epoch's rewrite
        if rank == 0:
            _say_epoch(row, cfg, last_report - t_run)


# ---------------------------------------------------------------- driver


def _read_samples(files: list[str], n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The first ``n`` held-out images by id (from the first shard): (H, W, C) float32 arrays and ids."""
    t = shards.read_shard(files[0], ["id", "image"])
    b = shards.decode_batch({"id": np.asarray(t.column("id").to_pylist(), dtype=object),
                             "image": t.column("image").to_pylist()})
    order = np.argsort(np.asarray(b["id"]).astype(str), kind="stable")[:n]
    return [np.asarray(b["image"][i], dtype=np.float32) for i in order], np.asarray(b["id"]).astype(str)[order]


def _export_model(checkpoint, model_dir: str) -> torch.nn.Module:
    """Copies a Ray Train checkpoint's model/ (weights + config) to ``model_dir``; returns the model."""
    with checkpoint.as_directory() as d:
        model, mcfg = ckpt_lib.load_model(os.path.join(d, "model"))
    ckpt_lib.save_model(model, model_dir, **{k: v for k, v in mcfg.items()
                                             if k not in ("model", "model_kwargs", "channels", "format", "saved_at")})
    return model


def save_samples(model: torch.nn.Module, cfg: TrainConfig, files: list[str], path: str, clean: bool = True) -> None:
    """samples.png: the first ``cfg.samples`` held-out images clean, with the validation noise, and
    denoised the way jobs.denoise does it (dae.inference.denoise_images); on a noisy-only split the
    images as they are and denoised."""
    from .inference import denoise_images
    from .viz import save_grid

    images, ids = _read_samples(files, cfg.samples)
    noisy = add_noise_batch(images, ids, NoiseSpec.parse(cfg.noise), cfg.val_seed, 0)
    sigmas = noise_sigmas(ids, cfg.noise, cfg.val_seed, 0).tolist()
    den = [np.clip(d, 0, 1) for d in denoise_images(model, list(noisy), sigmas=sigmas)]
    rows = [("clean", list(images))] if clean else []
    save_grid(rows + [("noisy", list(noisy)), ("denoised", den)], path)


def _describe_data(cfg: TrainConfig) -> tuple[dict, dict, str]:
    """(train split, validation split, data mode). Training images are all of one size, or of any
    size at least --crop with --crop; validation images may be of any sizes (scored whole, as the
    denoise job runs a model). Both splits have the same channel count."""
    train_desc = describe_split(cfg.data, cfg.train_split, one_size=not cfg.crop, min_side=cfg.crop)
    val_desc = describe_split(cfg.data, cfg.val_split, one_size=False)
    if train_desc["channels"] != val_desc["channels"]:
        raise ValueError(f"{cfg.val_split} images have {val_desc['channels']} channel(s) but {cfg.train_split} "
                         f"images have {train_desc['channels']}")
    mode = cfg.data_mode
    if mode == "auto":
        mode = "cache" if train_desc["decoded_mb"] <= cfg.cache_max_mb else "stream"
    check_noisy_only(cfg, train_desc["noisy_only"], val_desc["noisy_only"])
    if cfg.pair_data:
        if mode != "cache":
            raise ValueError(f"--pair-data needs the train split held in memory (cache mode); it is "
                             f"{train_desc['decoded_mb']:.0f} MB decoded: raise --cache-max-mb")
        for split, desc in ((cfg.train_split, train_desc), (cfg.val_split, val_desc)):
            other = describe_split(cfg.pair_data, split, one_size=False)
            if (other["rows"], other["channels"]) != (desc["rows"], desc["channels"]):
                raise ValueError(f"--pair-data split {split!r} has {other['rows']} images of {other['channels']} "
                                 f"channel(s), --data {desc['rows']} of {desc['channels']}: they must pair up")
    return train_desc, val_desc, mode


def check_noisy_only(cfg: TrainConfig, train_noisy: bool, val_noisy: bool) -> None:
    """Noisy-only data (prepared with --noisy) trains only with a self-supervised objective on the
    images as they are (--noise none); --noise none is only for such data."""
    synthetic = not NoiseSpec.parse(cfg.noise).none
    if (train_noisy or val_noisy) and synthetic:
        raise ValueError(f"{cfg.data} holds noisy images with no clean version (prepared with --noisy): pass --noise "
                         f"none (synthetic {cfg.noise} noise on top of the real noise is not what you want removed)")
    if not (train_noisy or val_noisy or synthetic):
        raise ValueError(f"--noise none trains on the images as they are, for noisy-only data (jobs.prepare --noisy); "
                         f"{cfg.data} holds clean images: give the noise to synthesize, e.g. awgn:25")
    if train_noisy and cfg.objective == "supervised":
        raise ValueError(f"{cfg.data} holds noisy images with no clean version (prepared with --noisy): --objective "
                         "supervised needs clean targets; train with --objective nb2nb or n2v (from single noisy "
                         "images)")
    if train_noisy and cfg.objective == "n2n" and not cfg.pair_data:
        raise ValueError(f"{cfg.data} holds single noisy images (prepared with --noisy): --objective n2n needs two "
                         "noisy images of each scene: give the second ones with --pair-data ROOT (same ids), or "
                         "train with --objective nb2nb or n2v")


def _datasets(cfg: TrainConfig, train_desc: dict, val_desc: dict, mode: str) -> dict:
    """Decoded Ray Datasets. Materialized now (validation always, training in cache mode): before the
    workers take the CPUs, so no read task competes with them (on 2 CPUs two 1-CPU workers plus
    read tasks deadlock) and no epoch pays the dataset start-up again."""
    from .data import read_shards

    cols = ["id", "image"]
    val_ds = read_shards(cfg.data, files=val_desc["files"], columns=cols).map_batches(shards.decode_batch).materialize()
    if mode == "cache":
        train_ds = read_shards(cfg.data, files=train_desc["files"], columns=cols).map_batches(shards.decode_batch)
        out = {"train": train_ds.materialize(), "val": val_ds}
        for split, name in ((cfg.train_split, "pair_train"), (cfg.val_split, "pair_val")) if cfg.pair_data else ():
            pair_ds = read_shards(cfg.pair_data, split=split, columns=cols)
            out[name] = pair_ds.map_batches(shards.decode_batch).materialize()
        return out
    # Stream mode reads while the workers hold their CPUs. run() leaves one CPU of the cluster to Ray
    # Data (the workers used to leave a quarter of the CPUs: 0.5 of 2, and the reads waited forever,
    # "Cluster resources are not enough to run any task", even as quarter-CPU tasks), and the read and
    # decode tasks ask for a quarter CPU each, so that the CPU left may be spread over nodes.
    task = {"num_cpus": STREAM_TASK_CPUS}
    train_ds = read_shards(cfg.data, files=train_desc["files"], columns=cols, num_cpus=STREAM_TASK_CPUS)
    return {"train": train_ds.map_batches(shards.decode_batch, **task), "val": val_ds}


def _trainer(lc: LoopConfig, res: dict, datasets: dict):
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
        functools.partial(train_loop, lc),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep,
                                                         checkpoint_score_attribute=score_metric(lc.clean_val)[0],
                                                         checkpoint_score_order=score_metric(lc.clean_val)[1]),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets=datasets,
        # cache mode: every worker sees the whole (materialized) split and picks its rows by rank
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if lc.mode == "stream" else []),
    )


def run(cfg: TrainConfig) -> dict:
    """Train with Ray Train; returns {"out", "best_model", "best_epoch", "best", "history", ...}."""
    import ray

    from .jobutil import save_resolved_config
    from .raylib import init_ray

    cfg = check_config(cfg)
    storage.check_access(cfg.data, must_exist=True)  # fail before any work, naming the cause
    shards.require_prepared(cfg.data)  # a prepare killed half way: refused, not trained on part of a split
    storage.check_access(cfg.storage, write=True)
    if cfg.pair_data:
        storage.check_access(cfg.pair_data, must_exist=True)
        shards.require_prepared(cfg.pair_data)
    if cfg.out:
        storage.check_access(cfg.out, write=True)
    run_dir = storage.join(cfg.storage, cfg.run_name)
    if (stored := stored_run_config(run_dir)) is not None:  # a rerun resumes that run: the same settings only
        check_resume(stored[0], cfg, stored[1])
    init_ray(training=True)
    t_start = time.perf_counter()
    train_desc, val_desc, mode = _describe_data(cfg)
    if cfg.workers > train_desc["rows"]:
        raise ValueError(f"--workers {cfg.workers} is more than the {train_desc['rows']} {cfg.train_split} image(s) "
                         f"of {cfg.data}: every worker needs images to train on; lower --workers")
    res = plan_resources(cfg.workers, cfg.gpus_per_worker, cfg.cpus_per_worker,
                         reserve_cpus=0.0 if mode == "cache" else 1.0)  # stream: see _datasets
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
    datasets = _datasets(cfg, train_desc, val_desc, mode)
    data_s = time.perf_counter() - t0
    log.info("data ready in %.1fs", data_s)
    lc = LoopConfig(cfg, mode=mode, torch_threads=threads, channels=train_desc["channels"],
                    size=(train_desc["height"], train_desc["width"]), train_rows=train_desc["rows"], out=out,
                    clean_val=not val_desc["noisy_only"],
                    fail_at_epoch=int(os.environ.get(FAIL_AT_EPOCH_ENV) or 0),
                    fail_marker=os.environ.get(FAIL_MARKER_ENV, ""))
    t_fit = time.perf_counter()
    result = _trainer(lc, res, datasets).fit()
    fit_s = time.perf_counter() - t_fit

    # ---- outputs
    history = [json.loads(line) for line in storage.read_bytes(storage.join(out, "metrics.jsonl")).decode().splitlines()
               if line.strip()]
    best_model_dir = storage.join(out, "best_model")
    final_model_dir = storage.join(out, "final_model")
    # final_model (the last epoch) is what to score on the held-out split when val_split is that
    # same split: best_model was picked on it.
    _export_model(result.checkpoint, final_model_dir)
    metric, order = score_metric(lc.clean_val)
    model = _export_model(result.get_best_checkpoint(metric, order) or result.checkpoint, best_model_dir)
    best = (max if order == "max" else min)(history, key=lambda h: h[metric])
    from .viz import save_curves

    curves = {"train loss": [h["train_loss"] for h in history]}
    if lc.clean_val:
        curves["val PSNR (dB)"] = [h["val_psnr"] for h in history]
    else:
        curves["held-out loss"] = [h["val_loss"] for h in history]
    save_curves(curves, storage.join(out, "curves.png"), title=f"{cfg.model}, {cfg.objective}, {cfg.noise}")
    if cfg.samples > 0:
        save_samples(model, cfg, val_desc["files"], storage.join(out, "samples.png"), clean=lc.clean_val)
    summary = {"out": out, "run_dir": run_dir, "best_model": best_model_dir, "final_model": final_model_dir,
               "best_epoch": best["epoch"], "collapsed": collapsed(history[-1]),
               "best": best, "last": history[-1], "history": history, "data_mode": mode, "data_s": data_s,
               "fit_s": fit_s, "total_s": time.perf_counter() - t_start, "resources": res, "torch_threads": threads,
               "config": config_dict(cfg)}
    storage.write_json(storage.join(out, "summary.json"), {k: v for k, v in summary.items() if k != "history"})
    return summary


def format_summary(s: dict) -> str:
    b, cfg = s["best"], s["config"]
    lines = [
        f"run {cfg['run_name']}: {cfg['model']} on {cfg['data']} ({cfg['noise']}, {cfg['loss']}, {cfg['optimizer']}/"
        f"{cfg['schedule']}, {len(s['history'])} epoch(s) in the history, {cfg['workers']} worker(s), {s['data_mode']} data)",
        f"  best epoch {b['epoch']}: {val_line(b)}"
        + (f", {b['val_psnr'] - b['noisy_psnr']:+.2f} dB" if "val_psnr" in b else ""),
        f"  last epoch {s['last']['epoch']}: {val_line(s['last'])}, {s['last']['images_per_s']:.0f} images/s",
        f"  time: data {s['data_s']:.1f}s, training {s['fit_s']:.1f}s, total {s['total_s']:.1f}s",
        f"  best model:  {s['best_model']}",
        f"  outputs:     {s['out']}/(metrics.jsonl, curves.png, samples.png, config.resolved.json, summary.json)",
        f"  checkpoints: {s['run_dir']}",
    ]
    if s.get("collapsed"):
        lines.append(f"  WARNING: {collapse_message(cfg)}")
    return "\n".join(lines)
