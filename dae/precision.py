"""Arithmetic and memory format of a model's forward pass: ``--precision auto|fp32|bf16``.

    arith = resolve("auto", "cpu")            # "bf16" on a CPU with AMX-BF16 or AVX512-BF16, else "fp32"
    model = prepare_model(model)              # channels_last weights
    with autocast(arith, device):             # bf16 autocast around the model only
        out = model(to_channels_last(x), sigma).float()

Rules:
- ``auto`` is bf16 where the hardware does bf16 natively, fp32 elsewhere. Native means: a CUDA device
  that reports bf16 support (Ampere and newer), or a CPU whose flags (``/proc/cpuinfo``) include
  ``amx_bf16`` or ``avx512_bf16``. Detected, never guessed from the vendor or the torch build; a CPU
  without them (or a system with no cpuinfo) is fp32: bf16 emulated in AVX512 code is slower than fp32.
- bf16 is autocast around the model's forward pass only: the losses, the metrics, the final clamp
  and the optimizer state stay float32 (callers ``.float()`` the output before using it). The
  residual addition inside the model is float32 too: autocast runs additions in the inputs' dtype,
  and the input image is float32.
- channels_last is used for every precision and device: it measured faster everywhere it was tried
  (2-core AMX Xeon, cunet width 20: training 77 -> 118 crops/s in fp32 and 188 -> 278 in bf16; a
  481 x 321 photo 5.1 -> 10.2 photos/s in fp32, 12.5 -> 29 in bf16). ``memory_format`` can turn it off.
- A ``precision`` travels resolved ("fp32" or "bf16") wherever it is recorded (denoise fingerprint,
  model card scores, train metrics), so a record says what ran, not what was asked.
- ``--compile`` (training) wraps the trained module in ``torch.compile`` (:func:`compiled`); inductor
  builds C++ (CPU) or Triton (GPU) kernels, so it needs a C++ compiler, checked before a run starts
  (:func:`check_compiler`). Checkpoints and validation keep the plain module.
- torch is imported by the functions that need it, not at import: configs import this module.
- ``DAE_CPU_FLAGS`` (space-separated), when set, replaces the CPU's flags in every process that reads
  it (the driver and the Ray workers it starts): how a benchmark runs as on a CPU without native bf16
  (``DAE_CPU_FLAGS=""``). Tests monkeypatch :func:`cpu_flags`.
"""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
HELP = ("arithmetic of the forward pass: auto = bf16 autocast where the hardware has native bf16 "
        "(CUDA, CPUs with AMX-BF16 or AVX512-BF16), else fp32; losses, metrics and the final clamp stay "
        "float32")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (Linux ``/proc/cpuinfo``, or ``DAE_CPU_FLAGS``); empty where
    there is none."""
    if "DAE_CPU_FLAGS" in os.environ:
        return frozenset(os.environ["DAE_CPU_FLAGS"].split())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` does bf16 arithmetic natively (see the module's rules)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_CPU_FLAGS)
    return False


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve(precision: str, device: str | torch.device = "cpu") -> str:
    """``precision`` (auto, fp32, bf16) on ``device`` -> the arithmetic that runs: "fp32" or "bf16"."""
    if check(precision) != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(arith: str, device: str | torch.device):
    """bf16 autocast on ``device`` when ``arith`` (resolved) is bf16; else nothing."""
    if arith not in ("fp32", "bf16"):
        raise ValueError(f"resolve the precision first (fp32 or bf16), got {arith!r}")
    import torch

    device = torch.device(device)
    if arith == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare_model(model: torch.nn.Module, memory_format: str = "channels_last") -> torch.nn.Module:
    """The model with its 4-D weights in ``memory_format`` (in place; returns it)."""
    import torch

    if memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    return model


def to_channels_last(x: torch.Tensor, memory_format: str = "channels_last") -> torch.Tensor:
    """A 4-D batch in ``memory_format`` (no copy when it already is)."""
    import torch

    if memory_format == "channels_last" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def check_compiler() -> str:
    """The C++ compiler torch.compile's inductor will call (``$CXX``, else g++, c++ or clang++ on PATH);
    a one-line error when there is none, before any work starts."""
    import shutil

    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), "")
    if not cxx:
        raise ValueError("--compile needs a C++ compiler for torch.compile (none of $CXX, g++, c++, clang++ is "
                         "installed): install one (e.g. apt-get install g++) or train without --compile")
    return cxx


def compiled(model: torch.nn.Module, enabled: bool = True, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile(model)`` when enabled (the module is compiled at its first call), else the model.
    ``backend``: tests use "aot_eager" (the same tracing and autograd, no kernel build: seconds, not a minute)."""
    import torch

    return torch.compile(model, backend=backend) if enabled else model
