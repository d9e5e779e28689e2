"""Model registry, as in timm: each variant is one small ``@register_model`` function.

    from dae.models import create_model, list_models
    model = create_model("unet", channels=3, width=32)

Every registered builder returns a plain ``nn.Module`` that maps (N, C, H, W) images to denoised
images in [0, 1], for H and W multiples of ``model.multiple``. ``create_model`` wraps it in
:class:`AnySize`, which pads any H x W up to that multiple and crops back, so every model takes any
image size. Every model is called as ``model(x, sigma=None)``: a noise-level-conditioned model
(``model.conditioned``) needs ``sigma``, the per-image noise sigma on the 0-1 scale; the others
ignore it, so callers pass it whenever they know it.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_defaults(name: str) -> dict:
    """The builder's keyword arguments and their defaults (what a checkpoint records)."""
    sig = inspect.signature(_builder(name))
    return {k: p.default for k, p in sig.parameters.items() if k != "channels"}


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, channels: int = 1, **kwargs) -> "AnySize":
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    builder = _builder(name)
    unknown = set(kwargs) - set(model_defaults(name))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {sorted(unknown)} for model {name!r}; "
            f"valid: {', '.join(model_defaults(name)) or 'none'}"
        )
    return AnySize(builder(channels=channels, **kwargs), name=name, channels=channels, kwargs=kwargs)


class AnySize(nn.Module):
    """Pads (N, C, H, W) up to the inner model's size multiple, runs it and crops back to H x W.

    Reflection padding keeps the border statistics close to the image's own (zero padding would
    show the model a black frame it never saw in training); tiny images fall back to replicate.
    """

    def __init__(self, inner: nn.Module, name: str, channels: int, kwargs: dict):
        super().__init__()
        self.inner = inner
        self.name = name
        self.channels = channels
        self.kwargs = dict(kwargs)
        self.multiple = int(getattr(inner, "multiple", 1))
        self.conditioned = bool(getattr(inner, "conditioned", False))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"{self.name} expects (N, {self.channels}, H, W) input, got {tuple(x.shape)}"
            )
        if self.conditioned:
            if sigma is None:
                raise ValueError(f"{self.name} is conditioned on the noise level: call it as model(x, sigma)")
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
            if not bool(torch.isfinite(sigma).all()):
                raise ValueError(f"{self.name} got a non-finite noise sigma: {sigma.tolist()}")
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = self.inner(x, sigma) if self.conditioned else self.inner(x)
        return y[..., :h, :w]
