"""Noise synthesis, reproducible per image.

A noise spec is one string, ``KIND:LEVEL[,key=value...]``; LEVEL may be a range ``LO-HI`` (blind
mode: each image draws its own level uniformly from the range)::

    gaussian:0.5              x + 0.5 * N(0, 1), clipped to [0, 1] (the seed notebooks' noise_factor)
    gaussian:0.05-0.6         blind Gaussian, level drawn per image
    salt_pepper:0.2           20% of pixels replaced, half salt (1) half pepper (0)
    salt_pepper:0.2,salt=0.3  30% of the replaced pixels are salt
    poisson:30                Poisson(peak * x) / peak  (shot noise; lower peak = noisier)
    speckle:0.2               x + x * 0.2 * N(0, 1), clipped
    awgn:25                   x + (25 / 255) * N(0, 1), NOT clipped: the denoising literature's
                              protocol (sigma on the 0-255 scale; BM3D, DnCNN, FFDNet, DRUNet tables)
    awgn:0-55                 blind AWGN, sigma drawn per image
    none                      no synthetic noise: the images are already noisy (noisy-only
                              collections, ``jobs.prepare --noisy``; self-supervised training)

Every kind but ``awgn`` clips to [0, 1] (the seed notebooks' noise); ``awgn`` is neither clipped nor
quantized, so a model fed it sees values outside [0, 1], as in the published tables. Where a noisy
image is stored (a PNG column, a picture) it is clipped and rounded then, and only there.

Each image's noise comes from a generator seeded by (seed, image id, epoch) only, so the same image
gets the same noise whatever the batch size, block layout or number of workers.

No Ray import here (plain numpy).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

KINDS = ("gaussian", "salt_pepper", "poisson", "speckle", "awgn")
# Optional keys each kind accepts after the level, with their defaults.
_KIND_OPTIONS: dict[str, dict[str, float]] = {
    "gaussian": {},
    "salt_pepper": {"salt": 0.5},
    "poisson": {},
    "speckle": {},
    "awgn": {},
}
UNCLIPPED = ("awgn",)  # kinds whose noisy images leave [0, 1]


def image_seed(seed: int, image_id: str, epoch: int = 0) -> int:
    """A 64-bit seed from (global seed, image id, epoch); stable across processes and Python runs
    (unlike ``hash()``, which is salted per process)."""
    digest = hashlib.blake2b(f"{seed}\x1f{image_id}\x1f{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def image_rng(seed: int, image_id: str, epoch: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(image_seed(seed, image_id, epoch)))


@dataclass(frozen=True)
class NoiseSpec:
    kind: str
    low: float
    high: float
    options: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def blind(self) -> bool:
        return self.high != self.low

    @property
    def clipped(self) -> bool:
        """Whether noisy images stay in [0, 1] (every kind but awgn)."""
        return self.kind not in UNCLIPPED

    @property
    def none(self) -> bool:
        return self.kind == "none"

    def sigma(self, level: float) -> float:
        """The Gaussian standard deviation on the [0, 1] scale of a level (gaussian: the level itself;
        awgn: level / 255); None for the other kinds."""
        return {"gaussian": level, "awgn": level / 255.0}.get(self.kind)

    @classmethod
    def parse(cls, spec: str) -> "NoiseSpec":
        if isinstance(spec, NoiseSpec):
            return spec
        usage = (
            f"bad noise spec {spec!r}: expected KIND:LEVEL[,key=value] or KIND:LO-HI with KIND one of "
            f"{', '.join(KINDS)} (e.g. gaussian:0.5, salt_pepper:0.2, gaussian:0.05-0.6, awgn:25), or none"
        )
        if isinstance(spec, str) and spec.strip().lower() == "none":
            return cls("none", 0.0, 0.0)
        if not isinstance(spec, str) or ":" not in spec:
            raise ValueError(usage)
        kind, _, rest = spec.strip().partition(":")
        kind = kind.strip().lower().replace("-", "_")
        if kind not in KINDS:
            raise ValueError(f"unknown noise kind {kind!r} in {spec!r}; valid kinds: {', '.join(KINDS)}")
        level, *opts = [p.strip() for p in rest.split(",")]
        try:
            if "-" in level:
                lo_s, hi_s = level.split("-", 1)
                low, high = float(lo_s), float(hi_s)
            else:
                low = high = float(level)
        except ValueError:
            raise ValueError(usage) from None
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high < low:
            raise ValueError(f"{usage}; levels must be finite, >= 0 and LO <= HI")
        if kind in ("salt_pepper",) and high > 1:
            raise ValueError(f"salt_pepper amount must be in [0, 1], got {spec!r}")
        if kind == "poisson" and low <= 0:
            raise ValueError(f"poisson peak must be > 0, got {spec!r}")
        options = dict(_KIND_OPTIONS[kind])
        for opt in opts:
            key, eq, val = opt.partition("=")
            if not eq or key not in options:
                valid = ", ".join(options) or "none"
                raise ValueError(f"unknown option {opt!r} for {kind} in {spec!r}; valid options: {valid}")
            options[key] = float(val)
        if not 0 <= options.get("salt", 0.5) <= 1:
            raise ValueError(f"salt ratio must be in [0, 1], got {spec!r}")
        return cls(kind, low, high, options)

    def __str__(self) -> str:
        if self.none:
            return "none"
        level = f"{self.low:g}" if not self.blind else f"{self.low:g}-{self.high:g}"
        opts = "".join(
            f",{k}={v:g}" for k, v in self.options.items() if v != _KIND_OPTIONS[self.kind][k]
        )
        return f"{self.kind}:{level}{opts}"

    def draw_level(self, rng: np.random.Generator) -> float:
        """The image's level: the first draw of its generator in blind mode (so ``level_of`` can
        recompute it without the pixels)."""
        return self.low if not self.blind else float(rng.uniform(self.low, self.high))

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of one float image (H, W, C) in [0, 1]; returns float32, in [0, 1] unless the kind
        is unclipped (awgn)."""
        x = np.asarray(image, dtype=np.float32)
        if self.none:
            return x.copy()
        level = self.draw_level(rng)
        if self.kind in ("gaussian", "awgn"):
            y = x + np.float32(self.sigma(level)) * rng.standard_normal(x.shape, dtype=np.float32)
        elif self.kind == "speckle":
            y = x + x * np.float32(level) * rng.standard_normal(x.shape, dtype=np.float32)
        elif self.kind == "poisson":
            y = rng.poisson(x.astype(np.float64) * level).astype(np.float32) / np.float32(level)
        else:  # salt_pepper: per pixel (all channels together), as scikit-image does for gray
            u = rng.random(x.shape[:2], dtype=np.float32)
            salt = u < level * self.options["salt"]
            pepper = (u >= level * self.options["salt"]) & (u < level)
            y = x.copy()
            y[salt] = 1.0
            y[pepper] = 0.0
        if not self.clipped:
            return y.astype(np.float32, copy=False)
        return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)


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
    """The Gaussian noise sigma (0-1 scale) of one (H, W, C) image, estimated as scikit-image does it:
    the median absolute deviation of the finest diagonal wavelet coefficients / 0.6745 (Donoho),
    averaged over channels. On scikit-image's camera photo with awgn 5, 15, 25 and 50 it reads 6.3,
    16.0, 25.8 and 50.6 (/255): image texture adds a little, which matters only at low sigma."""
    from skimage.restoration import estimate_sigma as _estimate  # lazy: skimage costs ~0.5 s to import

    x = np.asarray(image, dtype=np.float64)
    return float(np.mean(_estimate(x, channel_axis=-1, average_sigmas=False)))


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
