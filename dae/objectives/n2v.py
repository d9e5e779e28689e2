"""n2v: Noise2Void (Krull et al., "Noise2Void - Learning Denoising from Single Noisy Images", CVPR 2019):
a few pixels are replaced by a random neighbour (a blind spot) and the network predicts their original
noisy values from the surroundings alone. Assumes pixel-independent, zero-mean noise, and (with the
default per-channel blind spots, as in the reference code) noise independent across channels; ``joint``
blind spots drop that assumption for a worse color result. The blind spot also costs detail (each
output pixel is predicted without its own value), so it trails n2n/nb2nb.

Options (defaults: the train job's ``--n2v-fraction`` and ``--n2v-channels``): ``fraction``, the
pixels masked per channel and sample; ``channels``, ``independent`` or ``joint`` blind spots. Defined
with the MSE loss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..noise import image_rng
from .base import Model, Objective, Option
from .registry import register_objective

N2V_CHANNELS = ("independent", "joint")
N2V_FRACTION = 0.06  # the train job's default; README's self-supervised section has the runs behind it


def n2v_masks(ids: Sequence[str], seed: int, epoch: int, h: int, w: int, fraction: float = N2V_FRACTION,
              radius: int = 2, channels: int = 1, joint: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Blind spots per image and channel: ``mask`` bool (B, C, h, w), and ``source`` int64 (B, C, h, w, 2),
    the (row, col) whose value replaces each masked value (a pixel's own coordinates where unmasked).

    Each channel of an image gets max(1, round(fraction * h * w)) distinct masked pixels, drawn uniformly;
    a source is drawn uniformly from the (2 * radius + 1)^2 window around its pixel cut to the image,
    never the pixel itself (a blind spot fed its own value would let the network learn the identity).

    By default every channel draws its own blind spots, as the N2V reference code does: the network then
    sees the other channels' values at a masked pixel, which carry the same scene (color channels are
    highly correlated) and, for noise independent across channels, none of the target's noise. ``joint``
    masks all channels at the same pixels, for noise correlated across channels (demosaiced or
    color-converted camera noise), where the other channels would leak the target's noise."""
    if h * w < 2:
        raise ValueError(f"n2v needs at least 2 pixels per image, got {h}x{w}")
    n = min(max(1, round(fraction * h * w)), h * w)
    mask = np.zeros((len(ids), channels, h, w), bool)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    source = np.broadcast_to(np.stack([rows, cols], -1), (len(ids), channels, h, w, 2)).copy()
    for j, i in enumerate(ids):
        rng = image_rng(seed, f"n2v:{i}", epoch)
        for c in range(1 if joint else channels):
            r, col = np.divmod(rng.choice(h * w, n, replace=False), w)
            # Cutting the window to the image (rather than clamping offsets) keeps edge sources uniform
            # and never lands on the pixel itself.
            r0, c0 = np.maximum(r - radius, 0), np.maximum(col - radius, 0)
            nr, nc = np.minimum(r + radius, h - 1) - r0 + 1, np.minimum(col + radius, w - 1) - c0 + 1
            k = rng.integers(0, nr * nc - 1)  # one of the window's other pixels...
            k += k >= (r - r0) * nc + (col - c0)  # ...skipping the pixel itself
            for at in range(channels) if joint else (c,):
                mask[j, at, r, col] = True
                source[j, at, r, col] = np.stack([r0 + k // nc, c0 + k % nc], -1)
    return mask, source


def n2v_apply(noisy: torch.Tensor, mask: torch.Tensor | np.ndarray,
              source: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``noisy`` with every masked value replaced by its source pixel's value in the same channel."""
    b, c, h, w = noisy.shape
    mask = torch.as_tensor(mask, device=noisy.device).bool()
    source = torch.as_tensor(source, device=noisy.device).long()
    flat = (source[..., 0] * w + source[..., 1]).reshape(b, c, h * w)
    moved = noisy.reshape(b, c, h * w).gather(2, flat).reshape(b, c, h, w)
    return torch.where(mask, moved, noisy)


def n2v_loss(model: Model, noisy: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor | np.ndarray,
             source: torch.Tensor | np.ndarray) -> torch.Tensor:
    """MSE against the original noisy values over the masked values (B, C, H, W) only."""
    mask = torch.as_tensor(mask, device=noisy.device).bool()
    out = model(n2v_apply(noisy, mask, source), sigma)
    m = mask.to(out.dtype)
    return ((out - noisy) ** 2 * m).sum() / m.sum().clamp_min(1)


@register_objective
class Noise2Void(Objective):
    name = "n2v"
    title = "Noise2Void"
    needs = "noisy"
    losses = ("mse",)
    options = {"fraction": Option(N2V_FRACTION, "the fraction of pixels masked per channel and sample",
                                  valid=lambda v: 0 < v < 1, rule="must be in (0, 1)", flag="n2v_fraction"),
               "channels": Option("independent", "independent blind spots per channel, or joint: all channels "
                                                 "at the same pixels", choices=N2V_CHANNELS, flag="n2v_channels")}

    def draw(self, clean, ids, seed, epoch, target=None):
        """Per image, the blind spots and their sources from (seed, ``n2v:ID``, epoch)."""
        h, w = clean.shape[1:3]
        mask, source = n2v_masks(ids, seed, epoch, h, w, self.kwargs["fraction"], channels=clean.shape[3],
                                 joint=self.kwargs["channels"] == "joint")
        return {"mask": torch.from_numpy(mask), "source": torch.from_numpy(source)}

    def train_loss(self, run, clean, noisy, sigma, extra, epoch):
        return n2v_loss(run, noisy, sigma, extra["mask"], extra["source"])
