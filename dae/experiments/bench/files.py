"""The ``files`` set of ``jobs.bench_denoise`` (issue 29): a folder of N small image files denoised
by the job, at N/10 and at N, for the driver's memory against N and the images/s, then a run killed
part way and resumed.

    python -m jobs.bench_denoise --sets files                 # N = 100,000 (--files-n)
    python -m jobs.bench_denoise --sets files --files-n 2000  # a quick look

Inputs: WORK/files-N/dNNN/NNNNNNN.png, 1,000 files per folder, the Fashion-MNIST images (28x28 gray PNG)
cycled; written once (WORK/files-N/.complete, a hidden name the job skips) and reused. Model: conv28k
(untrained weights: the forward pass costs the same). Printed:
  - per run (N/10, N): files, wall time, images/s, the driver's peak RSS (from summary.json) and CPU;
  - the driver's peak RSS growth from N/10 to N, in bytes per file (what the listing costs: the
    driver holds paths, sizes and times as arrays, never an image);
  - resume: the N run again into a new output, killed once about a third of its groups are committed,
    then rerun: groups skipped and redone, rows the resumed run denoised, and whether every file's id is
    in the output exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from .jobproc import REPO, TreeSampler, fashion_pngs, job_env

PER_DIR = 1000


def make_files(work: str, n: int) -> str:
    root = os.path.join(work, f"files-{n}")
    if os.path.exists(os.path.join(root, ".complete")):
        return root
    pngs = fashion_pngs()
    t = time.perf_counter()
    for i in range(n):
        d = os.path.join(root, f"d{i // PER_DIR:03d}")
        if i % PER_DIR == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:07d}.png"), "wb") as fh:
            fh.write(pngs[i % len(pngs)])
    open(os.path.join(root, ".complete"), "w").close()
    print(f"wrote {n} image files to {root} in {time.perf_counter() - t:.1f}s", flush=True)
    return root


def _cmd(root: str, model_dir: str, out: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "jobs.denoise", "--input", root, "--model", model_dir, "--output", out, *extra]


def run_files_job(root: str, model_dir: str, out: str, extra: list[str]) -> dict:
    t = time.perf_counter()
    with open(f"{out}.log", "w") as log:
        proc = subprocess.Popen(_cmd(root, model_dir, out, extra), cwd=REPO, env=job_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        all_cpu = sampler.stop()
    if rc != 0:
        raise SystemExit(f"error: the job failed (exit {rc}); log: {out}.log")
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    wall = time.perf_counter() - t
    done = s["rows_processed_this_run"]
    return {"files": s["rows_in"], "wall_s": wall, "images_per_s": done / wall if done else None,
            "pipeline_images_per_s": s["images_per_s"], "rows_processed": done, "all_cpu_s": all_cpu,
            "driver_cpu_s": s["driver"]["cpu_s"], "driver_peak_rss_mb": s["driver"]["peak_rss_mb"],
            "groups": s["files"], "groups_processed": s["files_processed"], "inputs": s["inputs"]}


def _report(tag: str, r: dict) -> None:
    print(f"  {tag:10s} {r['files']:7d} files: {r['wall_s']:6.1f}s, {r['images_per_s'] or 0:7.1f} images/s end to "
          f"end (pipeline {r['pipeline_images_per_s']}), {r['groups']} groups; driver peak RSS "
          f"{r['driver_peak_rss_mb']:.0f} MiB, driver CPU {r['driver_cpu_s']:.1f}s of {r['all_cpu_s']:.1f}s",
          flush=True)


def killed_and_resumed(root: str, model_dir: str, out: str, groups: int, extra: list[str]) -> dict:
    """The job killed (its process group: the driver and its local Ray) once a third of its groups are
    committed, then run again."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    done = os.path.join(out, "_done")
    with open(f"{out}.killed.log", "w") as log:
        proc = subprocess.Popen(_cmd(root, model_dir, out, extra), cwd=REPO, env=job_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                if os.path.isdir(done) and len([n for n in os.listdir(done) if n.endswith(".json")]) >= groups / 3:
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    committed = len([n for n in os.listdir(done) if n.endswith(".json")]) if os.path.isdir(done) else 0
    print(f"  killed after {committed} of {groups} groups were committed", flush=True)
    if committed >= groups:
        print("  (the run ended before the kill: too few files, or batches as big as the groups; try a larger "
              "--files-n or --job-args '--batch-size 64')", flush=True)
    r = run_files_job(root, model_dir, out, extra)
    _report("resumed", r)
    from dae.denoise import read_outputs

    ids = read_outputs(out, columns=["id"]).column("id").to_pylist()
    r.update(committed_before_kill=committed,
             exactly_once=len(ids) == len(set(ids)) == r["files"])
    print(f"  resume: {r['inputs']['unchanged']} groups skipped unread, {r['groups_processed']} done "
          f"({r['rows_processed']} images); every file exactly once: {r['exactly_once']}", flush=True)
    return r


def bench_files(n: int, work: str, job_args: str = "") -> dict:
    import torch

    from dae.checkpoint import save_model
    from dae.models import create_model

    work = os.path.abspath(work)
    torch.manual_seed(0)
    model_dir = save_model(create_model("conv28k", channels=1).eval(), os.path.join(work, "model-files"))
    extra = job_args.split()
    print(f"\n== files: folders of {n // 10} and {n} image files (28x28 PNG), conv28k, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    res: dict = {"set": "files", "n": n}
    for tag, k in (("N/10", max(1, n // 10)), ("N", n)):
        root = make_files(work, k)
        res[tag] = run_files_job(root, model_dir, os.path.join(work, f"job-files-{k}"), ["--overwrite", *extra])
        _report(tag, res[tag])
    a, b = res["N/10"], res["N"]
    growth = (b["driver_peak_rss_mb"] - a["driver_peak_rss_mb"]) * 2**20 / max(1, b["files"] - a["files"])
    res["driver_rss_bytes_per_file"] = growth
    print(f"  driver peak RSS N/10 -> N: {a['driver_peak_rss_mb']:.0f} -> {b['driver_peak_rss_mb']:.0f} MiB "
          f"({growth:.0f} bytes per file more)", flush=True)
    res["resume"] = killed_and_resumed(make_files(work, n), model_dir, os.path.join(work, "job-files-resumed"),
                                       b["groups"], extra)
    return res
