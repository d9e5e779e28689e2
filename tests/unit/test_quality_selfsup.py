"""The self-supervised table (dae.experiments.quality_selfsup) from evaluate reports, without Ray: the gaps
to supervised, the targets met or missed, CBM3D on its subset, the config checks. The real run is
``make quality-selfsup`` (a benchmark, not a test)."""

import dataclasses

import pytest

from dae.experiments.natural import collect
from dae.experiments.quality_selfsup import (
    PUBLISHED,
    QualitySelfSupConfig,
    check_config,
    markdown,
    summarize,
    train_config,
)

from .test_quality_natural import _report

SCORES = {"supervised": 31.0, "n2n": 30.8, "nb2nb": 29.9, "n2v": 28.8}


def test_gaps_targets_and_cbm3d_subset():
    cfg = QualitySelfSupConfig(sets=("Kodak24",))
    reports = {"Kodak24": _report("Kodak24", {("awgn:25", "noisy"): 20.18, ("awgn:25", "bm3d"): 30.2,
                                              **{("awgn:25", o): p for o, p in SCORES.items()}}, images=24)}
    table = collect(reports)
    trained = {o: {"seconds": 600.0, "last": {"epoch": 12}, "command": f"python -m jobs.train --objective {o}"}
               for o in SCORES}
    rows = summarize(cfg, table, trained)
    assert rows["n2n"]["Kodak24"]["gap"] == pytest.approx(-0.2) and rows["n2n"]["Kodak24"]["met"]
    assert rows["nb2nb"]["Kodak24"]["gap"] == pytest.approx(-1.1) and not rows["nb2nb"]["Kodak24"]["met"]
    assert rows["n2v"]["Kodak24"]["met"] and "gap" not in rows["supervised"]["Kodak24"]
    # nb2nb against CBM3D on CBM3D's own 8 images (the report's bm3d_subset: +0.5 in _report)
    assert rows["nb2nb"]["Kodak24"]["subset_psnr"] == pytest.approx(30.4) and rows["nb2nb"]["Kodak24"]["beats_cbm3d"]
    md = markdown(cfg, table, rows, trained)
    assert "- nb2nb within 1.0 dB of supervised on Kodak24: -1.10 dB, **missed**" in md
    assert "- n2n within 0.3 dB of supervised on Kodak24: -0.20 dB, met" in md
    assert "- nb2nb at least CBM3D on Kodak24 (first 8): 30.40 vs 30.20, met" in md
    assert f"| {PUBLISHED['nb2nb']:.2f} |" in md and "12 epochs, 600 s" in md


def test_a_skipped_cbm3d_is_said_not_left_out():
    """Without the bm3d extra the evaluate reports skip CBM3D: the table says its target was not checked
    (it used to drop the row and the target without a word)."""
    cfg = QualitySelfSupConfig(sets=("Kodak24",), objectives=("nb2nb",))
    table = collect({"Kodak24": _report("Kodak24", {("awgn:25", "noisy"): 20.18, ("awgn:25", "nb2nb"): 31.2},
                                        images=24)})
    trained = {"nb2nb": {"seconds": 60.0, "last": {"epoch": 2}, "command": "dae train --objective nb2nb"}}
    md = markdown(cfg, table, summarize(cfg, table, trained), trained)
    assert "- nb2nb at least CBM3D: **not checked**, CBM3D was not scored (skipped where the `bm3d` extra" in md
    no_bm3d = dataclasses.replace(cfg, baselines=())
    assert "not checked" not in markdown(no_bm3d, table, summarize(no_bm3d, table, trained), trained)


@pytest.mark.parametrize("changes, says", [
    ({"objectives": ("supervised", "byol")}, "valid: supervised, n2n, nb2nb, n2v"),
    ({"recipe": {"objective": "n2v"}}, "neither objective nor noise"),
    ({"sets": ()}, "at least one color set"),
    ({"epochs_factor": {"nb2nb": 0}}, "values > 0"),
    ({"epochs_factor": {"byol": 2}}, "keys must be objectives"),
])
def test_bad_settings_fail_before_any_work(changes, says):
    with pytest.raises(ValueError, match=says):
        check_config(QualitySelfSupConfig(**changes))


def test_every_objective_trains_the_same_recipe():
    cfg = QualitySelfSupConfig(recipe={"epochs": 30}, epochs_factor={"nb2nb": 1.5})
    a, b, c = (train_config(cfg, o, "data/Kodak24") for o in ("supervised", "nb2nb", "n2v"))
    assert (a.objective, b.objective, a.noise, a.epochs, b.run_name) == ("supervised", "nb2nb", "awgn:25", 30, "nb2nb")
    # epochs scaled per objective for equal time; everything else is the same
    assert (b.epochs, c.epochs) == (45, 30)
    differ = ("objective", "run_name", "epochs")
    assert ({k: v for k, v in vars(a).items() if k not in differ}
            == {k: v for k, v in vars(b).items() if k not in differ})
