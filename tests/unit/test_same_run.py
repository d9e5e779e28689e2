"""The one rule for "same run, reuse it" (dae.same_run), which train resumes, denoise manifests and
the experiments' reuse steps share."""

from dataclasses import dataclass, field

from dae.same_run import describe, differences


@dataclass(frozen=True)
class Cfg:
    noise: str = "awgn:25"
    sizes: tuple = (1, 2)
    lr: float = 1e-3
    added_later: int = 0
    kwargs: dict = field(default_factory=dict)


def test_a_setting_missing_from_the_record_is_read_as_its_default():
    stored = {"noise": "awgn:25", "sizes": [1, 2], "lr": 1e-3, "kwargs": {}}  # written before added_later
    assert differences(stored, Cfg()) == {}
    assert differences(stored, Cfg(added_later=3)) == {"added_later": (0, 3)}


def test_only_the_named_keys_count_and_canonical_forms_compare_equal():
    stored = {"noise": "awgn:25.0", "sizes": [1, 2], "lr": 0.5}
    assert differences(stored, Cfg(), keys=["noise", "sizes"]) == {"noise": ("awgn:25.0", "awgn:25")}

    def canon(k, v):
        return v.replace(".0", "") if k == "noise" else v

    assert differences(stored, Cfg(), keys=["noise", "sizes"], canonical=canon) == {}
    assert describe(differences(stored, Cfg(), keys=["lr"])) == "lr: 0.5 -> 0.001"


def test_plain_dicts_compare_every_key_of_either_side():
    assert differences({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"b": (2, None), "c": (None, 3)}


def test_an_experiment_reuses_prepared_data_only_when_prepared_the_same_way(tmp_path):
    import pytest

    from dae import shards, storage
    from dae.experiments.reuse import prepare_or_reuse
    from dae.jobutil import save_resolved_config
    from dae.prepare import PrepareConfig

    out = str(tmp_path / "data")
    made = PrepareConfig.from_flat(source="mnist5k", out=out, limit=100, overwrite=True)
    save_resolved_config(made, out)
    storage.write_json(storage.join(out, shards.PREPARED), {"splits": {}})
    assert prepare_or_reuse(PrepareConfig.from_flat(source="mnist5k", out=out, limit=100), "d") == out
    with pytest.raises(ValueError, match=r"prepared with other settings \(limit: 100 -> 200\)"):
        prepare_or_reuse(PrepareConfig.from_flat(source="mnist5k", out=out, limit=200), "d")
