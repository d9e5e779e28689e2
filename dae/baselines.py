"""Classical denoisers, as pure per-image functions: the yardstick the autoencoders are measured by.

    median     scipy.ndimage median filter, SIZE x SIZE per channel (the salt-and-pepper classic)
    nlm        non-local means, skimage.restoration.denoise_nl_means (h = H_SCALE * sigma, told
               SIGMA_SCALE * sigma)
    tv         total-variation (Chambolle), skimage.restoration.denoise_tv_chambolle
               (weight = WEIGHT_SCALE * sigma)
    bilateral  skimage.restoration.denoise_bilateral (sigma_color = COLOR_SCALE * sigma)
    wavelet    skimage.restoration.denoise_wavelet (BayesShrink or VisuShrink thresholds from
               SIGMA_SCALE * sigma; needs PyWavelets)
    bm3d       the ``bm3d`` package (optional: ~0.3-1 s per small image, non-commercial license;
               reported as skipped with the reason when it is not installed)

Every method maps one float image (H, W, C) in [0, 1] (C = 1 or 3) plus the noise level ``sigma``
to a float32 (H, W, C) image in [0, 1]. ``sigma`` comes from :func:`noise_sigma`: the level of a
fixed-level Gaussian spec (what the person asked for), else an estimate from the noisy image alone
(``skimage.restoration.estimate_sigma``, a wavelet median-absolute-deviation estimate), so no
method ever looks at the clean image.

Each method has ``defaults`` and a small ``grid`` of candidate parameters (multipliers of sigma,
window sizes). :func:`tune` picks the grid entry with the best mean PSNR on a *separate tuning set*
of images (the evaluation job never tunes on the images it scores). BM3D, being slow, tunes its
sigma multiplier on at most 8 of those images.

No Ray import here (plain numpy / scipy / scikit-image).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .noise import NoiseSpec

# ---------------------------------------------------------------- helpers


def _gray(img: np.ndarray) -> bool:
    return img.shape[2] == 1


def _finish(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """float32 (H, W, C) in [0, 1], whatever shape/dtype the library handed back."""
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 2:
        out = out[:, :, None]
    return np.clip(out, 0.0, 1.0).reshape(like.shape)


def _sk_call(fn, img: np.ndarray, **kw) -> np.ndarray:
    # skimage wants gray images as 2-D (channel_axis=None); a (H, W, 1) array with channel_axis=-1
    # works for some functions and warns or returns (H, W) for others.
    if _gray(img):
        return _finish(fn(img[:, :, 0], channel_axis=None, **kw), img)
    return _finish(fn(img, channel_axis=-1, **kw), img)


def noise_sigma(spec: NoiseSpec | str, noisy: np.ndarray) -> float:
    """The noise standard deviation a method is told: the Gaussian level for ``gaussian:LEVEL`` and
    ``awgn:SIGMA`` (SIGMA / 255); for every other spec (blind ranges, salt-and-pepper, Poisson,
    speckle) an estimate from the noisy image itself. Never below 1e-3 (a zero sigma makes
    NLM/TV/BM3D no-ops or divide by 0)."""
    spec = NoiseSpec.parse(spec)
    if spec.sigma(spec.low) is not None and not spec.blind:
        return max(float(spec.sigma(spec.low)), 1e-3)
    from skimage.restoration import estimate_sigma

    a = np.asarray(noisy, dtype=np.float64)
    if a.shape[2] == 1:
        s = estimate_sigma(a[:, :, 0], channel_axis=None)
    else:
        s = estimate_sigma(a, channel_axis=-1, average_sigmas=True)
    s = float(s)
    return max(s, 1e-3) if math.isfinite(s) else 1e-3


# ---------------------------------------------------------------- the methods


def median(img: np.ndarray, sigma: float, size: int = 3) -> np.ndarray:
    from scipy import ndimage

    # size (k, k, 1): filter each channel on its own; mirror borders (no dark frame).
    return _finish(ndimage.median_filter(img, size=(int(size), int(size), 1), mode="mirror"), img)


def nlm(img: np.ndarray, sigma: float, h_scale: float = 0.8, sigma_scale: float = 1.0, patch_size: int = 5,
        patch_distance: int = 6, fast_mode: bool = False) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    # Passing sigma makes skimage subtract the expected noise from patch distances, so h is a
    # fraction of sigma (skimage's examples use 0.6-0.8 sigma). Strong Gaussian noise clipped to
    # [0, 1] has a much smaller spread than its nominal sigma (gaussian:0.5 on Fashion-MNIST:
    # ~0.28), and subtracting the nominal 2 sigma^2 makes every patch look alike: sigma_scale
    # shrinks the sigma skimage is told (Fashion-MNIST gaussian:0.5, 32 train images: 11.3 dB
    # at 1.0, 13.2 dB at 0.7).
    return _sk_call(denoise_nl_means, img, h=h_scale * sigma, sigma=sigma_scale * sigma,
                    patch_size=int(patch_size), patch_distance=int(patch_distance), fast_mode=bool(fast_mode))


def tv(img: np.ndarray, sigma: float, weight_scale: float = 1.0) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return _sk_call(denoise_tv_chambolle, img, weight=weight_scale * sigma)


def bilateral(img: np.ndarray, sigma: float, color_scale: float = 1.0, sigma_spatial: float = 1.0) -> np.ndarray:
    from skimage.restoration import denoise_bilateral

    return _sk_call(denoise_bilateral, img, sigma_color=color_scale * sigma, sigma_spatial=float(sigma_spatial),
                    mode="reflect")


def wavelet(img: np.ndarray, sigma: float, method: str = "BayesShrink", sigma_scale: float = 1.0,
            wavelet_name: str = "db1") -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    # RGB is thresholded in YCbCr (skimage's recommendation: the noise decorrelates there).
    extra = {} if _gray(img) else {"convert2ycbcr": True}
    return _sk_call(denoise_wavelet, img, sigma=sigma_scale * sigma, method=method, mode="soft",
                    wavelet=wavelet_name, rescale_sigma=True, **extra)


def bm3d(img: np.ndarray, sigma: float, sigma_scale: float = 1.0) -> np.ndarray:
    import bm3d as _bm3d

    s = float(sigma_scale * sigma)
    if _gray(img):
        return _finish(_bm3d.bm3d(img[:, :, 0].astype(np.float64), sigma_psd=s), img)
    return _finish(_bm3d.bm3d_rgb(img.astype(np.float64), sigma_psd=s), img)


@dataclass(frozen=True)
class Baseline:
    name: str
    fn: Callable[..., np.ndarray]
    description: str
    defaults: dict = field(default_factory=dict)
    # Candidate parameter sets for tuning (each a full override of defaults); () = not tuned.
    grid: tuple = ()
    requires: str | None = None  # importable module this method needs (optional dependency)
    tune_max_images: int = 1_000_000  # slow methods tune on the first N tuning images only
    install_hint: str = ""

    def params(self, overrides: dict | None = None) -> dict:
        p = dict(self.defaults)
        p.update(overrides or {})
        return p

    def __call__(self, img: np.ndarray, sigma: float, params: dict | None = None) -> np.ndarray:
        # A private writable copy: Ray hands read-only views (some Cython code refuses them), and a
        # method must never change the input the next method receives.
        return self.fn(np.array(img, dtype=np.float32), float(sigma), **self.params(params))


def _product(**axes) -> tuple:
    keys = list(axes)
    out = [{}]
    for k in keys:
        out = [{**d, k: v} for d in out for v in axes[k]]
    return tuple(out)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in [
        Baseline("median", median, "median filter (scipy.ndimage), size x size per channel",
                 defaults={"size": 3}, grid=_product(size=(3, 5))),
        Baseline("nlm", nlm, "non-local means (skimage), h = h_scale * sigma",
                 defaults={"h_scale": 0.8, "sigma_scale": 1.0, "patch_size": 5, "patch_distance": 6,
                           "fast_mode": False},
                 grid=_product(h_scale=(0.4, 0.6, 0.8, 1.0, 1.2), sigma_scale=(0.5, 0.75, 1.0),
                               fast_mode=(False, True))),
        Baseline("tv", tv, "total variation, Chambolle (skimage), weight = weight_scale * sigma",
                 defaults={"weight_scale": 1.0}, grid=_product(weight_scale=(0.25, 0.5, 1.0, 1.5, 2.0))),
        Baseline("bilateral", bilateral, "bilateral filter (skimage), sigma_color = color_scale * sigma",
                 defaults={"color_scale": 1.0, "sigma_spatial": 1.0},
                 grid=_product(color_scale=(0.5, 1.0, 2.0), sigma_spatial=(1.0, 2.0))),
        Baseline("wavelet", wavelet, "wavelet shrinkage (skimage + PyWavelets), soft thresholds",
                 defaults={"method": "BayesShrink", "sigma_scale": 1.0, "wavelet_name": "db1"},
                 grid=_product(method=("BayesShrink", "VisuShrink"), sigma_scale=(0.125, 0.25, 0.5, 1.0)),
                 requires="pywt", install_hint="pip install PyWavelets"),
        # Clipping to [0, 1] leaves less noise than the nominal sigma, so a smaller sigma_psd often
        # wins; BM3D is slow (~0.3 s per 28x28 image, 4-14 s per 481x321 photo), so it tunes on 3
        # images at most: the grid's steps are coarse (on Set12 with unclipped awgn:15, 8 images:
        # 31.55 dB at 1.0, 30.29 at 0.75, 26.08 at 0.5).
        Baseline("bm3d", bm3d, "BM3D (bm3d package), sigma_psd = sigma_scale * sigma",
                 defaults={"sigma_scale": 1.0}, grid=_product(sigma_scale=(0.5, 0.75, 1.0)), requires="bm3d",
                 tune_max_images=3,
                 install_hint="pip install bm3d (non-commercial license)"),
    ]
}
DEFAULT_BASELINES = ("median", "nlm", "tv", "bilateral", "wavelet", "bm3d")


def get_baseline(name: str) -> Baseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; valid baselines: {', '.join(BASELINES)}") from None


def validate_names(names: Sequence[str]) -> list[str]:
    """The names, checked (unknown -> ValueError listing the valid ones), duplicates dropped."""
    out: list[str] = []
    for n in names:
        get_baseline(n)
        if n not in out:
            out.append(n)
    return out


def availability(name: str) -> tuple[bool, str]:
    """(usable here, reason when not): an optional method whose package is missing is *skipped*
    with this reason, never scored as zero."""
    b = get_baseline(name)
    if b.requires and importlib.util.find_spec(b.requires) is None:
        return False, f"python package {b.requires!r} is not installed ({b.install_hint})"
    return True, ""


def apply(name: str, img: np.ndarray, sigma: float, params: dict | None = None) -> np.ndarray:
    """Denoise one (H, W, C) float image with baseline ``name``."""
    return get_baseline(name)(img, sigma, params)


# ---------------------------------------------------------------- tuning


def tune(name: str, clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray], sigmas: Sequence[float],
         grid: Sequence[dict] | None = None) -> dict:
    """Pick the grid entry with the best mean PSNR over a tuning set.

    ``clean``/``noisy`` are (H, W, C) float images that must NOT be the images later scored.
    Returns {"params": best full params, "grid": [{"params", "psnr"}...], "images": n}. Ties keep
    the earlier grid entry, so the result is deterministic. A method without a grid returns its
    defaults untouched.
    """
    from .metrics import psnr

    b = get_baseline(name)
    grid = list(b.grid if grid is None else grid)
    n = min(len(clean), b.tune_max_images)
    clean, noisy, sigmas = clean[:n], noisy[:n], sigmas[:n]
    if not grid or not len(clean):
        return {"params": b.params(), "grid": [], "images": len(clean)}
    table = []
    for cand in grid:
        vals = [float(psnr(b(n, s, cand), c)[0]) for c, n, s in zip(clean, noisy, sigmas)]
        table.append({"params": b.params(cand), "psnr": float(np.mean(vals))})
    best = max(range(len(table)), key=lambda i: (table[i]["psnr"], -i))
    return {"params": table[best]["params"], "grid": table, "images": len(clean)}
