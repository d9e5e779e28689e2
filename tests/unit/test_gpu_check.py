"""jobs.gpu_check without Ray: its import chain (what the GPU machine lacks) and its no-GPU error, each
in a subprocess of its own. Its CPU dry run (which starts a private Ray) and its GPU run are in
tests/e2e/test_gpu_check.py."""

import subprocess
import sys

import pytest
import torch

from helpers import REPO, job_env, run_gpu_check, tail


def test_imports_without_mlxtend_or_pywavelets():
    """The GPU machine has neither: the script's whole import chain must do without them."""
    code = "import sys; sys.modules['mlxtend'] = None; sys.modules['pywt'] = None; import jobs.gpu_check"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=job_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, tail(p)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here: the no-GPU error cannot happen")
def test_cuda_without_gpu_fails_with_one_line_and_exit_2(tmp_path):
    p = run_gpu_check(["--out", str(tmp_path / "out")], timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, tail(p)
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU is visible"), tail(p)
    assert "--device cpu" in lines[0] and "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "out").exists()  # fails before any work
