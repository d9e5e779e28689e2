"""The experiments' training recipes (dae/experiments/recipes/*.yaml): what they hold, that they are
checked by the config dataclasses they feed (a typo fails listing the valid keys), and that the jobs'
own flags still override them. No Ray."""

import pytest

from dae.experiments import recipes
from dae.experiments.quality_natural import RECIPE, TRAIN, QualityNaturalConfig, check_config
from dae.experiments.quality_selfsup import QualitySelfSupConfig, check_config as check_selfsup
from dae.experiments.sweep import DATASETS, MODELS, SweepConfig
from dae.train import TrainConfig

from .test_experiment_commands import parse


def test_the_natural_recipes_are_the_shipped_models_recipes():
    assert RECIPE == {"model": "cunet", "model_kwargs": {"width": 20}, "noise": "awgn:0-55", "crop": 64,
                      "crops_per_image": 8, "batch_size": 32, "schedule": "cosine", "lr": 1e-3, "epochs": 30,
                      "val_limit": 4}
    assert list(TRAIN) == ["gray-blind", "gray-blind-1", "color-blind", "color-blind-30", "color-blind-1", "gray-s25"]
    # recipe-2 (issue 28: the bf16 step spent on a bigger network and more crops)
    assert TRAIN["gray-blind"] == {"kind": "gray", **RECIPE, "model_kwargs": {"width": 24, "levels": 3},
                                   "crops_per_image": 16, "epochs": 110}
    assert TRAIN["gray-blind-1"] == {"kind": "gray", **RECIPE, "epochs": 60}
    assert TRAIN["color-blind"] == {"kind": "color", **RECIPE, "model_kwargs": {"width": 24, "levels": 3},
                                    "crops_per_image": 16, "epochs": 100}
    assert TRAIN["color-blind-30"] == {"kind": "color", **RECIPE}
    assert TRAIN["color-blind-1"] == {"kind": "color", **RECIPE, "init": "color-blind-30", "lr": 5e-4, "epochs": 40,
                                      "seed": 1}
    assert TRAIN["gray-s25"] == {"kind": "gray", **RECIPE, "model": "unet", "noise": "awgn:25"}
    # the order the recipe text of the table lists them in (YAML merge keys keep the recipe's order)
    assert [k for k in TRAIN["color-blind-1"] if k != "kind"] == [*RECIPE, "init", "seed"]


def test_the_selfsup_recipe_and_the_sweep_defaults():
    assert QualitySelfSupConfig().recipe == {"model": "unet", "model_kwargs": {"width": 20}, "crop": 64,
                                             "crops_per_image": 8, "batch_size": 32, "schedule": "cosine",
                                             "lr": 1e-3, "epochs": 16, "val_limit": 4}
    assert MODELS == {"keras_blog": {"model": "keras_blog", "loss": "bce"},
                      "conv28k": {"model": "conv28k", "loss": "bce"}, "bn_leaky": {"model": "bn_leaky"},
                      "svhn_ae": {"model": "svhn_ae"},
                      "unet32": {"model": "unet", "model_kwargs": {"width": 32}}}
    assert DATASETS == {"fashion-mnist": {"source": "fashion-mnist"}, "mnist5k": {"source": "mnist5k"},
                        "photos": {"source": "photos", "patch_size": 32, "color": "rgb"}}
    assert SweepConfig().models == MODELS and len(SweepConfig().grid) == 3


def test_every_packaged_recipe_file_is_a_mapping():
    for name in ("quality-natural", "quality-selfsup", "quality-sweep"):
        assert isinstance(recipes.load(name), dict)


@pytest.mark.parametrize("values, says", [
    ({"lrr": 0.1}, r"recipe x: unknown config key 'lrr'; valid: .*\blr\b"),
    ({"lr": "fast"}, "recipe x: lr must be a number, got the string 'fast'"),
    ({"model": "vit"}, "recipe x: invalid model 'vit'; valid: "),
])
def test_a_typo_in_a_recipe_fails_listing_what_is_valid(values, says):
    with pytest.raises(ValueError, match=says):
        recipes.check(TrainConfig, values, "recipe x")


def test_the_experiments_own_keys_are_left_to_them():
    assert recipes.check(TrainConfig, {"kind": "gray", "lr": 0.1}, "r", extra=("kind",)) == {"kind": "gray", "lr": 0.1}
    with pytest.raises(ValueError, match="give a mapping of TrainConfig fields"):
        recipes.check(TrainConfig, ["lr"], "r")


def test_a_typo_in_an_overriding_recipe_fails_before_any_work():
    with pytest.raises(ValueError, match=r"--train 'a': unknown config key 'epoch'; valid: .*\bepochs\b"):
        check_config(QualityNaturalConfig(train={"a": {"kind": "gray", "epoch": 3}}))
    with pytest.raises(ValueError, match=r"--recipe: unknown config key 'crops'; valid: .*\bcrops_per_image\b"):
        check_selfsup(QualitySelfSupConfig(recipe={"crops": 3}))


def test_the_jobs_flags_override_the_recipes():
    cfg = parse("quality_natural", ["--train", "{a: {kind: gray, model: unet, epochs: 2}}"])
    assert cfg.train == {"a": {"kind": "gray", "model": "unet", "epochs": 2}}
    assert parse("quality_natural", ["--train", "{}"]).train == {}
    assert parse("quality_natural", []).train == TRAIN
    cfg = parse("quality_selfsup", ["--recipe", "{epochs: 40}"])
    assert cfg.recipe == {"epochs": 40}  # merged over the file's recipe when the runs are configured
    from dae.experiments.quality_selfsup import train_config

    assert train_config(cfg, "n2v", "d").epochs == 40 and train_config(cfg, "n2v", "d").crop == 64
