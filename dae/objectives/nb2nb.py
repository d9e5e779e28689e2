"""nb2nb: Neighbor2Neighbor (Huang et al., "Neighbor2Neighbor: Self-Supervised Denoising from Single
Noisy Images", CVPR 2021): two half-size sub-images g1, g2 are drawn from one noisy image by taking, in
every 2x2 cell, one pixel and one of its two horizontal or vertical neighbours; f(g1) is trained towards
g2, plus a regulariser that makes up for g1 and g2 not seeing the same clean pixels. Assumes zero-mean,
pixel-independent noise (spatially correlated noise, e.g. demosaiced camera noise, is learned as signal).

Option ``gamma`` (default: the train job's ``--nb2nb-gamma``, 2.0): the regulariser's weight, reached at
the last epoch (a linear ramp from 0, as in the paper's code). Defined with the MSE loss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..noise import image_rng
from .base import Model, Objective, Option
from .registry import register_objective

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


@register_objective
class Neighbor2Neighbor(Objective):
    name = "nb2nb"
    title = "Neighbor2Neighbor"
    needs = "noisy"
    losses = ("mse",)
    options = {"gamma": Option(2.0, "the regularizer's weight at the last epoch", valid=lambda v: v >= 0,
                               rule="must be >= 0", flag="nb2nb_gamma")}

    def draw(self, clean, ids, seed, epoch, target=None):
        """Per image, the sub-sampler's cells from (seed, ``nb2nb:ID``, epoch)."""
        h, w = clean.shape[1:3]
        return {"choices": torch.from_numpy(nb2nb_choices(ids, seed, epoch, h, w))}

    def train_loss(self, run, clean, noisy, sigma, extra, epoch):
        gamma = nb2nb_gamma(epoch, self.epochs, self.kwargs["gamma"])
        return nb2nb_loss(run, noisy, sigma, extra["choices"], gamma)[0]

    # held_out_loss: the training loss of epoch 0, whose regularizer weight is 0: the reconstruction
    # term alone (the regularizer is 0 for a model that returns its input, so with it the held-out loss
    # could prefer a model that does not denoise).
