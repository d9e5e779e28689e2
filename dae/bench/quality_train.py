"""The logic of ``python -m jobs.quality_train`` (its docstring says what it measures and how to run it)."""

from __future__ import annotations

import argparse
import time

from dae import storage
from dae.jobutil import setup_logging
from dae.reference import fashion_shards, plain_train
from dae.sources.offline import FASHION_MNIST_DIR
from dae.train import TrainConfig, format_summary, run as train_run


def get_args_parser(doc: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/dae-fashion-shards", help="shard root (Fashion-MNIST written here if empty)")
    p.add_argument("--fashion-dir", default=FASHION_MNIST_DIR)
    p.add_argument("--model", default="conv28k")
    p.add_argument("--noise", default="gaussian:0.5")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="plain,job1,job2", help="comma list of plain, job1, job2")
    p.add_argument("--out", default="/tmp/dae-quality", help="storage for the job runs and quality.json")
    return p


def run(args) -> dict:
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
            workers = 1 if run == "job1" else 2
            name = f"quality-{run}-{time.strftime('%Y%m%d-%H%M%S')}"
            res = train_run(TrainConfig(
                data=args.data, model=args.model, noise=args.noise, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, seed=args.seed, workers=workers, optimizer="adam", schedule="onecycle", loss="mse",
                storage=args.out, run_name=name))
            print(format_summary(res), flush=True)
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

