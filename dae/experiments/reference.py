"""The plain single-process PyTorch code the jobs are measured against (no Ray), and the shard
helpers it uses: one training loop and one denoising script, each parameterised by the device,
threads and sizes of the check that runs it, so every figure compares the same work.

- :func:`plain_train`: the train stage's steps without Ray. ``jobs.quality_train`` (test PSNR of the
  job vs this loop), ``jobs.bench_train`` (images/s) and ``jobs.gpu_check`` (images/s on a GPU, bf16);
- :func:`plain_denoise`: read, decode, (noise,) forward, encode, (metrics,) write Parquet, one process.
  ``jobs.bench_denoise`` (one CPU thread) and ``jobs.gpu_check`` (the GPU, the stage's forward settings).

    from dae.experiments.reference import load_split, plain_train
    images, ids = load_split("data/fashion-mnist", "test")       # float32 (N, H, W, C), sorted by id
    result = plain_train("data/fashion-mnist", "conv28k", noise="gaussian:0.5", epochs=10)
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from dae import inference, metrics, shards
from dae.inference_spec import InferenceSpec
from dae.models import create_model
from dae.noise import NoiseSpec, add_noise_batch, image_rng
from dae.sources.offline import FASHION_MNIST_DIR

log = logging.getLogger("dae")


# ---------------------------------------------------------------- data


def fashion_shards(root: str, fashion_dir: str = FASHION_MNIST_DIR) -> str:
    """Fashion-MNIST train/test shards under ``root`` (the prepare stage, 10,000 rows per file) unless
    a finished prepare left both splits there."""
    if shards.is_prepared(root) and all(shards.list_shards(root, split) for split in ("train", "test")):
        return root
    from dae.prepare import PrepareConfig, format_summary, run as prepare_run

    summary = prepare_run(PrepareConfig(source="fashion-mnist", input=fashion_dir, out=root, overwrite=True))
    log.info("%s", format_summary(summary))
    return root


def load_split(root: str, split: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, H, W, C) in [0, 1], ids) of one split, sorted by id (as the job does)."""
    imgs, ids = [], []
    for f in shards.list_shards(root, split):
        t = shards.read_shard(f, ["id", "image"])
        b = shards.decode_batch({"id": np.asarray(t.column("id").to_pylist(), dtype=object),
                                 "image": t.column("image").to_pylist()})
        imgs.append(b["image"])
        ids.append(b["id"])
    images, ids = np.concatenate(imgs), np.concatenate(ids)
    order = np.argsort(ids, kind="stable")
    images, ids = images[order], ids[order]
    if limit:
        images, ids = images[:limit], ids[:limit]
    return images, ids


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


# ---------------------------------------------------------------- the plain training loop


def evaluate(model, clean: torch.Tensor, noisy: torch.Tensor, batch: int = 500) -> dict:
    """Mean per-image PSNR/SSIM of the model's output, clamped to [0, 1] as the train stage's
    validation does; on a GPU in bf16 autocast, as the stage."""
    dev = next(model.parameters()).device
    model.eval()
    ps, ss = [], []
    with torch.no_grad():
        for i in range(0, len(clean), batch):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                out = model(noisy[i:i + batch].to(dev))
            out = out.float().clamp(0, 1).cpu()
            ps.append(metrics.psnr(out, clean[i:i + batch]))
            ss.append(metrics.ssim(out, clean[i:i + batch]))
    model.train()
    return {"psnr": float(torch.cat(ps).mean()), "ssim": float(torch.cat(ss).mean())}


def _batches(n: int, batch_size: int, steps: int, seed: int, epoch: int, job_order: bool):
    """The rows of each step of one epoch: a seeded permutation; with ``job_order`` the train stage's
    (rank 0 of 1: the permutation of (seed, epoch, 0), each batch's rows sorted)."""
    perm = np.random.default_rng([seed, epoch, 0] if job_order else [seed, epoch]).permutation(n)
    for b in range(steps):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        yield np.sort(idx) if job_order else idx


def _epoch(model, opt, sched, data: tuple, spec: NoiseSpec, seed: int, epoch: int, batch_size: int, steps: int,
           job_order: bool) -> dict:
    """One epoch of training steps, timed as the job times its epoch (the loop only; no CUDA sync)."""
    x_train, id_train = data
    dev = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    t0, c0 = time.perf_counter(), time.process_time()
    t_noise, n_seen = 0.0, 0
    for idx in _batches(len(x_train), batch_size, steps, seed, epoch, job_order):
        tn = time.perf_counter()
        clean = x_train[idx]
        noisy = add_noise_batch(clean, id_train[idx], spec, seed, epoch)
        clean_t, noisy_t = nchw(clean).to(dev, non_blocking=True), nchw(noisy).to(dev, non_blocking=True)
        t_noise += time.perf_counter() - tn
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = model(noisy_t)
        loss = F.mse_loss(out.float(), clean_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach().double() * len(idx)
        n_seen += len(idx)
    t_epoch = time.perf_counter() - t0
    return {"epoch": epoch + 1, "train_loss": float(loss_sum) / n_seen, "images_per_s": n_seen / t_epoch,
            "epoch_s": t_epoch, "cpu_s": time.process_time() - c0,  # CPU seconds, all threads: robust to load
            "noise_s": t_noise, "images": n_seen}


def plain_train(root: str, model_name: str = "conv28k", model_kwargs: dict | None = None,
                noise: str = "gaussian:0.5", epochs: int = 10, batch_size: int = 128, lr: float = 2e-3,
                seed: int = 0, val_seed: int = 1234, val_limit: int = 0, max_batches: int = 0,
                evaluate_every_epoch: bool = True, device: str = "cpu", threads: int = 0,
                job_order: bool = False) -> dict:
    """Adam + one-cycle, MSE: the reference loop. Same noise as the job: image i of epoch e gets
    the noise of (seed, id, e); validation noise is (val_seed, id, 0), fixed for all epochs. On a
    CUDA ``device`` the forward pass runs in bf16 autocast, as the train stage's. ``threads``: torch
    threads (0: leave them); ``job_order``: the train stage's row order (see :func:`_batches`)."""
    if threads:
        torch.set_num_threads(threads)
    spec = NoiseSpec.parse(noise)
    torch.manual_seed(seed)
    x_train, id_train = load_split(root, "train")
    x_val, id_val = load_split(root, "test", val_limit)
    clean_val = nchw(x_val)
    noisy_val = nchw(add_noise_batch(x_val, id_val, spec, val_seed, 0))
    model = create_model(model_name, channels=x_train.shape[-1], **(model_kwargs or {})).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = -(-len(x_train) // batch_size)
    if max_batches:
        steps = min(steps, max_batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(epochs * steps, 2))
    history = []
    t_start = time.perf_counter()
    for epoch in range(epochs):
        row = _epoch(model, opt, sched, (x_train, id_train), spec, seed, epoch, batch_size, steps, job_order)
        if evaluate_every_epoch or epoch == epochs - 1:
            v = evaluate(model, clean_val, noisy_val)
            row.update(val_psnr=v["psnr"], val_ssim=v["ssim"])
        history.append(row)
        log.info("plain epoch %d/%d: loss %.5f, val PSNR %s dB, %.0f images/s, %.0fs elapsed",
                 epoch + 1, epochs, row["train_loss"], f"{row.get('val_psnr', float('nan')):.2f}",
                 row["images_per_s"], time.perf_counter() - t_start)
    return {"history": history, "noisy_psnr": float(metrics.psnr(noisy_val, clean_val).mean()),
            "noisy_ssim": float(metrics.ssim(noisy_val, clean_val).mean()),
            "val_psnr": history[-1].get("val_psnr"), "val_ssim": history[-1].get("val_ssim")}


# ---------------------------------------------------------------- the plain denoising script


def _add_noise(clean: list, ids: list, spec: NoiseSpec | None, seed: int) -> list:
    """The job's synthetic noise, quantized to 8 bits as its noisy PNG is."""
    if spec is None:
        return clean
    return [shards.to_float(shards.from_float(spec.apply(c, image_rng(seed, i)))) for c, i in zip(clean, ids)]


def _image_metrics(clean: list, noisy: list, den_q: list) -> dict:
    """Per-image PSNR of the noisy and denoised images and SSIM of the denoised, one call per image
    shape, as the job does (the metrics stay per image)."""
    m = {k: np.zeros(len(clean)) for k in inference.METRIC_COLUMNS}
    by_shape: dict[tuple, list[int]] = {}
    for j, c in enumerate(clean):
        by_shape.setdefault(c.shape, []).append(j)
    for idx in by_shape.values():
        c = np.stack([clean[j] for j in idx])
        dq = np.stack([shards.to_float(den_q[j]) for j in idx])
        m["psnr_noisy"][idx] = metrics.psnr(np.stack([noisy[j] for j in idx]), c).numpy()
        m["psnr_denoised"][idx] = metrics.psnr(dq, c).numpy()
        m["ssim_denoised"][idx] = metrics.ssim(dq, c).numpy()
    return m


def plain_denoise(root: str, split: str, model, out_dir: str, spec: InferenceSpec, noise: str = "",
                  seed: int = 0, keep_input: bool = True) -> dict:
    """The denoise job's steps in one process, no Ray: read a shard, decode, (``noise``: add the
    job's synthetic noise,) forward (:func:`dae.inference.denoise_images` with ``spec``, the stage's
    forward settings: device, tile, forward batch and pixels, determinism, bf16), encode, (``noise``: the
    per-image metrics,) write Parquet to OUT_DIR, one file per shard: the input's columns
    (``keep_input``; else the id alone), ``denoised`` and, with noise, ``noisy`` and the metrics.
    Returns {images, wall_s, images_per_s, stage_s}: seconds of each step."""
    noise_spec = NoiseSpec.parse(noise) if noise else None
    times = dict.fromkeys(["read", "decode", "noise", "forward", "encode", "metrics", "write"], 0.0)
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    t0 = time.perf_counter()
    for path in shards.list_shards(root, split):
        t = time.perf_counter()
        table = pq.read_table(path, columns=None if keep_input else ["id", "image"])
        ids, pngs = table.column("id").to_pylist(), table.column("image").to_pylist()
        times["read"] += (t1 := time.perf_counter()) - t
        clean = [shards.to_float(shards.decode_png(b)) for b in pngs]
        times["decode"] += (t2 := time.perf_counter()) - t1
        noisy = _add_noise(clean, ids, noise_spec, seed)
        times["noise"] += (t3 := time.perf_counter()) - t2
        den = inference.denoise_images(model, noisy, spec)  # host arrays: synced
        times["forward"] += (t4 := time.perf_counter()) - t3
        den_q = [shards.from_float(d) for d in den]
        cols = {"denoised": [shards.encode_png(d) for d in den_q]}
        if noise_spec:
            cols["noisy"] = [shards.encode_png(shards.from_float(x)) for x in noisy]
        times["encode"] += (t5 := time.perf_counter()) - t4
        m = _image_metrics(clean, noisy, den_q) if noise_spec else {}
        times["metrics"] += (t6 := time.perf_counter()) - t5
        out_t = table if keep_input else pa.table({"id": pa.array(ids, pa.string())})
        for k, v in cols.items():
            out_t = out_t.append_column(k, pa.array(v, pa.binary()))
        for k, v in m.items():
            out_t = out_t.append_column(k, pa.array(v))
        pq.write_table(out_t, os.path.join(out_dir, os.path.basename(path)), compression="zstd")
        times["write"] += time.perf_counter() - t6
        n += len(ids)
    wall = time.perf_counter() - t0
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "stage_s": times}
