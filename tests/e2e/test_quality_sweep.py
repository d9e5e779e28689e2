"""The quality sweep (dae.experiments.sweep, run by jobs.quality_sweep) end to end on a tiny grid (real Ray, real
shards, the real prepare, train and evaluate stages): the table's numbers are the evaluate stage's,
each model appears at its own level and the blind one across its range, targets report margins, the
recorded command reruns the same config, a rerun reuses every step, a retrained model is scored again
and a changed setting fails. The plan checks and the chart (no Ray) are in tests/unit/test_quality_sweep.py."""

import json
import os
import re
import shlex

import numpy as np
import pyarrow.parquet as pq
import pytest

from dae.config import resolve_config
from dae.experiments import sweep as qs
from dae.jobutil import slug
from helpers import needs_mnist5k, tiny_sweep

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    needs_mnist5k()  # the grid's dataset is the real digits: a skip saying why where they are missing
    out = tmp_path_factory.mktemp("sweep")
    res = qs.run(tiny_sweep(out))
    return out, res


def test_table_holds_the_evaluate_numbers(sweep):
    out, res = sweep
    table = res["table"]["mnist5k"]
    assert list(table) == ["gaussian:0.3", "salt_pepper:0.2"]
    per_image = pq.read_table(os.path.join(out, "eval", "mnist5k", "per_image.parquet")).to_pandas()
    for level, row in table.items():
        for method, e in row.items():
            name = e.get("run", method)  # models are named by their run directory in the report
            v = per_image[(per_image.noise == level) & (per_image.method == name)].psnr
            assert len(v) == e["images"] == 48, (level, method)
            assert e["psnr_mean"] == pytest.approx(float(np.mean(v)), abs=1e-9), (level, method)
    for level, row in table.items():
        assert {"noisy", "median", "tv", "conv28k"} <= set(row), (level, row.keys())
    assert "keras_blog" in table["gaussian:0.3"] and "keras_blog" not in table["salt_pepper:0.2"]  # the grid's cells


def test_models_at_their_level_blind_across_its_range(sweep):
    _, res = sweep
    table = res["table"]["mnist5k"]
    for level in ("gaussian:0.3", "salt_pepper:0.2"):
        assert table[level]["conv28k"]["trained_noise"] == level
        assert table[level]["conv28k"]["run"] == "conv28k-" + slug(level)
    assert table["gaussian:0.3"]["keras_blog"]["trained_noise"] == "gaussian:0.3"
    assert table["gaussian:0.3"]["conv28k blind"]["trained_noise"] == "gaussian:0.2-0.4"
    assert "conv28k blind" not in table["salt_pepper:0.2"]  # not in the blind range


def test_targets_report_margins_and_unmeasured(sweep):
    _, res = sweep
    row = res["table"]["mnist5k"]
    by = {(t["target"], t["where"]): t for t in res["targets"]}
    t = by[("conv28k >= median + 6 dB", "mnist5k salt_pepper:0.2")]
    need = row["salt_pepper:0.2"]["median"]["psnr_mean"] + 6
    assert t["needed"] == pytest.approx(need)
    assert t["margin"] == pytest.approx(row["salt_pepper:0.2"]["conv28k"]["psnr_mean"] - need)
    assert t["status"] == ("met" if t["margin"] >= 0 else "missed")
    b = by[("conv28k blind within 0.5 dB of conv28k", "mnist5k gaussian:0.3")]
    assert b["value"] == pytest.approx(row["gaussian:0.3"]["conv28k blind"]["psnr_mean"])
    # no Fashion-MNIST in this grid: those targets are "not measured", never passed
    fm = [t for t in res["targets"] if t["where"].startswith("fashion-mnist")]
    assert len(fm) == 2 and all(t["status"] == "not measured" for t in fm)


def test_outputs_written(sweep):
    out, res = sweep
    md = open(os.path.join(out, "quality.md")).read()
    assert "## mnist5k" in md and "## Targets" in md and "conv28k blind" in md
    saved = json.load(open(os.path.join(out, "quality.json")))
    assert saved["table"] == json.loads(json.dumps(res["table"]))
    assert os.path.exists(os.path.join(out, "config.resolved.json"))
    assert os.path.exists(os.path.join(out, "eval", "mnist5k", "comparison.png"))
    assert res["charts"] == {"mnist5k": os.path.join(str(out), "psnr_mnist5k.png")}
    assert open(res["charts"]["mnist5k"], "rb").read(4) == b"\x89PNG" and "(psnr_mnist5k.png)" in md
    assert len(res["runs"]) == 4 and not any(r["reused"] for r in res["runs"])


def test_recorded_commands_rerun_the_same_configs(sweep):
    """quality.md's command, parsed by the sweep job's own parser, gives back the sweep's config;
    the evaluate report's command, by the evaluate job's parser, the evaluate config."""
    from dae.evaluate import EvaluateConfig
    from jobs import evaluate, quality_sweep

    out, res = sweep
    md = open(os.path.join(out, "quality.md")).read()
    command = re.search(r"```\n(dae quality-sweep .*)\n```", md).group(1)
    assert command == res["command"]
    argv = shlex.split(command)[2:]  # dae quality-sweep ...
    assert resolve_config(qs.SweepConfig, quality_sweep.get_args_parser().parse_args(argv)) == tiny_sweep(out)
    report = json.load(open(os.path.join(out, "eval", "mnist5k", "report.json")))
    ecfg = resolve_config(EvaluateConfig, evaluate.get_args_parser().parse_args(shlex.split(report["command"])[2:]))
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in vars(ecfg).items()} == report["config"]
    assert len(ecfg.models) == 4 and ecfg.baselines == ("median", "tv")


def test_rerun_reuses_every_step(sweep):
    out, first = sweep
    marker = os.path.join(out, "eval", "mnist5k", "report.json")
    mtime = os.path.getmtime(marker)
    again = qs.run(tiny_sweep(out))
    assert all(r["reused"] for r in again["runs"])
    assert os.path.getmtime(marker) == mtime
    assert again["table"] == first["table"]


def test_each_model_trains_with_its_own_loss(sweep):
    out, res = sweep
    for r in res["runs"]:
        cfg = json.load(open(os.path.join(out, "runs", r["data"], r["run"], "config.resolved.json")))
        assert cfg["loss"] == ("bce" if r["tag"] == "keras_blog" else "mse"), r["run"]


def test_retrained_model_is_scored_again(sweep):
    """Same run dir, same settings, other weights (a run deleted and retrained): the evaluate step
    must not reuse the report made with the old weights."""
    from safetensors.torch import load_file, save_file

    out, first = sweep
    run = next(r for r in first["runs"] if r["run"] == "conv28k-gaussian_0.3")
    weights = os.path.join(run["model_dir"], "model.safetensors")
    state = load_file(weights)
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, weights)
    marker = os.path.join(out, "eval", "mnist5k", "report.json")
    mtime = os.path.getmtime(marker)
    again = qs.run(tiny_sweep(out))
    assert all(r["reused"] for r in again["runs"])
    assert os.path.getmtime(marker) != mtime
    old, new = first["table"]["mnist5k"], again["table"]["mnist5k"]
    assert new["gaussian:0.3"]["conv28k"]["psnr_mean"] != old["gaussian:0.3"]["conv28k"]["psnr_mean"]
    assert new["gaussian:0.3"]["median"]["psnr_mean"] == old["gaussian:0.3"]["median"]["psnr_mean"]
    assert new["salt_pepper:0.2"]["conv28k"]["psnr_mean"] == old["salt_pepper:0.2"]["conv28k"]["psnr_mean"]


def test_changed_setting_fails_naming_the_run(sweep):
    out, _ = sweep
    with pytest.raises(ValueError, match="other settings.*lr"):
        qs.run(tiny_sweep(out, lr=0.001))
