"""jobs.evaluate's pieces without Ray: the classical baselines (dae.baselines), the model scorer, the
actor plan, the model names and the argument checks that fail before any work. The evaluation run
on Ray, with its numbers recomputed, is in tests/e2e/test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dae import baselines, evaluate, metrics, shards
from dae.checkpoint import load_model, save_model
from dae.evaluate.methods import _model_entries
from dae.inference_spec import InferenceSpec
from dae.models import create_model
from dae.noise import add_noise_batch
from helpers import camera_crops, run_job


def _main(argv):
    return run_job("evaluate", *argv)


def test_model_scorer_runs_models_as_the_denoise_job(camera_models):
    """ModelScorer scores exactly dae.inference.denoise_images' outputs (clipped to [0, 1]): the
    denoise job's tiles and fixed-size, zero-padded forward passes, not a forward code of its own.
    A 24 x 600 image is wider than the default 512 px tile, so it is denoised in blended tiles."""
    from skimage import data

    from dae import inference

    cam = data.camera()
    wide = np.concatenate([cam[100:124], cam[200:224, :88]], axis=1)
    clean = [x.astype(np.float32)[:, :, None] / 255 for x in [*camera_crops(5, 250), wide]]
    noisy = list(add_noise_batch(clean, [str(i) for i in range(6)], "gaussian:0.2", seed=0))
    threads = torch.get_num_threads()
    try:
        out = evaluate.ModelScorer([("m", camera_models["gray"], 1)], InferenceSpec(device="cpu", torch_threads=1))(
            {"noisy": shards.stack_or_ragged(noisy), "clean": shards.stack_or_ragged(clean),
             "sigma": np.full(6, 0.2, np.float32)})
        model, _ = load_model(camera_models["gray"])
        tiled = [np.clip(y, 0, 1) for y in inference.denoise_images(model, noisy)]
        with torch.inference_mode():
            whole = model(torch.from_numpy(noisy[5]).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    finally:
        torch.set_num_threads(threads)  # the actor pins its threads; the rest of the session keeps its own
    assert not np.array_equal(whole, tiled[5])  # tiling shows: the check below can tell the two apart
    want = evaluate.score_images(tiled, clean)
    assert np.array_equal(out["m__psnr"], want[0]) and np.array_equal(out["m__ssim"], want[1])
    assert out["m__hash"].tolist() == [evaluate.array_hash(x) for x in noisy]


def test_model_actors_sized_like_denoise():
    cfg = evaluate.EvaluateConfig
    # 2 CPUs: one 1-CPU actor, one CPU left to the read, noise and classical tasks.
    p = evaluate.plan_model_actors(cfg(), 2, 0)
    assert (p["min_actors"], p["max_actors"], p["actor_cpus"], p["task_cpus"], p["device"]) == (1, 1, 1.0, 1.0, "cpu")
    # Automatic CPU pools: a quarter of the CPUs, at most 4; an explicit count is kept when it fits.
    assert evaluate.plan_model_actors(cfg(), 8, 0)["max_actors"] == 2
    assert evaluate.plan_model_actors(cfg(), 64, 0)["max_actors"] == 4
    assert evaluate.plan_model_actors(cfg(model_actors=3), 8, 0)["max_actors"] == 3
    # 1 CPU: a half-CPU actor, and tasks that fit next to it (1-CPU tasks would never be placed).
    p = evaluate.plan_model_actors(cfg(), 1, 0)
    assert p["actor_cpus"] == 0.5 and p["task_cpus"] == 0.5 and p["max_actors"] == 1
    p = evaluate.plan_model_actors(cfg(), 8, 2)
    assert (p["max_actors"], p["actor_gpus"], p["device"]) == (2, 1.0, "cuda")
    assert evaluate.plan_model_actors(cfg(device="cpu"), 8, 2)["device"] == "cpu"
    with pytest.raises(ValueError, match="no GPU"):
        evaluate.plan_model_actors(cfg(device="cuda"), 8, 0)


def test_unknown_baseline_fails_listing_valid(tmp_path, camera_shards):
    with pytest.raises(ValueError, match="unknown baseline 'gauss'.*median, nlm, tv, bilateral, wavelet, bm3d"):
        _main(["--data", camera_shards, "--out", str(tmp_path), "--baselines", "median", "gauss"])
    with pytest.raises(ValueError, match="self-ensemble size must be one of 1, 2, 4, 8, got 3"):
        _main(["--data", camera_shards, "--out", str(tmp_path), "--baselines", "median", "--ensemble", "1", "3"])


def test_self_ensemble_rows_score_the_averaged_views_with_the_model_loaded_once(camera_models):
    """--ensemble 1 8: each model scored plain and as "NAME x8" (its outputs over the 8 flips and
    rotations, turned back and averaged), from one loaded copy of the model."""
    from dae import inference

    entries = _model_entries([camera_models["gray"]], {"noisy"}, (1, 8))
    assert [(e["key"], e["name"], e["ensemble"]) for e in entries] == [("model0", "tiny-gray", 1),
                                                                        ("model0x8", "tiny-gray x8", 8)]
    clean = [x.astype(np.float32)[:, :, None] / 255 for x in camera_crops(4, 96)]
    noisy = list(add_noise_batch(clean, [str(i) for i in range(4)], "gaussian:0.2", seed=0))
    threads = torch.get_num_threads()
    try:
        scorer = evaluate.ModelScorer([(e["key"], e["dir"], e["ensemble"]) for e in entries],
                                      InferenceSpec(device="cpu", torch_threads=1))
        out = scorer({"noisy": shards.stack_or_ragged(noisy), "clean": shards.stack_or_ragged(clean),
                      "sigma": np.full(4, 0.2, np.float32)})
    finally:
        torch.set_num_threads(threads)
    assert scorer.models[0][1] is scorer.models[1][1]
    model, _ = load_model(camera_models["gray"])
    ens = [np.clip(y, 0, 1) for y in inference.denoise_images(model, noisy, InferenceSpec(ensemble=8))]
    assert np.array_equal(out["model0x8__psnr"], evaluate.score_images(ens, clean)[0])
    # the trained model's errors differ from view to view, so their mean is closer to the clean image
    assert out["model0x8__psnr"].mean() > out["model0__psnr"].mean()


def test_model_channel_mismatch_fails_clearly(tmp_path, camera_shards, camera_models):
    with pytest.raises(ValueError, match="tiny-rgb.*3-channel images but the data .* 1-channel"):
        _main(["--data", camera_shards, "--out", str(tmp_path), "--models", camera_models["rgb"],
               "--baselines", "median"])


# ---------------------------------------------------------------- dae.baselines on its own


@pytest.mark.parametrize("channels", [1, 3])
def test_baselines_shape_range_and_denoise(channels):
    from skimage import data

    img = (data.astronaut()[200:232, 200:232] / 255.0).astype(np.float32)
    img = img if channels == 3 else img.mean(axis=2, keepdims=True)
    noisy = add_noise_batch(img[None], ["x"], "gaussian:0.1", seed=0)[0]
    before = float(metrics.psnr(noisy, img)[0])
    for name in baselines.BASELINES:
        if not baselines.availability(name)[0]:
            continue
        ro = noisy.copy()
        ro.flags.writeable = False  # Ray hands read-only arrays; no method may write its input
        out = baselines.apply(name, ro, baselines.noise_sigma("gaussian:0.1", noisy))
        assert out.shape == img.shape and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1
        if name != "median":  # median is for impulse noise
            assert float(metrics.psnr(out, img)[0]) > before, name


def test_tune_picks_best_on_tuning_set_deterministically():
    from skimage import data

    img = (data.camera()[100:132, 100:132, None] / 255.0).astype(np.float32)
    clean = [img, img[::-1].copy()]
    noisy = list(add_noise_batch(clean, ["a", "b"], "salt_pepper:0.3", seed=0))
    sig = [baselines.noise_sigma("salt_pepper:0.3", x) for x in noisy]
    a = baselines.tune("median", clean, noisy, sig)
    assert a == baselines.tune("median", clean, noisy, sig)
    best = max(a["grid"], key=lambda g: g["psnr"])
    assert a["params"] == best["params"] and len(a["grid"]) == len(baselines.BASELINES["median"].grid)
    assert baselines.tune("tv", clean, noisy, sig, grid=[])["params"] == baselines.BASELINES["tv"].params()


def test_noise_sigma_uses_level_or_estimate():
    rng = np.random.default_rng(0)
    flat = np.full((32, 32, 1), 0.5, np.float32)
    assert baselines.noise_sigma("gaussian:0.3", flat) == pytest.approx(0.3)
    noisy = np.clip(flat + 0.1 * rng.standard_normal(flat.shape), 0, 1).astype(np.float32)
    assert baselines.noise_sigma("gaussian:0.05-0.3", noisy) == pytest.approx(0.1, rel=0.25)


def test_model_names_from_run_dirs(tmp_path):
    m = create_model("conv28k", channels=1, filters=4)
    dirs = [save_model(m, str(tmp_path / run / "best_model")) for run in ("unet-g05", "conv-g05")]
    dup = save_model(m, str(tmp_path / "x" / "unet-g05"))
    names = [e["name"] for e in _model_entries([*dirs, dup], {"noisy"})]
    assert names == ["unet-g05", "conv-g05", "unet-g05-conv28k"]


def test_bm3d_note_only_for_a_real_subset():
    from types import SimpleNamespace

    from dae.evaluate import bm3d_note

    assert bm3d_note(SimpleNamespace(bm3d_n=3, bm3d_subset={"a", "b", "c"})) == {
        "images": 3, "subset": "first 3 scored images (file order)"}
    assert bm3d_note(SimpleNamespace(bm3d_n=20, bm3d_subset=None)) is None  # BM3D scored every image


def test_scoring_blocks_spread_few_photos_over_every_cpu():
    from dae.evaluate import block_rows

    assert block_rows(64, 10_000, cpus=2) == 64  # many small images: batch-sized blocks
    assert block_rows(64, 68, cpus=2) == 17  # 68 photos on 2 CPUs: 4 blocks, not 64 + 4
    assert block_rows(64, 3, cpus=16) == 1
