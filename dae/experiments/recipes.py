"""The experiments' training recipes: YAML files in ``recipes/`` (packaged with dae), each checked by
the config dataclass it feeds, so a typo fails on load listing the valid keys, as a preset's does.

    from dae.experiments import recipes
    runs = recipes.load("quality-natural")["train"]        # name -> {kind, TrainConfig fields}
    recipes.check(TrainConfig, runs["gray-blind"], "train gray-blind", extra=("kind",))

A job's own flag still overrides a recipe (``--train '{...}'``, ``--recipe '{...}'``): the file is the
field's default, not a second source of settings.
"""

from __future__ import annotations

import os

from dae.config import build_config, load_preset

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")


def path_of(name: str) -> str:
    return os.path.join(RECIPE_DIR, f"{name}.yaml")


def load(name: str) -> dict:
    """The mapping of ``recipes/NAME.yaml`` (YAML anchors and ``<<:`` merges resolved)."""
    return load_preset(path_of(name))


def check(cls, values: dict, where: str, extra: tuple = ()) -> dict:
    """``values`` checked against the fields of config dataclass ``cls`` (the keys in ``extra`` are
    the experiment's own and are left out of the check); returns ``values`` unchanged."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: give a mapping of {cls.__name__} fields, got {values!r}")
    try:
        build_config(cls, {k: v for k, v in values.items() if k not in extra})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return values
