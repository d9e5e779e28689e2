"""The logic of ``python -m jobs.bench_denoise`` (its docstring says what it measures and how to run it):
its config (every field a flag), the inputs, the job with a CPU sampler, and a 3-node cluster run. The
plain script it is compared with is :func:`dae.experiments.reference.plain_denoise`."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from dae import shards
from dae.checkpoint import save_model
from dae.inference_spec import InferenceSpec
from dae.models import create_model

from ..reference import plain_denoise
from .jobproc import REPO, fashion_pngs, job_env, report_job, run_job
from .precision import PARTS as PRECISION_PARTS, run_parts

CBSD432 = os.path.join(os.path.dirname(REPO), "shared", "datasets", "natural", "train", "CBSD432")
SETS = {
    "fashion": {"model": "conv28k", "kwargs": {}, "channels": 1, "rows_per_shard": 2500},
    "photos": {"model": "unet", "kwargs": {"width": 16}, "channels": 3, "rows_per_shard": 32},
}
# The plain script's forward passes: on CPU, the job's sizes (64 small images, a photo alone; best on
# CPU for both sets), not padded.
PLAIN_FORWARD = InferenceSpec(device="cpu", forward_batch=64, deterministic=False)


@dataclass(frozen=True)
class BenchDenoiseConfig:
    sets: str = field(default="fashion,photos,color-blind,files", metadata={
        "help": "comma list of: fashion, photos, color-blind (the photos with pretrained:color-blind by precision), "
                "files (a folder of --files-n image files: the driver's memory against N, a killed run resumed)"})
    precision_parts: str = field(default=",".join(PRECISION_PARTS), metadata={
        "help": f"color-blind: comma list of {', '.join(PRECISION_PARTS)} (dae.experiments.bench.precision)"})
    fashion_n: int = field(default=70_000, metadata={"help": "small images: Fashion-MNIST's 70,000 cycled up to N"})
    photos_n: int = field(default=1_728, metadata={"help": "photos: CBSD432's 432 cycled up to N"})
    files_n: int = field(default=100_000, metadata={"help": "files: image files in the folder (also run at N/10)"})
    work: str = field(default="bench_out/denoise", metadata={"help": "scratch directory (shards, models, outputs)"})
    noise: str = field(default="", metadata={
        "help": "synthetic noise and metrics in the job (--add-noise) and the script, e.g. gaussian:0.2; "
                "default: none (decode, forward, encode, write)"})
    job_args: str = field(default="", metadata={"help": "extra jobs.denoise flags for every job run"})
    skip: str = field(default="", metadata={"help": "comma list of parts to skip: plain, quarter, job"})
    cluster: bool = field(default=False, metadata={"help": "also run on a 3-node local cluster"})


# ---------------------------------------------------------------- inputs


def photo_pngs() -> list[bytes]:
    files = sorted(glob.glob(os.path.join(CBSD432, "*.jpg")))
    if not files:
        raise SystemExit(f"error: no photos in {CBSD432} (the natural-image sets of ../shared)")
    return [shards.encode_png(np.asarray(Image.open(f).convert("RGB"))) for f in files]


def make_shards(work: str, name: str, n: int) -> str:
    """WORK/shards-NAME-N/bench/part-*.parquet: the set's images cycled with fresh ids up to n."""
    root = os.path.join(work, f"shards-{name}-{n}")
    if os.path.exists(os.path.join(root, "_complete")):
        return root
    shutil.rmtree(root, ignore_errors=True)
    pngs = fashion_pngs() if name == "fashion" else photo_pngs()
    t = time.perf_counter()
    with shards.ShardWriter(root, "bench", dataset=f"bench-{name}", source=name,
                            rows_per_shard=SETS[name]["rows_per_shard"]) as w:
        for i in range(n):
            png = pngs[i % len(pngs)]
            a = shards.decode_png(png)
            w.add(id=f"{name}/{i // len(pngs)}/{i % len(pngs):05d}", png=png, height=a.shape[0], width=a.shape[1],
                  channels=a.shape[2], label=i % 10)
    open(os.path.join(root, "_complete"), "w").close()
    print(f"wrote {n} {name} images to {root} in {time.perf_counter() - t:.1f}s", flush=True)
    return root


def quarter(root: str) -> str:
    """The first quarter of the shard files, as a set of its own (same files, so the same read sizes)."""
    files = shards.list_shards(root, "bench")
    out = f"{root}-quarter"
    os.makedirs(os.path.join(out, "bench"), exist_ok=True)
    for f in files[: max(1, len(files) // 4)]:
        dst = os.path.join(out, "bench", os.path.basename(f))
        if not os.path.exists(dst):
            shutil.copyfile(f, dst)
    return out


def rows_of(root: str) -> int:
    return sum(pq.read_metadata(f).num_rows for f in shards.list_shards(root, "bench"))


def plain_run(root: str, model, out: str, cfg: BenchDenoiseConfig) -> dict:
    """The plain script: one process, one core (the script a user would write)."""
    torch.set_num_threads(1)
    p = plain_denoise(root, "bench", model, out, PLAIN_FORWARD, noise=cfg.noise, seed=0)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"  plain script: {p['images_per_s']:8.1f} images/s ({p['wall_s']:.1f}s); "
          + ", ".join(f"{k} {100 * v / p['wall_s']:.0f}%" for k, v in p["stage_s"].items()), flush=True)
    return p


def report_driver(res: dict) -> None:
    """The job against the script, the driver's share of the CPU, and its cost at the margin (N - N/4)."""
    r = res["job"]
    if "plain" in res:
        print(f"  job / plain script: {r['images_per_s'] / res['plain']['images_per_s']:.2f}x", flush=True)
    print(f"  driver: {100 * r['driver_cpu_s'] / r['all_cpu_s']:.1f}% of all CPU, Amdahl ceiling "
          f"{r['all_cpu_s'] / r['driver_cpu_s']:.0f}x", flush=True)
    if "quarter" in res:
        q = res["quarter"]
        dn = r["images"] - q["images"]
        marginal = (r["driver_cpu_s"] - q["driver_cpu_s"]) / dn if dn else float("nan")
        print(f"  driver at the margin (N - N/4 = {dn} images): {1000 * marginal:.3f} ms/image; peak RSS N/4 -> N: "
              f"{q['driver_peak_rss_mb']:.0f} -> {r['driver_peak_rss_mb']:.0f} MiB "
              f"({r['driver_peak_rss_mb'] / q['driver_peak_rss_mb']:.2f}x)", flush=True)
        res["driver_marginal_ms_per_image"] = 1000 * marginal


def bench_set(name: str, n: int, cfg: BenchDenoiseConfig) -> dict:
    spec = SETS[name]
    work = os.path.abspath(cfg.work)
    root = make_shards(work, name, n)
    torch.manual_seed(0)
    model = create_model(spec["model"], channels=spec["channels"], **spec["kwargs"]).eval()
    model_dir = save_model(model, os.path.join(work, f"model-{name}"))
    skip = set(filter(None, cfg.skip.split(",")))
    res: dict = {"set": name, "n": n, "model": spec["model"], "model_kwargs": spec["kwargs"]}
    print(f"\n== {name}: {n} images, {spec['model']} {spec['kwargs']} ({sum(p.numel() for p in model.parameters())} "
          f"parameters), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    if "plain" not in skip:
        res["plain"] = plain_run(root, model, os.path.join(work, f"plain-{name}"), cfg)
    if "quarter" not in skip:
        res["quarter"] = run_job(quarter(root), model_dir, os.path.join(work, f"job-{name}-quarter"), cfg.noise,
                                 cfg.job_args)
        report_job("N/4", res["quarter"])
    if "job" not in skip:
        res["job"] = run_job(root, model_dir, os.path.join(work, f"job-{name}"), cfg.noise, cfg.job_args)
        report_job("N", res["job"])
        report_driver(res)
    if cfg.cluster:
        res["cluster"] = cluster_run(root, model_dir, os.path.join(work, f"job-{name}-cluster"), cfg)
    return res


# ---------------------------------------------------------------- on a 3-node local cluster


def cluster_run(root: str, model_dir: str, out: str, cfg: BenchDenoiseConfig) -> dict:
    """The job against a head + 2 worker nodes (cluster/local/start.sh), all on this machine."""
    from dae.denoise import read_outputs

    cdir = tempfile.mkdtemp(prefix="dae-bc-", dir="/tmp")
    local = os.path.join(REPO, "cluster", "local")
    env = job_env({"DAE_RAY_BIN": os.path.join(os.path.dirname(sys.executable), "ray")})
    port = 23000 + os.getpid() % 500 * 10
    subprocess.run(["bash", f"{local}/start.sh", "--dir", cdir, "--port", str(port), "--dashboard-port",
                    str(port + 9), "--workers", "2", "--head-cpus", "2", "--worker-cpus", "2",
                    "--object-store-mb", "300"], env=env, check=True, capture_output=True, timeout=600)
    try:
        # The driver runs here and joins the cluster (as `ray job submit` would run it on the head).
        jenv = job_env({"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token",
                        "RAY_AUTH_TOKEN_PATH": os.path.join(cdir, "auth_token"), "DAE_RAY_CLUSTER": cdir})
        r = run_job(root, model_dir, out, cfg.noise, cfg.job_args, env=jenv, marker=f"DAE_RAY_CLUSTER={cdir}")
    finally:
        subprocess.run(["bash", f"{local}/stop.sh", "--dir", cdir, "--clean"], env=env, capture_output=True,
                       timeout=300)
    ids = read_outputs(out, columns=["id"]).column("id").to_pylist()
    expect = rows_of(root)
    r["exactly_once"] = len(ids) == len(set(ids)) == expect
    print(f"  cluster (head + 2 worker nodes, 2 CPUs each): {r['images_per_s']:.1f} images/s; rows written per "
          f"node: {r['writers']}; exactly once: {r['exactly_once']} ({len(ids)} rows, {len(set(ids))} ids, "
          f"{expect} inputs)", flush=True)
    return r


def run(cfg: BenchDenoiseConfig) -> dict:
    os.makedirs(cfg.work, exist_ok=True)
    results = {}
    for name in filter(None, cfg.sets.split(",")):
        if name == "color-blind":
            print(f"\n== color-blind: {cfg.photos_n} photos, pretrained:color-blind by precision", flush=True)
            results[name] = run_parts(make_shards(os.path.abspath(cfg.work), "photos", cfg.photos_n),
                                      os.path.abspath(cfg.work), tuple(filter(None, cfg.precision_parts.split(","))),
                                      cfg.job_args)
            continue
        if name == "files":
            from .files import bench_files

            results[name] = bench_files(cfg.files_n, cfg.work, cfg.job_args)
            continue
        if name not in SETS:
            raise SystemExit(f"error: unknown set {name!r}; valid: {', '.join(SETS)}, color-blind, files")
        results[name] = bench_set(name, cfg.fashion_n if name == "fashion" else cfg.photos_n, cfg)
    path = os.path.join(cfg.work, "bench-denoise.json")
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    print(f"\nfigures in {path}", flush=True)
    return results

