"""The train job's checks that need no Ray: invalid choices, the presets, mixed image sizes. Training
on Ray Train is in tests/e2e/test_train.py."""

import numpy as np
import pytest


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
