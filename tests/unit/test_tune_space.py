"""The tune stage without Ray: its search space is checked against the train settings before any
trial runs, and a trial's sample becomes a train config."""

from __future__ import annotations

import os

import pytest

from dae.config import build_config, load_preset
from dae.tune import TuneConfig, check_config, check_space, overrides, trial_config


@pytest.mark.parametrize("space, error", [
    ({"lrate": {"choice": [0.1]}}, "unknown setting 'lrate'; searchable: .*\\blr\\b"),
    ({"epochs": {"choice": [1, 2]}}, "'epochs' is set by the tune run, not searched"),
    ({"lr": {"normal": [0, 1]}}, "unknown kind 'normal'; valid: choice, uniform, loguniform, randint"),
    ({"lr": {"choice": ["fast"]}}, "lr must be a number"),
    ({"lr": {"loguniform": [0.01, 0.001]}}, "loguniform needs low < high"),
    ({"lr": {"uniform": [0.01]}}, "uniform takes \\[low, high\\]"),
    ({"crop.size": 64}, "only a dict setting .* takes FIELD.KEY"),
    ({"schedule": {"choice": ["cosine", "linear"]}}, "invalid schedule 'linear'; valid: onecycle, cosine, constant"),
    ({}, "give a mapping of settings to search"),
])
def test_a_bad_space_fails_before_any_trial_naming_the_cause(space, error):
    with pytest.raises(ValueError, match=error):
        check_space(space, "--space")


def test_a_good_space_passes_and_a_sample_nests_into_the_train_settings():
    space = {"lr": {"loguniform": [3e-4, 3e-3]}, "model_kwargs.width": {"choice": [16, 24]},
             "crop": {"choice": [48, 64]}, "batch_size": {"randint": [8, 33]}, "schedule": "cosine"}
    assert check_space(space) is space
    base = {"model": "cunet", "model_kwargs": {"levels": 3}, "noise": "awgn:0-55"}
    got = overrides(base, {"lr": 0.001, "model_kwargs.width": 24, "crop": 64})
    assert got == {"model": "cunet", "model_kwargs": {"levels": 3, "width": 24}, "noise": "awgn:0-55", "lr": 0.001,
                   "crop": 64}
    assert base["model_kwargs"] == {"levels": 3}  # the base is not changed by a trial
    cfg = TuneConfig(data="d", name="t", storage="/s", base=base, space=space, max_epochs=7, cpus_per_trial=2)
    tc = trial_config(cfg, {"lr": 0.001, "model_kwargs.width": 24}, "abc_00001", 2.0)
    assert (tc.data, tc.epochs, tc.run_name, tc.storage, tc.cpus_per_worker, tc.lr, tc.model_kwargs) == \
        ("d", 7, "t-abc_00001", "/s/t/trials", 2.0, 0.001, {"levels": 3, "width": 24})


def test_the_tune_config_checks_its_numbers_and_the_preset_parses():
    with pytest.raises(ValueError, match="--data is required"):
        check_config(TuneConfig(space={"lr": 0.1}))
    with pytest.raises(ValueError, match="--grace-period 5 is more than --max-epochs 3"):
        check_config(TuneConfig(data="d", space={"lr": 0.1}, max_epochs=3, grace_period=5))
    with pytest.raises(ValueError, match="--base: 'data' is set by the tune run"):
        check_config(TuneConfig(data="d", space={"lr": 0.1}, base={"data": "x"}))
    cfg = check_config(build_config(TuneConfig, {**load_preset("tune-natural", "tune"), "data": "d"}))
    assert "model_kwargs.width" in cfg.space and cfg.base["model"] == "cunet"
    # relative paths pinned here: each trial runs in a working dir of Tune's (a relative --data was
    # looked for there and every trial failed)
    assert cfg.data == os.path.abspath("d") and cfg.storage == os.path.abspath("runs")
    cfg = check_config(build_config(TuneConfig, {**load_preset("tune-natural-gray", "tune"), "data": "s3://b/d"}))
    assert cfg.data == "s3://b/d" and cfg.base["crops_per_image"] == 2


def test_the_plots_labels_are_the_trials_number_and_values():
    from dae.tune.run import _label

    row = {"trial": "trial_f4821_00005_5_crop=64,lr=0.0023,model_kwargs_levels=2,model_kwargs_width=28_2026-12-06",
           "values": {"model_kwargs.width": 28, "lr": 0.002347760340678129, "crop": 64}}
    assert _label(row, ["model_kwargs.width", "lr", "crop"]) == "5: 28, 0.0023, 64"
