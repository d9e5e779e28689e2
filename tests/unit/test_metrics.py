import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dae.metrics import PSNR_CAP, psnr, psnr_np, ssim, ssim_np


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (2, 33, 20, 3), (1, 8, 8, 1)])
def test_agree_with_scikit_image(shape):
    rng = np.random.default_rng(0)
    clean = rng.random(shape)
    noisy = np.clip(clean + 0.2 * rng.standard_normal(shape), 0, 1)
    p, s = psnr(noisy, clean).numpy(), ssim(noisy, clean).numpy()
    for i in range(shape[0]):
        assert abs(p[i] - peak_signal_noise_ratio(clean[i], noisy[i], data_range=1)) < 1e-6
        ref = structural_similarity(clean[i].squeeze(-1) if shape[-1] == 1 else clean[i],
                                    noisy[i].squeeze(-1) if shape[-1] == 1 else noisy[i],
                                    data_range=1, channel_axis=None if shape[-1] == 1 else -1)
        assert abs(s[i] - ref) < 1e-4


def test_per_image_not_pooled():
    clean = np.zeros((2, 8, 8, 1))
    noisy = clean.copy()
    noisy[0] += 0.1  # image 0: MSE 0.01 -> 20 dB; image 1 perfect -> capped
    p = psnr(noisy, clean)
    assert p[0].item() == pytest.approx(20.0) and p[1].item() == PSNR_CAP


def test_torch_nchw_input_matches_numpy():
    x = torch.rand(2, 3, 16, 16)
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    np.testing.assert_allclose(ssim(y, x).numpy(), ssim(y.permute(0, 2, 3, 1).numpy(), x.permute(0, 2, 3, 1).numpy()),
                               rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (2, 33, 20, 3)])
def test_the_numpy_metrics_are_the_torch_ones(shape):
    """psnr_np / ssim_np: what the denoise job's CPU tasks compute without torch."""
    rng = np.random.default_rng(1)
    clean = rng.random(shape)
    noisy = np.clip(clean + 0.1 * rng.standard_normal(shape), 0, 1)
    p, s = psnr_np(noisy, clean), ssim_np(noisy, clean)
    assert isinstance(p, np.ndarray) and isinstance(s, np.ndarray) and p.shape == s.shape == (shape[0],)
    np.testing.assert_allclose(p, psnr(noisy, clean).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, ssim(noisy, clean).numpy(), rtol=0, atol=1e-15)
    assert psnr_np(clean, clean).tolist() == [PSNR_CAP] * shape[0]
