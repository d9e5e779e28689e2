"""What the GPU check finds out about the machine: versions, whether CUDA is visible, and the GPU's
utilization sampled by nvidia-smi while a job runs."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
import warnings

import numpy as np
import pyarrow as pa
import torch

NVIDIA_SMI_UTIL = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"]


def cuda_visible() -> bool:
    with warnings.catch_warnings():  # a machine without a driver may warn here; the caller says it in one line
        warnings.simplefilter("ignore")
        return torch.cuda.is_available()



def versions(device: str) -> dict:
    import ray

    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "ray": ray.__version__, "pyarrow": pa.__version__, "numpy": np.__version__, "cpus": os.cpu_count()}
    if device == "cuda":
        v["gpu_name"] = torch.cuda.get_device_name(0)
        v["gpus_visible"] = torch.cuda.device_count()
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            v["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            v["nvidia_smi"] = f"not available: {e}"
    return v


class GpuSampler:
    """``nvidia-smi --query-gpu=utilization.gpu ... -lms 500`` in the background; each line is
    timestamped as it arrives."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        self.error = ""

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(NVIDIA_SMI_UTIL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as e:
            self.error = f"nvidia-smi did not start: {e}"
            return self
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip().split(",")[0])))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.thread.join(timeout=10)

    def summary(self) -> dict:
        vals = [u for _, u in self.samples]
        if not vals:
            return {"samples": 0, "error": self.error or "no samples"}
        busy = [i for i, u in enumerate(vals) if u > 0]
        span = vals[busy[0]:busy[-1] + 1] if busy else []
        return {"samples": len(vals), "mean_pct": round(float(np.mean(vals)), 1),
                "active_span_mean_pct": round(float(np.mean(span)), 1) if span else 0.0,
                "active_span_s": round(self.samples[busy[-1]][0] - self.samples[busy[0]][0], 1) if busy else 0.0,
                "median_pct": float(np.median(vals)), "max_pct": max(vals)}
