"""How close to the silicon the model runs: FLOPs counted once, achieved GFLOP/s against the machine's
peaks, and torch.compile against eager mode, for the train step and the forward pass of a photo.

    from dae.experiments.bench.compute import forward_figures, step_figures, peaks
    print(peaks())                                   # {"cores", "ghz", "fp32_gflops", "bf16_gflops", ...}
    forward_figures(model, (321, 481), channels=3)   # photos/s and GFLOP/s, fp32 and bf16, eager/compiled

Single process, the torch threads it is given (all CPUs by default), nothing else running: these are the
ceilings the jobs are held against, not job figures.

Peaks (per core, per cycle, from the ISA, at the clock /proc/cpuinfo reports): fp32 = 2 AVX-512 FMA
units x 16 lanes x 2 = 64 FLOP; bf16 with AMX = 1,024 bf16 multiply-adds per TMUL cycle = 2,048 FLOP
(Intel's figure for Sapphire Rapids), with AVX512-BF16 only = 2 x 32 x 2 = 128 FLOP. A vCPU may be a
hyperthread, so "cores" counts what the OS shows: the peaks are upper bounds.
"""

from __future__ import annotations

import os
import time

import torch

from dae import precision


def _clock_ghz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else float("nan")
    except OSError:
        return float("nan")


def peaks(threads: int = 0) -> dict:
    """The machine's fp32 and bf16 peak GFLOP/s for ``threads`` cores (0: all the OS shows)."""
    cores = threads or os.cpu_count() or 1
    ghz = _clock_ghz()
    flags = precision.cpu_flags()
    bf16_per_cycle = 2048 if "amx_bf16" in flags else 128 if "avx512_bf16" in flags else 64
    fp32_per_cycle = 64 if "avx512f" in flags else 32
    return {"cores": cores, "ghz": ghz, "fp32_gflops": cores * ghz * fp32_per_cycle,
            "bf16_gflops": cores * ghz * bf16_per_cycle, "bf16_unit": "AMX" if "amx_bf16" in flags else
            "AVX512-BF16" if "avx512_bf16" in flags else "none (emulated)"}


def count_flops(fn) -> float:
    """FLOPs of one call of ``fn()`` (torch.utils.flop_counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _timed(fn, seconds: float, warmup: int = 2) -> tuple[float, float]:
    """(seconds of the first call, mean seconds per call after ``warmup`` calls, over ~``seconds``)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        fn()
    n, t = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t < seconds:
        fn()
        n += 1
    return first, (time.perf_counter() - t) / n


def _forward_call(fwd, x, sigma, arith: str):
    def call():
        with torch.inference_mode(), precision.autocast(arith, "cpu"):
            fwd(x, sigma)
    return call


def _train_step(fwd, opt, x, target, sigma, arith: str):
    def step():
        with precision.autocast(arith, "cpu"):
            y = fwd(x, sigma)
        loss = torch.nn.functional.mse_loss(y.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def forward_figures(model: torch.nn.Module, size: tuple[int, int], channels: int = 3, seconds: float = 5.0,
                    compile: bool = True) -> dict:
    """One (1, C, H, W) image through ``model`` (eval, sigma 25/255): FLOPs, then per arithmetic
    (fp32 NCHW as before issue 28, fp32 and bf16 channels_last, bf16 compiled) images/s and GFLOP/s."""
    model = model.eval()
    x = torch.rand(1, channels, *size)
    s = torch.full((1,), 25 / 255)
    flops = count_flops(lambda: model(x, s))
    out = {"flops": flops}
    runs = [("fp32_nchw", "fp32", False, False), ("fp32", "fp32", True, False), ("bf16", "bf16", True, False)]
    if compile:
        runs.append(("bf16_compiled", "bf16", True, True))
    for name, arith, cl, compiled in runs:
        m = precision.prepare_model(model) if cl else model.to(memory_format=torch.contiguous_format)
        xi = precision.to_channels_last(x) if cl else x.contiguous()
        first, per = _timed(_forward_call(torch.compile(m) if compiled else m, xi, s, arith), seconds)
        out[name] = {"images_per_s": 1 / per, "gflops": flops / per / 1e9, "first_call_s": first}
    return out


def step_figures(model: torch.nn.Module, batch: int = 32, crop: int = 64, channels: int = 3,
                 seconds: float = 10.0, compile: bool = True) -> dict:
    """Training steps (Adam, MSE against the clean crop) on ``batch`` crops: crops/s per arithmetic
    (fp32 NCHW, fp32 and bf16 channels_last, bf16 compiled), and the compile's first-step time."""
    clean = torch.rand(batch, channels, crop, crop)
    sigma = torch.rand(batch) * 55 / 255
    noisy = clean + sigma.view(-1, 1, 1, 1) * torch.randn_like(clean)
    flops = count_flops(lambda: model(noisy, sigma).float().mean().backward())
    out = {"flops": flops}
    runs = [("fp32_nchw", "fp32", False, False), ("fp32", "fp32", True, False), ("bf16", "bf16", True, False)]
    if compile:
        runs.append(("bf16_compiled", "bf16", True, True))
    for name, arith, cl, compiled in runs:
        m = precision.prepare_model(model) if cl else model.to(memory_format=torch.contiguous_format)
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)
        xi, yi = (precision.to_channels_last(noisy), precision.to_channels_last(clean)) if cl else (noisy, clean)
        first, per = _timed(_train_step(torch.compile(m) if compiled else m, opt, xi, yi, sigma, arith), seconds)
        out[name] = {"crops_per_s": batch / per, "gflops": flops / per / 1e9, "first_step_s": first}
    return out


def pays_after(eager_s: float, compiled_s: float, compile_s: float) -> float:
    """Calls after which compiling has paid for itself (inf when a compiled call is no faster)."""
    saved = eager_s - compiled_s
    return compile_s / saved if saved > 0 else float("inf")
