"""The GPU check's steps (the module docstring of :mod:`dae.experiments.gpu_check`), each figure into
``OUT/gpu_check.json`` as it comes, and the figures printed at the end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np
import pyarrow.parquet as pq
import torch

from dae import shards
from dae.checkpoint import load_model
from dae.denoise import read_outputs
from dae.jobutil import setup_logging
from dae.models import create_model
from dae.precision import native_bf16
from dae.raylib import LOCAL_SYSTEM_CONFIG, TRAIN_RUNTIME_ENV

from .config import (
    DENOISE_TARGET,
    FULL,
    GPU_BUSY_TARGET,
    NO_GPU,
    SEED,
    SMALL,
    SMALL_HW,
    TILE_MAX,
    TILE_MEAN,
    TRAIN_TARGET,
    GpuCheckConfig,
)
from .data import photo, subset, write_sets
from .measure import (
    bound,
    compare,
    cpu_stages,
    denoise_config,
    denoise_job,
    denoised_pngs,
    forward_spec,
    plain_denoise,
    plain_train,
    tile_check,
    train_job,
)
from .probes import cuda_visible, versions


def say(msg: str) -> None:
    print(msg, flush=True)


def _rate(x: float) -> str:
    """An images/s figure: no decimals when big, some when small (a dry run's photos go at ~1/s)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


# ---------------------------------------------------------------- the check


class Check:
    """The result dict, written to OUT/gpu_check.json after every step; a failing step is recorded
    (one line in the JSON, the traceback on stderr) and the others still run."""

    def __init__(self, out: str, device: str, small: bool):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "gpu_check.json")
        self.r: dict = {"device": device, "small": small, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "skipped": {}, "errors": {}, "targets": []}
        self.t0 = time.perf_counter()

    def save(self) -> None:
        self.r["wall_s"] = round(time.perf_counter() - self.t0, 1)
        with open(self.path + ".tmp", "w") as fh:
            json.dump(self.r, fh, indent=2, default=str)
        os.replace(self.path + ".tmp", self.path)

    def step(self, name: str, fn, *a, **kw):
        say(f"\n== {name}")
        t = time.perf_counter()
        try:
            value = fn(*a, **kw)
        except Exception as e:  # keep going: one GPU run should bring back every figure it can
            traceback.print_exc()
            self.r["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            value = None
        say(f"   ({name}: {time.perf_counter() - t:.1f}s)")
        self.save()
        return value

    def target(self, name: str, value, target: float, met: bool | None) -> None:
        self.r["targets"].append({"name": name, "value": value, "target": target, "met": met})


def run_check(cfg: GpuCheckConfig, chk: Check) -> None:
    """Steps 1-4 of the module docstring, each figure into ``chk.r`` as it comes."""
    import ray

    device, sz = cfg.device, (SMALL if cfg.small else FULL)
    gpu = device == "cuda"
    r = chk.r
    if not gpu:
        why = "no GPU: --device cpu dry run"
        r["skipped"].update(gpu_utilization=f"{why} (nvidia-smi not run)", gpu_name=why)
        if not native_bf16("cpu"):
            r["skipped"]["bf16"] = "no native bf16 on this CPU (no AMX-BF16 or AVX512-BF16): --precision auto is fp32"
    r["sizes"] = sz
    r["versions"] = versions(device)
    say("versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    r["data"] = chk.step("data", write_sets, cfg.work, sz)
    if r["data"] is None:
        return
    say(f"   {sz['train_images']} + {sz['test_images']} small {SMALL_HW}x{SMALL_HW} RGB images, {sz['photos']} photos "
        f"{sz['photo_hw'][0]}x{sz['photo_hw'][1]} RGB (mean PNG {r['data']['photos']['mean_png_kb']} KiB), "
        f"made in {r['data']['seconds']}s")
    # A private local Ray with the GPUs torch sees (none on a dry run: nothing may touch a GPU then);
    # no dashboard: its dependencies are not on the GPU machine. The stages then join this Ray.
    ray.init(address="local", include_dashboard=False, num_gpus=torch.cuda.device_count() if gpu else 0,
             log_to_driver=True, runtime_env=TRAIN_RUNTIME_ENV,  # it trains: dae.raylib says why
             _system_config=LOCAL_SYSTEM_CONFIG)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    r["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    small_root, photo_root = r["data"]["small"]["root"], r["data"]["photos"]["root"]

    model_dir = check_training(chk, cfg.work, sz, device, small_root)
    r["denoise"] = {}
    agree_in = {}
    for name, root, split, n_agree, rps in (
            ("small", small_root, "train", sz["agree_small"], sz["small_rows_per_shard"]),
            ("photos", photo_root, "photos", sz["agree_photos"], sz["photo_rows_per_shard"])):
        check_denoise(chk, cfg.work, device, model_dir, name, root, split, cluster_cpus)
        agree_in[name] = (subset(root, split, n_agree, rps, os.path.join(cfg.work, f"agree-{name}")), split)
    chk.save()
    check_agreement(chk, cfg.work, sz, device, model_dir, agree_in)


def check_training(chk: Check, work: str, sz: dict, device: str, small_root: str) -> str:
    """Step 2: the train job against the plain loop; returns the model dir the later steps denoise with."""
    gpu = device == "cuda"
    tr: dict = {}
    chk.r["train"] = tr
    tr["job"] = chk.step("train: the job (dae.train.run, 1 worker)", train_job, small_root, work, sz, device)
    threads = tr["job"]["torch_threads"] if tr["job"] else max(1, min(8, os.cpu_count() or 1))
    tr["plain"] = chk.step("train: the plain PyTorch loop", plain_train, small_root, sz, device, threads)
    if tr["job"] and tr["plain"]:
        j, p = tr["job"], tr["plain"]
        tr["ratio"] = round(j["steady_images_per_s"] / p["steady_images_per_s"], 3)
        say(f"   train, steady epoch {j['steady_epoch']}: job {_rate(j['steady_images_per_s'])} images/s, plain loop "
            f"{_rate(p['steady_images_per_s'])} images/s -> {tr['ratio']:.2f}x (target >= {TRAIN_TARGET}); "
            f"val PSNR job {j['val_psnr']:.2f} dB, plain {p['val_psnr']:.2f} dB (noisy {j['noisy_psnr']:.2f} dB)")
        chk.target("train: job steady epoch / plain loop, images/s", tr["ratio"], TRAIN_TARGET,
                   tr["ratio"] >= TRAIN_TARGET if gpu else None)
    model_dir = tr["job"]["best_model"] if tr["job"] else None
    if model_dir is None:  # keep measuring inference with an untrained model of the same shape
        from dae.checkpoint import save_model

        torch.manual_seed(SEED)
        model_dir = save_model(create_model("unet", channels=3, width=sz["width"]), os.path.join(work, "untrained"))
        chk.r["skipped"]["trained_model"] = "the train job failed: denoise used an untrained U-Net of the same shape"
    return model_dir


def _say_denoise(name: str, d: dict) -> None:
    """The denoise figures of one set: the job against the plain script, the stages, what bounds it."""
    j, p, c, b = d["job"], d["plain"], d["cpu_stages"], d["bound"]
    say(f"   denoise {name}: job {_rate(j['images_per_s'])} images/s end to end ({j['images']} images in "
        f"{j['wall_s']:.1f}s; pipeline {j['pipeline_images_per_s']} images/s), plain script "
        f"{_rate(p['images_per_s'])} images/s -> {d['ratio']:.2f}x (target >= {DENOISE_TARGET}x)")
    say("   plain script stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in p["stage_s"].items())
        + f"; forward alone {p['forward_images_per_s']} images/s")
    say(f"   CPU per image (in-process, 1 thread): decode {c['decode_ms']:.3f} ms, encode {c['encode_ms']:.3f} ms, "
        f"write {c['write_ms']:.3f} ms; over {b['task_cpus']:g} task CPUs the CPU stages cap at "
        f"{_rate(b['cpu_stage_ceiling_images_per_s'])} images/s, the forward pass at "
        f"{_rate(b['forward_ceiling_images_per_s'])}: bound by {b['bound_by']}")


def check_denoise(chk: Check, work: str, device: str, model_dir: str, name: str, root: str, split: str,
                  cluster_cpus: float) -> dict:
    """Step 3 on one set: the denoise job (1 actor), the plain script and the CPU stages in-process;
    the figures go into ``chk.r["denoise"][name]`` as they come (a run cut short keeps them)."""
    gpu = device == "cuda"
    d: dict = {}
    chk.r["denoise"][name] = d
    cfg1 = denoise_config(device, 1, input=root, split=split, model=model_dir,
                          output=os.path.join(work, f"denoise-{name}-1"))
    spec = forward_spec(cfg1, device)
    d["job"] = chk.step(f"denoise {name}: the job, 1 actor", denoise_job, cfg1, gpu)
    d["plain"] = chk.step(f"denoise {name}: the plain script", plain_denoise, root, split, model_dir,
                          os.path.join(work, f"plain-{name}"), spec)
    rows = d["job"]["batch_size"] if d["job"] else 64
    d["cpu_stages"] = chk.step(f"denoise {name}: CPU stages in-process", cpu_stages, root, split, rows,
                               model_dir, spec)
    j, p, c = d["job"], d["plain"], d["cpu_stages"]
    if not (j and p and c):
        return d
    d["ratio"] = round(j["images_per_s"] / p["images_per_s"], 3)
    d["bound"] = bound(j, p, c, cluster_cpus)
    _say_denoise(name, d)
    u = j["gpu_utilization"]
    if u is not None:
        say(f"   GPU utilization: {u.get('active_span_mean_pct')}% over the active span ({u.get('active_span_s')}s), "
            f"{u.get('mean_pct')}% over the run, max {u.get('max_pct')}%, {u['samples']} samples")
        chk.target(f"denoise {name}: GPU busy % (active span)", u.get("active_span_mean_pct"), GPU_BUSY_TARGET,
                   (u.get("active_span_mean_pct") or 0) >= GPU_BUSY_TARGET)
    chk.target(f"denoise {name}: job / plain script, images/s", d["ratio"], DENOISE_TARGET,
               d["ratio"] >= DENOISE_TARGET if gpu else None)
    comp = compare(denoised_pngs(read_outputs(j["output"], columns=["id", "denoised"])),
                   denoised_pngs(pq.read_table(p["output"])), j["images"])
    d["job_vs_plain"] = comp
    say(f"   job vs plain script outputs: {comp['identical_png']}/{comp['rows']} identical PNGs, max difference "
        f"{comp['max_level_diff']} level(s)")
    return d


def check_agreement(chk: Check, work: str, sz: dict, device: str, model_dir: str, agree_in: dict) -> dict:
    """Step 4: 1 vs 2 actors on a subset of each set, tiled vs whole-image inference."""
    gpu = device == "cuda"
    ag: dict = {"actors": {}, "tiles": {}}
    chk.r["agreement"] = ag
    for name, (root, split) in agree_in.items():
        j1 = chk.r["denoise"][name].get("job")
        cfg2 = denoise_config(device, 2, input=root, split=split, model=model_dir,
                              output=os.path.join(work, f"denoise-{name}-2"))
        j2 = chk.step(f"agreement {name}: the job, 2 actors", denoise_job, cfg2, gpu)
        if not (j1 and j2):
            continue
        ag["actors"][name] = comp = compare(
            denoised_pngs(read_outputs(j1["output"], columns=["id", "denoised"])),
            denoised_pngs(read_outputs(j2["output"], columns=["id", "denoised"])), j2["images"])
        comp.update(job_2_actors=j2)
        say(f"   1 vs 2 actors ({name}, {comp['rows']} images): {comp['identical_png']} identical PNGs, max difference "
            f"{comp['max_level_diff']} level(s) -> {'agree' if comp['agree'] else 'DISAGREE'}; 2 actors "
            f"{_rate(j2['images_per_s'])} images/s")

    def tiles() -> dict:
        model, _ = load_model(model_dir, device)
        h, w = sz["tile_hw"]  # multiples of the U-Net's size multiple: no border padding in the whole pass
        img = shards.to_float(photo(5, 0, (h, w), np.zeros((h, w, 3), np.int16)))
        out = {"fp32": tile_check(model, device, img, "fp32")}
        if gpu or native_bf16("cpu"):
            out["bf16"] = tile_check(model, device, img, "bf16")
        return out

    ag["tiles"] = chk.step("agreement: tiled vs whole-image inference", tiles) or {}
    for k, t in ag["tiles"].items():
        say(f"   tiles {t['tile']}/{t['overlap']} vs whole ({k}, {t['image'][0]}x{t['image'][1]}): "
            f"max {t['max_abs']:.5f} (< {TILE_MAX}), mean {t['mean_abs']:.2e} (< {TILE_MEAN:g}) -> "
            f"{'agree' if t['agree'] else 'DISAGREE'}")
    ag["actors_agree"] = (bool(ag["actors"]) and len(ag["actors"]) == 2
                          and all(c["agree"] for c in ag["actors"].values()))
    ag["tiles_agree"] = bool(ag["tiles"]) and all(t["agree"] for t in ag["tiles"].values())
    return ag


def print_figures(r: dict) -> None:
    say("\n== figures (" + ("GPU" if r["device"] == "cuda" else "CPU dry run") + (", small sizes" if r["small"] else "")
        + f", {r.get('wall_s', 0):.0f}s)")
    for t in r["targets"]:
        verdict = "met" if t["met"] else "not evaluated (dry run)" if t["met"] is None else "MISSED"
        say(f"   {t['name']}: {t['value']} (target {t['target']}): {verdict}")
    ag = r.get("agreement", {})
    say(f"   1 vs 2 actors agree: {ag.get('actors_agree')}; tiled vs whole agree: {ag.get('tiles_agree')}")
    for k, v in r["skipped"].items():
        say(f"   skipped {k}: {v}")
    for k, v in r["errors"].items():
        say(f"   ERROR in {k}: {v}")


def _scratch(cfg: GpuCheckConfig) -> GpuCheckConfig:
    """cfg with --work made absolute (a temp dir when not given), emptied of an earlier run's outputs:
    a rerun starts from scratch (no resume)."""
    cfg = dataclasses.replace(cfg, work=os.path.abspath(cfg.work or tempfile.mkdtemp(prefix="dae-gpu-check-")))
    os.makedirs(cfg.work, exist_ok=True)
    for sub in ("small", "photos", "runs", "train", "untrained"):
        shutil.rmtree(os.path.join(cfg.work, sub), ignore_errors=True)
    for stale in (n for n in os.listdir(cfg.work) if n.startswith(("denoise-", "plain-", "agree-"))):
        shutil.rmtree(os.path.join(cfg.work, stale), ignore_errors=True)
    return cfg


def run(cfg: GpuCheckConfig) -> int:
    if cfg.dry_run:
        cfg = dataclasses.replace(cfg, device="cpu", small=True)
    if cfg.device == "cuda" and not cuda_visible():
        print(NO_GPU, file=sys.stderr)
        return 2
    setup_logging()
    chk = Check(cfg.out, cfg.device, cfg.small)
    own_work = not cfg.work
    cfg = _scratch(cfg)
    try:
        run_check(cfg, chk)
    except Exception as e:
        traceback.print_exc()
        chk.r["errors"]["check"] = f"{type(e).__name__}: {e}"[:2000]
    finally:
        ag = chk.r.get("agreement", {})
        chk.r["ok"] = not chk.r["errors"] and bool(ag.get("actors_agree")) and bool(ag.get("tiles_agree"))
        chk.save()
        print_figures(chk.r)
        say(f"figures in {chk.path}")
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if own_work:
            shutil.rmtree(cfg.work, ignore_errors=True)
    return 0 if chk.r["ok"] else 1
