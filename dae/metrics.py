"""Per-image quality metrics: PSNR (data range 1) and SSIM.

Every function returns one value per image, shape (N,); means are taken over images, never pooled
over a batch (pooling the MSE of a batch first would overweight the worst images in PSNR).

SSIM follows scikit-image's ``structural_similarity`` defaults (7x7 uniform window, sample
covariance, K1=0.01, K2=0.03, data_range=1, mean over the valid interior of the SSIM map and over
channels); the tests check agreement with scikit-image within 1e-4. Its window means are running sums
in float64 numpy on the host (every caller holds its images there): the denoise job's finish stage
spent 140 ms per 481x321 RGB photo in torch's float64 ``avg_pool2d`` (49 additions per pixel), more than
the model's bf16 forward pass (72 ms); running sums take about 90 ms, the same values within 1e-15.

``psnr`` and ``ssim`` return torch tensors (training and evaluation hold tensors); ``psnr_np`` and
``ssim_np`` return numpy arrays from numpy images without importing torch, for the denoise job's CPU
tasks (dae.inference: a worker process that imports torch costs some 2 s of CPU and 0.6 GB more).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# PSNR of a perfect reconstruction is infinite; cap it so means stay finite (100 dB ~ MSE 1e-10).
PSNR_CAP = 100.0


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def _as_nchw_np(x) -> np.ndarray:
    """float64 (N, C, H, W) from (N, C, H, W) / (C, H, W) tensors, or numpy (H, W), (H, W, C),
    (N, H, W, C) arrays in [0, 1]."""
    if _is_tensor(x):
        a = x.detach().cpu().double().numpy()
        return a[None] if a.ndim == 3 else a
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None]
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _as_nchw(x) -> torch.Tensor:
    """Accepts (N, C, H, W) tensors, or numpy (H, W), (H, W, C), (N, H, W, C) arrays in [0, 1]."""
    import torch

    if _is_tensor(x):
        t = x
        if t.ndim == 3:
            t = t.unsqueeze(0)
        return t.to(torch.float64)
    return torch.from_numpy(_as_nchw_np(x))


def psnr(pred, target) -> torch.Tensor:
    import torch

    p, t = _as_nchw(pred), _as_nchw(target)
    mse = ((p - t) ** 2).flatten(1).mean(1)
    return torch.clamp(10.0 * torch.log10(1.0 / mse.clamp_min(1e-30)), max=PSNR_CAP)


def psnr_np(pred, target) -> np.ndarray:
    """:func:`psnr` in numpy float64, from numpy images: (N,)."""
    p, t = _as_nchw_np(pred), _as_nchw_np(target)
    mse = ((p - t) ** 2).reshape(len(p), -1).mean(1)
    return np.minimum(10.0 * np.log10(1.0 / np.maximum(mse, 1e-30)), PSNR_CAP)


def _window_means(z: np.ndarray, win: int) -> np.ndarray:
    """Means over every win x win window fully inside the image (valid-only, the interior skimage
    keeps), from running sums along H then W: (..., H, W) -> (..., H-win+1, W-win+1)."""
    s = np.cumsum(z, axis=-2)
    s = np.concatenate([np.zeros_like(s[..., :1, :]), s], axis=-2)
    s = s[..., win:, :] - s[..., :-win, :]
    s = np.cumsum(s, axis=-1)
    s = np.concatenate([np.zeros_like(s[..., :1]), s], axis=-1)
    return (s[..., win:] - s[..., :-win]) / (win * win)


def ssim(pred, target, win_size: int = 7) -> torch.Tensor:
    import torch

    return torch.from_numpy(ssim_np(pred, target, win_size))


def ssim_np(pred, target, win_size: int = 7) -> np.ndarray:
    """:func:`ssim` as a numpy float64 array (N,)."""
    x, y = _as_nchw_np(pred), _as_nchw_np(target)
    n, c, h, w = x.shape
    win = min(win_size, h, w)
    win -= 1 - win % 2  # odd window, as scikit-image requires
    if win < 3:
        raise ValueError(f"image of {h}x{w} is too small for SSIM (needs at least 3x3)")
    k1, k2 = 0.01, 0.03
    c1, c2 = k1**2, k2**2

    def mean(z):
        return _window_means(z, win)

    cov_norm = win * win / (win * win - 1.0)  # sample covariance, as skimage's default
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.reshape(n, -1).mean(axis=1)
