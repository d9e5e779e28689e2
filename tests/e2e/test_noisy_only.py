"""The user's path with no clean images, end to end on real Ray and real Parquet: a folder of noisy
photos (here: tiles of scikit-image's camera photo with AWGN 25, saved as 8-bit PNGs, as a camera
would) -> jobs.prepare --noisy -> jobs.train --objective nb2nb --noise none -> jobs.denoise of the same
shards -> PNG export. The clean tiles are known only to this test, which scores the exported PNGs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dae import inference, metrics, shards
from helpers import run_job

pytestmark = pytest.mark.ray

TILE = 64


def noisy_tiles(root, draw: int = 0) -> dict[str, np.ndarray]:
    """48 noisy 64x64 tiles in a folder (noise draw ``draw``); returns the clean tiles by file stem."""
    from skimage import data

    cam = data.camera()
    clean = {}
    for k in range(48):
        y, x = (k // 8) * TILE, (k % 8) * TILE
        tile = cam[y:y + TILE, x:x + TILE].astype(np.float32) / 255
        noisy = tile + np.random.default_rng([draw, k]).normal(0, 25 / 255, tile.shape).astype(np.float32)
        Image.fromarray(np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)).save(root / f"tile{k:02d}.png")
        clean[f"tile{k:02d}"] = tile
    return clean


@pytest.fixture(scope="module")
def noisy_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy-photos")
    return root, noisy_tiles(root)


def test_noisy_folder_to_denoised_pngs_without_clean_images(ray_session, noisy_folder, tmp_path):
    folder, clean = noisy_folder
    data = tmp_path / "shards"
    run_job("prepare", "--source", "folder", "--input", folder, "--out", data, "--noisy", "--test-fraction", 0.15)
    assert shards.is_noisy_only(shards.list_shards(str(data), "train"))
    train = ["--data", data, "--storage", tmp_path / "runs", "--model", "unet", "--model-kwargs", "{width: 16}",
             "--batch-size", 16, "--lr", 0.002, "--schedule", "cosine", "--samples", 4]
    with pytest.raises(ValueError, match="supervised needs clean targets"):
        run_job("train", *train, "--run-name", "sup", "--noise", "none")
    with pytest.raises(ValueError, match="pass --noise none"):
        run_job("train", *train, "--run-name", "sup", "--objective", "nb2nb", "--noise", "awgn:25")
    res = run_job("train", *train, "--run-name", "nb2nb", "--objective", "nb2nb", "--noise", "none", "--epochs", 12)
    best, hist = res["best"], res["history"]
    # no clean images: no PSNR; the held-out loss falls; best_model is the last epoch's
    assert "val_psnr" not in best and best["epoch"] == hist[-1]["epoch"] == 12
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] and 2 < best["residual_std"] * 255 < 40, best
    for f in ("curves.png", "samples.png", "metrics.jsonl"):
        assert os.path.getsize(os.path.join(res["out"], f)) > 0
    with pytest.raises(ValueError, match="no clean version"):
        run_job("evaluate", "--data", data, "--models", res["best_model"], "--noise", "awgn:25", "--out",
                tmp_path / "eval")

    export = tmp_path / "png"
    s = run_job("denoise", "--input", data, "--model", res["best_model"], "--output", tmp_path / "out",
                "--export-png", export)
    assert s["rows_out"] == len(clean) and s["rows_failed"] == 0
    gain = []
    for rid in shards_ids(data):
        den = shards.to_float(np.asarray(Image.open(export / inference.export_name(rid))))
        stem = rid.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        noisy = shards.to_float(np.asarray(Image.open(folder / f"{stem}.png")))
        gain.append(float(metrics.psnr(den, clean[stem])) - float(metrics.psnr(noisy, clean[stem])))
    assert len(gain) == len(clean) and np.mean(gain) > 2.0, np.mean(gain)  # measured +3.3 dB
    config = json.loads((tmp_path / "runs" / "nb2nb" / "config.resolved.json").read_text())
    assert config["objective"] == "nb2nb" and config["noise"] == "none"


def shards_ids(root) -> list[str]:
    return [r["id"] for split in ("train", "test") for r in shards.iter_rows(shards.list_shards(str(root), split),
                                                                           columns=["id"])]


def test_noise2noise_on_real_pairs_through_the_job(ray_session, noisy_folder, tmp_path):
    """Two noisy shots of every tile (two folders with the same file names), each prepared --noisy;
    n2n trains on them with --pair-data; a pair root with other ids is refused."""
    folder, _ = noisy_folder
    second = tmp_path / "second-shots"  # apart from the shards' --out: prepare never writes where it reads
    second.mkdir()
    noisy_tiles(second, draw=1)
    for name, src in (("first", folder), ("second", second)):
        run_job("prepare", "--source", "folder", "--input", src, "--out", tmp_path / name, "--noisy",
                "--test-fraction", 0.15, "--name", "tiles")
    train = ["--data", tmp_path / "first", "--storage", tmp_path / "runs", "--model", "unet", "--model-kwargs",
             "{width: 8}", "--batch-size", 16, "--objective", "n2n", "--noise", "none", "--samples", 2]
    res = run_job("train", *train, "--run-name", "pairs", "--pair-data", tmp_path / "second", "--epochs", 3)
    hist = res["history"]
    assert len(hist) == 3 and hist[-1]["val_loss"] < hist[0]["val_loss"], hist
    run_job("prepare", "--source", "folder", "--input", second, "--out", tmp_path / "other", "--noisy",
            "--test-fraction", 0.3, "--name", "tiles")  # other tiles held out: the splits do not pair up
    with pytest.raises(ValueError, match="must pair up"):
        run_job("train", *train, "--run-name", "bad", "--pair-data", tmp_path / "other", "--epochs", 1)
