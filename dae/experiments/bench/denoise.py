"""The logic of ``python -m jobs.bench_denoise`` (its docstring says what it measures and how to run it):
its config (every field a flag), the inputs, the job with a CPU sampler, and a 3-node cluster run. The
plain script it is compared with is :func:`dae.experiments.reference.plain_denoise`."""

from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
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
from dae.sources.offline import FASHION_MNIST_DIR

from ..reference import plain_denoise

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
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
    sets: str = field(default="fashion,photos", metadata={"help": "comma list of: fashion, photos"})
    fashion_n: int = field(default=70_000, metadata={"help": "small images: Fashion-MNIST's 70,000 cycled up to N"})
    photos_n: int = field(default=1_728, metadata={"help": "photos: CBSD432's 432 cycled up to N"})
    work: str = field(default="bench_out/denoise", metadata={"help": "scratch directory (shards, models, outputs)"})
    noise: str = field(default="", metadata={
        "help": "synthetic noise and metrics in the job (--add-noise) and the script, e.g. gaussian:0.2; "
                "default: none (decode, forward, encode, write)"})
    job_args: str = field(default="", metadata={"help": "extra jobs.denoise flags for every job run"})
    skip: str = field(default="", metadata={"help": "comma list of parts to skip: plain, quarter, job"})
    cluster: bool = field(default=False, metadata={"help": "also run on a 3-node local cluster"})


# ---------------------------------------------------------------- inputs


def fashion_pngs() -> list[bytes]:
    out = []
    for name in ("t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"):
        path = os.path.join(FASHION_MNIST_DIR, name)
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} is missing; run `make data` (Debian's dataset-fashion-mnist)")
        with gzip.open(path) as fh:
            out += [shards.encode_png(a) for a in np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)]
    return out


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


# ---------------------------------------------------------------- the job, with a CPU sampler


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """{pid: (ppid, start time, CPU seconds)} of every process, from /proc/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(d)] = (int(f[1]), int(f[19]), (int(f[11]) + int(f[12])) / tick)  # ppid, starttime, utime+stime
    return out


class TreeSampler(threading.Thread):
    """CPU seconds (user + system) of a process and all its descendants, sampled every ``every`` s
    from /proc: the last value seen of each process is kept, so a process that exits between two
    samples loses at most ``every`` seconds of its CPU. ``marker``: also count every process whose
    environment holds it (the processes of a local cluster, which do not descend from the driver)."""

    def __init__(self, pid: int, every: float = 0.25, marker: str = ""):
        super().__init__(daemon=True)
        self.pid, self.every, self.marker = pid, every, marker.encode()
        self.cpu: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds
        self._halt = threading.Event()

    def _marked(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return self.marker in fh.read().split(b"\0")
        except OSError:
            return False

    def run(self):
        while not self._halt.is_set():
            table = _proc_table()
            mine = {self.pid} | ({p for p in table if self._marked(p)} if self.marker else set())
            grew = True
            while grew:
                new = {p for p, (pp, _, _) in table.items() if pp in mine and p not in mine}
                mine |= new
                grew = bool(new)
            for p in mine & table.keys():
                self.cpu[(p, table[p][1])] = table[p][2]
            self._halt.wait(self.every)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return sum(self.cpu.values())


def job_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": REPO}, **(extra or {}))
    return env


def run_job(root: str, model_dir: str, out: str, cfg: BenchDenoiseConfig, env: dict | None = None,
            marker: str = "") -> dict:
    """``python -m jobs.denoise`` in a process of its own (its own local Ray unless env joins a cluster)."""
    cmd = [sys.executable, "-m", "jobs.denoise", "--input", root, "--split", "bench", "--model", model_dir,
           "--output", out, "--overwrite", *(["--add-noise", cfg.noise] if cfg.noise else []), *cfg.job_args.split()]
    t = time.perf_counter()
    with open(f"{out}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or job_env(), stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, marker=marker)
        sampler.start()
        rc = proc.wait()
        all_cpu = sampler.stop()
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"error: the job failed (exit {rc}); log: {out}.log")
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    d = s["driver"]
    return {"images": s["rows_out"], "wall_s": wall, "images_per_s": s["rows_out"] / wall,
            "pipeline_images_per_s": s["images_per_s"], "all_cpu_s": all_cpu, "driver_cpu_s": d["cpu_s"],
            "driver_cpu_s_pipeline": d["cpu_s_pipeline"], "driver_cpu_s_books": d.get("cpu_s_books"),
            "driver_peak_rss_mb": d["peak_rss_mb"],
            "driver_received_bytes": d["received"]["bytes"], "actors": s["actors"],
            "writers": s["rows_by_writer_node"]}


def report_job(tag: str, r: dict) -> None:
    print(f"  job {tag:8s} {r['images']:7d} images: {r['images_per_s']:8.1f} images/s end to end "
          f"({r['wall_s']:.1f}s; pipeline {r['pipeline_images_per_s']} images/s); CPU: all processes "
          f"{r['all_cpu_s']:.1f}s, driver {r['driver_cpu_s']:.2f}s ({100 * r['driver_cpu_s'] / r['all_cpu_s']:.1f}%, "
          f"{1000 * r['driver_cpu_s'] / r['images']:.3f} ms/image; in the pipeline "
          f"{1000 * r['driver_cpu_s_pipeline'] / r['images']:.3f} ms/image, of which the books and commits "
          f"{1000 * (r['driver_cpu_s_books'] or 0) / r['images']:.3f} ms/image), driver peak RSS "
          f"{r['driver_peak_rss_mb']:.0f} MiB, driver received {r['driver_received_bytes']} bytes", flush=True)


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
        res["quarter"] = run_job(quarter(root), model_dir, os.path.join(work, f"job-{name}-quarter"), cfg)
        report_job("N/4", res["quarter"])
    if "job" not in skip:
        res["job"] = run_job(root, model_dir, os.path.join(work, f"job-{name}"), cfg)
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
        r = run_job(root, model_dir, out, cfg, env=jenv, marker=f"DAE_RAY_CLUSTER={cdir}")
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
        if name not in SETS:
            raise SystemExit(f"error: unknown set {name!r}; valid: {', '.join(SETS)}")
        results[name] = bench_set(name, cfg.fashion_n if name == "fashion" else cfg.photos_n, cfg)
    path = os.path.join(cfg.work, "bench-denoise.json")
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    print(f"\nfigures in {path}", flush=True)
    return results

