"""The train job's checks that need no Ray: invalid choices, the presets, mixed image sizes. Training
on Ray Train is in tests/e2e/test_train.py."""

import dataclasses
import json

import numpy as np
import pytest
import torch


def test_invalid_choices_list_valid_ones():
    from dae.config import build_config
    from dae.train import TrainConfig, check_config

    with pytest.raises(ValueError, match="valid: adam, adamw, sgd"):
        build_config(TrainConfig, {"data": "x", "optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="valid: mse, l1, bce"):
        build_config(TrainConfig, {"data": "x", "loss": "huber"})
    with pytest.raises(ValueError, match="known models"):
        check_config(TrainConfig(data="x", model="nope"))
    with pytest.raises(ValueError, match="divisible by workers"):
        check_config(TrainConfig(data="x", batch_size=33, workers=2))
    with pytest.raises(ValueError, match="unknown noise kind"):
        check_config(TrainConfig(data="x", noise="pink:0.1"))
    with pytest.raises(ValueError, match="unknown argument"):
        check_config(TrainConfig(data="x", model="conv28k", model_kwargs={"width": 3}))


def test_init_must_hold_the_same_network(tmp_path):
    from dae.checkpoint import save_model
    from dae.models import create_model
    from dae.train import TrainConfig, check_config, init_weights

    src = create_model("dncnn", channels=1, depth=5, width=16)
    saved = save_model(src, str(tmp_path / "m"))
    cfg = TrainConfig(data="x", model="dncnn", model_kwargs={"depth": 5, "width": 16}, init=saved)
    assert check_config(cfg).init == saved
    with pytest.raises(ValueError, match=r"holds a dncnn \{'depth': 5, 'width': 16\} model, but the config asks "
                                         r"for dncnn \{'depth': 6, 'width': 16\}"):
        check_config(dataclasses.replace(cfg, model_kwargs={"depth": 6, "width": 16}))
    with pytest.raises(ValueError, match="unknown pretrained model 'nope'; shipped: .*gray-blind"):
        check_config(dataclasses.replace(cfg, init="pretrained:nope"))
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        check_config(dataclasses.replace(cfg, init=str(tmp_path)))
    model = create_model("dncnn", channels=1, depth=5, width=16)  # another random init
    assert not torch.equal(model.state_dict()["inner.body.0.weight"], src.state_dict()["inner.body.0.weight"])
    init_weights(model, saved)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    with pytest.raises(ValueError, match="takes 1-channel images, the data has 3"):
        init_weights(create_model("dncnn", channels=3, depth=5, width=16), saved)


def test_presets_resolve():
    from dae.config import build_config, list_presets
    from dae.train import TrainConfig, check_config

    names = [p for p in list_presets() if p.startswith("train-")]
    assert names
    for name in names:
        check_config(build_config(TrainConfig, {"data": "x"}, preset=name))


def test_mixed_sizes_are_refused(tiny_shards):
    from dae.train import describe_split

    root = tiny_shards(rows={"train": [("a", np.zeros((8, 8), np.uint8), None),
                                       ("b", np.zeros((9, 8), np.uint8), None)]})
    with pytest.raises(ValueError, match="2 sizes"):
        describe_split(root, "train")


# ---------------------------------------------------------------- a rerun resumes only what it started


def _resume_cfg(**over):
    from dae.train import TrainConfig, check_config

    return check_config(TrainConfig(**{"data": "shards", "storage": "runs", "run_name": "r", "noise": "gaussian:0.5",
                                       "epochs": 2, **over}))


def test_resume_settings_are_all_decided():
    """Every TrainConfig field is either a setting a rerun must keep or one it may change: a new field
    has to be put in one of the two."""
    from dae.train import RESUME_FREE, RESUME_SAME, TrainConfig

    assert not set(RESUME_SAME) & set(RESUME_FREE)
    assert set(RESUME_SAME) | set(RESUME_FREE) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_a_rerun_with_other_result_settings_is_refused_naming_each():
    from dae.config import config_dict
    from dae.train import check_resume

    stored = config_dict(_resume_cfg())
    with pytest.raises(ValueError) as e:
        check_resume(stored, _resume_cfg(noise="gaussian:0.3"))
    msg = str(e.value)
    assert "noise: 'gaussian:0.5' -> 'gaussian:0.3'" in msg and "--run-name" in msg and "\n" not in msg, msg
    with pytest.raises(ValueError) as e:
        check_resume(stored, _resume_cfg(seed=1, loss="l1", objective="n2n", lr=1e-3))
    msg = str(e.value)
    for part in ("seed: 0 -> 1", "loss: 'mse' -> 'l1'", "objective: 'supervised' -> 'n2n'", "lr: 0.002 -> 0.001"):
        assert part in msg, msg
    with pytest.raises(ValueError, match=r"data: '/[^']*/shards' -> '/[^']*/other'"):
        check_resume(stored, _resume_cfg(data="other"))


def test_a_rerun_may_train_longer_on_other_resources():
    from dae.config import config_dict
    from dae.train import check_resume

    stored = config_dict(_resume_cfg())
    check_resume(stored, _resume_cfg(epochs=5, workers=2, torch_threads=3, data_mode="stream", samples=0,
                                     num_to_keep=4, max_failures=0, out="elsewhere"))
    check_resume(stored, _resume_cfg(noise="gaussian:0.50"))  # the same noise, spelled otherwise


def test_a_run_stored_before_a_setting_existed_had_its_default():
    from dae.config import config_dict
    from dae.train import check_resume

    stored = {k: v for k, v in config_dict(_resume_cfg()).items()
              if k not in ("crop", "crops_per_image", "augment", "n2v_channels", "val_limit", "pair_data")}
    check_resume(stored, _resume_cfg())
    with pytest.raises(ValueError, match=r"crop: 0 -> 16"):
        check_resume(stored, _resume_cfg(crop=16))


def test_objective_kwargs_are_kept_on_a_rerun_and_an_older_run_had_none():
    from dae.config import config_dict
    from dae.train import check_resume

    stored = config_dict(_resume_cfg(objective="nb2nb"))
    del stored["objective_kwargs"]  # a run made before the setting existed
    check_resume(stored, _resume_cfg(objective="nb2nb"))
    with pytest.raises(ValueError, match=r"objective_kwargs: \{\} -> \{'gamma': 1.0\}"):
        check_resume(stored, _resume_cfg(objective="nb2nb", objective_kwargs={"gamma": 1.0}))


def test_the_stored_run_is_the_latest_checkpoints_else_the_resolved_config(tmp_path):
    from dae.config import config_dict
    from dae.jobutil import save_resolved_config
    from dae.train import check_resume, stored_run_config

    run_dir = tmp_path / "r"
    assert stored_run_config(str(run_dir)) is None
    run_dir.mkdir()
    assert stored_run_config(str(run_dir)) is None
    save_resolved_config(_resume_cfg(noise="gaussian:0.1"), str(run_dir), data_mode="cache", torch_threads=2)
    stored, where = stored_run_config(str(run_dir))
    assert stored["noise"] == "gaussian:0.1" and where.endswith("config.resolved.json")
    with pytest.raises(ValueError, match=r"noise: 'gaussian:0.1' -> 'gaussian:0.5'.*--run-name"):
        check_resume(stored, _resume_cfg())
    # what the weights were trained with: the checkpoints' train_config, the latest epoch's
    for name, epoch, noise in (("checkpoint_2026-01-01_00-00-01.000000", 1, "gaussian:0.2"),
                               ("checkpoint_2026-01-01_00-00-02.000000", 2, "gaussian:0.3")):
        (run_dir / name / "model").mkdir(parents=True)
        (run_dir / name / "model" / "config.json").write_text(json.dumps(
            {"model": "conv28k", "epoch": epoch, "train_config": config_dict(_resume_cfg(noise=noise))}))
    stored, where = stored_run_config(str(run_dir))
    assert stored["noise"] == "gaussian:0.3" and "checkpoint_2026-01-01_00-00-02.000000" in where
