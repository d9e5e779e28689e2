"""Training objectives for denoisers: supervised and self-supervised, pure PyTorch (no Ray).

A model is called ``model(x, sigma)``: ``x`` (B, C, H, W) float, ``sigma`` (B,) per-image noise sigma on
the 0-1 scale (ignored by models that are not noise-level conditioned); it returns (B, C, H, W).

    supervised  MSE(f(noisy), clean). Needs clean targets.
    n2n         Noise2Noise (Lehtinen et al., "Noise2Noise: Learning Image Restoration without Clean
                Data", ICML 2018): MSE(f(noisy), noisy') with noisy' a second, independent noisy draw
                of the same image. The L2 minimiser is then E[noisy'] = clean, so it needs zero-mean
                noise and two independent observations of the same (static) scene.
    nb2nb       Neighbor2Neighbor (Huang et al., "Neighbor2Neighbor: Self-Supervised Denoising from
                Single Noisy Images", CVPR 2021): two half-size sub-images g1, g2 are drawn from one
                noisy image by taking, in every 2x2 cell, one pixel and one of its two horizontal or
                vertical neighbours; f(g1) is trained towards g2, plus a regulariser that makes up for
                g1 and g2 not seeing the same clean pixels. Assumes zero-mean, pixel-independent noise
                (spatially correlated noise, e.g. demosaiced camera noise, is learned as signal).
    n2v         Noise2Void (Krull et al., "Noise2Void - Learning Denoising from Single Noisy Images",
                CVPR 2019): a few pixels are replaced by a random neighbour (a blind spot) and the
                network predicts their original noisy values from the surroundings alone. Assumes
                pixel-independent, zero-mean noise, and (with the default per-channel blind spots, as in
                the reference code) noise independent across channels; ``joint`` blind spots drop that
                assumption for a worse color result. The blind spot also costs detail (each output
                pixel is predicted without its own value), so it trails n2n/nb2nb.

Per-image randomness (sub-sampling cells, masked pixels) comes from ``image_rng(seed, PURPOSE:id,
epoch)`` only, never from batch position, so it does not depend on batch size or worker count. The
numpy helpers build it; the loss functions take it as arrays, moved to the device of ``noisy``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .noise import image_rng

OBJECTIVES = ("supervised", "n2n", "nb2nb", "n2v")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- supervised, Noise2Noise


def supervised_loss(model: Model, noisy: torch.Tensor, sigma: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(noisy, sigma), clean)


def n2n_loss(model: Model, noisy: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target``: an independent noisy draw of the same images; the arithmetic is the supervised one."""
    return supervised_loss(model, noisy, sigma, target)


# ---------------------------------------------------------------- Neighbor2Neighbor

# The official code's 8 ordered (g1, g2) pairs of 4-neighbours in a 2x2 cell (index = 2 * row + col);
# drawing one uniformly is g1 uniform over the cell and g2 uniform over g1's two adjacent pixels.
# Diagonal pairs are left out: those pixels are further apart, so their clean values differ more.
_NB2NB_PAIRS = np.array([[0, 1], [0, 2], [1, 3], [3, 2], [1, 0], [2, 0], [3, 1], [2, 3]], dtype=np.int8)


def nb2nb_choices(ids: Sequence[str], seed: int, epoch: int, h: int, w: int) -> np.ndarray:
    """int8 (B, 2, h//2, w//2): per 2x2 cell, the index (0..3, row-major) of g1's pixel and of g2's.
    An odd last row/column is left out (the official code assumes even sizes)."""
    out = np.empty((len(ids), 2, h // 2, w // 2), np.int8)
    for j, i in enumerate(ids):
        pair = image_rng(seed, f"nb2nb:{i}", epoch).integers(0, 8, (h // 2, w // 2))
        out[j] = np.moveaxis(_NB2NB_PAIRS[pair], -1, 0)
    return out


def nb2nb_subsample(x: torch.Tensor, choice: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, C, H//2, W//2): from every 2x2 cell of ``x``, the pixel ``choice`` (B, H//2, W//2) names."""
    b, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    cells = x[:, :, : 2 * h2, : 2 * w2].reshape(b, c, h2, 2, w2, 2).permute(0, 1, 2, 4, 3, 5)
    cells = cells.reshape(b, c, h2, w2, 4)  # last axis: the cell's pixels, row-major
    idx = torch.as_tensor(choice, device=x.device).long().reshape(b, 1, h2, w2, 1).expand(b, c, h2, w2, 1)
    return cells.gather(-1, idx).squeeze(-1)


def nb2nb_loss(model: Model, noisy: torch.Tensor, sigma: torch.Tensor, choices: torch.Tensor | np.ndarray,
               gamma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """rec + gamma * reg, with ``choices`` from ``nb2nb_choices`` (B, 2, H//2, W//2).
    Returns the loss and its parts {"rec", "reg"} as detached tensors (no device sync per step: the
    train step only needs the sum)."""
    choices = torch.as_tensor(choices, device=noisy.device).long()
    g1, g2 = nb2nb_subsample(noisy, choices[:, 0]), nb2nb_subsample(noisy, choices[:, 1])
    out = model(g1, sigma)
    # The full-image pass only estimates the clean gap between the sub-images; as in the paper and its
    # code, no gradient flows through it (else the regulariser could be met by blurring f(noisy)).
    with torch.no_grad():
        full = model(noisy, sigma)
        gap = nb2nb_subsample(full, choices[:, 0]) - nb2nb_subsample(full, choices[:, 1])
    diff = out - g2
    rec = diff.pow(2).mean()
    reg = (diff - gap).pow(2).mean()
    return rec + gamma * reg, {"rec": rec.detach(), "reg": reg.detach()}


def nb2nb_gamma(epoch: int, epochs: int, max_gamma: float = 2.0) -> float:
    """The official code's linear ramp of the regulariser weight (epoch counted from 0): early on f is
    far from a denoiser, so its full-image output is a poor estimate of the clean gap."""
    return max_gamma * epoch / max(epochs, 1)


# ---------------------------------------------------------------- Noise2Void


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
