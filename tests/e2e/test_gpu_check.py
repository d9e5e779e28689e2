"""jobs.gpu_check: its CPU dry run end to end, its no-GPU error, its import chain (what the GPU machine
lacks), and on a machine with a GPU its small GPU run. Each runs the script as `python -m` in a
subprocess of its own (its own private Ray, as on the GPU machine)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_GPU = "needs a CUDA GPU: bf16, nvidia-smi utilization and GPU actors only run there"


def _env() -> dict:
    # never join a cluster some other process started; the script starts its own local Ray
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=REPO)
    return env


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.gpu_check", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _tail(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}"


def test_imports_without_mlxtend_or_pywavelets():
    """The GPU machine has neither: the script's whole import chain must do without them."""
    code = "import sys; sys.modules['mlxtend'] = None; sys.modules['pywt'] = None; import jobs.gpu_check"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, _tail(p)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here: the no-GPU error cannot happen")
def test_cuda_without_gpu_fails_with_one_line_and_exit_2(tmp_path):
    p = _run(["--out", str(tmp_path / "out")], timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, _tail(p)
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU is visible"), _tail(p)
    assert "--device cpu" in lines[0] and "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "out").exists()  # fails before any work


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_cpu_dry_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    p = _run(["--device", "cpu", "--small", "--out", str(out), "--work", str(tmp_path / "work")], timeout=600)
    assert p.returncode == 0, _tail(p)
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
    assert set(tiles) == {"fp32"} and tiles["fp32"]["agree"] and math.isfinite(tiles["fp32"]["max_abs"])

    for part in ("gpu_utilization", "bf16"):
        assert r["skipped"][part].startswith("no GPU"), r["skipped"]
    assert r["targets"] and all(t["met"] is None for t in r["targets"])  # speed targets are for the GPU run
    assert "skipped gpu_utilization: no GPU" in p.stdout and "1 vs 2 actors agree: True" in p.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_GPU)
def test_small_gpu_run(tmp_path):
    out = tmp_path / "out"
    p = _run(["--device", "cuda", "--small", "--out", str(out), "--work", str(tmp_path / "work")], timeout=900)
    assert p.returncode == 0, _tail(p)
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["ok"] and r["errors"] == {} and "gpu_utilization" not in r["skipped"], r
    assert r["versions"]["gpu_name"] and r["versions"]["cuda"]
    for name in ("small", "photos"):
        assert r["denoise"][name]["job"]["device"] == "cuda"
        assert r["denoise"][name]["job"]["gpu_utilization"]["samples"] > 0
    assert set(r["agreement"]["tiles"]) == {"fp32", "bf16"}
