"""What each Ray Train worker runs: :func:`train_loop_per_worker`, a short loop over named pieces that
work without Ray (tests call them directly):

    setup_worker      this rank's validation copy and training rows (dae.train.data), the model (DDP
                      when world > 1), optimizer and schedule, restored from the run's latest checkpoint
    train_one_epoch   one optimizer step per batch with the objective's loss (--precision: bf16 autocast
                      where the hardware has it natively, dae.precision; --compile: torch.compile)
    validate          mean per-image PSNR/SSIM over the whole held-out split (all ranks); on noisy-only
                      data the objective's held-out loss and the residual's std (validate_noisy)
    report_epoch      rank 0 saves the checkpoint (dae.train.checkpoint) and rewrites metrics.jsonl;
                      every rank reports the epoch's figures to Ray Train
    track_epoch       rank 0 redraws curves.png and samples.png and tells the trackers (TensorBoard
                      always, MLflow with --tracker mlflow; dae.train.tracking) the epoch

Rules it keeps:
  * the loss is the objective's (dae.objectives), computed in float32 around a bf16 forward pass;
    weights and batches are channels_last; the optimizer state is float32;
  * validation runs the unwrapped model (no DDP collective per forward), with rank 0's buffers;
  * ``LoopConfig.on_epoch_start`` (tests only) runs on every worker before each epoch;
  * tracking never stops training: a tracker's error is a warning line (the run's own outputs,
    metrics.jsonl and the checkpoints, are written before the trackers are told).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics, precision
from ..models import create_model
from ..objectives import Objective
from ..objectives.base import nchw as _to_nchw
from .checkpoint import TrainState, init_weights, restore, save_checkpoint
from .config import LoopConfig, TrainConfig, objective_of
from .data import (
    TrainData,
    Validation,
    batches,
    load_train,
    load_validation,
    reduce_sums,
    samples_per_epoch,
    split_pairs,
)
from .report import REPORTED, EpochFigures, guarded, say, say_epoch, start_trackers, track_epoch, write_metrics
from .tracking import Tracker


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


def _forward(model: torch.nn.Module, device: torch.device, arith: str):
    arith = precision.resolve(arith, device)

    def run(x, sigma):  # bf16 autocast around the model only: the loss is computed in float32
        with precision.autocast(arith, device):
            return model(precision.to_channels_last(x), sigma).float()
    return run


# ---------------------------------------------------------------- the pieces


def train_one_epoch(model: torch.nn.Module, loader, opt, sched, objective, device: torch.device | str = "cpu",
                    world: int = 1, steps_left: float = math.inf, after_first_step=None, arith: str = "auto",
                    on_step=None) -> dict:
    """One optimizer step per (clean, noisy, sigma, extra) batch of ``loader``, with the step's loss
    ``objective`` (``Objective.loss_at(epoch)``, :func:`dae.train.make_objective`). ``sched`` steps at
    most ``steps_left`` times (stream mode may yield a batch more than planned). Returns the epoch's
    figures over all ranks (train_loss, images_per_s, train_s, train_cpu_s, data_s) and this rank's
    ``steps``. ``arith``: the precision of the forward pass (auto, fp32, bf16; dae.precision).
    ``on_step(steps, loss)``: called after every step (steps taken this epoch, from 1; the batch's loss
    tensor: reading it syncs the host, so the caller does it every N steps only)."""
    device = torch.device(device)
    run = _forward(model, device, arith)
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
        if on_step is not None:
            on_step(steps, loss.detach())  # the caller may read it (float): no graph attached
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
             cfg: TrainConfig | None = None, arith: str = "auto") -> dict:
    """Mean per-image PSNR/SSIM of the model's output (clamped to [0, 1]) and of the noisy input
    over the whole split (all ranks), and ``output_spread``: the largest per-batch mean over pixels
    of the std across images, ~0 when the model outputs one image for every input (collapsed).
    A noisy-only split (no clean images) gets :func:`validate_noisy` (needs ``cfg``) instead."""
    # Pass the unwrapped model: no DDP collective per forward, so ranks may run different batch counts.
    device = torch.device(device)
    if val.clean is None:
        return validate_noisy(model, val, cfg, device, world, arith)
    if isinstance(val.clean, list):
        ps, ss, spread = _validate_mixed(model, val, device, arith)
        ps, ss, spread = reduce_sums([ps, ss, spread / world], device, world)
        return {"val_psnr": ps / val.total, "val_ssim": ss / val.total, "noisy_psnr": val.noisy_psnr,
                "noisy_ssim": val.noisy_ssim, "output_spread": spread}
    model.eval()
    arith = precision.resolve(arith, device)
    ps = ss = spread = 0.0
    with torch.no_grad():
        for i in range(0, len(val.clean), 256):
            x = precision.to_channels_last(val.noisy[i:i + 256].to(device))
            with precision.autocast(arith, device):
                out = model(x, val.sigma[i:i + 256].to(device))
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
                   world: int = 1, arith: str = "auto") -> dict:
    """Validation without clean targets: ``val_loss``, the objective's held-out loss on the held-out
    noisy images (its inputs from (val_seed, id, 0): the same every epoch, so epochs compare), and
    ``residual_std``, the mean over images of the std of (input - output) (0-1 scale): about the noise
    sigma once the model removes the noise and nothing else, lower while it leaves noise in, higher
    when it also removes detail.
    Means over the whole split (all ranks); ``output_spread`` as in :func:`validate`."""
    device = torch.device(device)
    objective = objective_of(cfg)
    run = _forward(model, device, arith)
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
            extra = objective.draw(x, ids, cfg.val_seed, 0, target=target)
            x = _to_nchw(x).to(device)
            loss += float(objective.held_out_loss(run, x, sigma, {k: v.to(device) for k, v in extra.items()})) * n
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


def _validate_mixed(model: torch.nn.Module, val: Validation, device: torch.device,
                    arith: str) -> tuple[float, float, float]:
    """Sums of PSNR and SSIM over this rank's images of mixed sizes, run the way the denoise job runs
    a model (dae.inference.denoise_images: pooled by shape, tiled when large, bf16 on GPU), and the
    output spread over their common top-left window."""
    from ..inference import denoise_images
    from ..inference_spec import InferenceSpec

    model.eval()
    spec = InferenceSpec(device=str(device), precision=arith)
    outs = [np.clip(o, 0, 1) for o in denoise_images(model, val.noisy, spec, sigmas=val.sigma.tolist())]
    model.train()
    ps = sum(float(metrics.psnr(o, c)) for o, c in zip(outs, val.clean))
    ss = sum(float(metrics.ssim(o, c)) for o, c in zip(outs, val.clean))
    h, w = min(o.shape[0] for o in outs), min(o.shape[1] for o in outs)
    spread = float(np.stack([o[:h, :w] for o in outs]).std(axis=0).mean()) if len(outs) > 1 else 0.0
    return ps, ss, spread


def sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Every rank takes rank 0's buffers. BatchNorm running stats drift per rank after the last
    step (DDP broadcasts rank 0's buffers only at the start of each forward): validation on every
    rank must use rank 0's, the ones the checkpoint holds."""
    if world > 1:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, 0)


# ---------------------------------------------------------------- the loop on a Ray Train worker


@dataclass
class Worker:
    """One rank's run: its data, model, optimizer and schedule, and how far the run got."""

    lc: LoopConfig
    rank: int
    world: int
    device: torch.device
    val: Validation
    data: TrainData
    raw_model: torch.nn.Module  # validated and checkpointed
    model: torch.nn.Module  # trained: raw_model on its device, in DDP when world > 1
    opt: torch.optim.Optimizer
    sched: object
    objective: Objective
    state: TrainState
    total_steps: int
    setup_s: float  # loading the data: in the first epoch's row of this attempt
    arith: str = "fp32"  # the resolved --precision of the forward passes
    start_epoch: int = 0
    tracker: Tracker | None = None  # rank 0 only: TensorBoard, and MLflow with --tracker mlflow
    figures: EpochFigures | None = None  # rank 0 only: curves.png and samples.png every epoch

    @property
    def per_worker(self) -> int:
        return self.lc.cfg.batch_size // self.world


def setup_worker(lc: LoopConfig, rank: int, world: int, device: torch.device) -> Worker:
    """This rank's data from the trainer's datasets, a seeded model (or --init's weights), optimizer and
    schedule; a replaced worker group, or a rerun of the run, restores the latest checkpoint."""
    import ray.train
    import ray.train.torch

    cfg = lc.cfg
    t_setup = time.perf_counter()
    pairs = (lambda name: ray.train.get_dataset_shard(name)) if cfg.pair_data else (lambda name: None)
    val = load_validation(ray.train.get_dataset_shard("val"), cfg, rank, world, device, clean=lc.clean_val,
                          pair_it=None if lc.clean_val else pairs("pair_val"))
    data = load_train(ray.train.get_dataset_shard("train"), lc, rank, world, pair_it=pairs("pair_train"))
    setup_s = time.perf_counter() - t_setup
    total_steps = max(1, -(-samples_per_epoch(cfg, data.rows) // (cfg.batch_size // world))) * cfg.epochs

    torch.manual_seed(cfg.seed)
    raw_model = create_model(cfg.model, channels=lc.channels, **cfg.model_kwargs)
    if cfg.init:  # fine-tuning; a resumed run's checkpoint below replaces these weights
        init_weights(raw_model, cfg.init)
    precision.prepare_model(raw_model)  # channels_last weights (before DDP, which keeps their layout)
    model = ray.train.torch.prepare_model(raw_model)  # device placement + DDP when world > 1
    model = precision.compiled(model, cfg.compile)  # --compile: the trained module (DDP's too), not raw_model
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt, total_steps)
    state = TrainState()
    if (ckpt := ray.train.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            state = restore(d, raw_model, opt, sched, cfg, total_steps)
        if rank == 0:
            say(f"resumed run {cfg.run_name} after epoch {state.epoch} (attempt {state.attempt})")
    arith = precision.resolve(cfg.precision, device)
    if rank == 0:
        say(f"precision {arith} ({cfg.precision} on {torch.device(device).type}), channels_last"
            + (", torch.compile" if cfg.compile else ""))
    w = Worker(lc, rank, world, torch.device(device), val, data, raw_model, model, opt, sched, objective_of(cfg),
               state, total_steps, setup_s, arith, start_epoch=state.epoch)
    if rank == 0:
        w.figures = EpochFigures(cfg, lc.out, list(lc.val_files), lc.clean_val)
        w.tracker = guarded(lambda: start_trackers(lc, state.attempt, state.history, total_steps // cfg.epochs),
                            "start")
    return w


def train_and_validate(w: Worker, epoch: int) -> dict:
    """Epoch ``epoch`` (counted from 0): its metrics row, appended to the run's history."""
    cfg = w.lc.cfg
    on_step = None
    if w.tracker is not None and cfg.log_every_steps > 0:
        first = epoch * (w.total_steps // cfg.epochs)  # the global step from the epoch: a resumed run continues it

        def on_step(steps, loss):
            if (first + steps) % cfg.log_every_steps == 0:
                w.tracker.log_step(first + steps, {"train_loss": float(loss), "lr": w.opt.param_groups[0]["lr"]})
    row = train_one_epoch(w.model, batches(w.data, cfg, epoch, w.rank, w.per_worker, w.objective), w.opt, w.sched,
                          w.objective.loss_at(epoch), w.device, w.world,
                          steps_left=w.total_steps - w.state.steps_done, arith=w.arith, on_step=on_step)
    w.state.steps_done += row.pop("steps")
    t1 = time.perf_counter()
    sync_buffers(w.raw_model, w.world)
    row = {"epoch": epoch + 1, **row, **validate(w.raw_model, w.val, w.device, w.world, cfg, w.arith),
           "val_s": time.perf_counter() - t1, "lr": w.opt.param_groups[0]["lr"], "attempt": w.state.attempt,
           "workers": w.world, "precision": w.arith, "setup_s": w.setup_s if epoch == w.start_epoch else 0.0}
    w.state.epoch = epoch + 1
    w.state.history.append(row)
    return row


def report_epoch(w: Worker, row: dict) -> None:
    """Rank 0 saves the checkpoint and rewrites metrics.jsonl; every rank reports the row to Ray Train
    (rank 0 with the checkpoint). Adds ``report_s`` to the row."""
    import ray.train

    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dae-ckpt-") as tmp:
        if w.rank == 0:
            save_checkpoint(tmp, w.raw_model, w.opt, w.sched, w.state, w.lc, w.total_steps)
            write_metrics(w.lc.out, w.state.history)
        ray.train.report({k: row[k] for k in REPORTED if k in row},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp) if w.rank == 0 else None)
    row["report_s"] = time.perf_counter() - t2  # after the save: metrics.jsonl gets it with the next epoch's rewrite


def quiet_ray_reports() -> None:
    """Ray Train's worker lines at every report, "Reporting training result N: TrainingReport(...every
    metric...)" and "Checkpoint successfully created at: ...", repeat what say_epoch prints, on every
    rank: shown at --log-level debug only (Ray 2.58's loggers; the first is named by its file)."""
    from ..jobutil import log_level

    if log_level() <= logging.DEBUG:
        return
    from ray.train.v2._internal.execution import context, storage

    for name in (context.__file__, storage.__name__):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_loop_per_worker(lc: LoopConfig) -> None:
    """Per-worker training function (runs in each Ray Train worker)."""
    import ray.train
    import ray.train.torch

    quiet_ray_reports()
    ctx = ray.train.get_context()
    torch.set_num_threads(lc.torch_threads)
    w = setup_worker(lc, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    t_run = time.perf_counter()
    for epoch in range(w.start_epoch, lc.cfg.epochs):
        if lc.on_epoch_start is not None:  # tests only (e.g. a worker dies here)
            lc.on_epoch_start(epoch + 1, w.rank, w.world)
        row = train_and_validate(w, epoch)
        report_epoch(w, row)
        track_epoch(w, row)
        if w.rank == 0:
            say_epoch(row, lc.cfg, time.perf_counter() - t_run)
    if w.tracker is not None:
        guarded(w.tracker.end, "end")
