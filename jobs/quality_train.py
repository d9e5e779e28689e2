"""Quality check of the training job against a plain single-process PyTorch loop.

    python -m jobs.quality_train --data /tmp/fmnist-shards --epochs 10 --runs plain,job1,job2

Trains the same model (default ``conv28k``) on the same shards with the same noise, loss,
optimizer (Adam + one-cycle), global batch and epochs three ways and prints the mean per-image
test PSNR/SSIM of each:

  plain  a plain PyTorch loop in one process (no Ray): the reference
  job1   ``python -m jobs.train`` with 1 worker
  job2   ``python -m jobs.train`` with 2 workers (same global batch: 64 per worker)

The target: job1 and job2 within 0.2 dB of plain. When ``--data`` has no shards yet, Fashion-MNIST
shards are written there from /usr/share/datasets/fashion-mnist (``--fashion-dir``). Results go to
``--out``/quality.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from dae import metrics, shards, storage
from dae.jobutil import setup_logging
from dae.models import create_model
from dae.noise import NoiseSpec, add_noise_batch

log = logging.getLogger("dae")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


# ---------------------------------------------------------------- data


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST format: big-endian magic, dims, then uint8 data) as an array."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_shards(root: str, fashion_dir: str = FASHION_DIR, rows_per_shard: int = 10_000) -> str:
    """Write Fashion-MNIST train/test shards under ``root`` unless they are already there."""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        if shards.list_shards(root, split):
            continue
        images = _read_idx(os.path.join(fashion_dir, f"{prefix}-images-idx3-ubyte.gz"))
        labels = _read_idx(os.path.join(fashion_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        with shards.ShardWriter(root, split, dataset="fashion-mnist", source=fashion_dir,
                                rows_per_shard=rows_per_shard) as w:
            for i, (img, lab) in enumerate(zip(images, labels)):
                w.add(id=f"fashion-mnist/{split}/{i:06d}", image=img, label=int(lab))
        log.info("wrote %d %s images to %s", len(images), split, shards.split_dir(root, split))
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


# ---------------------------------------------------------------- the job


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/dae-fashion-shards", help="shard root (Fashion-MNIST written here if empty)")
    p.add_argument("--fashion-dir", default=FASHION_DIR)
    p.add_argument("--model", default="conv28k")
    p.add_argument("--noise", default="gaussian:0.5")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="plain,job1,job2", help="comma list of plain, job1, job2")
    p.add_argument("--out", default="/tmp/dae-quality", help="storage for the job runs and quality.json")
    return p


def main(args) -> dict:
    setup_logging()
    fashion_shards(args.data, args.fashion_dir)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = set(runs) - {"plain", "job1", "job2"}
    if bad:
        raise ValueError(f"unknown run(s) {sorted(bad)}; valid: plain, job1, job2")
    results: dict = {}
    path = storage.join(args.out, "quality.json")
    if storage.exists(path):
        results = storage.read_json(path)  # keep earlier runs (each takes many minutes here)
    for run in runs:
        t0 = time.perf_counter()
        if run == "plain":
            r = plain_train(args.data, args.model, noise=args.noise, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        else:
            from jobs import train as train_job

            workers = 1 if run == "job1" else 2
            name = f"quality-{run}-{time.strftime('%Y%m%d-%H%M%S')}"
            res = train_job.main(train_job.get_args_parser().parse_args([
                "--data", args.data, "--model", args.model, "--noise", args.noise,
                "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                "--seed", str(args.seed), "--workers", str(workers), "--optimizer", "adam",
                "--schedule", "onecycle", "--loss", "mse", "--storage", args.out, "--run-name", name]))
            last = res["history"][-1]
            r = {"history": res["history"], "val_psnr": last["val_psnr"], "val_ssim": last["val_ssim"],
                 "noisy_psnr": last["noisy_psnr"], "noisy_ssim": last["noisy_ssim"], "run_dir": res["out"]}
        r["wall_s"] = time.perf_counter() - t0
        # re-read before writing: several of these scripts may run at once (one run each)
        results = storage.read_json(path) if storage.exists(path) else {}
        results[run] = r
        storage.write_json(path, results)
    print("\nrun     final val PSNR  val SSIM  noisy PSNR  wall s   delta vs plain")
    for run, r in results.items():
        delta = (r["val_psnr"] - results["plain"]["val_psnr"]) if "plain" in results else float("nan")
        print(f"{run:7s} {r['val_psnr']:13.3f}  {r['val_ssim']:8.4f}  {r['noisy_psnr']:10.3f}  "
              f"{r['wall_s']:6.0f}   {delta:+.3f} dB")
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
