"""The noise kinds, one class each: a new kind is one more class here (a :class:`NoiseSpec` subclass
decorated with ``@register_kind``), and ``--noise``, ``--add-noise``, the evaluate job and the
noise-level-conditioned models take it. Registration order is the order error messages list them in.

Every kind but ``awgn`` clips to [0, 1] (the seed notebooks' noise); ``awgn`` is neither clipped nor
quantized, so a model fed it sees values outside [0, 1], as in the published tables.

No Ray or torch import here (plain numpy).
"""

from __future__ import annotations

import numpy as np

from .spec import NoiseSpec, register_kind


@register_kind
class Gaussian(NoiseSpec):
    """``gaussian:0.5``: x + 0.5 * N(0, 1), clipped to [0, 1] (the seed notebooks' noise_factor);
    ``gaussian:0.05-0.6``: blind, the level drawn per image."""

    kind = "gaussian"

    def sigma(self, level: float) -> float:
        return level

    def sample(self, x, level, rng):
        return x + np.float32(self.sigma(level)) * rng.standard_normal(x.shape, dtype=np.float32)


@register_kind
class SaltPepper(NoiseSpec):
    """``salt_pepper:0.2``: 20% of the pixels replaced, half salt (1) half pepper (0);
    ``salt_pepper:0.2,salt=0.3``: 30% of the replaced pixels are salt."""

    kind = "salt_pepper"
    defaults = {"salt": 0.5}

    def check(self, text):
        if self.high > 1:
            raise ValueError(f"salt_pepper amount must be in [0, 1], got {text!r}")
        if not 0 <= self.options["salt"] <= 1:
            raise ValueError(f"salt ratio must be in [0, 1], got {text!r}")

    def sample(self, x, level, rng):
        # per pixel (all channels together), as scikit-image does for gray
        u = rng.random(x.shape[:2], dtype=np.float32)
        salt = u < level * self.options["salt"]
        pepper = (u >= level * self.options["salt"]) & (u < level)
        y = x.copy()
        y[salt] = 1.0
        y[pepper] = 0.0
        return y


@register_kind
class Poisson(NoiseSpec):
    """``poisson:30``: Poisson(peak * x) / peak (shot noise; a lower peak is noisier)."""

    kind = "poisson"

    def check(self, text):
        if self.low <= 0:
            raise ValueError(f"poisson peak must be > 0, got {text!r}")

    def sample(self, x, level, rng):
        return rng.poisson(x.astype(np.float64) * level).astype(np.float32) / np.float32(level)


@register_kind
class Speckle(NoiseSpec):
    """``speckle:0.2``: x + x * 0.2 * N(0, 1), clipped."""

    kind = "speckle"

    def sample(self, x, level, rng):
        return x + x * np.float32(level) * rng.standard_normal(x.shape, dtype=np.float32)


@register_kind
class AWGN(Gaussian):
    """``awgn:25``: x + (25 / 255) * N(0, 1), NOT clipped: the denoising literature's protocol (sigma on
    the 0-255 scale; BM3D, DnCNN, FFDNet, DRUNet tables); ``awgn:0-55``: blind."""

    kind = "awgn"
    clipped = False

    def sigma(self, level: float) -> float:
        return level / 255.0


@register_kind
class NoNoise(NoiseSpec):
    """``none``: no synthetic noise, the images are noisy already (noisy-only collections,
    ``jobs.prepare --noisy``; self-supervised training)."""

    kind = "none"
    takes_level = False
    none = True

    def apply(self, image, rng):
        return np.asarray(image, dtype=np.float32).copy()
