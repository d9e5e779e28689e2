"""The logic of ``python -m jobs.bench_train`` (its docstring says what it measures and how to run it)."""

from __future__ import annotations

import argparse
import os
import time

from dae import shards, storage
from dae.jobutil import setup_logging
from dae.reference import fashion_shards, plain_train
from dae.train import MODES, TrainConfig, format_summary, run as train_run


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


def get_args_parser(doc: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/dae-fashion-shards", help="source shards (Fashion-MNIST written here if empty)")
    p.add_argument("--images", type=int, default=20000, help="train images in the benchmark epoch")
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--model", default="conv28k")
    p.add_argument("--noise", default="gaussian:0.5")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="job epochs (the first one includes nothing extra in cache mode)")
    p.add_argument("--runs", default="plain,job1,job2")
    p.add_argument("--data-mode", default="auto", choices=MODES, help="the train job's --data-mode")
    p.add_argument("--work", default="/tmp/dae-bench")
    p.add_argument("--worker-niceness", type=int, default=0,
                   help="niceness of the Ray workers this bench starts (Ray's default is 15: on a busy machine "
                        "they would lose CPU to the plain loop, which runs at 0)")
    return p


def run(args) -> dict:
    setup_logging()
    # Read by the raylet when this process starts its local Ray (not when joining a cluster).
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    fashion_shards(args.data)
    root = subset_shards(args.data, storage.join(args.work, f"shards-{args.images}"), args.images, args.val_images)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    results: dict = {}
    for run in runs:
        if run == "plain":
            t0 = time.perf_counter()
            r = plain_train(root, args.model, noise=args.noise, epochs=1, batch_size=args.batch_size,
                            evaluate_every_epoch=False)
            h = r["history"][0]
            results["plain"] = {"images_per_s": h["images_per_s"], "epoch_s": h["epoch_s"], "noise_s": h["noise_s"],
                                "images_per_cpu_s": h["images"] / h["cpu_s"],
                                "wall_s": time.perf_counter() - t0}
        elif run in ("job1", "job2"):
            workers = 1 if run == "job1" else 2
            t0 = time.perf_counter()
            res = train_run(TrainConfig(
                data=root, model=args.model, noise=args.noise, epochs=args.epochs, batch_size=args.batch_size,
                workers=workers, data_mode=args.data_mode, storage=storage.join(args.work, "runs"), samples=0,
                run_name=f"bench-{run}-{time.strftime('%Y%m%d-%H%M%S')}"))
            print(format_summary(res), flush=True)
            hist = res["history"]
            in_epochs = sum(h["train_s"] + h["val_s"] for h in hist)
            results[run] = {
                "images_per_s": [h["images_per_s"] for h in hist], "train_s": [h["train_s"] for h in hist],
                "images_per_cpu_s": [h["images_per_s"] * h["train_s"] / h["train_cpu_s"] for h in hist],
                "batch_prep_s": [h["data_s"] for h in hist], "val_s": [h["val_s"] for h in hist],
                "driver_data_s": res["data_s"], "worker_setup_s": hist[0]["setup_s"],
                "fit_s": res["fit_s"], "outside_epochs_s": res["fit_s"] - in_epochs, "data_mode": res["data_mode"],
                "wall_s": time.perf_counter() - t0}
        else:
            raise ValueError(f"unknown run {run!r}; valid: plain, job1, job2")
    print(f"\n{args.images} train images, {args.model}, batch {args.batch_size}, {args.noise}")
    if "plain" in results:
        p = results["plain"]
        print(f"plain loop : {p['images_per_s']:7.0f} images/s, {p['images_per_cpu_s']:.0f} images per CPU-second  "
              f"(epoch {p['epoch_s']:.1f}s, of which batch+noise {p['noise_s']:.1f}s)")
    for run in ("job1", "job2"):
        if run in results:
            j = results[run]
            rates = ", ".join(f"{x:.0f}" for x in j["images_per_s"])
            ratio = (f"  = {j['images_per_s'][-1] / results['plain']['images_per_s']:.2f}x plain"
                     if "plain" in results else "")
            cpu = ", ".join(f"{x:.0f}" for x in j["images_per_cpu_s"])
            cpu_ratio = (f"  = {j['images_per_cpu_s'][-1] / results['plain']['images_per_cpu_s']:.2f}x plain"
                         if "plain" in results else "")
            print(f"{run} epochs : {rates} images/s{ratio}")
            print(f"   per CPU-second (all workers' CPU time; robust to other load): {cpu} images{cpu_ratio}")
            print(f"   per epoch: train {', '.join(f'{x:.1f}' for x in j['train_s'])}s (batch+noise "
                  f"{', '.join(f'{x:.1f}' for x in j['batch_prep_s'])}s), val {', '.join(f'{x:.1f}' for x in j['val_s'])}s")
            print(f"   driver data prep {j['driver_data_s']:.1f}s; Ray Train fit {j['fit_s']:.1f}s of which "
                  f"{j['outside_epochs_s']:.1f}s outside epochs (worker start-up, dataset hand-off "
                  f"{j['worker_setup_s']:.1f}s, reports/checkpoints)")
    storage.write_json(storage.join(args.work, "bench.json"), results)
    return results

