"""A job's error raised inside a Ray task or a Ray Data read reaches the user as the one line of the
error behind Ray's wrappers (dae.jobutil.cli). The plain cases are in tests/unit/test_jobs.py."""

import argparse
import subprocess
import sys

import pytest

from dae.jobutil import cli
from helpers import REPO, job_env, tail

pytestmark = pytest.mark.ray


def test_error_inside_a_ray_task_is_the_users_one_line(ray_session, monkeypatch, capsys):
    ray = ray_session

    @ray.remote(max_retries=0)
    def read_shard():
        raise ValueError("shard x.parquet: column 'image' is missing")

    monkeypatch.setattr(sys, "argv", ["job"])
    with pytest.raises(SystemExit) as e:
        cli(argparse.ArgumentParser(), lambda args: ray.get(read_shard.remote()))
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: shard x.parquet: column 'image' is missing "
                                       "(--debug shows the traceback)\n")


def test_denoise_of_a_corrupt_shard_names_the_file(tmp_path, tiny_shards):
    from dae.checkpoint import save_model
    from dae.models import create_model

    data = tiny_shards(n_test=4)  # one good shard under data/test/, and a corrupt one beside it
    with open(f"{data}/test/part-9.parquet", "wb") as fh:
        fh.write(b"PAR1 this is not a parquet file")
    save_model(create_model("conv28k", channels=1).eval(), str(tmp_path / "model"))
    p = subprocess.run([sys.executable, "-m", "jobs.denoise", "--input", data, "--model",
                        str(tmp_path / "model"), "--out", str(tmp_path / "out")],
                       cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, tail(p)
    last = p.stderr.strip().splitlines()[-1]  # Ray's own INFO lines come first
    assert last.startswith("error: ") and "part-9.parquet: not a readable Parquet file" in last, tail(p)
    assert "Traceback" not in p.stderr, tail(p)
