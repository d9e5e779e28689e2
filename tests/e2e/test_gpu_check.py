"""jobs.gpu_check: its CPU dry run end to end and, on a machine with a GPU, its small GPU run. Each runs
the script as `python -m` in a subprocess of its own (its own private Ray, as on the GPU machine). Its
import chain and its no-GPU error (no Ray started) are in tests/unit/test_gpu_check.py."""

import json
import math

import pytest
import torch

from dae.precision import native_bf16
from helpers import run_gpu_check, tail

pytestmark = pytest.mark.ray

NEEDS_GPU = "needs a CUDA GPU: bf16, nvidia-smi utilization and GPU actors only run there"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_cpu_dry_run_end_to_end(tmp_path, ray_session):
    """ray_session: this session's Ray runs beside the script's own, as a second job on a laptop would.
    Ray Train's placement-group cleaner then looked for "the" local Ray and died with a traceback."""
    out = tmp_path / "out"
    p = run_gpu_check(["--device", "cpu", "--small", "--out", str(out), "--work", str(tmp_path / "work")], timeout=600)
    assert p.returncode == 0, tail(p)
    assert "Found multiple active Ray instances" not in p.stdout + p.stderr, tail(p)
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["device"] == "cpu" and r["small"] and r["ok"] and r["errors"] == {}, r
    assert r["versions"]["torch"] and r["versions"]["ray"] and "gpu_name" not in r["versions"]
    sz = r["sizes"]

    tr = r["train"]
    assert _positive(tr["job"]["steady_images_per_s"]) and _positive(tr["plain"]["steady_images_per_s"])
    assert _positive(tr["ratio"])
    for side in (tr["job"], tr["plain"]):
        assert math.isfinite(side["val_psnr"]) and math.isfinite(side["noisy_psnr"])
    assert len(tr["job"]["epochs"]) == sz["epochs"] == 1

    for name, n in (("small", sz["train_images"]), ("photos", sz["photos"])):
        d = r["denoise"][name]
        assert d["job"]["images"] == n and d["job"]["failed"] == 0 and _positive(d["job"]["images_per_s"])
        assert d["job"]["device"] == "cpu" and d["job"]["actors"] == 1 and d["job"]["gpu_utilization"] is None
        assert d["plain"]["images"] == n and _positive(d["plain"]["images_per_s"])
        assert _positive(d["cpu_stages"]["decode_ms"]) and _positive(d["cpu_stages"]["encode_ms"])
        assert d["bound"]["bound_by"] and _positive(d["ratio"])
        assert d["job_vs_plain"]["rows"] == n and d["job_vs_plain"]["max_level_diff"] <= 1
        a = r["agreement"]["actors"][name]
        assert a["agree"] and a["rows"] > 0 and a["job_2_actors"]["actors"] == 2
    assert r["agreement"]["actors_agree"] is True and r["agreement"]["tiles_agree"] is True
    tiles = r["agreement"]["tiles"]
    native = native_bf16("cpu")  # bf16 runs on CPUs that have it natively (dae.precision)
    assert set(tiles) == ({"fp32", "bf16"} if native else {"fp32"})
    assert all(t["agree"] and math.isfinite(t["max_abs"]) for t in tiles.values())
    assert r["skipped"]["gpu_utilization"].startswith("no GPU"), r["skipped"]
    assert ("bf16" in r["skipped"]) == (not native)
    assert r["targets"] and all(t["met"] is None for t in r["targets"])  # speed targets are for the GPU run
    assert "skipped gpu_utilization: no GPU" in p.stdout and "1 vs 2 actors agree: True" in p.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_GPU)
def test_small_gpu_run(tmp_path):
    out = tmp_path / "out"
    p = run_gpu_check(["--device", "cuda", "--small", "--out", str(out), "--work", str(tmp_path / "work")], timeout=900)
    assert p.returncode == 0, tail(p)
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["ok"] and r["errors"] == {} and "gpu_utilization" not in r["skipped"], r
    assert r["versions"]["gpu_name"] and r["versions"]["cuda"]
    for name in ("small", "photos"):
        assert r["denoise"][name]["job"]["device"] == "cuda"
        assert r["denoise"][name]["job"]["gpu_utilization"]["samples"] > 0
    assert set(r["agreement"]["tiles"]) == {"fp32", "bf16"}
