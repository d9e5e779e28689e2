"""The train job's checks that need no Ray: invalid choices, the presets, mixed image sizes. Training
on Ray Train is in tests/e2e/test_train.py."""

import dataclasses

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
