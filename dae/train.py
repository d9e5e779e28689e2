"""Data-parallel training of denoising autoencoders on Ray Train (TorchTrainer, Train V2).

    from dae.train import TrainConfig, run
    result = run(TrainConfig(data="shards/fashion", model="conv28k", noise="gaussian:0.5", workers=2))

The driver (:func:`run`):
  1. checks the config and the shards (sizes, channels) and sizes the workers from the cluster,
     failing fast when they cannot fit (Ray would otherwise wait forever for the resources);
  2. reads the shards with Ray Data and decodes the PNGs; in ``cache`` mode (decoded train split
     under ``cache_max_mb``) it materializes them in the object store BEFORE the trainer starts, so
     no Ray Data task competes with the worker actors for CPUs (on a 2-CPU machine two 1-CPU workers
     plus read tasks deadlock) and no epoch pays the dataset start-up again;
  3. runs :func:`train_loop` on ``workers`` Ray Train workers, then copies the best checkpoint's
     model to ``OUT/best_model`` and writes ``curves.png`` and ``samples.png``.

Each worker (:func:`train_loop`):
  * ``cache`` mode: reads the whole materialized split once through ``get_dataset_shard`` (not
    split by Ray), sorts it by image id and keeps every ``world``-th image from its rank on: the
    same rows per rank on every run, so training is reproducible with 1 and with N workers. Every
    epoch is then a seeded local permutation over an in-memory tensor: no Ray Data work per epoch.
  * ``stream`` mode (too big to hold): ``streaming_split`` shards, ``iter_torch_batches`` with a
    local shuffle buffer, every epoch streamed from the shards.
  * noise is added per batch on the worker, image i of epoch e from (seed, id_i, e) only;
  * validation on a fixed noisy copy of the held-out split (noise from (val_seed, id, 0), the
    same every epoch), split across ranks and all-reduced: metrics are over the whole split;
  * rank 0 writes a checkpoint (``model/`` from :func:`dae.checkpoint.save_model` plus
    ``state.pt`` with optimizer, scheduler, epoch and metric history) and ``metrics.jsonl``;
    ``ray.train.report`` registers it. A replaced worker group, or a rerun with the same run name
    and storage, resumes from the latest checkpoint (``ray.train.get_checkpoint``).

Outputs (``out``, default the run directory ``STORAGE/RUN_NAME`` where Ray Train keeps its
checkpoints): ``best_model/`` (best validation PSNR), ``final_model/`` (last epoch), ``metrics.jsonl``,
``curves.png``, ``samples.png``,
``config.resolved.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt_lib
from . import metrics, shards, storage
from .config import config_dict
from .models import create_model, list_models
from .noise import NoiseSpec, add_noise_batch

log = logging.getLogger("dae")

LOSSES = ("mse", "l1", "bce")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
MODES = ("auto", "cache", "stream")
# Test-only fault injection (read by the driver, passed to the workers in the loop config).
FAIL_AT_EPOCH_ENV = "DAE_TEST_FAIL_AT_EPOCH"
FAIL_MARKER_ENV = "DAE_TEST_FAIL_MARKER"


@dataclass(frozen=True)
class TrainConfig:
    data: str = field(default="", metadata={"help": "shard root (local dir or URI) with ROOT/TRAIN_SPLIT/*.parquet"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    val_split: str = field(default="test", metadata={"help": "held-out split validated every epoch"})
    model: str = field(default="conv28k", metadata={"help": "model name", "choices": list_models()})
    model_kwargs: dict = field(default_factory=dict, metadata={"help": "model keyword arguments, e.g. '{width: 32}'"})
    noise: str = field(default="gaussian:0.5", metadata={"help": "noise spec, e.g. gaussian:0.5, salt_pepper:0.2, gaussian:0.05-0.6"})
    loss: str = field(default="mse", metadata={"help": "training loss", "choices": LOSSES})
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


# ---------------------------------------------------------------- config and planning (driver)


def validate(cfg: TrainConfig) -> TrainConfig:
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
    if cfg.gpus_per_worker < 0 or cfg.cpus_per_worker < 0:
        raise ValueError("gpus_per_worker and cpus_per_worker must be >= 0")
    create_model(cfg.model, **cfg.model_kwargs)  # unknown kwargs fail here, listing the valid ones
    if not cfg.run_name:
        cfg = dataclasses.replace(cfg, run_name=f"train-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if "/" in cfg.run_name or cfg.run_name.startswith("."):
        raise ValueError(f"run_name must be a plain name, got {cfg.run_name!r}")
    # Workers write outputs and read data in their own working directory: pin local paths now.
    return dataclasses.replace(cfg, data=storage.absolute(cfg.data), storage=storage.absolute(cfg.storage),
                               out=storage.absolute(cfg.out))


def describe_split(root: str, split: str) -> dict:
    """Rows, image size and channels of a split from its small columns (no image decoding)."""
    from .data import shard_files

    files = shard_files(root, split)
    n, sizes, chans = 0, set(), set()
    for f in files:
        t = shards.read_shard(f, ["height", "width", "channels"])
        n += t.num_rows
        hw = np.stack([t.column("height").to_numpy(), t.column("width").to_numpy()], 1)
        sizes.update(map(tuple, np.unique(hw, axis=0).tolist()))
        chans.update(np.unique(t.column("channels").to_numpy()).tolist())
    if n == 0:
        raise ValueError(f"split {split!r} under {root} has no rows")
    if len(chans) != 1:
        raise ValueError(f"split {split!r} mixes {sorted(chans)} channels; training needs one channel count")
    if len(sizes) != 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:5])
        raise ValueError(f"split {split!r} has images of {len(sizes)} sizes ({shown}, ...); training batches need "
                         "one size: resize or crop the images when preparing the shards")
    (h, w), c = sizes.pop(), chans.pop()
    return {"files": files, "rows": n, "height": int(h), "width": int(w), "channels": int(c),
            "decoded_mb": n * h * w * c * 4 / 2**20}


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


def _to_nchw(a: np.ndarray) -> torch.Tensor:
    # (B, H, W, C) numpy -> (B, C, H, W) torch, contiguous
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32).transpose(0, 3, 1, 2)))


def _collect(it) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a DataIterator as (images (N, H, W, C) float32, ids), sorted by id so the
    order does not depend on block arrival order."""
    imgs, ids = [], []
    for b in it.iter_batches(batch_size=4096, batch_format="numpy", prefetch_batches=1):
        imgs.append(np.asarray(b["image"], dtype=np.float32))
        ids.append(np.asarray(b["id"]).astype(str))
    images, id_arr = np.concatenate(imgs), np.concatenate(ids)
    order = np.argsort(id_arr, kind="stable")
    return images[order], id_arr[order]


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


def _loss_fn(name: str):
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    # bce on a [0, 1] output (sigmoid or clamp); clamp keeps log() finite for residual models
    return lambda out, target: F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), target)


def _make_optimizer(cfg: dict, params):
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"])


def _make_scheduler(cfg: dict, opt, total_steps: int):
    if cfg["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=max(total_steps, 2))
    if cfg["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


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


def _maybe_fail(loop_cfg: dict, epoch: int, rank: int, world: int, last_report: float) -> None:
    """Test hook: the last rank dies (hard exit, like a lost node) once, in the middle of an epoch
    (after its first step). It first lets 5 s pass since the previous report: Train V2's controller
    collects reports by polling the workers every 2 s, and a worker that dies before its last
    report was collected takes that report (and its checkpoint's registration) with it."""
    at, marker = loop_cfg.get("_fail_at_epoch"), loop_cfg.get("_fail_marker")
    if at and marker and epoch + 1 == int(at) and rank == world - 1 and not os.path.exists(marker):
        time.sleep(max(0.0, 5.0 - (time.perf_counter() - last_report)))
        with open(marker, "w") as fh:
            fh.write(f"rank {rank} failed in epoch {epoch + 1}\n")
        _say(f"[test hook] rank {rank} exits on purpose in epoch {epoch + 1}")
        os._exit(1)


def train_loop(loop_cfg: dict) -> None:
    """Per-worker training function (runs in each Ray Train worker)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = loop_cfg["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(loop_cfg["torch_threads"])
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"
    spec = NoiseSpec.parse(cfg["noise"])
    seed, val_seed = cfg["seed"], cfg["val_seed"]
    per_worker = cfg["batch_size"] // world
    t_setup = time.perf_counter()

    # ---- data: validation (every rank holds its slice of the fixed noisy copy)
    val_x, val_ids = _collect(ray.train.get_dataset_shard("val"))
    if cfg["val_limit"]:
        val_x, val_ids = val_x[: cfg["val_limit"]], val_ids[: cfg["val_limit"]]
    n_val = len(val_ids)
    val_x, val_ids = val_x[rank::world], val_ids[rank::world]
    val_clean = _to_nchw(val_x)
    val_noisy = _to_nchw(add_noise_batch(val_x, val_ids, spec, val_seed, 0))
    del val_x

    # ---- data: training
    mode = loop_cfg["mode"]
    train_it = ray.train.get_dataset_shard("train")
    if mode == "cache":
        x_all, ids_all = _collect(train_it)
        n_per = len(ids_all) // world  # equal rows per rank: DDP needs the same number of steps everywhere
        train_x = np.ascontiguousarray(x_all[rank::world][:n_per])
        train_ids = ids_all[rank::world][:n_per]
        del x_all, ids_all
    else:
        n_per = loop_cfg["train_rows"] // world
    steps_per_epoch = max(1, -(-n_per // per_worker))
    total_steps = steps_per_epoch * cfg["epochs"]
    setup_s = time.perf_counter() - t_setup

    # ---- model, optimizer, schedule; resume from the latest checkpoint if there is one
    torch.manual_seed(seed)
    model = create_model(cfg["model"], channels=loop_cfg["channels"], **cfg["model_kwargs"])
    start_epoch, history, attempt, state = 0, [], 0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            loaded, mcfg = ckpt_lib.load_model(os.path.join(d, "model"))
            if mcfg["model"] != cfg["model"] or mcfg.get("model_kwargs", {}) != model.kwargs:
                raise ValueError(f"run {loop_cfg['run_name']!r} holds a {mcfg['model']} {mcfg.get('model_kwargs')} "
                                 f"checkpoint, but the config asks for {cfg['model']} {cfg['model_kwargs']}; "
                                 "use another --run-name")
            model.load_state_dict(loaded.state_dict())
            state = torch.load(os.path.join(d, "state.pt"), weights_only=True, map_location="cpu")
        start_epoch, history, attempt = int(state["epoch"]), list(state["history"]), int(state["attempt"]) + 1
    raw_model = model
    model = ray.train.torch.prepare_model(model)  # device placement + DDP when world > 1
    raw_model = raw_model.to(device)
    opt = _make_optimizer(cfg, model.parameters())
    sched = _make_scheduler(cfg, opt, total_steps)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        if state.get("total_steps") == total_steps and state.get("schedule") == cfg["schedule"]:
            sched.load_state_dict(state["scheduler"])
        else:
            # More epochs (or another batch size) than the run was started with: the same schedule
            # stretched to the new length, fast-forwarded to the steps already taken.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(min(int(state["steps_done"]), total_steps - 1)):
                    sched.step()
        if rank == 0:
            _say(f"resumed run {loop_cfg['run_name']} after epoch {start_epoch} (attempt {attempt})")
    loss_fn = _loss_fn(cfg["loss"])
    steps_done = int(state["steps_done"]) if state is not None else 0

    # noisy-input metrics are epoch-independent: computed once
    def reduce_sums(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def val_metrics(net) -> tuple[float, float, float]:
        """(sum of PSNR, sum of SSIM, output spread) over this rank's validation images. The spread
        (the largest per-batch mean over pixels of the std across images) is ~0 when the model
        outputs one image for every input: a collapsed model."""
        # Unwrapped model: no DDP collective per forward, so ranks may run different batch counts.
        net.eval()
        ps = ss = spread = 0.0
        with torch.no_grad():
            for i in range(0, len(val_clean), 256):
                x = val_noisy[i:i + 256].to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
                    out = net(x)
                out = out.float().clamp(0, 1).cpu()
                ps += float(metrics.psnr(out, val_clean[i:i + 256]).sum())
                ss += float(metrics.ssim(out, val_clean[i:i + 256]).sum())
                if len(out) > 1:
                    spread = max(spread, float(out.std(dim=0).mean()))  # (N, C, H, W) -> (C, H, W) -> ()
        net.train()
        return ps, ss, spread

    noisy_sums = reduce_sums([float(metrics.psnr(val_noisy, val_clean).sum()),
                              float(metrics.ssim(val_noisy, val_clean).sum()), float(len(val_clean))])
    noisy_psnr, noisy_ssim = noisy_sums[0] / n_val, noisy_sums[1] / n_val

    def batches(epoch: int):
        """(clean, noisy) (B, C, H, W) float32 CPU tensors of this rank for one epoch."""
        if mode == "cache":
            perm = np.random.default_rng([seed, epoch, rank]).permutation(len(train_ids))
            for b in range(0, len(perm), per_worker):
                idx = np.sort(perm[b:b + per_worker])  # sorted: faster gather, order inside a batch is irrelevant
                clean = train_x[idx]
                yield _to_nchw(clean), _to_nchw(add_noise_batch(clean, train_ids[idx], spec, seed, epoch))
        else:
            def collate(batch: dict):
                clean = np.asarray(batch["image"], dtype=np.float32)
                noisy = add_noise_batch(clean, batch["id"].astype(str), spec, seed, epoch)
                return _to_nchw(clean), _to_nchw(noisy)

            yield from train_it.iter_torch_batches(batch_size=per_worker, collate_fn=collate,
                                                   local_shuffle_buffer_size=max(per_worker * 8, 1024),
                                                   local_shuffle_seed=seed * 1000 + epoch, prefetch_batches=2)

    out_dir = loop_cfg["out"]
    t_run = last_report = time.perf_counter()
    for epoch in range(start_epoch, cfg["epochs"]):
        t0, c0 = time.perf_counter(), time.process_time()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        n_seen = 0
        t_data = 0.0
        td = time.perf_counter()
        for clean, noisy in batches(epoch):
            t_data += time.perf_counter() - td
            clean, noisy = clean.to(device, non_blocking=True), noisy.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
                out = model(noisy)
            loss = loss_fn(out.float(), clean)  # loss in float32 (bce is not autocast-safe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if steps_done < total_steps:  # stream mode may yield a batch more than planned
                sched.step()
            steps_done += 1
            if n_seen == 0:
                _maybe_fail(loop_cfg, epoch, rank, world, last_report)
            loss_sum += loss.detach().double() * len(clean)  # no host sync per step
            n_seen += len(clean)
            td = time.perf_counter()
        train_s = time.perf_counter() - t0
        # CPU seconds of this process (all its threads): robust to other load on the machine
        cpu_s = time.process_time() - c0
        loss_total, seen_total, data_s, cpu_total = reduce_sums([float(loss_sum), float(n_seen), t_data, cpu_s])
        t1 = time.perf_counter()
        if world > 1:
            # BatchNorm running stats drift per rank after the last step (DDP broadcasts rank 0's
            # buffers only at the start of each forward): validate every rank with rank 0's, the
            # ones the checkpoint holds.
            for buf in raw_model.buffers():
                torch.distributed.broadcast(buf, 0)
        ps, ss, spread = val_metrics(raw_model)
        ps, ss, spread = reduce_sums([ps, ss, spread / world])
        val_s = time.perf_counter() - t1
        row = {"epoch": epoch + 1, "train_loss": loss_total / seen_total, "val_psnr": ps / n_val,
               "val_ssim": ss / n_val, "noisy_psnr": noisy_psnr, "noisy_ssim": noisy_ssim,
               "images_per_s": seen_total / train_s, "train_s": train_s, "train_cpu_s": cpu_total, "data_s": data_s / world,
               "val_s": val_s, "output_spread": spread, "lr": opt.param_groups[0]["lr"], "attempt": attempt, "workers": world,
               "setup_s": setup_s if epoch == start_epoch else 0.0}
        history.append(row)
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="dae-ckpt-") as tmp:
            checkpoint = None
            if rank == 0:
                ckpt_lib.save_model(raw_model, os.path.join(tmp, "model"), noise=str(spec), epoch=epoch + 1,
                                    metrics={k: row[k] for k in ("val_psnr", "val_ssim", "noisy_psnr", "noisy_ssim", "train_loss")},
                                    data={"root": cfg["data"], "train_split": cfg["train_split"],
                                          "val_split": cfg["val_split"], "size": loop_cfg["size"]},
                                    run_name=loop_cfg["run_name"], train_config=cfg)
                torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch + 1,
                            "steps_done": steps_done, "total_steps": total_steps, "schedule": cfg["schedule"],
                            "history": history, "attempt": attempt}, os.path.join(tmp, "state.pt"))
                # one line per epoch of this run's lineage (rewritten whole: object stores cannot append)
                storage.write_bytes(storage.join(out_dir, "metrics.jsonl"),
                                    "".join(json.dumps(h) + "\n" for h in history).encode())
                checkpoint = Checkpoint.from_directory(tmp)
            report = {k: row[k] for k in ("epoch", "train_loss", "val_psnr", "val_ssim", "noisy_psnr",
                                          "noisy_ssim", "images_per_s")}
            ray.train.report(report, checkpoint=checkpoint)
        last_report = time.perf_counter()
        row["report_s"] = time.perf_counter() - t2
        if rank == 0:
            _say(f"epoch {epoch + 1}/{cfg['epochs']}: loss {row['train_loss']:.5f}, "
                  f"val PSNR {row['val_psnr']:.2f} dB (noisy {noisy_psnr:.2f}), SSIM {row['val_ssim']:.4f} "
                  f"(noisy {noisy_ssim:.4f}), {row['images_per_s']:.0f} images/s, "
                  f"train {train_s:.1f}s val {val_s:.1f}s ckpt {row['report_s']:.1f}s, "
                  f"{time.perf_counter() - t_run:.0f}s elapsed")
            if collapsed(row):
                _say(f"warning: {collapse_message(cfg)}")


# ---------------------------------------------------------------- driver


def _read_samples(files: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` held-out images by id (from the first shard), (n, H, W, C) float32 and ids."""
    t = shards.read_shard(files[0], ["id", "image"])
    b = shards.decode_batch({"id": np.asarray(t.column("id").to_pylist(), dtype=object),
                             "image": t.column("image").to_pylist()})
    order = np.argsort(np.asarray(b["id"]).astype(str), kind="stable")[:n]
    return np.asarray(b["image"], dtype=np.float32)[order], np.asarray(b["id"]).astype(str)[order]


def _export_model(checkpoint, model_dir: str) -> torch.nn.Module:
    """Copies a Ray Train checkpoint's model/ (weights + config) to ``model_dir``; returns the model."""
    with checkpoint.as_directory() as d:
        model, mcfg = ckpt_lib.load_model(os.path.join(d, "model"))
    ckpt_lib.save_model(model, model_dir, **{k: v for k, v in mcfg.items()
                                             if k not in ("model", "model_kwargs", "channels", "format", "saved_at")})
    return model


def run(cfg: TrainConfig) -> dict:
    """Train with Ray Train; returns {"out", "best_model", "best_epoch", "best", "history", ...}."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from .data import read_shards
    from .jobutil import save_resolved_config
    from .raylib import init_ray

    cfg = validate(cfg)
    storage.check_access(cfg.data, must_exist=True)  # fail before any work, naming the cause
    storage.check_access(cfg.storage, write=True)
    if cfg.out:
        storage.check_access(cfg.out, write=True)
    init_ray()
    t_start = time.perf_counter()
    train_desc = describe_split(cfg.data, cfg.train_split)
    val_desc = describe_split(cfg.data, cfg.val_split)
    if (val_desc["channels"], val_desc["height"], val_desc["width"]) != (
            train_desc["channels"], train_desc["height"], train_desc["width"]):
        raise ValueError(f"{cfg.val_split} images are {val_desc['height']}x{val_desc['width']}x{val_desc['channels']} "
                         f"but {cfg.train_split} images are {train_desc['height']}x{train_desc['width']}x{train_desc['channels']}")
    mode = cfg.data_mode
    if mode == "auto":
        mode = "cache" if train_desc["decoded_mb"] <= cfg.cache_max_mb else "stream"
    res = plan_resources(cfg.workers, cfg.gpus_per_worker, cfg.cpus_per_worker,
                         reserve_cpus=0.0 if mode == "cache" else min(1.0, ray.cluster_resources().get("CPU", 0) / 4))
    threads = cfg.torch_threads or res["torch_threads"]
    storage_path = cfg.storage
    run_dir = storage.join(storage_path, cfg.run_name)
    # Ray Train gets (path, filesystem): on s3:// the filesystem carries dae.storage's endpoint and
    # credentials to the controller and workers (a bare URI would be re-resolved there from their env).
    ray_storage_path, ray_storage_fs = storage.ray_storage(storage_path)
    out = cfg.out or run_dir
    storage.makedirs(out)
    save_resolved_config(cfg, out, data_mode=mode, resources=res, torch_threads=threads,
                         train_rows=train_desc["rows"], val_rows=val_desc["rows"], run_dir=run_dir)
    log.info("train: %d %s images (%dx%dx%d, %.0f MB decoded, %s mode), %d %s images; %d worker(s) x %g CPU "
             "%g GPU, %d torch thread(s); run %s", train_desc["rows"], cfg.train_split, train_desc["height"],
             train_desc["width"], train_desc["channels"], train_desc["decoded_mb"], mode, val_desc["rows"],
             cfg.val_split, cfg.workers, res["cpus_per_worker"], cfg.gpus_per_worker, threads, run_dir)

    # ---- datasets: decode once; in cache mode materialize before the workers take the CPUs
    t0 = time.perf_counter()
    cols = ["id", "image"]
    val_ds = read_shards(cfg.data, files=val_desc["files"], columns=cols).map_batches(shards.decode_batch).materialize()
    train_ds = read_shards(cfg.data, files=train_desc["files"], columns=cols).map_batches(shards.decode_batch)
    if mode == "cache":
        train_ds = train_ds.materialize()
    data_s = time.perf_counter() - t0
    log.info("data ready in %.1fs", data_s)

    loop_cfg = {"cfg": config_dict(cfg), "mode": mode, "torch_threads": threads, "channels": train_desc["channels"],
                "size": [train_desc["height"], train_desc["width"]], "train_rows": train_desc["rows"],
                "run_name": cfg.run_name, "out": out,
                "_fail_at_epoch": os.environ.get(FAIL_AT_EPOCH_ENV), "_fail_marker": os.environ.get(FAIL_MARKER_ENV)}
    resources = {"CPU": res["cpus_per_worker"]}
    if cfg.gpus_per_worker > 0:
        resources["GPU"] = cfg.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.run_name, storage_path=ray_storage_path, storage_filesystem=ray_storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep,
                                                         checkpoint_score_attribute="val_psnr",
                                                         checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": train_ds, "val": val_ds},
        # cache mode: every worker sees the whole (materialized) split and picks its rows by rank
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if mode == "stream" else []),
    )
    t_fit = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t_fit

    # ---- outputs
    history = [json.loads(line) for line in storage.read_bytes(storage.join(out, "metrics.jsonl")).decode().splitlines()
               if line.strip()]
    best_model_dir = storage.join(out, "best_model")
    final_model_dir = storage.join(out, "final_model")
    # final_model (the last epoch) is what to score on the held-out split when val_split is that
    # same split: best_model was picked on it.
    _export_model(result.checkpoint, final_model_dir)
    model = _export_model(result.get_best_checkpoint("val_psnr", "max") or result.checkpoint, best_model_dir)
    best = max(history, key=lambda h: h["val_psnr"])
    from .viz import save_curves, save_grid

    save_curves({"train loss": [h["train_loss"] for h in history],
                 "val PSNR (dB)": [h["val_psnr"] for h in history]}, storage.join(out, "curves.png"),
                title=f"{cfg.model}, {cfg.noise}")
    if cfg.samples > 0:
        clean, ids = _read_samples(val_desc["files"], cfg.samples)
        noisy = add_noise_batch(clean, ids, NoiseSpec.parse(cfg.noise), cfg.val_seed, 0)
        with torch.no_grad():
            den = model(_to_nchw(noisy)).float().clamp(0, 1).numpy().transpose(0, 2, 3, 1)
        save_grid([("clean", list(clean)), ("noisy", list(noisy)), ("denoised", list(den))],
                  storage.join(out, "samples.png"))
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
        f"  best epoch {b['epoch']}: val PSNR {b['val_psnr']:.2f} dB vs noisy {b['noisy_psnr']:.2f} dB "
        f"({b['val_psnr'] - b['noisy_psnr']:+.2f}), SSIM {b['val_ssim']:.4f} vs noisy {b['noisy_ssim']:.4f}",
        f"  last epoch {s['last']['epoch']}: val PSNR {s['last']['val_psnr']:.2f} dB, "
        f"{s['last']['images_per_s']:.0f} images/s",
        f"  time: data {s['data_s']:.1f}s, training {s['fit_s']:.1f}s, total {s['total_s']:.1f}s",
        f"  best model:  {s['best_model']}",
        f"  outputs:     {s['out']}/(metrics.jsonl, curves.png, samples.png, config.resolved.json, summary.json)",
        f"  checkpoints: {s['run_dir']}",
    ]
    if s.get("collapsed"):
        lines.append(f"  WARNING: {collapse_message(cfg)}")
    return "\n".join(lines)
