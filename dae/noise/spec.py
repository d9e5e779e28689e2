"""The noise spec as an object: :class:`NoiseSpec`, the base class of every noise kind, and the registry
of kinds by name (``@register_kind``, as dae.objectives registers objectives).

A spec string is parsed here, by :meth:`NoiseSpec.parse`, into an instance of its kind's class; the
kind's class owns the rest: its options and their defaults, its checks, how it draws the noise of one
image, its Gaussian sigma and whether it clips. The built-in kinds are in :mod:`dae.noise.kinds`.

No Ray or torch import here (plain numpy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

_REGISTRY: dict[str, type[NoiseSpec]] = {}


def register_kind(cls: type[NoiseSpec]) -> type[NoiseSpec]:
    """Class decorator: makes ``cls`` (a :class:`NoiseSpec` subclass) the noise kind ``cls.kind``."""
    if not cls.kind:
        raise ValueError(f"noise class {cls.__name__} has no kind")
    if cls.kind in _REGISTRY:
        raise ValueError(f"noise kind {cls.kind!r} registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def list_kinds(takes_level: bool = True) -> list[str]:
    """The kinds spelled ``KIND:LEVEL`` (or, ``takes_level=False``, the bare words such as ``none``), in
    registration order: the order error messages list them in."""
    return [k for k, cls in _REGISTRY.items() if cls.takes_level == takes_level]


def get_kind(name: str) -> type[NoiseSpec]:
    """The registered class of kind ``name``; unknown names fail listing the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown noise kind {name!r}; valid: {', '.join(_REGISTRY)}") from None


def _usage(text) -> str:
    bare = "".join(f", or {k}" for k in list_kinds(takes_level=False))
    return (f"bad noise spec {text!r}: expected KIND:LEVEL[,key=value] or KIND:LO-HI with KIND one of "
            f"{', '.join(list_kinds())} (e.g. gaussian:0.5, salt_pepper:0.2, gaussian:0.05-0.6, awgn:25){bare}")


def _levels(level: str, text: str) -> tuple[float, float]:
    """(low, high) of ``LEVEL`` or ``LO-HI``."""
    try:
        if "-" in level:
            lo_s, hi_s = level.split("-", 1)
            low, high = float(lo_s), float(hi_s)
        else:
            low = high = float(level)
    except ValueError:
        raise ValueError(_usage(text)) from None
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high < low:
        raise ValueError(f"{_usage(text)}; levels must be finite, >= 0 and LO <= HI")
    return low, high


@dataclass(frozen=True, repr=False)
class NoiseSpec:
    """One parsed noise spec: the kind (the class), the level or blind range [low, high], the options.

    A kind subclasses this, sets ``kind`` (and ``defaults``, ``clipped``, ... where they differ), writes
    :meth:`sample` (and :meth:`sigma`, :meth:`check` where it has them), and is decorated with
    ``@register_kind``: ``NoiseSpec.parse`` then reads it, and the train, denoise and evaluate jobs take
    it. Equal specs have the same kind and levels (the options are not compared)."""

    low: float = 0.0
    high: float = 0.0
    options: dict = field(default_factory=dict, compare=False, hash=False)

    kind: ClassVar[str] = ""  # the name in a spec string
    defaults: ClassVar[dict[str, float]] = {}  # the options the kind takes after its level, with their defaults
    clipped: ClassVar[bool] = True  # whether noisy images stay in [0, 1]
    takes_level: ClassVar[bool] = True  # False: spelled as the bare kind (none)
    none: ClassVar[bool] = False  # True: adds no noise (the images are noisy already)

    # ---- what a kind defines

    def check(self, text: str) -> None:
        """Raises a one-line ValueError quoting ``text`` where the levels or options are out of range."""

    def sample(self, x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
        """The noisy copy of float32 image ``x`` (H, W, C) at ``level``, before clipping; draws from ``rng``
        only (after :meth:`draw_level`'s draw)."""
        raise NotImplementedError

    def sigma(self, level: float) -> float | None:
        """The Gaussian standard deviation on the [0, 1] scale of a level (what a noise-level-conditioned
        model is told); None for a kind without one."""
        return None

    # ---- the same for every kind

    @classmethod
    def parse(cls, text: NoiseSpec | str) -> NoiseSpec:
        """The spec of ``text`` (``KIND:LEVEL[,key=value...]``, ``KIND:LO-HI[,...]`` or a bare kind such as
        ``none``); a spec is returned as it is."""
        if isinstance(text, NoiseSpec):
            return text
        bare = _REGISTRY.get(text.strip().lower()) if isinstance(text, str) else None
        if bare is not None and not bare.takes_level:
            return bare()
        if not isinstance(text, str) or ":" not in text:
            raise ValueError(_usage(text))
        name, _, rest = text.strip().partition(":")
        name = name.strip().lower().replace("-", "_")
        kind = _REGISTRY.get(name)
        if kind is None or not kind.takes_level:
            raise ValueError(f"unknown noise kind {name!r} in {text!r}; valid kinds: {', '.join(list_kinds())}")
        return kind._from_text(rest, text)

    @classmethod
    def _from_text(cls, rest: str, text: str) -> NoiseSpec:
        level, *opts = [p.strip() for p in rest.split(",")]
        low, high = _levels(level, text)
        cls(low, high, dict(cls.defaults)).check(text)  # the levels first: a bad level is named before a bad option
        options = dict(cls.defaults)
        for opt in opts:
            key, eq, val = opt.partition("=")
            if not eq or key not in options:
                valid = ", ".join(options) or "none"
                raise ValueError(f"unknown option {opt!r} for {cls.kind} in {text!r}; valid options: {valid}")
            options[key] = float(val)
        spec = cls(low, high, options)
        spec.check(text)
        return spec

    def __str__(self) -> str:
        """The canonical spec string (parses back to an equal spec): options only where not the default."""
        if not self.takes_level:
            return self.kind
        level = f"{self.low:g}" if not self.blind else f"{self.low:g}-{self.high:g}"
        opts = "".join(f",{k}={v:g}" for k, v in self.options.items() if v != self.defaults[k])
        return f"{self.kind}:{level}{opts}"

    def __repr__(self) -> str:  # as when NoiseSpec was one class with a kind field
        return f"NoiseSpec(kind={self.kind!r}, low={self.low!r}, high={self.high!r}, options={self.options!r})"

    @property
    def blind(self) -> bool:
        return self.high != self.low

    def draw_level(self, rng: np.random.Generator | None) -> float:
        """The image's level: the first draw of its generator in blind mode (so a level can be recomputed
        without the pixels, :func:`dae.noise.noise_sigmas`)."""
        return self.low if not self.blind else float(rng.uniform(self.low, self.high))

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of one float image (H, W, C) in [0, 1]; returns float32, in [0, 1] unless the kind
        is unclipped (awgn)."""
        x = np.asarray(image, dtype=np.float32)
        y = self.sample(x, self.draw_level(rng), rng)
        if not self.clipped:
            return y.astype(np.float32, copy=False)
        return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)
