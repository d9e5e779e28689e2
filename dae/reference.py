"""The plain single-process PyTorch training loop the train job is checked against, and the shard
helpers it uses (no Ray). Used by ``jobs.quality_train`` (test PSNR of the job vs this loop),
``jobs.bench_train`` (images/s) and the tests:

    python -m jobs.quality_train --data /tmp/fmnist-shards --epochs 10 --runs plain,job1,job2

    from dae.reference import load_split, plain_train
    images, ids = load_split("data/fashion-mnist", "test")       # float32 (N, H, W, C), sorted by id
    result = plain_train("data/fashion-mnist", "conv28k", noise="gaussian:0.5", epochs=10)
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics, shards
from .models import create_model
from .noise import NoiseSpec, add_noise_batch
from .sources.offline import FASHION_MNIST_DIR

log = logging.getLogger("dae")


# ---------------------------------------------------------------- data


def fashion_shards(root: str, fashion_dir: str = FASHION_MNIST_DIR) -> str:
    """Fashion-MNIST train/test shards under ``root`` (the prepare stage, 10,000 rows per file) unless
    a finished prepare left both splits there."""
    if shards.is_prepared(root) and all(shards.list_shards(root, split) for split in ("train", "test")):
        return root
    from .prepare import PrepareConfig, format_summary, run as prepare_run

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


# ---------------------------------------------------------------- the plain loop (no Ray)


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def evaluate(model, clean: torch.Tensor, noisy: torch.Tensor, batch: int = 500) -> dict:
    model.eval()
    ps, ss = [], []
    with torch.no_grad():
        for i in range(0, len(clean), batch):
            out = model(noisy[i:i + batch]).float()
            ps.append(metrics.psnr(out, clean[i:i + batch]))
            ss.append(metrics.ssim(out, clean[i:i + batch]))
    model.train()
    return {"psnr": float(torch.cat(ps).mean()), "ssim": float(torch.cat(ss).mean())}


def plain_train(root: str, model_name: str = "conv28k", model_kwargs: dict | None = None,
                noise: str = "gaussian:0.5", epochs: int = 10, batch_size: int = 128, lr: float = 2e-3,
                seed: int = 0, val_seed: int = 1234, val_limit: int = 0, max_batches: int = 0,
                evaluate_every_epoch: bool = True) -> dict:
    """Adam + one-cycle, MSE: the reference loop. Same noise as the job: image i of epoch e gets
    the noise of (seed, id, e); validation noise is (val_seed, id, 0), fixed for all epochs."""
    spec = NoiseSpec.parse(noise)
    torch.manual_seed(seed)
    x_train, id_train = load_split(root, "train")
    x_val, id_val = load_split(root, "test", val_limit)
    clean_val = nchw(x_val)
    noisy_val = nchw(add_noise_batch(x_val, id_val, spec, val_seed, 0))
    noisy_metrics = {"psnr": float(metrics.psnr(noisy_val, clean_val).mean()),
                     "ssim": float(metrics.ssim(noisy_val, clean_val).mean())}
    model = create_model(model_name, channels=x_train.shape[-1], **(model_kwargs or {}))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = -(-len(x_train) // batch_size)
    if max_batches:
        steps = min(steps, max_batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    history = []
    t_start = time.perf_counter()
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(len(x_train))
        t0, c0 = time.perf_counter(), time.process_time()
        t_noise = 0.0
        n_seen, loss_sum = 0, 0.0
        for b in range(steps):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            tn = time.perf_counter()
            clean = x_train[idx]
            noisy = add_noise_batch(clean, id_train[idx], spec, seed, epoch)
            clean_t, noisy_t = nchw(clean), nchw(noisy)
            t_noise += time.perf_counter() - tn
            loss = F.mse_loss(model(noisy_t), clean_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            n_seen += len(idx)
        t_epoch = time.perf_counter() - t0
        cpu_epoch = time.process_time() - c0  # CPU seconds, all threads: robust to other load
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n_seen, "images_per_s": n_seen / t_epoch,
               "epoch_s": t_epoch, "cpu_s": cpu_epoch, "noise_s": t_noise, "images": n_seen}
        if evaluate_every_epoch or epoch == epochs - 1:
            v = evaluate(model, clean_val, noisy_val)
            row.update(val_psnr=v["psnr"], val_ssim=v["ssim"])
        history.append(row)
        log.info("plain epoch %d/%d: loss %.5f, val PSNR %s dB, %.0f images/s, %.0fs elapsed",
                 epoch + 1, epochs, row["train_loss"], f"{row.get('val_psnr', float('nan')):.2f}",
                 row["images_per_s"], time.perf_counter() - t_start)
    return {"history": history, "noisy_psnr": noisy_metrics["psnr"], "noisy_ssim": noisy_metrics["ssim"],
            "val_psnr": history[-1].get("val_psnr"), "val_ssim": history[-1].get("val_ssim")}
