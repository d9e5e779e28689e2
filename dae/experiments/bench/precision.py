"""The denoise job by precision (issue 28): ``jobs.bench_denoise --sets color-blind``.

On the photos set (CBSD432's 481 x 321 RGB photos cycled to --photos-n, 1,728 by default) with the
shipped ``pretrained:color-blind`` and ``--add-noise awgn:25``, each part a run of its own:

  fp32     the job with --precision fp32 (what every CPU ran before issue 28, but channels_last)
  default  the job with default flags (--precision auto: bf16 on a CPU with AMX-BF16/AVX512-BF16)
  nobf16   the job with default flags on a CPU made to look as if it had no native bf16
           (DAE_CPU_FLAGS=""): auto must then be fp32 and no slower than the fp32 job
  plain    a plain single-process script (dae.experiments.reference.plain_denoise) in bf16 with all
           the machine's torch threads, the same model, forward sizes and noise
  flops    the model's forward pass on one photo in this process: FLOPs, photos/s and GFLOP/s in fp32
           NCHW, fp32 and bf16 channels_last and bf16 under torch.compile, against the machine's peaks

Printed: photos/s of each, the ratios the issue sets (default >= 3x fp32, default >= 1.0x plain bf16),
the mean PSNR of each job's outputs (default within 0.02 dB of fp32) and the GFLOP/s figures.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from dae.checkpoint import load_model, model_dir
from dae.inference_spec import InferenceSpec

from ..reference import plain_denoise
from .compute import forward_figures, peaks, report_lines
from .jobproc import job_env, report_job, run_job

PARTS = ("fp32", "default", "nobf16", "plain", "flops")
MODEL = "pretrained:color-blind"
NOISE = "awgn:25"


def _mean_psnr(out: str) -> float:
    from dae.denoise import read_outputs

    return float(np.mean(read_outputs(out, columns=["psnr_denoised"]).column("psnr_denoised").to_numpy()))


def run_parts(root: str, work: str, parts: tuple[str, ...] = PARTS, job_args: str = "") -> dict:
    """The parts of the module docstring on the photo shards at ``root`` (split ``bench``)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"error: unknown precision part(s) {sorted(unknown)}; valid: {', '.join(PARTS)}")
    mdir = model_dir(MODEL)
    res: dict = {"model": MODEL, "noise": NOISE}
    jobs = {"fp32": ("--precision fp32", None), "default": ("", None), "nobf16": ("", {"DAE_CPU_FLAGS": ""})}
    for part in parts:
        if part in jobs:
            flags, extra_env = jobs[part]
            out = os.path.join(work, f"job-color-blind-{part}")
            r = run_job(root, mdir, out, NOISE, f"{flags} {job_args}", env=job_env(extra_env))
            r["mean_psnr"] = _mean_psnr(out)
            report_job(part, r)
            print(f"    mean PSNR {r['mean_psnr']:.4f} dB", flush=True)
            res[part] = r
        elif part == "plain":
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)
            model, _ = load_model(mdir)
            spec = InferenceSpec(device="cpu", forward_batch=64, deterministic=False, precision="bf16")
            p = plain_denoise(root, "bench", model, os.path.join(work, "plain-color-blind-bf16"), spec, noise=NOISE)
            torch.set_num_threads(threads)
            print(f"  plain bf16 script ({os.cpu_count()} threads): {p['images_per_s']:.2f} images/s "
                  f"({p['wall_s']:.1f}s)", flush=True)
            res["plain"] = p
        elif part == "flops":
            model, _ = load_model(mdir)
            res["flops"] = forward_figures(model, (321, 481), channels=3)
            res["peaks"] = peaks()
    report(res)
    return res


def report(res: dict) -> None:
    print(f"\n{MODEL} on 481x321 RGB photos, --add-noise {NOISE}:")
    fp32, default, plain = res.get("fp32"), res.get("default"), res.get("plain")
    if fp32 and default:
        print(f"  default / fp32 job: {default['images_per_s'] / fp32['images_per_s']:.2f}x photos/s "
              f"(target >= 3x); mean PSNR {default['mean_psnr'] - fp32['mean_psnr']:+.4f} dB (target within 0.02)")
    if default and plain:
        print(f"  default job / plain bf16 script: {default['images_per_s'] / plain['images_per_s']:.2f}x "
              f"(target >= 1.0x)")
    if res.get("nobf16") and fp32:
        n = res["nobf16"]
        print(f"  without native bf16 (auto -> fp32): {n['images_per_s']:.2f} photos/s = "
              f"{n['images_per_s'] / fp32['images_per_s']:.2f}x the fp32 job; mean PSNR "
              f"{n['mean_psnr'] - fp32['mean_psnr']:+.4f} dB")
    if "flops" in res:
        lines = report_lines(res["flops"], "photos", "photo")
        print("  forward pass of one photo in this process: " + "\n  ".join(lines))
