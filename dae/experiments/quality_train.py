"""The logic of ``python -m jobs.quality_train`` (its docstring says what it measures and how to run it):
its config (every field a flag) and the check."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dae import storage
from dae.jobutil import setup_logging
from dae.sources.offline import FASHION_MNIST_DIR
from dae.train import TrainConfig, format_summary, run as train_run

from .reference import fashion_shards, plain_train

RUNS = ("plain", "job1", "job2")


@dataclass(frozen=True)
class QualityTrainConfig:
    data: str = field(default="/tmp/dae-fashion-shards", metadata={
        "help": "shard root (Fashion-MNIST written here if empty)"})
    fashion_dir: str = field(default=FASHION_MNIST_DIR, metadata={"help": "the Fashion-MNIST idx files"})
    model: str = field(default="conv28k", metadata={"help": "model of every run"})
    noise: str = field(default="gaussian:0.5", metadata={"help": "training noise"})
    epochs: int = field(default=10, metadata={"help": "epochs of every run"})
    batch_size: int = field(default=128, metadata={"help": "global batch"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (Adam, one-cycle)"})
    seed: int = field(default=0, metadata={"help": "seed of every run"})
    runs: str = field(default="plain,job1,job2", metadata={"help": "comma list of plain, job1, job2"})
    out: str = field(default="/tmp/dae-quality", metadata={"help": "storage for the job runs and quality.json"})


def job_run(cfg: QualityTrainConfig, run: str) -> dict:
    """The train stage with 1 (job1) or 2 (job2) workers: its last epoch's validation."""
    res = train_run(TrainConfig(
        data=cfg.data, model=cfg.model, noise=cfg.noise, epochs=cfg.epochs, batch_size=cfg.batch_size,
        lr=cfg.lr, seed=cfg.seed, workers=1 if run == "job1" else 2, optimizer="adam", schedule="onecycle",
        loss="mse", storage=cfg.out, run_name=f"quality-{run}-{time.strftime('%Y%m%d-%H%M%S')}"))
    print(format_summary(res), flush=True)
    last = res["history"][-1]
    return {"history": res["history"], "val_psnr": last["val_psnr"], "val_ssim": last["val_ssim"],
            "noisy_psnr": last["noisy_psnr"], "noisy_ssim": last["noisy_ssim"], "run_dir": res["out"]}


def report(results: dict, path: str) -> None:
    print("\nrun     final val PSNR  val SSIM  noisy PSNR  wall s   delta vs plain")
    for run, r in results.items():
        delta = (r["val_psnr"] - results["plain"]["val_psnr"]) if "plain" in results else float("nan")
        print(f"{run:7s} {r['val_psnr']:13.3f}  {r['val_ssim']:8.4f}  {r['noisy_psnr']:10.3f}  "
              f"{r['wall_s']:6.0f}   {delta:+.3f} dB")
    print(f"results: {path}")


def run(cfg: QualityTrainConfig) -> dict:
    setup_logging()
    fashion_shards(cfg.data, cfg.fashion_dir)
    runs = [r.strip() for r in cfg.runs.split(",") if r.strip()]
    bad = set(runs) - set(RUNS)
    if bad:
        raise ValueError(f"unknown run(s) {sorted(bad)}; valid: {', '.join(RUNS)}")
    results: dict = {}
    path = storage.join(cfg.out, "quality.json")
    if storage.exists(path):
        results = storage.read_json(path)  # keep earlier runs (each takes many minutes here)
    for run in runs:
        t0 = time.perf_counter()
        if run == "plain":
            r = plain_train(cfg.data, cfg.model, noise=cfg.noise, epochs=cfg.epochs, batch_size=cfg.batch_size,
                            lr=cfg.lr, seed=cfg.seed)
        else:
            r = job_run(cfg, run)
        r["wall_s"] = time.perf_counter() - t0
        # re-read before writing: several of these scripts may run at once (one run each)
        results = storage.read_json(path) if storage.exists(path) else {}
        results[run] = r
        storage.write_json(path, results)
    report(results, path)
    return results
