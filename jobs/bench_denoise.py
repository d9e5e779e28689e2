"""Benchmark of the denoise job against a plain single-process PyTorch script, on the same shards.

    python -m jobs.bench_denoise --n 100000                       # conv28k, 100k 28x28 Fashion-MNIST images
    python -m jobs.bench_denoise --n 20000 --model unet --model-kwargs '{width: 16}'

Prints images/s of (1) the bare model forward pass alone, (2) a plain script doing read, decode, noise,
forward, encode (denoised + noisy PNG), metrics and Parquet write in one process, with the time of each
step, and (3) ``jobs.denoise`` end to end (timed after Ray has started: listing, actor start-up,
pipeline, writes, summary). Memory: the job runs on N/4 and then N images while a sampler sums the
RSS and USS of the driver and every process under it (the local Ray: raylet, workers, object store),
and prints both peaks: they must stay within 15% of each other when the input grows 4x.

Inputs: Fashion-MNIST test+train from /usr/share/datasets/fashion-mnist (cycled, with fresh ids, up to N),
written once to WORK/shards-N and reused. The model is randomly initialised (speed does not depend on
the weights). Not a test: figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from dae import metrics, shards
from dae.checkpoint import save_model
from dae.models import create_model
from dae.noise import NoiseSpec, image_rng

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="images (28x28 gray)")
    p.add_argument("--work", default="/tmp/dae-bench", help="scratch directory (shards, model, outputs)")
    p.add_argument("--model", default="conv28k", help="model name (dae.models.list_models())")
    p.add_argument("--model-kwargs", type=yaml.safe_load, default={}, help="YAML, e.g. '{width: 16}'")
    p.add_argument("--noise", default="gaussian:0.5")
    p.add_argument("--rows-per-shard", type=int, default=2500,
                   help="small enough that N/4 still has several files (same read parallelism as N)")
    p.add_argument("--batch-size", type=int, default=1024, help="the job's Ray Data batch size")
    p.add_argument("--forward-batch", type=int, default=256, help="images per forward pass (job and script)")
    p.add_argument("--job-args", default="", help="extra jobs.denoise flags, e.g. '--torch-threads 2'")
    p.add_argument("--skip", default="", help="comma list of parts to skip: forward,plain,job,memory")
    return p


# ---------------------------------------------------------------- inputs


def fashion_images() -> np.ndarray:
    out = []
    for name in ("t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"):
        with gzip.open(os.path.join(FASHION_DIR, name)) as fh:
            out.append(np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28))
    return np.concatenate(out)


def make_shards(work: str, n: int, rows_per_shard: int) -> str:
    root = os.path.join(work, f"shards-{n}")
    if os.path.exists(os.path.join(root, "_complete")):
        return root
    shutil.rmtree(root, ignore_errors=True)
    imgs = fashion_images()
    pngs = [shards.encode_png(im) for im in imgs[: min(n, len(imgs))]]
    t = time.perf_counter()
    with shards.ShardWriter(root, "bench", dataset="fashion-bench", source=FASHION_DIR,
                            rows_per_shard=rows_per_shard) as w:
        for i in range(n):
            w.add(id=f"bench/{i:07d}", png=pngs[i % len(pngs)], height=28, width=28, channels=1, label=i % 10)
    open(os.path.join(root, "_complete"), "w").close()
    print(f"wrote {n} images to {root} in {time.perf_counter() - t:.1f}s", flush=True)
    return root


def subset(root: str, fraction: float, work: str) -> str:
    """A copy of the first ``fraction`` of the shard files (for the memory-vs-size run)."""
    files = shards.list_shards(root, "bench")
    k = max(1, int(round(len(files) * fraction)))
    out = os.path.join(work, f"{os.path.basename(root)}-first{k}")
    os.makedirs(os.path.join(out, "bench"), exist_ok=True)
    for f in files[:k]:
        dst = os.path.join(out, "bench", os.path.basename(f))
        if not os.path.exists(dst):
            shutil.copyfile(f, dst)
    return out


# ---------------------------------------------------------------- (1) forward alone, (2) plain script


def bench_forward(model, n: int, batch: int) -> float:
    x = torch.rand(batch, model.channels, 28, 28)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        done = 0
        while done < n:
            model(x)
            done += batch
    return done / (time.perf_counter() - t)


def plain_script(root: str, model, noise: str, seed: int, batch: int, out_dir: str) -> dict:
    """Same steps as the job, one process, no Ray: the baseline the job is compared with."""
    spec = NoiseSpec.parse(noise)
    times = dict.fromkeys(["read", "decode", "noise", "forward", "encode", "metrics", "write"], 0.0)
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    t0 = time.perf_counter()
    for path in shards.list_shards(root, "bench"):
        t = time.perf_counter()
        table = pq.read_table(path)
        ids = table.column("id").to_pylist()
        pngs = table.column("image").to_pylist()
        times["read"] += time.perf_counter() - t
        t = time.perf_counter()
        clean = np.stack([shards.to_float(shards.decode_png(b)) for b in pngs])  # (B, 28, 28, 1)
        times["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        noisy = np.stack([shards.to_float(shards.from_float(spec.apply(c, image_rng(seed, i))))
                          for c, i in zip(clean, ids)])
        times["noise"] += time.perf_counter() - t
        t = time.perf_counter()
        outs = []
        with torch.inference_mode():
            for s in range(0, len(noisy), batch):
                x = torch.from_numpy(noisy[s:s + batch]).permute(0, 3, 1, 2)
                outs.append(model(x).permute(0, 2, 3, 1).numpy())
        den = np.concatenate(outs)
        times["forward"] += time.perf_counter() - t
        t = time.perf_counter()
        den_q = shards.from_float(den)
        den_png = [shards.encode_png(d) for d in den_q]
        noisy_png = [shards.encode_png(shards.from_float(x)) for x in noisy]
        times["encode"] += time.perf_counter() - t
        t = time.perf_counter()
        dq = shards.to_float(den_q)
        m = {"psnr_noisy": metrics.psnr(noisy, clean).numpy(), "psnr_denoised": metrics.psnr(dq, clean).numpy(),
             "ssim_denoised": metrics.ssim(dq, clean).numpy()}
        times["metrics"] += time.perf_counter() - t
        t = time.perf_counter()
        out = table.append_column("denoised", pa.array(den_png, pa.binary())) \
                   .append_column("noisy", pa.array(noisy_png, pa.binary()))
        for k, v in m.items():
            out = out.append_column(k, pa.array(v))
        pq.write_table(out, os.path.join(out_dir, os.path.basename(path)), compression="zstd")
        times["write"] += time.perf_counter() - t
        n += len(ids)
    wall = time.perf_counter() - t0
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "stage_s": times}


# ---------------------------------------------------------------- (3) the job, with a memory sampler


class MemorySampler(threading.Thread):
    """Peak total RSS and USS of this process and all its descendants (the local Ray), sampled."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.peak_rss, self.peak_uss, self.samples = every, 0, 0, 0
        self._halt = threading.Event()

    def run(self):
        import psutil

        me = psutil.Process()
        while not self._halt.is_set():
            rss = uss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    mi = p.memory_full_info()
                    rss += mi.rss
                    uss += mi.uss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_rss, self.peak_uss = max(self.peak_rss, rss), max(self.peak_uss, uss)
            self.samples += 1
            self._halt.wait(self.every)

    def stop(self):
        self._halt.set()
        self.join()


def load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def fresh_ray() -> float:
    """Memory runs each start from a fresh local Ray, so idle workers of an earlier run do not count."""
    import ray

    from dae.raylib import init_ray

    if ray.is_initialized():
        ray.shutdown()
    t = time.perf_counter()
    init_ray()
    return time.perf_counter() - t


def run_job(input_root: str, model_dir: str, out: str, args, sample_memory: bool) -> dict:
    from jobs import denoise

    argv = ["--input", input_root, "--split", "bench", "--model", model_dir, "--output", out,
            "--add-noise", args.noise, "--batch-size", str(args.batch_size),
            "--forward-batch", str(args.forward_batch), "--overwrite", "--samples", "8"]
    argv += args.job_args.split()
    sampler = MemorySampler() if sample_memory else None
    if sampler:
        sampler.start()
    t = time.perf_counter()
    summary = denoise.main(denoise.get_args_parser().parse_args(argv))
    wall = time.perf_counter() - t
    if sampler:
        sampler.stop()
    res = {"images": summary["rows_out"], "wall_s": wall, "images_per_s": summary["rows_out"] / wall,
           "pipeline_images_per_s": summary["images_per_s"], "actors": summary["actors"]}
    if sampler:
        res.update(peak_rss_mb=sampler.peak_rss / 2**20, peak_uss_mb=sampler.peak_uss / 2**20,
                   samples=sampler.samples)
    return res


def main(args: argparse.Namespace) -> dict:
    from dae.jobutil import setup_logging

    setup_logging()
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.work, exist_ok=True)
    root = make_shards(args.work, args.n, args.rows_per_shard)
    torch.manual_seed(0)
    model = create_model(args.model, channels=1, **args.model_kwargs).eval()
    model_dir = save_model(model, os.path.join(args.work, f"model-{args.model}"))
    params = sum(p.numel() for p in model.parameters())
    res: dict = {"n": args.n, "model": args.model, "params": params, "torch_threads": torch.get_num_threads(),
                 "cpus": os.cpu_count()}
    print(f"model {args.model} ({params} parameters), {args.n} images, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    if "forward" not in skip:
        res["forward_images_per_s"] = bench_forward(model, min(args.n, 50_000), args.forward_batch)
        print(f"bare forward pass:       {res['forward_images_per_s']:9.0f} images/s", flush=True)
    if "plain" not in skip:
        print(f"load average {load()}", flush=True)
        p = plain_script(root, model, args.noise, 0, args.forward_batch, os.path.join(args.work, "plain-out"))
        res["plain"] = p
        print(f"plain script end to end: {p['images_per_s']:9.0f} images/s ({p['wall_s']:.1f}s)", flush=True)
        for k, v in p["stage_s"].items():
            print(f"    {k:8s} {v:7.2f}s  {100 * v / p['wall_s']:5.1f}%", flush=True)
    if "memory" not in skip:
        print(f"ray start: {fresh_ray():.1f}s (not counted); load average {load()}", flush=True)
        q = subset(root, 0.25, args.work)
        small = run_job(q, model_dir, os.path.join(args.work, "job-out-quarter"), args, True)
        res["job_quarter"] = small
        print(f"job on N/4 = {small['images']}: {small['images_per_s']:9.0f} images/s, peak RSS "
              f"{small['peak_rss_mb']:.0f} MiB, peak USS {small['peak_uss_mb']:.0f} MiB", flush=True)
    if "job" not in skip:
        print(f"ray start: {fresh_ray():.1f}s (not counted); load average {load()}", flush=True)
        full = run_job(root, model_dir, os.path.join(args.work, "job-out"), args, "memory" not in skip)
        res["job"] = full
        print(f"load average {load()}", flush=True)
        print(f"job end to end (N={full['images']}): {full['images_per_s']:9.0f} images/s ({full['wall_s']:.1f}s; "
              f"pipeline only {full['pipeline_images_per_s']} images/s), actors {full['actors']}", flush=True)
        if "plain" in res:
            print(f"job / plain script: {full['images_per_s'] / res['plain']['images_per_s']:.2f}x", flush=True)
        if "job_quarter" in res:
            q = res["job_quarter"]
            print(f"peak memory N/4 -> N: RSS {q['peak_rss_mb']:.0f} -> {full['peak_rss_mb']:.0f} MiB "
                  f"({full['peak_rss_mb'] / q['peak_rss_mb']:.2f}x), USS {q['peak_uss_mb']:.0f} -> "
                  f"{full['peak_uss_mb']:.0f} MiB ({full['peak_uss_mb'] / q['peak_uss_mb']:.2f}x)", flush=True)
    with open(os.path.join(args.work, f"bench-{args.model}-{args.n}.json"), "w") as fh:
        json.dump(res, fh, indent=2, default=str)
    return res


if __name__ == "__main__":
    main(get_args_parser().parse_args())
