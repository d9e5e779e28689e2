"""The natural-photo table (dae.experiments.quality_natural) from evaluate reports, without Ray: its rows,
the published figures beside ours, BM3D's subset and the config checks. The real run is
``make quality-natural`` (a benchmark, not a test)."""

import pytest

from dae.experiments.natural import collect
from dae.experiments.quality_natural import PUBLISHED, QualityNaturalConfig, check_config, markdown


def _report(name, scores, images=68, bm3d_images=8):
    """An evaluate report.json's shape: results per (noise, method)."""
    results = []
    for (noise, method), psnr in scores.items():
        e = {"noise": noise, "method": method, "status": "ok", "psnr_mean": psnr, "ssim_mean": 0.8,
             "kind": "classical" if method in ("nlm", "bm3d") else "model" if method != "noisy" else "input",
             "images": bm3d_images if method == "bm3d" else images}
        if method not in ("bm3d",) and bm3d_images < images:
            e["bm3d_subset"] = {"images": bm3d_images, "psnr_mean": psnr + 0.5}
        results.append(e)
    return {"results": results, "data": {"images_scored": images}, "wall_seconds": 12.0}


def test_table_has_our_rows_the_published_rows_and_bm3ds_subset():
    cfg = QualityNaturalConfig(sigmas=(25,), gray_sets=("BSD68",), color_sets=())
    reports = {"BSD68": _report("BSD68", {("awgn:25", "noisy"): 20.17, ("awgn:25", "nlm"): 27.73,
                                          ("awgn:25", "bm3d"): 28.61, ("awgn:25", "gray-blind"): 28.88})}
    table = collect(reports)
    assert table["BSD68"]["awgn:25"]["gray-blind"]["psnr"] == 28.88
    md = markdown(cfg, table, {"gray-blind": {"recipe": "model cunet", "seconds": 1500.0, "reused": False}}, reports)
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "28.88" in rows["**gray-blind**"] and "28.61*" in rows["BM3D / CBM3D (ours)"]
    assert "28.57" in rows["BM3D / CBM3D (published)"] and "29.23" in rows["DnCNN (published)"]
    assert "29.48" in rows["DRUNet (published)"] and "29.19" in rows["FFDNet (published)"]
    assert "| BSD68 σ25 | 28.61 | 29.38 |" in md  # ours on BM3D's 8 images, beside BM3D's own score
    assert "1500 s of training" in md


def test_bm3d_on_every_image_has_no_star_and_no_subset_table():
    cfg = QualityNaturalConfig(sigmas=(15,), gray_sets=("Set12",), color_sets=())
    reports = {"Set12": _report("Set12", {("awgn:15", "bm3d"): 32.3, ("awgn:15", "m"): 32.5}, images=12,
                                bm3d_images=12)}
    md = markdown(cfg, collect(reports), {}, reports)
    assert "32.30 |" in md and "32.30*" not in md and "first" not in md


def test_published_figures_cover_every_set_and_level():
    assert all(len(v) == 3 for by_set in PUBLISHED.values() for v in by_set.values())
    assert {s for by_set in PUBLISHED.values() for s in by_set} == {"Set12", "BSD68", "CBSD68", "Kodak24"}


@pytest.mark.parametrize("changes, says", [
    ({"models": ("BSD68=/m",)}, "KIND=DIR with KIND gray or color"),
    ({"train": {"x": {"model": "cunet"}}}, "kind: gray or color"),
    ({"sigmas": (-5,)}, "bad noise spec 'awgn:-5'"),
    ({"train": {"b": {"kind": "gray", "init": "a"}, "a": {"kind": "gray"}}}, "starts from 'a': list that run before"),
])
def test_bad_settings_fail_before_any_work(changes, says):
    with pytest.raises(ValueError, match=says):
        check_config(QualityNaturalConfig(**changes))


def test_ship_writes_a_weights_only_model_dir_with_its_card(tmp_path, monkeypatch):
    from dae import checkpoint
    from dae.experiments.quality_natural import TRAIN, ship
    from dae.models import create_model

    monkeypatch.setattr(checkpoint, "MODELS_ROOT", str(tmp_path / "models"))
    run = tmp_path / "runs" / "gray-blind" / "final_model"
    checkpoint.save_model(create_model("cunet", channels=1, width=4), str(run), noise="awgn:0-55", epoch=30,
                          data={"root": "/somewhere/private"})
    cfg = QualityNaturalConfig(sigmas=(25,), gray_sets=("BSD68",), color_sets=(),
                               train={"gray-blind": TRAIN["gray-blind"]})
    table = {"BSD68": {"awgn:25": {"noisy": {"psnr": 20.17}, "gray-blind": {"psnr": 28.8}}}}
    trained = {"model_dir": str(run), "seconds": 1500.0, "command": "python -m jobs.train --model cunet"}
    dest = ship(cfg, "gray-blind", trained, table, ["BSD68"], precision="bf16")
    assert sorted(p.name for p in (tmp_path / "models" / "gray-blind").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    model, mcfg = checkpoint.load_model("pretrained:gray-blind")  # by name, from the patched models/
    assert model.conditioned and mcfg["scores"] == {"BSD68": {"awgn:25": 28.8}} and "data" not in mcfg
    assert mcfg["scores_precision"] == "bf16"  # the scores say what they were computed in
    card = open(f"{dest}/README.md").read()
    assert "the true sigma given, the model run in bf16 (`--precision bf16`;" in card
    assert "| **gray-blind** | 28.80 |" in card and "| noisy input | 20.17 |" in card
    assert "| DnCNN (published) | 29.23 |" in card and "python -m jobs.train --model cunet" in card
    assert "Train400" in card and "1500 s on 2 CPU cores, 30 epochs, the last epoch's weights:" in card
    assert "x8" not in card

    # fine-tuned from another model, scored with the self-ensemble too
    first = checkpoint.save_model(create_model("cunet", channels=1, width=4), str(tmp_path / "first"), epoch=30)
    table["BSD68"]["awgn:25"]["gray-blind x8"] = {"psnr": 28.95}
    card = open(f"{ship(cfg, 'gray-blind', {**trained, 'init': 'runs/first', 'init_dir': first}, table, ['BSD68'])}"
                "/README.md").read()
    assert "fine-tuned from `runs/first` (30 epochs of its own, not counted here):" in card
    assert "first stage" not in card
    # ... from another recipe of the same command: the card gives that run's command too
    stage = {"model_dir": first, "seconds": 900.0, "command": "python -m jobs.train --run-name first"}
    dest = ship(cfg, "gray-blind", {**trained, "init": "runs/first", "init_dir": first}, table, ["BSD68"], stage)
    card = open(f"{dest}/README.md").read()
    assert "`runs/first` is the first stage (900 s, 30 epochs):\n\n      python -m jobs.train --run-name first" in card
    assert "| gray-blind x8 (self-ensemble: the mean over 8 flips/rotations, `--ensemble 8`) | 28.95 |" in card


def test_ship_names_only_trained_runs():
    with pytest.raises(ValueError, match="--ship 'x': not a run of --train"):
        check_config(QualityNaturalConfig(ship=("x",)))


def test_a_run_resumed_by_hand_counts_every_attempts_seconds(tmp_path):
    """A run cut with `dae train --config RUN/config.resolved.json --epochs N` adds an attempt the
    experiment's summary does not count: the shipped color-blind card said 4,081 s of a 6,477 s run."""
    import json

    from dae import checkpoint
    from dae.experiments.reuse import train_or_reuse
    from dae.models import create_model
    from dae.train import TrainConfig

    run = tmp_path / "runs" / "blind"
    checkpoint.save_model(create_model("cunet", channels=1, width=4), str(run / "final_model"), epoch=3)
    (run / "summary.json").write_text(json.dumps({"total_s": 100.0, "last": {"epoch": 3}}))
    rows = [{"epoch": e, "attempt": 1 + (e > 1), "train_s": 60.0, "val_s": 5.0} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tcfg = TrainConfig(data=str(tmp_path / "data"), storage=str(tmp_path / "runs"), run_name="blind", epochs=3)
    t = train_or_reuse(tcfg, "blind")
    assert t["reused"] and t["seconds"] == 195.0
    (run / "summary.json").write_text(json.dumps({"total_s": 500.0, "last": {"epoch": 3}}))
    assert train_or_reuse(tcfg, "blind")["seconds"] == 500.0  # never less than the summary's count
