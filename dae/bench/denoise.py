"""The logic of ``python -m jobs.bench_denoise`` (its docstring says what it measures and how to run it)."""

from __future__ import annotations

import argparse
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from dae import inference, metrics, shards
from dae.checkpoint import save_model
from dae.models import create_model
from dae.noise import NoiseSpec, image_rng
from dae.sources.offline import FASHION_MNIST_DIR

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CBSD432 = os.path.join(os.path.dirname(REPO), "shared", "datasets", "natural", "train", "CBSD432")
SETS = {
    "fashion": {"model": "conv28k", "kwargs": {}, "channels": 1, "rows_per_shard": 2500},
    "photos": {"model": "unet", "kwargs": {"width": 16}, "channels": 3, "rows_per_shard": 32},
}


def get_args_parser(doc: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="fashion,photos", help="comma list of: fashion, photos")
    p.add_argument("--fashion-n", type=int, default=70_000)
    p.add_argument("--photos-n", type=int, default=1_728)
    p.add_argument("--work", default="bench_out/denoise", help="scratch directory (shards, models, outputs)")
    p.add_argument("--noise", default="", help="synthetic noise and metrics in the job (--add-noise) and the "
                                               "script, e.g. gaussian:0.2; default: none (decode, forward, "
                                               "encode, write)")
    p.add_argument("--job-args", default="", help="extra jobs.denoise flags for every job run")
    p.add_argument("--skip", default="", help="comma list of parts to skip: plain, quarter, job")
    p.add_argument("--cluster", action="store_true", help="also run on a 3-node local cluster")
    return p


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


# ---------------------------------------------------------------- the plain script


def plain_script(root: str, model, noise: str, seed: int, out_dir: str, forward_batch: int = 64) -> dict:
    """The same steps as the job, one process, no Ray: the baseline the job is compared with."""
    spec = NoiseSpec.parse(noise) if noise else None
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
        clean = [shards.to_float(shards.decode_png(b)) for b in pngs]
        times["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        noisy = [shards.to_float(shards.from_float(spec.apply(c, image_rng(seed, i)))) for c, i in zip(clean, ids)] \
            if spec else clean
        times["noise"] += time.perf_counter() - t
        t = time.perf_counter()
        den: list = [None] * len(noisy)
        by_shape: dict[tuple, list[int]] = {}
        for j, x in enumerate(noisy):
            by_shape.setdefault(x.shape, []).append(j)
        with torch.inference_mode():
            for (h, w, _), idx in by_shape.items():
                # the job's pass size (64 small images, a photo alone), best on CPU for both sets
                n_pass = inference.chunk_size(h, w, forward_batch, inference.FORWARD_PIXELS)
                for s in range(0, len(idx), n_pass):
                    part = idx[s:s + n_pass]
                    y = model(torch.from_numpy(np.stack([noisy[j] for j in part])).permute(0, 3, 1, 2))
                    for k, j in enumerate(part):
                        den[j] = y[k].permute(1, 2, 0).numpy()
        times["forward"] += time.perf_counter() - t
        t = time.perf_counter()
        den_q = [shards.from_float(d) for d in den]
        den_png = [shards.encode_png(d) for d in den_q]
        noisy_png = [shards.encode_png(shards.from_float(x)) for x in noisy] if spec else []
        times["encode"] += time.perf_counter() - t
        t = time.perf_counter()
        m = {k: np.zeros(len(ids)) for k in ("psnr_noisy", "psnr_denoised", "ssim_denoised")} if spec else {}
        by_shape: dict[tuple, list[int]] = {}
        for j, c in enumerate(clean if spec else []):
            by_shape.setdefault(c.shape, []).append(j)
        for idx in by_shape.values():  # one call per image shape, as the job does; metrics stay per image
            c = np.stack([clean[j] for j in idx])
            dq = np.stack([shards.to_float(den_q[j]) for j in idx])
            m["psnr_noisy"][idx] = metrics.psnr(np.stack([noisy[j] for j in idx]), c).numpy()
            m["psnr_denoised"][idx] = metrics.psnr(dq, c).numpy()
            m["ssim_denoised"][idx] = metrics.ssim(dq, c).numpy()
        times["metrics"] += time.perf_counter() - t
        t = time.perf_counter()
        out_t = table.append_column("denoised", pa.array(den_png, pa.binary()))
        if spec:
            out_t = out_t.append_column("noisy", pa.array(noisy_png, pa.binary()))
        for k, v in m.items():
            out_t = out_t.append_column(k, pa.array(v))
        pq.write_table(out_t, os.path.join(out_dir, os.path.basename(path)), compression="zstd")
        times["write"] += time.perf_counter() - t
        n += len(ids)
    wall = time.perf_counter() - t0
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "stage_s": times}


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


def run_job(root: str, model_dir: str, out: str, args, env: dict | None = None, marker: str = "") -> dict:
    """``python -m jobs.denoise`` in a process of its own (its own local Ray unless env joins a cluster)."""
    cmd = [sys.executable, "-m", "jobs.denoise", "--input", root, "--split", "bench", "--model", model_dir,
           "--output", out, "--overwrite", *(["--add-noise", args.noise] if args.noise else []), *args.job_args.split()]
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


def bench_set(name: str, n: int, args) -> dict:
    cfg = SETS[name]
    work = os.path.abspath(args.work)
    root = make_shards(work, name, n)
    torch.manual_seed(0)
    model = create_model(cfg["model"], channels=cfg["channels"], **cfg["kwargs"]).eval()
    model_dir = save_model(model, os.path.join(work, f"model-{name}"))
    skip = set(filter(None, args.skip.split(",")))
    res: dict = {"set": name, "n": n, "model": cfg["model"], "model_kwargs": cfg["kwargs"]}
    print(f"\n== {name}: {n} images, {cfg['model']} {cfg['kwargs']} ({sum(p.numel() for p in model.parameters())} "
          f"parameters), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    if "plain" not in skip:
        torch.set_num_threads(1)  # one process, one core: the script a user would write
        p = plain_script(root, model, args.noise, 0, os.path.join(work, f"plain-{name}"))
        torch.set_num_threads(os.cpu_count() or 1)
        res["plain"] = p
        print(f"  plain script: {p['images_per_s']:8.1f} images/s ({p['wall_s']:.1f}s); "
              + ", ".join(f"{k} {100 * v / p['wall_s']:.0f}%" for k, v in p["stage_s"].items()), flush=True)
    if "quarter" not in skip:
        q = quarter(root)
        res["quarter"] = run_job(q, model_dir, os.path.join(work, f"job-{name}-quarter"), args)
        report_job("N/4", res["quarter"])
    if "job" not in skip:
        res["job"] = r = run_job(root, model_dir, os.path.join(work, f"job-{name}"), args)
        report_job("N", r)
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
    if args.cluster:
        res["cluster"] = cluster_run(root, model_dir, os.path.join(work, f"job-{name}-cluster"), args)
    return res


# ---------------------------------------------------------------- on a 3-node local cluster


def cluster_run(root: str, model_dir: str, out: str, args) -> dict:
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
        r = run_job(root, model_dir, out, args, env=jenv, marker=f"DAE_RAY_CLUSTER={cdir}")
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


def run(args: argparse.Namespace) -> dict:
    os.makedirs(args.work, exist_ok=True)
    results = {}
    for name in filter(None, args.sets.split(",")):
        if name not in SETS:
            raise SystemExit(f"error: unknown set {name!r}; valid: {', '.join(SETS)}")
        results[name] = bench_set(name, args.fashion_n if name == "fashion" else args.photos_n, args)
    path = os.path.join(args.work, "bench-denoise.json")
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    print(f"\nfigures in {path}", flush=True)
    return results

