"""How close to the silicon the model runs: FLOPs counted once, achieved GFLOP/s against the machine's
peaks, and torch.compile against eager mode, for the train step and the forward pass of a photo.

    from dae.experiments.bench.compute import forward_figures, report_lines, step_figures
    figs = forward_figures(model, (321, 481), channels=3)   # photos/s and GFLOP/s per variant
    print("\n".join(report_lines(figs, "photos", "photo")))

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


# (name, arithmetic, channels_last, torch.compile): fp32 NCHW is what every CPU ran before issue 28.
VARIANTS = (("fp32_nchw", "fp32", False, False), ("fp32", "fp32", True, False), ("bf16", "bf16", True, False),
            ("bf16_compiled", "bf16", True, True))


def _variants(model: torch.nn.Module, compile: bool):
    """(name, arithmetic, channels_last, the model to call) for each of :data:`VARIANTS`."""
    for name, arith, cl, compiled in VARIANTS:
        if compiled and not compile:
            continue
        m = precision.prepare_model(model) if cl else model.to(memory_format=torch.contiguous_format)
        yield name, arith, cl, m, (torch.compile(m) if compiled else m)


def _figure(flops: float, items: int, first: float, per: float) -> dict:
    return {"per_s": items / per, "gflops": flops / per / 1e9, "first_s": first}


def forward_figures(model: torch.nn.Module, size: tuple[int, int], channels: int = 3, seconds: float = 5.0,
                    compile: bool = True) -> dict:
    """One (1, C, H, W) image through ``model`` (eval, sigma 25/255): FLOPs, then per variant
    (:data:`VARIANTS`) images/s (``per_s``), GFLOP/s and the first call's seconds."""
    model = model.eval()
    x = torch.rand(1, channels, *size)
    s = torch.full((1,), 25 / 255)
    flops = count_flops(lambda: model(x, s))
    out = {"flops": flops}
    for name, arith, cl, _, fwd in _variants(model, compile):
        xi = precision.to_channels_last(x) if cl else x.contiguous()
        out[name] = _figure(flops, 1, *_timed(_forward_call(fwd, xi, s, arith), seconds))
    return out


def step_figures(model: torch.nn.Module, batch: int = 32, crop: int = 64, channels: int = 3,
                 seconds: float = 10.0, compile: bool = True) -> dict:
    """Training steps (Adam, MSE against the clean crop) on ``batch`` crops: FLOPs (forward and
    backward), then per variant (:data:`VARIANTS`) crops/s (``per_s``), GFLOP/s and the first step's seconds."""
    clean = torch.rand(batch, channels, crop, crop)
    sigma = torch.rand(batch) * 55 / 255
    noisy = clean + sigma.view(-1, 1, 1, 1) * torch.randn_like(clean)
    flops = count_flops(lambda: model(noisy, sigma).float().mean().backward())
    out = {"flops": flops}
    for name, arith, cl, m, fwd in _variants(model.train(), compile):
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)
        xi, yi = (precision.to_channels_last(noisy), precision.to_channels_last(clean)) if cl else (noisy, clean)
        out[name] = _figure(flops, batch, *_timed(_train_step(fwd, opt, xi, yi, sigma, arith), seconds))
    return out


def report_lines(figs: dict, unit: str, call: str, items: int = 1) -> list[str]:
    """Lines of :func:`forward_figures` / :func:`step_figures` figures: ``unit``/s, GFLOP/s and the
    share of the machine's peak for the variant's arithmetic, and whether torch.compile pays for itself
    (``call``: what one call is, e.g. "step"; ``items``: units per call)."""
    pk = peaks()
    lines = [f"{figs['flops'] / 1e9:.1f} GFLOP per {call}; peaks of {pk['cores']} cores at {pk['ghz']:.1f} GHz: "
             f"fp32 {pk['fp32_gflops']:.0f}, bf16 {pk['bf16_gflops']:.0f} GFLOP/s ({pk['bf16_unit']})"]
    for name, arith, _, _ in VARIANTS:
        if name in figs:
            r = figs[name]
            peak = pk["bf16_gflops"] if arith == "bf16" else pk["fp32_gflops"]
            lines.append(f"  {name:14s}: {r['per_s']:7.2f} {unit}/s, {r['gflops']:6.0f} GFLOP/s = "
                         f"{100 * r['gflops'] / peak:4.1f}% of peak; first {call} {r['first_s']:.1f}s")
    if "bf16_compiled" in figs:
        e, k = figs["bf16"], figs["bf16_compiled"]
        n = pays_after(items / e["per_s"], items / k["per_s"], k["first_s"])
        lines.append(f"  torch.compile pays for its compile time after {n:.0f} {call}s" if n != float("inf") else
                     f"  torch.compile: no faster per {call} than eager; not adopted")
    return lines


def pays_after(eager_s: float, compiled_s: float, compile_s: float) -> float:
    """Calls after which compiling has paid for itself (inf when a compiled call is no faster)."""
    saved = eager_s - compiled_s
    return compile_s / saved if saved > 0 else float("inf")
