"""The GPU check's measurements, each one call: the train job and the plain loop, the denoise job and the
plain script (both from :mod:`dae.experiments.reference`), the CPU stages in-process, which stage bounds
the job, and the agreement checks (outputs of two runs, tiled vs whole-image inference)."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dae import inference, shards
from dae.checkpoint import load_model
from dae.config import build_config
from dae.denoise import DenoiseConfig, run as denoise_run
from dae.inference_spec import InferenceSpec
from dae.train import TrainConfig, run as train_run

from .. import reference
from .config import LR, NOISE, SEED, TILE, TILE_MAX, TILE_MEAN, TILE_OVERLAP, VAL_SEED
from .probes import GpuSampler


def _round(x, nd: int = 4):
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------- training: the job and the plain loop


def train_job(root: str, work: str, sz: dict, device: str) -> dict:
    cfg = TrainConfig(data=root, model="unet", model_kwargs={"width": sz["width"]}, noise=NOISE, loss="mse",
                      optimizer="adam", schedule="onecycle", lr=LR, epochs=sz["epochs"], batch_size=sz["batch_size"],
                      workers=1, gpus_per_worker=1.0 if device == "cuda" else 0.0, seed=SEED, val_seed=VAL_SEED,
                      storage=os.path.join(work, "runs"), run_name="gpu-check", out=os.path.join(work, "train"),
                      num_to_keep=1, max_failures=0, samples=4)
    t0 = time.perf_counter()
    s = train_run(cfg)
    steady = s["history"][-1]  # the last epoch: epoch 1 also pays the warm-up (cuDNN, allocator)
    return {"config": dataclasses.asdict(cfg), "wall_s": round(time.perf_counter() - t0, 2),
            "torch_threads": s["torch_threads"], "epochs": [
                {k: _round(h[k]) for k in ("epoch", "images_per_s", "train_s", "val_psnr", "train_loss")}
                for h in s["history"]],
            "steady_epoch": steady["epoch"], "steady_images_per_s": _round(steady["images_per_s"], 1),
            "val_psnr": _round(steady["val_psnr"]), "noisy_psnr": _round(steady["noisy_psnr"]),
            "best_model": s["best_model"]}


def plain_train(root: str, sz: dict, device: str, threads: int) -> dict:
    """The train stage's loop without Ray, in this process (:func:`dae.experiments.reference.plain_train`):
    same rows in the same order (rank 0 of 1, permutation from (seed, epoch, 0)), same noise, model init,
    Adam + one-cycle, bf16 autocast where native (dae.precision), float32 MSE, and the same timing (the epoch's loop, no
    validation; no CUDA sync, as the job)."""
    r = reference.plain_train(root, "unet", {"width": sz["width"]}, noise=NOISE, epochs=sz["epochs"],
                              batch_size=sz["batch_size"], lr=LR, seed=SEED, val_seed=VAL_SEED,
                              evaluate_every_epoch=False, device=device, threads=threads, job_order=True)
    epochs = [{"epoch": h["epoch"], "images_per_s": _round(h["images_per_s"], 1), "train_s": _round(h["epoch_s"]),
               "train_loss": _round(h["train_loss"], 6)} for h in r["history"]]
    return {"epochs": epochs, "steady_images_per_s": epochs[-1]["images_per_s"], "val_psnr": _round(r["val_psnr"]),
            "noisy_psnr": _round(r["noisy_psnr"]), "torch_threads": threads}


# ---------------------------------------------------------------- denoise: the job, the plain script, CPU stages


def denoise_config(device: str, actors: int, **paths) -> DenoiseConfig:
    """The ``denoise-gpu`` preset with a fixed pool of ``actors``; on CPU, half-CPU single-thread
    actors (2 of them fit next to the tasks on 2 cores) and the CPU forward defaults."""
    values: dict = dict(min_actors=actors, max_actors=actors, overwrite=True, progress_every=30.0, **paths)
    if device == "cuda":
        values["gpus_per_actor"] = 1.0 / actors
    else:
        values.update(device="cpu", cpus_per_actor=0.5, forward_batch=64, forward_pixels=inference.FORWARD_PIXELS)
    return build_config(DenoiseConfig, values, preset="denoise-gpu")


def forward_spec(cfg: DenoiseConfig, device: str) -> InferenceSpec:
    """The stage's forward settings (tile, forward batch and pixels, determinism, precision, ensemble) on
    the check's device: the plain script and the in-process CPU stages run the model as the job does."""
    return cfg.inference_spec().placed(device)


def denoise_job(cfg: DenoiseConfig, sample_gpu: bool) -> dict:
    sampler = GpuSampler() if sample_gpu else None
    t0 = time.perf_counter()
    if sampler:
        with sampler:
            s = denoise_run(cfg)
    else:
        s = denoise_run(cfg)
    wall = time.perf_counter() - t0
    a = s["actors"]
    return {"images": s["rows_out"], "failed": s["rows_failed"], "wall_s": round(wall, 2),
            "images_per_s": round(s["rows_out"] / wall, 1), "pipeline_s": s["pipeline_s"],
            "pipeline_images_per_s": s["images_per_s"], "actors": a["max_actors"], "actor_cpus": a["actor_cpus"],
            "actor_gpus": a["actor_gpus"], "batch_size": a["batch_size"], "device": a["device"],
            "gpu_utilization": sampler.summary() if sampler else None, "output": cfg.output}


def plain_denoise(root: str, split: str, model_dir: str, out_dir: str, spec: InferenceSpec) -> dict:
    """One process, no Ray: read, decode, forward (the stage's forward settings), encode, write Parquet
    (:func:`dae.experiments.reference.plain_denoise`: the id and the denoised PNG)."""
    model, _ = load_model(model_dir, spec.device)
    p = reference.plain_denoise(root, split, model, out_dir, spec, keep_input=False)
    times = {k: p["stage_s"][k] for k in ("read", "decode", "forward", "encode", "write")}  # no noise, no metrics
    return {"images": p["images"], "wall_s": round(p["wall_s"], 2), "images_per_s": round(p["images_per_s"], 1),
            "stage_s": {k: round(v, 3) for k, v in times.items()},
            "forward_images_per_s": round(p["images"] / times["forward"], 1) if times["forward"] else None,
            "output": out_dir}


def cpu_stages(root: str, split: str, rows: int, model_dir: str, spec: InferenceSpec) -> dict:
    """Thread CPU seconds per image of decode (``prepare_batch``), encode (``finish_batch``) and the
    Parquet write of the finished rows, on the first ``rows`` rows of the first shard, in this process."""
    t = pq.read_table(shards.list_shards(root, split)[0]).slice(0, rows)
    batch = {name: np.asarray(t.column(name).to_pylist(), dtype=object) for name in t.column_names}
    model, mcfg = load_model(model_dir, spec.device)
    c = time.thread_time()
    prep = inference.prepare_batch(batch, model_channels=int(mcfg["channels"]))
    decode_s = time.thread_time() - c
    prep[inference.DENOISED] = shards.stack_or_ragged(
        inference.denoise_images(model, list(prep[inference.INPUT]), spec))
    c = time.thread_time()
    fin = inference.finish_batch(prep, with_noise=False)
    encode_s = time.thread_time() - c
    c = time.thread_time()
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": pa.array(list(fin["id"]), pa.string()),
                             "denoised": pa.array(list(fin[inference.DENOISED]), pa.binary())}), sink,
                   compression="zstd")
    write_s = time.thread_time() - c
    n = len(batch["id"])
    return {"rows": n, "how": "thread CPU time in-process on one sample batch (single thread)",
            "decode_ms": round(1000 * decode_s / n, 4), "encode_ms": round(1000 * encode_s / n, 4),
            "write_ms": round(1000 * write_s / n, 4)}


def bound(job: dict, plain: dict, cpu: dict, cluster_cpus: float) -> dict:
    """Which stage caps the job: the CPU stages over the CPUs left to the tasks, or the forward pass."""
    task_cpus = max(cluster_cpus - job["actors"] * job["actor_cpus"], 1e-9)
    per_image = (cpu["decode_ms"] + cpu["encode_ms"] + cpu["write_ms"]) / 1000
    cpu_cap = task_cpus / per_image if per_image > 0 else float("inf")
    fwd_cap = plain["forward_images_per_s"] or float("inf")
    shares = {k: round(cpu[f"{k}_ms"] / 1000 / per_image, 3) for k in ("decode", "encode", "write")}
    top = max(shares, key=shares.get)
    who = (f"CPU stages ({top} {100 * shares[top]:.0f}% of their time)" if cpu_cap < fwd_cap
           else "the forward pass (GPU)" if job["device"] == "cuda" else "the forward pass (CPU actors)")
    return {"task_cpus": round(task_cpus, 2), "cpu_stage_ceiling_images_per_s": round(cpu_cap, 1),
            "forward_ceiling_images_per_s": round(fwd_cap, 1), "cpu_stage_shares": shares, "bound_by": who,
            "job_fraction_of_ceiling": round(job["images_per_s"] / min(cpu_cap, fwd_cap), 3)}


# ---------------------------------------------------------------- agreement


def denoised_pngs(table: pa.Table) -> dict[str, bytes]:
    return dict(zip(table.column("id").to_pylist(), table.column("denoised").to_pylist()))


def compare(a: dict[str, bytes], b: dict[str, bytes], expect: int) -> dict:
    """Decoded ``denoised`` PNGs of the ids in both: max difference in 8-bit levels."""
    common = sorted(set(a) & set(b))
    same = sum(a[i] == b[i] for i in common)
    worst = 0
    for i in common:
        if a[i] != b[i]:
            d = np.abs(shards.decode_png(a[i]).astype(np.int32) - shards.decode_png(b[i]).astype(np.int32))
            worst = max(worst, int(d.max()))
    return {"rows": len(common), "expected": expect, "identical_png": same, "max_level_diff": worst,
            "agree": len(common) == expect and worst <= 1}


def tile_check(model, device: str, img: np.ndarray, precision: str) -> dict:
    whole = inference.denoise_images(model, [img], InferenceSpec(device=device, tile=1 << 20, precision=precision))[0]
    tiled = inference.denoise_images(model, [img], InferenceSpec(device=device, tile=TILE, tile_overlap=TILE_OVERLAP,
                                                                 precision=precision))[0]
    d = np.abs(tiled - whole)
    return {"image": list(img.shape), "tile": TILE, "overlap": TILE_OVERLAP, "max_abs": float(d.max()),
            "mean_abs": float(d.mean()), "agree": bool(d.max() < TILE_MAX and d.mean() < TILE_MEAN),
            # "fp32" convolutions on a GPU run in TF32 when cuDNN allows it (torch's default): say which
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if device == "cuda" and precision == "fp32" else None}
