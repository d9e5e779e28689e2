"""The logic of ``python -m jobs.gpu_check`` (its docstring has the commands).

Everything it uses is made on the spot (only the checkout travels to the GPU machine): synthetic
images with structure (smooth random fields, disks and rectangles, a fine texture), written as shards
with ``dae.shards.ShardWriter`` into ``--work`` (a temp dir, removed at the end unless given). Steps:

  1. versions: Python, torch, CUDA, cuDNN, Ray, pyarrow, the GPU's name (torch and nvidia-smi);
  2. train: ``dae.train.run(TrainConfig(...))`` trains the U-Net (width 32) with 1 GPU worker for 2
     epochs (bf16 autocast: the train stage turns it on by itself on a CUDA device) on 50,000 28x28
     RGB images; the same model, data, noise, batch, Adam + one-cycle and bf16 in a plain PyTorch
     loop in this process. Target: the job's steady (last) epoch >= 0.9x the plain loop's images/s
     (both timed the same way: the epoch's training loop, validation and checkpoints excluded);
  3. denoise: ``dae.denoise.run(DenoiseConfig(...))`` with the ``denoise-gpu`` preset (1 GPU actor)
     on the 50,000 small images and on 1,000 481x321 RGB photos, against a plain single-process GPU
     script (read, decode, forward, encode, write Parquet) with the same forward settings. Reported:
     images/s, GPU utilization sampled every 500 ms by ``nvidia-smi ... -lms 500`` during the run,
     and the CPU time of decode (``dae.inference.prepare_batch``), encode (``finish_batch``) and the
     Parquet write, timed IN-PROCESS on one sample batch (single thread): with the task CPUs they
     give the CPU stages' ceiling, and the plain script's forward time the GPU's, so the figures say
     which one bounds the job. Targets: job >= 2x the plain script, GPU >= 60% busy (mean over the
     active span: first to last non-zero sample), or the figures showing which CPU stage bounds it;
  4. agreement: denoise outputs with 1 and 2 GPU actors (0.5 GPU each) within one 8-bit level
     (``read_outputs`` tables, ``denoised`` PNGs decoded, on a subset of each set); tiled vs whole-image
     inference (``dae.inference.denoise_images``, tile 96 / overlap 24 vs one huge tile) within the
     tolerances of tests/unit/test_denoise.py (max < 0.01, mean < 2e-4), in fp32 and in bf16.

Output: the figures on stdout and in ``OUT/gpu_check.json`` (written after every step, so a run cut
short still leaves what it measured); ``"skipped"`` lists what did not run and why. ``--device cpu
--small`` runs every step at tiny sizes on CPU (1 epoch, 1 and 2 CPU actors), skipping only what needs
a GPU (nvidia-smi, bf16). Exit status: 0 when every step ran and the agreement checks hold (speed
targets are figures: met or missed, they do not change it), 1 otherwise, 2 when ``--device cuda`` is
asked and no GPU is visible (one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dae import inference, metrics, shards
from dae.checkpoint import load_model
from dae.config import build_config
from dae.denoise import DenoiseConfig, read_outputs, run as denoise_run
from dae.jobutil import setup_logging
from dae.models import create_model
from dae.noise import NoiseSpec, add_noise_batch
from dae.reference import load_split, nchw
from dae.train import TrainConfig, run as train_run

log = logging.getLogger("dae")

NO_GPU = ("error: no CUDA GPU is visible (torch.cuda.is_available() is False); run on a GPU machine or "
          "pass --device cpu for a dry run")
NVIDIA_SMI_UTIL = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"]

# Full sizes (1 GPU, 16 CPUs, 3-4 minutes estimated) and the CPU dry run's (2 cores, about 1-2 minutes).
FULL = dict(train_images=50_000, test_images=5_000, small_rows_per_shard=5_000, photos=1_000, photo_hw=(321, 481),
            photo_rows_per_shard=50, width=32, epochs=2, batch_size=256, agree_small=10_000, agree_photos=200,
            tile_hw=(320, 480))
SMALL = dict(train_images=320, test_images=64, small_rows_per_shard=100, photos=8, photo_hw=(80, 120),
             photo_rows_per_shard=2, width=8, epochs=1, batch_size=64, agree_small=200, agree_photos=4,
             tile_hw=(160, 148))
SMALL_HW = 28
BICUBIC = getattr(Image, "Resampling", Image).BICUBIC  # the GPU machine's Pillow may be older or newer
NOISE = "gaussian:0.3"
LR, SEED, VAL_SEED = 2e-3, 0, 1234  # TrainConfig's val_seed default: the plain loop validates on the same noise
# tests/unit/test_denoise.py::test_tiles_match_whole_image_within_tolerance: tiles and tolerances
TILE, TILE_OVERLAP, TILE_MAX, TILE_MEAN = 96, 24, 0.01, 2e-4
TRAIN_TARGET, DENOISE_TARGET, GPU_BUSY_TARGET = 0.9, 2.0, 60.0


def get_args_parser(doc: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda: the real check; cpu: a dry run")
    p.add_argument("--small", action="store_true", help="tiny sizes (a few hundred images, 1 epoch)")
    p.add_argument("--dry-run", action="store_true", help="the same as --device cpu --small")
    p.add_argument("--out", default="gpu_check_out", help="where gpu_check.json goes")
    p.add_argument("--work", default="", help="scratch dir for shards, runs and outputs (default: a temp dir, "
                                              "removed at the end)")
    return p


def cuda_visible() -> bool:
    with warnings.catch_warnings():  # a machine without a driver may warn here; the caller says it in one line
        warnings.simplefilter("ignore")
        return torch.cuda.is_available()


def say(msg: str) -> None:
    print(msg, flush=True)


def _rate(x: float) -> str:
    """An images/s figure: no decimals when big, some when small (a dry run's photos go at ~1/s)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _round(x, nd: int = 4):
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------- synthetic data, made on the spot


def _lerp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights: a smooth upsampling as one matrix product."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def small_images(n: int, seed: int, size: int = SMALL_HW) -> np.ndarray:
    """(n, size, size, 3) uint8: a smooth random field with a disk and a rectangle of random colors on it."""
    rng = np.random.default_rng(seed)
    a = _lerp_matrix(4, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for s in range(0, n, 5000):  # chunks: bounded float memory for 50,000 images
        k = min(5000, n - s)
        img = np.einsum("hi,nijc,wj->nhwc", a, rng.random((k, 4, 4, 3), dtype=np.float32), a,
                        optimize=True) * 0.6 + 0.1
        cy, cx = rng.uniform(4, size - 4, (2, k, 1, 1)).astype(np.float32)
        r = rng.uniform(3, 9, (k, 1, 1)).astype(np.float32)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img = np.where(disk[..., None], rng.random((k, 1, 1, 3), dtype=np.float32), img)
        y0, x0 = rng.integers(0, size - 6, (2, k, 1, 1))
        h, w = rng.integers(4, 14, (2, k, 1, 1))
        rect = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        img = np.where(rect[..., None], rng.random((k, 1, 1, 3), dtype=np.float32), img)
        out[s:s + k] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


def photo(seed: int, i: int, hw: tuple[int, int], texture: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 'photo': a bicubic-smooth random field, a few ellipses, rectangles and lines, and
    a fine texture (so its PNG is photo-sized: a flat synthetic image would decode and encode faster
    than real photos and flatter the CPU stages)."""
    rng = np.random.default_rng([seed, i])
    h, w = hw
    img = Image.fromarray((rng.random((5, 7, 3)) * 200 + 20).astype(np.uint8)).resize((w, h), BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        color = tuple(rng.integers(0, 256, 3).tolist())
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        else:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(1, 6)))
    shift = (int(rng.integers(texture.shape[0])), int(rng.integers(texture.shape[1])))
    tex = np.roll(texture, shift, axis=(0, 1))[:h, :w]
    return np.clip(np.asarray(img, np.int16) + tex, 0, 255).astype(np.uint8)


def write_sets(work: str, sz: dict) -> dict:
    """WORK/small/{train,test} (28x28 RGB) and WORK/photos/photos (H x W RGB); returns what was written."""
    t0 = time.perf_counter()
    threads = max(1, min(32, os.cpu_count() or 1))  # PIL's PNG encoder and numpy release the GIL
    small_root, photo_root = os.path.join(work, "small"), os.path.join(work, "photos")
    with ThreadPoolExecutor(threads) as pool:
        for split, n, seed in (("train", sz["train_images"], 1), ("test", sz["test_images"], 2)):
            imgs = small_images(n, seed)
            chunks = pool.map(lambda s: [shards.encode_png(a) for a in imgs[s:s + 500]], range(0, n, 500))
            pngs = [png for chunk in chunks for png in chunk]
            with shards.ShardWriter(small_root, split, dataset="gpu-check-small", source="synthetic (jobs.gpu_check)",
                                    rows_per_shard=sz["small_rows_per_shard"]) as w:
                for i, png in enumerate(pngs):
                    w.add(id=f"small/{split}/{i:06d}", png=png, height=SMALL_HW, width=SMALL_HW, channels=3)
        h, w_ = sz["photo_hw"]
        texture = np.random.default_rng(3).normal(0, 4, (h + 64, w_ + 64, 3)).round().astype(np.int16)
        pngs = pool.map(lambda i: shards.encode_png(photo(4, i, (h, w_), texture)), range(sz["photos"]))
        with shards.ShardWriter(photo_root, "photos", dataset="gpu-check-photos", source="synthetic (jobs.gpu_check)",
                                rows_per_shard=sz["photo_rows_per_shard"]) as wr:
            for i, png in enumerate(pngs):
                wr.add(id=f"photos/{i:05d}", png=png, height=h, width=w_, channels=3)
    photo_bytes = sum(os.path.getsize(f) for f in shards.list_shards(photo_root, "photos"))
    return {"small": {"root": small_root, "train": sz["train_images"], "test": sz["test_images"],
                      "size": [SMALL_HW, SMALL_HW, 3]},
            "photos": {"root": photo_root, "images": sz["photos"], "size": [h, w_, 3],
                       "mean_png_kb": round(photo_bytes / max(1, sz["photos"]) / 1024, 1)},
            "seconds": round(time.perf_counter() - t0, 2)}


def subset(root: str, split: str, rows: int, rows_per_shard: int, dest: str) -> str:
    """DEST/SPLIT with the first shard files of ROOT/SPLIT holding about ``rows`` rows (hard links)."""
    files = shards.list_shards(root, split)[: max(1, math.ceil(rows / rows_per_shard))]
    os.makedirs(os.path.join(dest, split), exist_ok=True)
    for f in files:
        target = os.path.join(dest, split, os.path.basename(f))
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)
    return dest


# ---------------------------------------------------------------- versions, GPU utilization


def versions(device: str) -> dict:
    import ray

    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "ray": ray.__version__, "pyarrow": pa.__version__, "numpy": np.__version__, "cpus": os.cpu_count()}
    if device == "cuda":
        v["gpu_name"] = torch.cuda.get_device_name(0)
        v["gpus_visible"] = torch.cuda.device_count()
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            v["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            v["nvidia_smi"] = f"not available: {e}"
    return v


class GpuSampler:
    """``nvidia-smi --query-gpu=utilization.gpu ... -lms 500`` in the background; each line is
    timestamped as it arrives."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        self.error = ""

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(NVIDIA_SMI_UTIL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as e:
            self.error = f"nvidia-smi did not start: {e}"
            return self
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip().split(",")[0])))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.thread.join(timeout=10)

    def summary(self) -> dict:
        vals = [u for _, u in self.samples]
        if not vals:
            return {"samples": 0, "error": self.error or "no samples"}
        busy = [i for i, u in enumerate(vals) if u > 0]
        span = vals[busy[0]:busy[-1] + 1] if busy else []
        return {"samples": len(vals), "mean_pct": round(float(np.mean(vals)), 1),
                "active_span_mean_pct": round(float(np.mean(span)), 1) if span else 0.0,
                "active_span_s": round(self.samples[busy[-1]][0] - self.samples[busy[0]][0], 1) if busy else 0.0,
                "median_pct": float(np.median(vals)), "max_pct": max(vals)}


# ---------------------------------------------------------------- training: the job and the plain loop


def train_job(root: str, work: str, sz: dict, device: str) -> dict:
    cfg = TrainConfig(data=root, model="unet", model_kwargs={"width": sz["width"]}, noise=NOISE, loss="mse",
                      optimizer="adam", schedule="onecycle", lr=LR, epochs=sz["epochs"], batch_size=sz["batch_size"],
                      workers=1, gpus_per_worker=1.0 if device == "cuda" else 0.0, seed=SEED, val_seed=VAL_SEED,
                      storage=os.path.join(work, "runs"), run_name="gpu-check", out=os.path.join(work, "train"),
                      num_to_keep=1, max_failures=0, samples=4)
    t0 = time.perf_counter()
    s = train_run(cfg)
    steady = s["history"][-1]  # the last epoch: epoch 1 also pays the warm-up (cuDNN, allocator)
    return {"config": dataclasses.asdict(cfg), "wall_s": round(time.perf_counter() - t0, 2),
            "torch_threads": s["torch_threads"], "epochs": [
                {k: _round(h[k]) for k in ("epoch", "images_per_s", "train_s", "val_psnr", "train_loss")}
                for h in s["history"]],
            "steady_epoch": steady["epoch"], "steady_images_per_s": _round(steady["images_per_s"], 1),
            "val_psnr": _round(steady["val_psnr"]), "noisy_psnr": _round(steady["noisy_psnr"]),
            "best_model": s["best_model"]}


def plain_train(root: str, sz: dict, device: str, threads: int) -> dict:
    """The train stage's loop without Ray, in this process: same rows in the same order (rank 0 of 1,
    permutation from (seed, epoch, 0)), same noise, model init, Adam + one-cycle, bf16 autocast on GPU,
    float32 MSE, and the same timing (the epoch's loop, no validation; no CUDA sync, as the job)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    use_cuda = dev.type == "cuda"
    spec = NoiseSpec.parse(NOISE)
    x_train, id_train = load_split(root, "train")
    x_val, id_val = load_split(root, "test")
    val_clean = nchw(x_val)
    val_noisy = nchw(add_noise_batch(x_val, id_val, spec, VAL_SEED, 0))
    torch.manual_seed(SEED)
    model = create_model("unet", channels=3, width=sz["width"]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    bs, n = sz["batch_size"], len(x_train)
    steps = math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=max(steps * sz["epochs"], 2))
    epochs = []
    for epoch in range(sz["epochs"]):
        perm = np.random.default_rng([SEED, epoch, 0]).permutation(n)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        t0 = time.perf_counter()
        for b in range(0, n, bs):
            idx = np.sort(perm[b:b + bs])
            clean = x_train[idx]
            noisy = add_noise_batch(clean, id_train[idx], spec, SEED, epoch)
            clean_t, noisy_t = nchw(clean).to(dev, non_blocking=True), nchw(noisy).to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
                out = model(noisy_t)
            loss = F.mse_loss(out.float(), clean_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach().double() * len(idx)
        train_s = time.perf_counter() - t0
        epochs.append({"epoch": epoch + 1, "images_per_s": _round(n / train_s, 1), "train_s": _round(train_s),
                       "train_loss": _round(float(loss_sum) / n, 6)})
    model.eval()
    ps = []
    with torch.no_grad():
        for i in range(0, len(val_clean), 256):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
                out = model(val_noisy[i:i + 256].to(dev))
            ps.append(metrics.psnr(out.float().clamp(0, 1).cpu(), val_clean[i:i + 256]))
    return {"epochs": epochs, "steady_images_per_s": epochs[-1]["images_per_s"],
            "val_psnr": _round(torch.cat(ps).mean()), "noisy_psnr": _round(metrics.psnr(val_noisy, val_clean).mean()),
            "torch_threads": threads}


# ---------------------------------------------------------------- denoise: the job, the plain script, CPU stages


def denoise_config(device: str, actors: int, **paths) -> DenoiseConfig:
    """The ``denoise-gpu`` preset with a fixed pool of ``actors``; on CPU, half-CPU single-thread
    actors (2 of them fit next to the tasks on 2 cores) and the CPU forward defaults."""
    values: dict = dict(min_actors=actors, max_actors=actors, overwrite=True, progress_every=30.0, **paths)
    if device == "cuda":
        values["gpus_per_actor"] = 1.0 / actors
    else:
        values.update(device="cpu", cpus_per_actor=0.5, forward_batch=64, forward_pixels=inference.FORWARD_PIXELS)
    return build_config(DenoiseConfig, values, preset="denoise-gpu")


def forward_kwargs(cfg: DenoiseConfig) -> dict:
    return dict(tile=cfg.tile, overlap=cfg.tile_overlap, forward_batch=cfg.forward_batch,
                forward_pixels=cfg.forward_pixels, deterministic=cfg.deterministic, bf16=cfg.bf16)


def denoise_job(cfg: DenoiseConfig, sample_gpu: bool) -> dict:
    sampler = GpuSampler() if sample_gpu else None
    t0 = time.perf_counter()
    if sampler:
        with sampler:
            s = denoise_run(cfg)
    else:
        s = denoise_run(cfg)
    wall = time.perf_counter() - t0
    a = s["actors"]
    return {"images": s["rows_out"], "failed": s["rows_failed"], "wall_s": round(wall, 2),
            "images_per_s": round(s["rows_out"] / wall, 1), "pipeline_s": s["pipeline_s"],
            "pipeline_images_per_s": s["images_per_s"], "actors": a["max_actors"], "actor_cpus": a["actor_cpus"],
            "actor_gpus": a["actor_gpus"], "batch_size": a["batch_size"], "device": a["device"],
            "gpu_utilization": sampler.summary() if sampler else None, "output": cfg.output}


def plain_denoise(root: str, split: str, model_dir: str, out_dir: str, device: str, kw: dict) -> dict:
    """One process, no Ray: read, decode, forward (the stage's forward settings), encode, write Parquet."""
    model, _ = load_model(model_dir, device)
    times = dict.fromkeys(("read", "decode", "forward", "encode", "write"), 0.0)
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    t0 = time.perf_counter()
    for path in shards.list_shards(root, split):
        t = time.perf_counter()
        table = pq.read_table(path, columns=["id", "image"])
        ids, pngs = table.column("id").to_pylist(), table.column("image").to_pylist()
        times["read"] += time.perf_counter() - t
        t = time.perf_counter()
        imgs = [shards.to_float(shards.decode_png(b)) for b in pngs]
        times["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        den = inference.denoise_images(model, imgs, device, **kw)  # returns host arrays: synced
        times["forward"] += time.perf_counter() - t
        t = time.perf_counter()
        out = [shards.encode_png(shards.from_float(d)) for d in den]
        times["encode"] += time.perf_counter() - t
        t = time.perf_counter()
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "denoised": pa.array(out, pa.binary())}),
                       os.path.join(out_dir, os.path.basename(path)), compression="zstd")
        times["write"] += time.perf_counter() - t
        n += len(ids)
    wall = time.perf_counter() - t0
    return {"images": n, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 1),
            "stage_s": {k: round(v, 3) for k, v in times.items()},
            "forward_images_per_s": round(n / times["forward"], 1) if times["forward"] else None, "output": out_dir}


def cpu_stages(root: str, split: str, rows: int, model_dir: str, device: str, kw: dict) -> dict:
    """Thread CPU seconds per image of decode (``prepare_batch``), encode (``finish_batch``) and the
    Parquet write of the finished rows, on the first ``rows`` rows of the first shard, in this process."""
    t = pq.read_table(shards.list_shards(root, split)[0]).slice(0, rows)
    batch = {name: np.asarray(t.column(name).to_pylist(), dtype=object) for name in t.column_names}
    model, mcfg = load_model(model_dir, device)
    c = time.thread_time()
    prep = inference.prepare_batch(batch, model_channels=int(mcfg["channels"]))
    decode_s = time.thread_time() - c
    prep[inference.DENOISED] = shards.stack_or_ragged(
        inference.denoise_images(model, list(prep[inference.INPUT]), device, **kw))
    c = time.thread_time()
    fin = inference.finish_batch(prep, with_noise=False)
    encode_s = time.thread_time() - c
    c = time.thread_time()
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": pa.array(list(fin["id"]), pa.string()),
                             "denoised": pa.array(list(fin[inference.DENOISED]), pa.binary())}), sink,
                   compression="zstd")
    write_s = time.thread_time() - c
    n = len(batch["id"])
    return {"rows": n, "how": "thread CPU time in-process on one sample batch (single thread)",
            "decode_ms": round(1000 * decode_s / n, 4), "encode_ms": round(1000 * encode_s / n, 4),
            "write_ms": round(1000 * write_s / n, 4)}


def bound(job: dict, plain: dict, cpu: dict, cluster_cpus: float) -> dict:
    """Which stage caps the job: the CPU stages over the CPUs left to the tasks, or the forward pass."""
    task_cpus = max(cluster_cpus - job["actors"] * job["actor_cpus"], 1e-9)
    per_image = (cpu["decode_ms"] + cpu["encode_ms"] + cpu["write_ms"]) / 1000
    cpu_cap = task_cpus / per_image if per_image > 0 else float("inf")
    fwd_cap = plain["forward_images_per_s"] or float("inf")
    shares = {k: round(cpu[f"{k}_ms"] / 1000 / per_image, 3) for k in ("decode", "encode", "write")}
    top = max(shares, key=shares.get)
    who = (f"CPU stages ({top} {100 * shares[top]:.0f}% of their time)" if cpu_cap < fwd_cap
           else "the forward pass (GPU)" if job["device"] == "cuda" else "the forward pass (CPU actors)")
    return {"task_cpus": round(task_cpus, 2), "cpu_stage_ceiling_images_per_s": round(cpu_cap, 1),
            "forward_ceiling_images_per_s": round(fwd_cap, 1), "cpu_stage_shares": shares, "bound_by": who,
            "job_fraction_of_ceiling": round(job["images_per_s"] / min(cpu_cap, fwd_cap), 3)}


# ---------------------------------------------------------------- agreement


def _pngs(table: pa.Table) -> dict[str, bytes]:
    return dict(zip(table.column("id").to_pylist(), table.column("denoised").to_pylist()))


def compare(a: dict[str, bytes], b: dict[str, bytes], expect: int) -> dict:
    """Decoded ``denoised`` PNGs of the ids in both: max difference in 8-bit levels."""
    common = sorted(set(a) & set(b))
    same = sum(a[i] == b[i] for i in common)
    worst = 0
    for i in common:
        if a[i] != b[i]:
            d = np.abs(shards.decode_png(a[i]).astype(np.int32) - shards.decode_png(b[i]).astype(np.int32))
            worst = max(worst, int(d.max()))
    return {"rows": len(common), "expected": expect, "identical_png": same, "max_level_diff": worst,
            "agree": len(common) == expect and worst <= 1}


def tile_check(model, device: str, img: np.ndarray, bf16: bool) -> dict:
    whole = inference.denoise_images(model, [img], device, tile=1 << 20, bf16=bf16)[0]
    tiled = inference.denoise_images(model, [img], device, tile=TILE, overlap=TILE_OVERLAP, bf16=bf16)[0]
    d = np.abs(tiled - whole)
    return {"image": list(img.shape), "tile": TILE, "overlap": TILE_OVERLAP, "max_abs": float(d.max()),
            "mean_abs": float(d.mean()), "agree": bool(d.max() < TILE_MAX and d.mean() < TILE_MEAN),
            # "fp32" convolutions on a GPU run in TF32 when cuDNN allows it (torch's default): say which
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if device == "cuda" and not bf16 else None}


# ---------------------------------------------------------------- the check


class Check:
    """The result dict, written to OUT/gpu_check.json after every step; a failing step is recorded
    (one line in the JSON, the traceback on stderr) and the others still run."""

    def __init__(self, out: str, device: str, small: bool):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "gpu_check.json")
        self.r: dict = {"device": device, "small": small, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "skipped": {}, "errors": {}, "targets": []}
        self.t0 = time.perf_counter()

    def save(self) -> None:
        self.r["wall_s"] = round(time.perf_counter() - self.t0, 1)
        with open(self.path + ".tmp", "w") as fh:
            json.dump(self.r, fh, indent=2, default=str)
        os.replace(self.path + ".tmp", self.path)

    def step(self, name: str, fn, *a, **kw):
        say(f"\n== {name}")
        t = time.perf_counter()
        try:
            value = fn(*a, **kw)
        except Exception as e:  # keep going: one GPU run should bring back every figure it can
            traceback.print_exc()
            self.r["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            value = None
        say(f"   ({name}: {time.perf_counter() - t:.1f}s)")
        self.save()
        return value

    def target(self, name: str, value, target: float, met: bool | None) -> None:
        self.r["targets"].append({"name": name, "value": value, "target": target, "met": met})


def run_check(args, chk: Check) -> None:
    """Steps 1-4 of the module docstring, each figure into ``chk.r`` as it comes."""
    import ray

    device, sz = args.device, (SMALL if args.small else FULL)
    gpu = device == "cuda"
    r = chk.r
    if not gpu:
        why = "no GPU: --device cpu dry run"
        r["skipped"].update(gpu_utilization=f"{why} (nvidia-smi not run)",
                            bf16=f"{why} (bf16 autocast is GPU-only in the train and denoise stages)",
                            gpu_name=why)
    r["sizes"] = sz
    r["versions"] = versions(device)
    say("versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    r["data"] = chk.step("data", write_sets, args.work, sz)
    if r["data"] is None:
        return
    say(f"   {sz['train_images']} + {sz['test_images']} small {SMALL_HW}x{SMALL_HW} RGB images, {sz['photos']} photos "
        f"{sz['photo_hw'][0]}x{sz['photo_hw'][1]} RGB (mean PNG {r['data']['photos']['mean_png_kb']} KiB), "
        f"made in {r['data']['seconds']}s")
    # A private local Ray with the GPUs torch sees (none on a dry run: nothing may touch a GPU then);
    # no dashboard: its dependencies are not on the GPU machine. The stages then join this Ray.
    ray.init(address="local", include_dashboard=False, num_gpus=torch.cuda.device_count() if gpu else 0,
             log_to_driver=True)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    r["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    small_root, photo_root = r["data"]["small"]["root"], r["data"]["photos"]["root"]

    model_dir = check_training(chk, args.work, sz, device, small_root)
    r["denoise"] = {}
    agree_in = {}
    for name, root, split, n_agree, rps in (
            ("small", small_root, "train", sz["agree_small"], sz["small_rows_per_shard"]),
            ("photos", photo_root, "photos", sz["agree_photos"], sz["photo_rows_per_shard"])):
        check_denoise(chk, args.work, device, model_dir, name, root, split, cluster_cpus)
        agree_in[name] = (subset(root, split, n_agree, rps, os.path.join(args.work, f"agree-{name}")), split)
    chk.save()
    check_agreement(chk, args.work, sz, device, model_dir, agree_in)


def check_training(chk: Check, work: str, sz: dict, device: str, small_root: str) -> str:
    """Step 2: the train job against the plain loop; returns the model dir the later steps denoise with."""
    gpu = device == "cuda"
    tr: dict = {}
    chk.r["train"] = tr
    tr["job"] = chk.step("train: the job (dae.train.run, 1 worker)", train_job, small_root, work, sz, device)
    threads = tr["job"]["torch_threads"] if tr["job"] else max(1, min(8, os.cpu_count() or 1))
    tr["plain"] = chk.step("train: the plain PyTorch loop", plain_train, small_root, sz, device, threads)
    if tr["job"] and tr["plain"]:
        j, p = tr["job"], tr["plain"]
        tr["ratio"] = round(j["steady_images_per_s"] / p["steady_images_per_s"], 3)
        say(f"   train, steady epoch {j['steady_epoch']}: job {_rate(j['steady_images_per_s'])} images/s, plain loop "
            f"{_rate(p['steady_images_per_s'])} images/s -> {tr['ratio']:.2f}x (target >= {TRAIN_TARGET}); val PSNR job "
            f"{j['val_psnr']:.2f} dB, plain {p['val_psnr']:.2f} dB (noisy {j['noisy_psnr']:.2f} dB)")
        chk.target("train: job steady epoch / plain loop, images/s", tr["ratio"], TRAIN_TARGET,
                   tr["ratio"] >= TRAIN_TARGET if gpu else None)
    model_dir = tr["job"]["best_model"] if tr["job"] else None
    if model_dir is None:  # keep measuring inference with an untrained model of the same shape
        from dae.checkpoint import save_model

        torch.manual_seed(SEED)
        model_dir = save_model(create_model("unet", channels=3, width=sz["width"]), os.path.join(work, "untrained"))
        chk.r["skipped"]["trained_model"] = "the train job failed: denoise used an untrained U-Net of the same shape"
    return model_dir


def check_denoise(chk: Check, work: str, device: str, model_dir: str, name: str, root: str, split: str,
                  cluster_cpus: float) -> dict:
    """Step 3 on one set: the denoise job (1 actor), the plain script and the CPU stages in-process;
    the figures go into ``chk.r["denoise"][name]`` as they come (a run cut short keeps them)."""
    gpu = device == "cuda"
    d: dict = {}
    chk.r["denoise"][name] = d
    cfg1 = denoise_config(device, 1, input=root, split=split, model=model_dir,
                          output=os.path.join(work, f"denoise-{name}-1"))
    kw = forward_kwargs(cfg1)
    d["job"] = chk.step(f"denoise {name}: the job, 1 actor", denoise_job, cfg1, gpu)
    d["plain"] = chk.step(f"denoise {name}: the plain script", plain_denoise, root, split, model_dir,
                          os.path.join(work, f"plain-{name}"), device, kw)
    rows = d["job"]["batch_size"] if d["job"] else 64
    d["cpu_stages"] = chk.step(f"denoise {name}: CPU stages in-process", cpu_stages, root, split, rows,
                               model_dir, device, kw)
    j, p, c = d["job"], d["plain"], d["cpu_stages"]
    if not (j and p and c):
        return d
    d["ratio"] = round(j["images_per_s"] / p["images_per_s"], 3)
    d["bound"] = bound(j, p, c, cluster_cpus)
    st = p["stage_s"]
    say(f"   denoise {name}: job {_rate(j['images_per_s'])} images/s end to end ({j['images']} images in "
        f"{j['wall_s']:.1f}s; pipeline {j['pipeline_images_per_s']} images/s), plain script "
        f"{_rate(p['images_per_s'])} images/s -> {d['ratio']:.2f}x (target >= {DENOISE_TARGET}x)")
    say("   plain script stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in st.items())
        + f"; forward alone {p['forward_images_per_s']} images/s")
    say(f"   CPU per image (in-process, 1 thread): decode {c['decode_ms']:.3f} ms, encode {c['encode_ms']:.3f} ms, "
        f"write {c['write_ms']:.3f} ms; over {d['bound']['task_cpus']:g} task CPUs the CPU stages cap at "
        f"{_rate(d['bound']['cpu_stage_ceiling_images_per_s'])} images/s, the forward pass at "
        f"{_rate(d['bound']['forward_ceiling_images_per_s'])}: bound by {d['bound']['bound_by']}")
    u = j["gpu_utilization"]
    if u is not None:
        say(f"   GPU utilization: {u.get('active_span_mean_pct')}% over the active span ({u.get('active_span_s')}s), "
            f"{u.get('mean_pct')}% over the run, max {u.get('max_pct')}%, {u['samples']} samples")
        chk.target(f"denoise {name}: GPU busy % (active span)", u.get("active_span_mean_pct"), GPU_BUSY_TARGET,
                   (u.get("active_span_mean_pct") or 0) >= GPU_BUSY_TARGET)
    chk.target(f"denoise {name}: job / plain script, images/s", d["ratio"], DENOISE_TARGET,
               d["ratio"] >= DENOISE_TARGET if gpu else None)
    comp = compare(_pngs(read_outputs(j["output"], columns=["id", "denoised"])),
                   _pngs(pq.read_table(p["output"])), j["images"])
    d["job_vs_plain"] = comp
    say(f"   job vs plain script outputs: {comp['identical_png']}/{comp['rows']} identical PNGs, max difference "
        f"{comp['max_level_diff']} level(s)")
    return d


def check_agreement(chk: Check, work: str, sz: dict, device: str, model_dir: str, agree_in: dict) -> dict:
    """Step 4: 1 vs 2 actors on a subset of each set, tiled vs whole-image inference."""
    gpu = device == "cuda"
    ag: dict = {"actors": {}, "tiles": {}}
    chk.r["agreement"] = ag
    for name, (root, split) in agree_in.items():
        j1 = chk.r["denoise"][name].get("job")
        cfg2 = denoise_config(device, 2, input=root, split=split, model=model_dir,
                              output=os.path.join(work, f"denoise-{name}-2"))
        j2 = chk.step(f"agreement {name}: the job, 2 actors", denoise_job, cfg2, gpu)
        if not (j1 and j2):
            continue
        ag["actors"][name] = comp = compare(_pngs(read_outputs(j1["output"], columns=["id", "denoised"])),
                                            _pngs(read_outputs(j2["output"], columns=["id", "denoised"])), j2["images"])
        comp.update(job_2_actors=j2)
        say(f"   1 vs 2 actors ({name}, {comp['rows']} images): {comp['identical_png']} identical PNGs, max difference "
            f"{comp['max_level_diff']} level(s) -> {'agree' if comp['agree'] else 'DISAGREE'}; 2 actors "
            f"{_rate(j2['images_per_s'])} images/s")

    def tiles() -> dict:
        model, _ = load_model(model_dir, device)
        h, w = sz["tile_hw"]  # multiples of the U-Net's size multiple: no border padding in the whole pass
        img = shards.to_float(photo(5, 0, (h, w), np.zeros((h, w, 3), np.int16)))
        out = {"fp32": tile_check(model, device, img, bf16=False)}
        if gpu:
            out["bf16"] = tile_check(model, device, img, bf16=True)
        return out

    ag["tiles"] = chk.step("agreement: tiled vs whole-image inference", tiles) or {}
    for k, t in ag["tiles"].items():
        say(f"   tiles {t['tile']}/{t['overlap']} vs whole ({k}, {t['image'][0]}x{t['image'][1]}): max {t['max_abs']:.5f} "
            f"(< {TILE_MAX}), mean {t['mean_abs']:.2e} (< {TILE_MEAN:g}) -> {'agree' if t['agree'] else 'DISAGREE'}")
    ag["actors_agree"] = bool(ag["actors"]) and len(ag["actors"]) == 2 and all(c["agree"] for c in ag["actors"].values())
    ag["tiles_agree"] = bool(ag["tiles"]) and all(t["agree"] for t in ag["tiles"].values())
    return ag


def print_figures(r: dict) -> None:
    say("\n== figures (" + ("GPU" if r["device"] == "cuda" else "CPU dry run") + (", small sizes" if r["small"] else "")
        + f", {r.get('wall_s', 0):.0f}s)")
    for t in r["targets"]:
        verdict = "met" if t["met"] else "not evaluated (dry run)" if t["met"] is None else "MISSED"
        say(f"   {t['name']}: {t['value']} (target {t['target']}): {verdict}")
    ag = r.get("agreement", {})
    say(f"   1 vs 2 actors agree: {ag.get('actors_agree')}; tiled vs whole agree: {ag.get('tiles_agree')}")
    for k, v in r["skipped"].items():
        say(f"   skipped {k}: {v}")
    for k, v in r["errors"].items():
        say(f"   ERROR in {k}: {v}")


def run(args) -> int:
    if args.dry_run:
        args.device, args.small = "cpu", True
    if args.device == "cuda" and not cuda_visible():
        print(NO_GPU, file=sys.stderr)
        return 2
    setup_logging()
    chk = Check(args.out, args.device, args.small)
    own_work = not args.work
    args.work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="dae-gpu-check-"))
    os.makedirs(args.work, exist_ok=True)
    for sub in ("small", "photos", "runs", "train", "untrained"):  # a rerun starts from scratch (no resume)
        shutil.rmtree(os.path.join(args.work, sub), ignore_errors=True)
    for stale in (n for n in os.listdir(args.work) if n.startswith(("denoise-", "plain-", "agree-"))):
        shutil.rmtree(os.path.join(args.work, stale), ignore_errors=True)
    try:
        run_check(args, chk)
    except Exception as e:
        traceback.print_exc()
        chk.r["errors"]["check"] = f"{type(e).__name__}: {e}"[:2000]
    finally:
        ag = chk.r.get("agreement", {})
        chk.r["ok"] = not chk.r["errors"] and bool(ag.get("actors_agree")) and bool(ag.get("tiles_agree"))
        chk.save()
        print_figures(chk.r)
        say(f"figures in {chk.path}")
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if own_work:
            shutil.rmtree(args.work, ignore_errors=True)
    return 0 if chk.r["ok"] else 1

