"""What a run tells: the figures reported every epoch (:data:`REPORTED`) and the one that picks the best
checkpoint (:func:`score_metric`), the workers' epoch lines, ``metrics.jsonl``, ``curves.png``,
``samples.png``, the job's closing lines (:func:`format_summary`), and the
collapse warning (a model that outputs one image for every input).

    OUT/metrics.jsonl   one row per epoch of the run's lineage (rewritten whole by rank 0 every epoch)
    OUT/curves.png      train loss and validation PSNR (held-out loss on noisy-only data) per epoch
    OUT/samples.png     held-out images clean, noisy and denoised the way jobs.denoise runs a model
                        (both redrawn by rank 0 every epoch; samples.png at the end with the best model)
    OUT/summary.json    what run() returns, less the history (:func:`format_summary` prints it)

Rules it keeps: a worker's line is one ``logging`` line, never print() (Ray Train V2 echoes printed
lines twice); object stores cannot append, so metrics.jsonl is rewritten whole.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
import torch

from .. import shards, storage
from ..config import config_dict
from ..inference_spec import InferenceSpec
from ..noise import add_noise_batch, noise_sigmas
from .config import LoopConfig, TrainConfig
from .tracking import MlflowTracker, TensorBoardTracker, Tracker, Trackers

REPORTED = ("epoch", "train_loss", "val_psnr", "val_ssim", "noisy_psnr", "noisy_ssim", "val_loss", "residual_std",
            "images_per_s")

# Below this output spread (std across validation images, mean over pixels, in [0, 1] units) the model
# outputs one image whatever the input. Seen: conv28k/keras_blog with MSE on MNIST reach 0 exactly
# (sigmoid saturated at 0 on the mostly black digits); trained ones measured 0.10-0.26 (tests, sweep).
COLLAPSE_SPREAD = 1e-3
# The trackers' copy of samples.png (TensorBoard stores one per epoch): at most this many pixels a side
# (8 photo crops at full size would add megabytes to the event file every epoch).
TRACKED_IMAGE_MAX = 1600


def score_metric(clean_val: bool) -> tuple[str, str]:
    """What picks the best checkpoint: validation PSNR; on a noisy-only held-out split (nothing to
    score against) the last epoch. The held-out self-supervised loss does not rank denoisers: a model
    that barely denoises can score lower (measured: a DnCNN, nb2nb on camera tiles with 8-bit AWGN 25, epoch 2
    0.0163 at -0.1 dB against the clean tiles, epoch 12 0.0180 at +2.5 dB)."""
    return ("val_psnr", "max") if clean_val else ("epoch", "max")


def collapsed(row: dict) -> bool:
    """Whether a metrics row (an epoch) comes from a collapsed model (rows without the field: no)."""
    return row.get("output_spread", 1.0) < COLLAPSE_SPREAD


def collapse_message(cfg: dict) -> str:
    return (f"the model outputs the same image for every input (it collapsed; output spread < {COLLAPSE_SPREAD:g}). "
            f"{cfg['model']} with --loss {cfg['loss']}, --lr {cfg['lr']:g}: for a sigmoid-output model on mostly dark "
            f"images try --loss bce (the seeds' loss), or a lower --lr")


def val_line(row: dict) -> str:
    if "val_psnr" in row:
        return (f"val PSNR {row['val_psnr']:.2f} dB (noisy {row['noisy_psnr']:.2f}), SSIM {row['val_ssim']:.4f} "
                f"(noisy {row['noisy_ssim']:.4f})")
    return f"held-out loss {row['val_loss']:.5f}, residual std {row['residual_std'] * 255:.2f}/255 (no clean images)"


# ---------------------------------------------------------------- on the workers


def say(msg: str) -> None:
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


def say_epoch(row: dict, cfg: TrainConfig, elapsed: float) -> None:
    say(f"epoch {row['epoch']}/{cfg.epochs}: loss {row['train_loss']:.5f}, {val_line(row)}, "
        f"{row['images_per_s']:.0f} images/s, train {row['train_s']:.1f}s val {row['val_s']:.1f}s "
        f"ckpt {row['report_s']:.1f}s, {elapsed:.0f}s elapsed")
    if collapsed(row):
        say(f"warning: {collapse_message(config_dict(cfg))}")


def write_metrics(out: str, history: list[dict]) -> None:
    # one line per epoch of this run's lineage (rewritten whole: object stores cannot append)
    storage.write_bytes(storage.join(out, "metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in history).encode())


# ---------------------------------------------------------------- on the driver, after the fit


def read_metrics(out: str) -> list[dict]:
    text = storage.read_bytes(storage.join(out, "metrics.jsonl")).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def save_curves(history: list[dict], cfg: TrainConfig, clean_val: bool, path: str) -> None:
    from ..viz import save_curves as plot

    curves = {"train loss": [h["train_loss"] for h in history]}
    if clean_val:
        curves["val PSNR (dB)"] = [h["val_psnr"] for h in history]
    else:
        curves["held-out loss"] = [h["val_loss"] for h in history]
    plot(curves, path, title=f"{cfg.model}, {cfg.objective}, {cfg.noise}")


def _read_samples(files: list[str], n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The first ``n`` held-out images by id (from the first shard): (H, W, C) float32 arrays and ids."""
    t = shards.read_shard(files[0], ["id", "image"])
    b = shards.decode_batch({"id": np.asarray(t.column("id").to_pylist(), dtype=object),
                             "image": t.column("image").to_pylist()})
    order = np.argsort(np.asarray(b["id"]).astype(str), kind="stable")[:n]
    return [np.asarray(b["image"][i], dtype=np.float32) for i in order], np.asarray(b["id"]).astype(str)[order]


def sample_inputs(cfg: TrainConfig, files: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """samples.png's inputs: the first ``cfg.samples`` held-out images by id, with the validation noise
    (clean, noisy, sigmas); read once per run (rank 0 redraws the figure every epoch)."""
    images, ids = _read_samples(files, cfg.samples)
    noisy = add_noise_batch(images, ids, cfg.noise_spec, cfg.val_seed, 0)
    return images, list(noisy), noise_sigmas(ids, cfg.noise_spec, cfg.val_seed, 0).tolist()


def samples_grid(model: torch.nn.Module, inputs: tuple, clean: bool = True, spec=None):
    """samples.png as a PIL image: rows clean (unless ``clean`` is False: a noisy-only split), noisy and
    denoised the way jobs.denoise does it (dae.inference.denoise_images; ``spec``: its device and
    precision, default the model's device)."""
    from ..inference import denoise_images
    from ..viz import grid

    images, noisy, sigmas = inputs
    training = model.training
    model.eval()
    try:
        den = [np.clip(d, 0, 1) for d in denoise_images(model, noisy, spec, sigmas=sigmas)]
    finally:
        model.train(training)
    rows = [("clean", list(images))] if clean else []
    return grid(rows + [("noisy", noisy), ("denoised", den)])


def save_samples(model: torch.nn.Module, cfg: TrainConfig, files: list[str], path: str, clean: bool = True) -> None:
    """samples.png: the first ``cfg.samples`` held-out images clean, with the validation noise, and
    denoised the way jobs.denoise does it (dae.inference.denoise_images); on a noisy-only split the
    images as they are and denoised."""
    from ..viz import save_png

    save_png(samples_grid(model, sample_inputs(cfg, files), clean), path)


class EpochFigures:
    """Rank 0 redraws ``curves.png`` and ``samples.png`` (with the model as it is) after every epoch, so
    a long run has something to look at; the driver draws them once more at the end, samples.png with
    the best model. :meth:`draw` returns the samples grid for the trackers."""

    def __init__(self, cfg: TrainConfig, out: str, val_files: list[str], clean_val: bool):
        self.cfg, self.out, self.files, self.clean_val = cfg, out, list(val_files), clean_val
        self.inputs = None

    def draw(self, history: list[dict], model: torch.nn.Module, spec=None) -> dict[str, np.ndarray]:
        from ..viz import save_png

        save_curves(history, self.cfg, self.clean_val, storage.join(self.out, "curves.png"))
        if self.cfg.samples <= 0 or not self.files:
            return {}
        if self.inputs is None:
            self.inputs = sample_inputs(self.cfg, self.files)
        image = samples_grid(model, self.inputs, self.clean_val, spec)
        save_png(image, storage.join(self.out, "samples.png"))
        image.thumbnail((TRACKED_IMAGE_MAX, TRACKED_IMAGE_MAX))  # in place; only ever shrinks
        return {"samples": np.asarray(image)}


# ---------------------------------------------------------------- rank 0: figures and trackers every epoch


def start_trackers(lc: LoopConfig, attempt: int, done: list[dict], steps_per_epoch: int) -> Tracker:
    """Rank 0's trackers, started: TensorBoard in OUT/tensorboard (a resumed run's stored events trimmed
    to its checkpoint, ``done`` its epochs so far) and, with --tracker mlflow, the MLflow run the driver
    opened (its metrics only: the driver logs the params and artifacts and ends it)."""
    trackers: list[Tracker] = [TensorBoardTracker(lc.out, steps_per_epoch, attempt)]
    if lc.mlflow:
        os.environ.update(lc.mlflow["env"])  # credentials and TLS settings of the driver's MLflow server
        trackers.append(MlflowTracker(lc.mlflow["run_id"], lc.mlflow["uri"], ends_run=False))
    tracker = Trackers(trackers)
    tracker.start(params=storage.redact(config_dict(lc.cfg)), done=done)
    return tracker


def guarded(fn, what: str):
    """``fn()``, or None after a warning line: a tracker that fails (a server gone) does not stop training."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reported, and training goes on
        say(f"warning: tracking ({what}) failed, training goes on: {type(e).__name__}: {str(e).splitlines()[0]}")
        return None


def track_epoch(w, row: dict) -> None:
    """Rank 0 (``w``: its dae.train.loop.Worker), after the epoch's checkpoint: curves.png and
    samples.png redrawn, the epoch's row and samples grid to the trackers, and the two figures as
    artifacts (MLflow shows them mid-run)."""
    if w.figures is None:
        return
    spec = InferenceSpec(device=str(w.device), precision=w.arith)
    images = guarded(lambda: w.figures.draw(w.state.history, w.raw_model, spec), "figures") or {}
    if w.tracker is not None:
        figures = {name: storage.join(w.lc.out, name) for name in ("curves.png", "samples.png")}
        guarded(lambda: (w.tracker.log_epoch(row, images), w.tracker.log_artifacts(figures)), "epoch")


def format_summary(s: dict) -> str:
    b, cfg = s["best"], s["config"]
    lines = [
        f"run {cfg['run_name']}: {cfg['model']} on {cfg['data']} ({cfg['noise']}, {cfg['loss']}, {cfg['optimizer']}/"
        f"{cfg['schedule']}, {len(s['history'])} epoch(s) in the history, {cfg['workers']} worker(s), "
        f"{s['data_mode']} data)",
        f"  best epoch {b['epoch']}: {val_line(b)}"
        + (f", {b['val_psnr'] - b['noisy_psnr']:+.2f} dB" if "val_psnr" in b else ""),
        f"  last epoch {s['last']['epoch']}: {val_line(s['last'])}, {s['last']['images_per_s']:.0f} images/s",
        f"  time: data {s['data_s']:.1f}s, training {s['fit_s']:.1f}s, total {s['total_s']:.1f}s",
        f"  best model:  {s['best_model']}",
        f"  outputs:     {s['out']}/(metrics.jsonl, curves.png, samples.png, tensorboard/, config.resolved.json, "
        f"summary.json)",
        f"  checkpoints: {s['run_dir']}",
    ]
    if s.get("mlflow_run_id"):
        lines.append(f"  MLflow run:  {s['mlflow_run_id']} (experiment {cfg['mlflow_experiment']!r})")
    if s.get("collapsed"):
        lines.append(f"  WARNING: {collapse_message(cfg)}")
    return "\n".join(lines)
