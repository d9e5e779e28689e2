"""The logic of ``python -m jobs.bench_train`` (its docstring says what it measures and how to run it):
its config (every field a flag) and the benchmark."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from dae import shards, storage
from dae.jobutil import setup_logging
from dae.train import MODES, TrainConfig, format_summary, run as train_run

from ..natural import prepare_set
from ..reference import fashion_shards, plain_train
from .compute import report_lines, step_figures


@dataclass(frozen=True)
class BenchTrainConfig:
    data: str = field(default="/tmp/dae-fashion-shards", metadata={
        "help": "source shards (Fashion-MNIST written here if empty)"})
    images: int = field(default=20000, metadata={"help": "train images in the benchmark epoch"})
    val_images: int = field(default=1000, metadata={"help": "test images validated"})
    model: str = field(default="conv28k", metadata={"help": "model of every run"})
    noise: str = field(default="gaussian:0.5", metadata={"help": "training noise"})
    batch_size: int = field(default=128, metadata={"help": "global batch"})
    epochs: int = field(default=2, metadata={
        "help": "job epochs (the first one includes nothing extra in cache mode)"})
    runs: str = field(default="plain,job1,job2,precision,compile", metadata={
        "help": "comma list of plain, job1, job2 (Fashion-MNIST), precision (the natural recipe in fp32 and by "
                "default), compile (train steps eager vs torch.compile)"})
    natural_epochs: int = field(default=3, metadata={"help": "precision: epochs of each natural-recipe run"})
    natural_crops: int = field(default=4, metadata={"help": "precision: crops per CBSD432 photo per epoch"})
    data_mode: str = field(default="auto", metadata={"help": "the train job's --data-mode", "choices": MODES})
    work: str = field(default="/tmp/dae-bench", metadata={"help": "scratch directory (shards, runs, bench.json)"})
    worker_niceness: int = field(default=0, metadata={
        "help": "niceness of the Ray workers this bench starts (Ray's default is 15: on a busy machine "
                "they would lose CPU to the plain loop, which runs at 0)"})


def subset_shards(src: str, dst: str, n_train: int, n_val: int) -> str:
    for split, n in (("train", n_train), ("test", n_val)):
        if shards.list_shards(dst, split):
            continue
        left = n
        with shards.ShardWriter(dst, split, dataset="bench", source=src, rows_per_shard=10_000) as w:
            for f in shards.list_shards(src, split):
                for row in shards.read_shard(f).to_pylist()[:left]:
                    w.add(id=row["id"], png=row["image"], height=row["height"], width=row["width"],
                          channels=row["channels"], label=row["label"])
                left = n - w.count
                if left <= 0:
                    break
    return dst


def plain_run(cfg: BenchTrainConfig, root: str) -> dict:
    """One epoch of the plain loop: images/s, and images per CPU-second."""
    t0 = time.perf_counter()
    r = plain_train(root, cfg.model, noise=cfg.noise, epochs=1, batch_size=cfg.batch_size, evaluate_every_epoch=False)
    h = r["history"][0]
    return {"images_per_s": h["images_per_s"], "epoch_s": h["epoch_s"], "noise_s": h["noise_s"],
            "images_per_cpu_s": h["images"] / h["cpu_s"], "wall_s": time.perf_counter() - t0}


def job_run(cfg: BenchTrainConfig, root: str, run: str) -> dict:
    """The train stage with 1 (job1) or 2 (job2) workers: each epoch's figures and where the time goes."""
    t0 = time.perf_counter()
    res = train_run(TrainConfig(
        data=root, model=cfg.model, noise=cfg.noise, epochs=cfg.epochs, batch_size=cfg.batch_size,
        workers=1 if run == "job1" else 2, data_mode=cfg.data_mode, storage=storage.join(cfg.work, "runs"),
        samples=0, run_name=f"bench-{run}-{time.strftime('%Y%m%d-%H%M%S')}"))
    print(format_summary(res), flush=True)
    hist = res["history"]
    in_epochs = sum(h["train_s"] + h["val_s"] for h in hist)
    return {
        "images_per_s": [h["images_per_s"] for h in hist], "train_s": [h["train_s"] for h in hist],
        "images_per_cpu_s": [h["images_per_s"] * h["train_s"] / h["train_cpu_s"] for h in hist],
        "batch_prep_s": [h["data_s"] for h in hist], "val_s": [h["val_s"] for h in hist],
        "driver_data_s": res["data_s"], "worker_setup_s": hist[0]["setup_s"],
        "fit_s": res["fit_s"], "outside_epochs_s": res["fit_s"] - in_epochs, "data_mode": res["data_mode"],
        "wall_s": time.perf_counter() - t0}


# The natural recipe of the shipped color model (recipes/quality-natural.yaml: cunet width 20, 64 x 64
# crops of CBSD432, batch 32, sigma 0-55), validated on the first 4 CBSD68 photos.
NATURAL = dict(model="cunet", model_kwargs={"width": 20}, noise="awgn:0-55", crop=64, batch_size=32,
               schedule="cosine", lr=1e-3, val_limit=4)


def precision_runs(cfg: BenchTrainConfig) -> dict:
    """The natural recipe trained the same steps with --precision fp32 and with the default (auto):
    crops/s of each epoch and the val PSNR after the last."""
    root = prepare_set(cfg.work, "", "CBSD68", "color")
    out = {}
    for prec in ("fp32", "auto"):
        res = train_run(TrainConfig(
            data=root, **NATURAL, epochs=cfg.natural_epochs, crops_per_image=cfg.natural_crops, precision=prec,
            storage=storage.join(cfg.work, "runs"), samples=0,
            run_name=f"bench-natural-{prec}-{time.strftime('%Y%m%d-%H%M%S')}"))
        hist = res["history"]
        out[prec] = {"crops_per_s": [h["images_per_s"] for h in hist], "val_psnr": hist[-1]["val_psnr"],
                     "precision": hist[-1]["precision"], "steps": sum(h["images_per_s"] * h["train_s"]
                                                                       for h in hist) / NATURAL["batch_size"]}
    return out


def compile_run(cfg: BenchTrainConfig) -> dict:
    """Train steps of the natural recipe's network in this process: eager vs torch.compile."""
    import torch

    from dae.models import create_model

    torch.manual_seed(0)
    return step_figures(create_model("cunet", channels=3, width=20), batch=32, crop=64, channels=3)


def report_silicon(results: dict) -> None:
    p = results.get("precision")
    if p:
        fp32, auto = p["fp32"], p["auto"]
        print(f"\nnatural recipe (cunet width 20, 64x64 RGB crops, batch 32), {len(fp32['crops_per_s'])} epochs, "
              f"{fp32['steps']:.0f} steps each:")
        for name, r in (("fp32", fp32), (f"default ({auto['precision']})", auto)):
            print(f"  {name:16s}: {', '.join(f'{x:.0f}' for x in r['crops_per_s'])} crops/s per epoch; "
                  f"val PSNR {r['val_psnr']:.3f} dB")
        print(f"  default / fp32: {auto['crops_per_s'][-1] / fp32['crops_per_s'][-1]:.2f}x crops/s (last epoch), "
              f"val PSNR {auto['val_psnr'] - fp32['val_psnr']:+.3f} dB")
    if results.get("compile"):
        print("\ntrain steps in one process (32 crops of 64x64 RGB): " +
              "\n".join(report_lines(results["compile"], "crops", "step", items=32)))


def report(cfg: BenchTrainConfig, results: dict) -> None:
    if not {"plain", "job1", "job2"} & set(results):
        return
    print(f"\n{cfg.images} train images, {cfg.model}, batch {cfg.batch_size}, {cfg.noise}")
    plain = results.get("plain")
    if plain:
        print(f"plain loop : {plain['images_per_s']:7.0f} images/s, {plain['images_per_cpu_s']:.0f} images per "
              f"CPU-second  (epoch {plain['epoch_s']:.1f}s, of which batch+noise {plain['noise_s']:.1f}s)")
    for run in ("job1", "job2"):
        if run not in results:
            continue
        j = results[run]
        rates = ", ".join(f"{x:.0f}" for x in j["images_per_s"])
        ratio = f"  = {j['images_per_s'][-1] / plain['images_per_s']:.2f}x plain" if plain else ""
        cpu = ", ".join(f"{x:.0f}" for x in j["images_per_cpu_s"])
        cpu_ratio = f"  = {j['images_per_cpu_s'][-1] / plain['images_per_cpu_s']:.2f}x plain" if plain else ""
        print(f"{run} epochs : {rates} images/s{ratio}")
        print(f"   per CPU-second (all workers' CPU time; robust to other load): {cpu} images{cpu_ratio}")
        print(f"   per epoch: train {', '.join(f'{x:.1f}' for x in j['train_s'])}s (batch+noise "
              f"{', '.join(f'{x:.1f}' for x in j['batch_prep_s'])}s), val {', '.join(f'{x:.1f}' for x in j['val_s'])}s")
        print(f"   driver data prep {j['driver_data_s']:.1f}s; Ray Train fit {j['fit_s']:.1f}s of which "
              f"{j['outside_epochs_s']:.1f}s outside epochs (worker start-up, dataset hand-off "
              f"{j['worker_setup_s']:.1f}s, reports/checkpoints)")


def run(cfg: BenchTrainConfig) -> dict:
    setup_logging()
    # Read by the raylet when this process starts its local Ray (not when joining a cluster).
    os.environ["RAY_worker_niceness"] = str(cfg.worker_niceness)
    runs = [r.strip() for r in cfg.runs.split(",") if r.strip()]
    root = ""
    if {"plain", "job1", "job2"} & set(runs):
        fashion_shards(cfg.data)
        root = subset_shards(cfg.data, storage.join(cfg.work, f"shards-{cfg.images}"), cfg.images, cfg.val_images)
    results: dict = {}
    for run in runs:
        if run == "plain":
            results["plain"] = plain_run(cfg, root)
        elif run in ("job1", "job2"):
            results[run] = job_run(cfg, root, run)
        elif run == "precision":
            results["precision"] = precision_runs(cfg)
        elif run == "compile":
            results["compile"] = compile_run(cfg)
        else:
            raise ValueError(f"unknown run {run!r}; valid: plain, job1, job2, precision, compile")
    report(cfg, results)
    report_silicon(results)
    storage.write_json(storage.join(cfg.work, "bench.json"), results)
    return results
