"""The shipped models (models/NAME, loaded as pretrained:NAME): present, small, weights-only, and
good on a benchmark photo they never saw, with the sigma given and estimated."""

import os

import numpy as np
import pytest
from PIL import Image

from dae import checkpoint, metrics
from dae.inference import denoise_images
from dae.noise import add_noise
from helpers import needs_natural

SHIPPED = {"gray-blind": ("BSD68", 1), "color-blind": ("CBSD68", 3)}


def test_the_shipped_models_are_there_small_and_weights_only():
    assert set(SHIPPED) <= set(checkpoint.list_pretrained())
    for name, (_, channels) in SHIPPED.items():
        d = checkpoint.model_dir(f"pretrained:{name}")
        assert sorted(os.listdir(d)) == ["README.md", "config.json", "model.safetensors"]  # no pickle anywhere
        assert os.path.getsize(os.path.join(d, "model.safetensors")) <= 10 * 2**20
        cfg = checkpoint.load_config(f"pretrained:{name}")
        assert cfg["model"] == "cunet" and cfg["channels"] == channels and cfg["noise"] == "awgn:0-55"
        card = open(os.path.join(d, "README.md")).read()
        # data, command (older cards recorded the checkout's form), scores
        assert ("dae train" in card or "python -m jobs.train" in card) and "Train" in card and "dB" in card


def test_an_unknown_pretrained_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="unknown pretrained model 'grey'; shipped: .*gray-blind"):
        checkpoint.load_model("pretrained:grey")


@pytest.mark.parametrize("name", list(SHIPPED))
def test_pretrained_model_denoises_a_benchmark_photo_5_db_above_the_noisy_input(name):
    root = needs_natural()
    test_set, channels = SHIPPED[name]
    path = os.path.join(root, "test", test_set, sorted(os.listdir(os.path.join(root, "test", test_set)))[0])
    clean = np.asarray(Image.open(path).convert("L" if channels == 1 else "RGB"), np.float32) / 255
    clean = clean.reshape(*clean.shape[:2], channels)
    noisy = add_noise(clean, "awgn:25", seed=0, image_id=path)
    model, _ = checkpoint.load_model(f"pretrained:{name}")
    given, estimated = denoise_images(model, [noisy, noisy], sigmas=[25 / 255, None])
    base = float(metrics.psnr(noisy, clean))
    for out in (given, estimated):
        assert float(metrics.psnr(np.clip(out, 0, 1), clean)) >= base + 5.0, (name, base)
