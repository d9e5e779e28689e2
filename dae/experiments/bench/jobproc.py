"""Running ``python -m jobs.denoise`` as a benchmark runs it: a process of its own, every CPU second of
it and its Ray processes sampled from /proc, its summary.json read back. Used by ``jobs.bench_denoise``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


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


def run_job(root: str, model_dir: str, out: str, noise: str = "", job_args: str = "", env: dict | None = None,
            marker: str = "") -> dict:
    """``python -m jobs.denoise`` in a process of its own (its own local Ray unless env joins a cluster),
    on split ``bench`` of ``root``, with ``--add-noise noise`` and the extra flags ``job_args``."""
    cmd = [sys.executable, "-m", "jobs.denoise", "--input", root, "--split", "bench", "--model", model_dir,
           "--output", out, "--overwrite", *(["--add-noise", noise] if noise else []), *job_args.split()]
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


def fashion_pngs() -> list[bytes]:
    """The 70,000 Fashion-MNIST images as PNG (the fashion and files sets' inputs)."""
    import gzip

    import numpy as np

    from dae import shards
    from dae.sources.offline import FASHION_MNIST_DIR

    out = []
    for name in ("t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"):
        path = os.path.join(FASHION_MNIST_DIR, name)
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} is missing; run `make data` (Debian's dataset-fashion-mnist)")
        with gzip.open(path) as fh:
            out += [shards.encode_png(a) for a in np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)]
    return out
