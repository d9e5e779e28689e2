"""Noise synthesis, reproducible per image.

A noise spec is one string, ``KIND:LEVEL[,key=value...]``; LEVEL may be a range ``LO-HI`` (blind
mode: each image draws its own level uniformly from the range)::

    gaussian:0.5              x + 0.5 * N(0, 1), clipped to [0, 1] (the seed notebooks' noise_factor)
    gaussian:0.05-0.6         blind Gaussian, level drawn per image
    salt_pepper:0.2,salt=0.3  20% of pixels replaced, 30% of them salt (1), the rest pepper (0)
    awgn:25                   x + (25 / 255) * N(0, 1), NOT clipped (the denoising literature's protocol)
    none                      no synthetic noise: the images are already noisy

The kinds (these and poisson, speckle) are classes, one each, in :mod:`dae.noise.kinds`: a new kind is
one class there. A spec string is parsed once, where it enters (a job's config check), by
:meth:`NoiseSpec.parse`, into an instance of its kind's class (:mod:`dae.noise.spec`); the stages pass
that object on. The functions here take either (a string is parsed).

Where a noisy image is stored (a PNG column, a picture) it is clipped and rounded then, and only there.

Each image's noise comes from a generator seeded by (seed, image id, epoch) only, so the same image
gets the same noise whatever the batch size, block layout or number of workers.

No Ray or torch import here (plain numpy).
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import kinds  # noqa: F401  (registers the built-in kinds)
from .spec import NoiseSpec, get_kind, list_kinds, register_kind

KINDS = tuple(list_kinds())  # the built-in kinds spelled KIND:LEVEL, as error messages list them
UNCLIPPED = tuple(k for k in KINDS if not get_kind(k).clipped)  # kinds whose noisy images leave [0, 1]

__all__ = ["KINDS", "UNCLIPPED", "NoiseSpec", "add_noise", "add_noise_batch", "estimate_sigma", "get_kind",
           "image_rng", "image_seed", "list_kinds", "noise_sigmas", "register_kind"]


def image_seed(seed: int, image_id: str, epoch: int = 0) -> int:
    """A 64-bit seed from (global seed, image id, epoch); stable across processes and Python runs
    (unlike ``hash()``, which is salted per process)."""
    digest = hashlib.blake2b(f"{seed}\x1f{image_id}\x1f{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def image_rng(seed: int, image_id: str, epoch: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(image_seed(seed, image_id, epoch)))


def add_noise(image: np.ndarray, spec: NoiseSpec | str, seed: int, image_id: str, epoch: int = 0) -> np.ndarray:
    return NoiseSpec.parse(spec).apply(image, image_rng(seed, image_id, epoch))


def noise_sigmas(ids, spec: NoiseSpec | str, seed: int, epoch: int = 0) -> np.ndarray:
    """The Gaussian sigma (0-1 scale) each image's noise was drawn with (what a noise-level-
    conditioned model is told), float32 (len(ids),); NaN for kinds without a sigma."""
    spec = NoiseSpec.parse(spec)
    out = np.full(len(ids), np.nan, np.float32)
    if spec.sigma(spec.low) is None:
        return out
    for j, i in enumerate(ids):
        rng = image_rng(seed, str(i), epoch) if spec.blind else None
        out[j] = spec.sigma(spec.draw_level(rng))
    return out


def estimate_sigma(image: np.ndarray) -> float:
    """The Gaussian noise sigma (0-1 scale) of one (H, W, C) image: the median absolute deviation of the
    finest diagonal wavelet coefficients (db2) / 0.6745 (Donoho), per channel, averaged; zero
    coefficients are left out, as scikit-image's ``estimate_sigma`` does (it gives the same figure for an
    image with no clipped pixel). On scikit-image's camera photo at half size with awgn 5, 15, 25 and 50 it
    reads 7.0, 16.8, 26.5 and 51.0 (/255): image texture adds a little, which matters only at low sigma.

    Coefficients that see a clipped pixel (exactly 0 or 1: a noisy photo stored as 8-bit, where clipping
    ate the noise in its blacks and whites) are left out too. With them, sigma 25 read 21.0-22.5 on some
    BSD68 photos stored as 8-bit PNG, and the shipped blind gray model then lost about 1 dB against the
    true level; without them those photos read 24.3-25.3."""
    x = np.asarray(image, dtype=np.float64)
    return float(np.mean([_channel_sigma(x[..., c]) for c in range(x.shape[-1])]))


def _channel_sigma(x: np.ndarray) -> float:
    import pywt  # lazy, as scikit-image does

    d = pywt.dwt2(x, "db2")[1][2]  # the finest diagonal details; 'symmetric' extension, as scikit-image
    keep = (d != 0) & ~_sees(_sees((x == 0) | (x == 1), d.shape[0], 0), d.shape[1], 1)
    if keep.sum() < max(64, d.size // 16):  # (almost) all clipped: the plain estimate is all there is
        keep = d != 0
    return float(np.median(np.abs(d[keep])) / 0.6744897501960817) if keep.any() else 0.0


def _sees(bad: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Along ``axis``: which of the ``n`` db2 coefficients see a ``bad`` pixel (coefficient k is computed
    from pixels 2k-2 .. 2k+1; the symmetric extension at the borders reflects pixels already counted)."""
    b = np.moveaxis(bad, axis, 0)
    p = np.zeros((2 * n + 2,) + b.shape[1:], bool)
    p[2:2 + len(b)] = b
    out = p[0:2 * n:2] | p[1:2 * n + 1:2] | p[2:2 * n + 2:2] | p[3:2 * n + 2:2]
    return np.moveaxis(out, 0, axis)


def add_noise_batch(images, ids, spec: NoiseSpec | str, seed: int, epoch: int = 0):
    """Noisy copies of a batch: ``images`` is (B, H, W, C) float or a sequence of (H, W, C) arrays
    of mixed sizes; returns the same kind. Each image uses only its own (seed, id, epoch)."""
    spec = NoiseSpec.parse(spec)
    out = [spec.apply(img, image_rng(seed, str(i), epoch)) for img, i in zip(images, ids)]
    if isinstance(images, np.ndarray) and images.dtype != object:
        return np.stack(out) if out else np.empty_like(images, dtype=np.float32)
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr
