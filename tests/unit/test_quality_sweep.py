"""The quality sweep's plan (dae.experiments.sweep.plan) on the tiny grid and the presets, and its chart, without
Ray. The sweep end to end is in tests/e2e/test_quality_sweep.py."""

import dataclasses

import pytest

from dae.config import build_config
from dae.experiments import sweep as qs
from helpers import tiny_sweep


@pytest.mark.parametrize("over, msg", [
    ({"grid": [{"data": "nope", "models": ["conv28k"], "noise": ["gaussian:0.3"]}]},
     "unknown dataset 'nope'; datasets: mnist5k"),
    ({"grid": [{"data": "mnist5k", "models": ["vit"], "noise": ["gaussian:0.3"]}]},
     "unknown model tag 'vit'; models: keras_blog, conv28k"),
    ({"blind": "gaussian:0.3"}, "must be a range"),
    ({"best": "unet"}, "not in models: keras_blog, conv28k"),
    ({"models": {"conv28k": {"model": "nope"}, "keras_blog": {"model": "keras_blog"}}}, "model one of"),
    ({"models": {"conv28k": {"model": "conv28k", "loss": "huber"}, "keras_blog": {"model": "keras_blog"}}},
     "loss 'huber' is not one of mse, l1, bce"),
    ({"models": {"conv28k": {"model": "conv28k", "lr": 1}, "keras_blog": {"model": "keras_blog"}}},
     r"unknown key\(s\) \['lr'\]; valid: model, model_kwargs, loss"),
])
def test_bad_plan_fails_listing_valid_choices(tmp_path, over, msg):
    with pytest.raises(ValueError, match=msg):
        qs.plan(tiny_sweep(tmp_path, **over))


def test_presets_plan():
    full, _ = qs.plan(build_config(qs.SweepConfig, preset="quality-sweep"))
    assert len(full) == 3 * 8 * 5 + 3
    cpu, levels = qs.plan(build_config(qs.SweepConfig, preset="quality-sweep-cpu"))
    assert {"gaussian:0.1", "gaussian:0.5", "salt_pepper:0.2"} <= set(levels["fashion-mnist"])


def test_chart_lines_have_distinct_colors_and_baselines_are_dashed(tmp_path):
    """A sweep chart has 13 methods: past matplotlib's 10-color cycle two methods shared a color."""
    from dae.viz import line_styles, save_lines

    labels = ["noisy", "median", "nlm", "tv", "bilateral", "wavelet", "bm3d", "keras_blog", "conv28k",
              "bn_leaky", "svhn_ae", "unet16", "unet16 blind"]
    styles = line_styles(labels, dashed=labels[:7])
    assert len({str(s["color"]) for s in styles.values()}) == len(labels)
    assert [s.get("linestyle") == "--" for s in styles.values()] == [True] * 7 + [False] * 6
    panels = {"gaussian": {m: ((0.1, 0.5), (20.0 + i, 10.0 + i)) for i, m in enumerate(labels)},
              "salt_pepper": {m: ((0.2,), (15.0 + i,)) for i, m in enumerate(labels[:-1])}}
    path = save_lines(panels, str(tmp_path / "chart.png"), xlabel="noise level", dashed=labels[:7])
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_a_report_made_before_a_setting_existed_is_reused_with_that_settings_default(tmp_path, monkeypatch):
    """Benchmark reruns reuse evaluate reports (hours of BM3D): a report whose config lacks a setting
    added since (here --ensemble) was made with its default; other weights or settings are rerun."""
    from dae import evaluate, storage
    from dae.checkpoint import save_model, weights_digest
    from dae.config import config_dict
    from dae.models import create_model

    model = save_model(create_model("conv28k", channels=1, filters=4), str(tmp_path / "m"))
    ecfg = evaluate.EvaluateConfig(data="d", out=str(tmp_path / "eval"), models=(model,))
    old = {k: list(v) if isinstance(v, tuple) else v for k, v in config_dict(ecfg).items() if k != "ensemble"}
    storage.write_json(str(tmp_path / "eval" / "report.json"), {
        "config": old, "models": [{"dir": model, "weights": weights_digest(model)}], "reused": True})
    reran = []
    monkeypatch.setattr(evaluate, "run", lambda cfg, command="": reran.append(cfg) or {"reused": False})
    assert qs.evaluate_or_reuse(ecfg, "d")["reused"] and not reran
    assert not qs.evaluate_or_reuse(dataclasses.replace(ecfg, ensemble=(1, 8)), "d")["reused"]
    save_model(create_model("conv28k", channels=1, filters=4), model)  # retrained: other weights
    assert not qs.evaluate_or_reuse(ecfg, "d")["reused"] and len(reran) == 2


def test_a_report_that_skipped_a_method_is_redone_once_the_method_can_run(tmp_path, monkeypatch):
    """A report made without the bm3d extra skipped BM3D; once the extra is installed, a rerun of the
    benchmark scores it instead of reusing the report without it. Still missing: reused."""
    from dae import baselines, evaluate, storage
    from dae.checkpoint import save_model, weights_digest
    from dae.config import config_dict
    from dae.models import create_model

    model = save_model(create_model("conv28k", channels=1, filters=4), str(tmp_path / "m"))
    ecfg = evaluate.EvaluateConfig(data="d", out=str(tmp_path / "eval"), models=(model,), baselines=("bm3d",))
    storage.write_json(str(tmp_path / "eval" / "report.json"), {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config_dict(ecfg).items()},
        "models": [{"dir": model, "weights": weights_digest(model)}], "reused": True,
        "skipped": [{"method": "bm3d", "reason": "needs the bm3d extra"}]})
    reran = []
    monkeypatch.setattr(evaluate, "run", lambda cfg, command="": reran.append(cfg) or {"reused": False})
    monkeypatch.setattr(baselines, "availability", lambda n: (False, "needs the bm3d extra"))
    assert qs.evaluate_or_reuse(ecfg, "d")["reused"] and not reran
    monkeypatch.setattr(baselines, "availability", lambda n: (True, ""))
    assert not qs.evaluate_or_reuse(ecfg, "d")["reused"] and len(reran) == 1
