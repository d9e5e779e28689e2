"""One InferenceSpec for every forward setting: the denoise and evaluate flags build the same spec,
the spec reaches the forward passes of both stages, and the denoise manifest records exactly its
pixel-changing fields under the names outputs have always had."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dae import inference, shards
from dae.checkpoint import load_config, load_model, save_model
from dae.denoise import DenoiseConfig, manifest
from dae.evaluate import EvaluateConfig, ModelScorer, plan_model_actors, score_images
from dae.inference_spec import HELP, InferenceSpec
from dae.models import create_model
from dae.noise import add_noise_batch
from dae.precision import resolve
from helpers import camera_crops, run_job

FORWARD = ("tile", "tile_overlap", "forward_batch", "forward_pixels", "deterministic", "precision")
# The manifest's settings keys, as every existing output has them (a change refuses their next run).
MANIFEST_KEYS = ["input", "split", "model", "model_weights", "add_noise", "seed", "sigma", "tile", "tile_overlap",
                 "forward_batch", "forward_pixels", "deterministic", "device", "precision", "ensemble",
                 "convert_channels", "max_pixels", "layout"]


def test_denoise_and_evaluate_spell_the_forward_flags_once_with_the_same_defaults():
    spec = InferenceSpec()
    for cls in (DenoiseConfig, EvaluateConfig):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in FORWARD:
            assert fields[name].default == getattr(spec, name), (cls.__name__, name)
            assert fields[name].metadata["help"] == HELP[name]
    assert DenoiseConfig().inference_spec() == EvaluateConfig().inference_spec() == spec
    # the same flags give the same spec; evaluate's --ensemble lists sizes, set per scored row
    flags = dict(tile=96, tile_overlap=24, forward_batch=16, forward_pixels=4096, deterministic=False,
                 precision="fp32", device="cpu", torch_threads=3)
    assert EvaluateConfig(**flags, ensemble=(1, 8)).inference_spec() == DenoiseConfig(**flags).inference_spec()
    assert DenoiseConfig(ensemble=8).inference_spec().ensemble == 8


def test_the_manifest_records_the_placed_spec_under_its_old_names(tmp_path):
    md = save_model(create_model("conv28k", channels=1, filters=4), str(tmp_path / "m"))
    cfg = DenoiseConfig(input=str(tmp_path / "in"), model=md, output=str(tmp_path / "o"), ensemble=4,
                        tile=64, tile_overlap=8)
    for device, precision in (("cpu", resolve("auto", "cpu")), ("cuda", "bf16")):
        spec = cfg.inference_spec().placed(device, torch_threads=2)
        s = manifest.settings(cfg, load_config(md), spec)
        assert list(s) == MANIFEST_KEYS
        assert {k: s[k] for k in spec.fingerprint_fields()} == spec.fingerprint_fields()
        assert (s["device"], s["precision"], s["ensemble"], s["tile"], s["tile_overlap"]) == (device, precision, 4,
                                                                                             64, 8)
        # threads change nothing the manifest records: a rerun with other threads is the same run
        assert manifest.settings(cfg, load_config(md), spec.placed(device, torch_threads=1)) == s
    with pytest.raises(ValueError, match="unplaced"):
        cfg.inference_spec().fingerprint_fields()


def test_spec_checks_are_one_line_errors_naming_the_flag(tmp_path, camera_shards):
    for bad, says in ((dict(tile_overlap=512), r"--tile-overlap must be in \[0, tile=512\), got 512"),
                      (dict(forward_batch=0), "--forward-batch must be >= 1, got 0"),
                      (dict(torch_threads=-1), "--torch-threads must be >= 0, got -1"),
                      (dict(ensemble=3), "--ensemble must be one of 1, 2, 4, 8, got 3")):
        with pytest.raises(ValueError, match=f"^{says}$"):
            InferenceSpec(**bad).check()
    # evaluate checks its forward flags before any work, as denoise does
    with pytest.raises(ValueError, match=r"^--tile-overlap must be in \[0, tile=16\), got 16$"):
        run_job("evaluate", "--data", camera_shards, "--out", tmp_path, "--baselines", "median", "--tile", "16",
                "--tile-overlap", "16")


def test_evaluate_scores_with_the_spec_it_is_given(camera_models):
    """ModelScorer runs its models with the spec (here --tile 16 --tile-overlap 0 on 24 px crops: seams the
    default spec has not), not with defaults of its own: its scores are those of denoise_images with
    that spec."""
    clean = [x.astype(np.float32)[:, :, None] / 255 for x in camera_crops(3, 80)]
    noisy = list(add_noise_batch(clean, ["a", "b", "c"], "gaussian:0.2", seed=0))
    spec = EvaluateConfig(tile=16, tile_overlap=0, device="cpu").inference_spec()
    threads = torch.get_num_threads()
    try:
        scorer = ModelScorer([("m", camera_models["gray"], 1), ("mx2", camera_models["gray"], 2)],
                             spec.placed("cpu", torch_threads=1))
        out = scorer({"noisy": shards.stack_or_ragged(noisy), "clean": shards.stack_or_ragged(clean),
                      "sigma": np.full(3, 0.2, np.float32)})
    finally:
        torch.set_num_threads(threads)
    model, _ = load_model(camera_models["gray"])
    for key, n in (("m", 1), ("mx2", 2)):
        views = dataclasses.replace(spec, ensemble=n)
        want = [np.clip(y, 0, 1) for y in inference.denoise_images(model, noisy, views)]
        assert np.array_equal(out[f"{key}__psnr"], score_images(want, clean)[0]), key
    plain = [np.clip(y, 0, 1) for y in inference.denoise_images(model, noisy)]
    assert not np.array_equal(out["m__psnr"], score_images(plain, clean)[0])  # the tiles did show


def test_model_actor_threads_keep_evaluates_rule_unless_given():
    assert plan_model_actors(EvaluateConfig(), 2, 0)["torch_threads"] == 1
    assert plan_model_actors(EvaluateConfig(), 8, 2)["torch_threads"] == 1
    assert plan_model_actors(EvaluateConfig(torch_threads=3), 8, 0)["torch_threads"] == 3


def test_an_unplaced_spec_runs_where_the_weights_are():
    torch.manual_seed(0)
    model = create_model("unet", channels=1, width=4).eval()
    img = np.random.default_rng(0).random((70, 45, 1), dtype=np.float32)
    spec = InferenceSpec(device="cpu", tile=32, tile_overlap=8, forward_batch=4)
    want = inference.denoise_images(model, [img], spec)[0]
    np.testing.assert_array_equal(inference.denoise_images(model, [img], dataclasses.replace(spec, device="auto"))[0],
                                  want)


def test_the_denoiser_places_its_spec():
    den_spec = InferenceSpec(tile=64, ensemble=2)
    assert den_spec.placed("cpu", 2) == dataclasses.replace(den_spec, device="cpu", torch_threads=2,
                                                            precision=resolve("auto", "cpu"))
    assert den_spec.placed("cuda").torch_threads == 0 and den_spec.placed("cuda").precision == "bf16"
    assert dataclasses.replace(den_spec, precision="fp32").placed("cuda").precision == "fp32"
