"""n2n: Noise2Noise (Lehtinen et al., "Noise2Noise: Learning Image Restoration without Clean Data",
ICML 2018): the loss between f(noisy) and noisy', a second, independent noisy draw of the same image.
The L2 minimiser is then E[noisy'] = clean, so it needs zero-mean noise and two independent
observations of the same (static) scene: on clean data a second synthetic draw (its own noise stream,
``n2n:ID``), on data with no clean images the real second shots of ``--pair-data``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..noise import add_noise_batch
from .base import Model, Objective, nchw
from .registry import register_objective
from .supervised import supervised_loss


def n2n_loss(model: Model, noisy: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target``: an independent noisy draw of the same images; the arithmetic is the supervised one."""
    return supervised_loss(model, noisy, sigma, target)


@register_objective
class Noise2Noise(Objective):
    name = "n2n"
    title = "Noise2Noise"
    needs = "pairs"

    def draw(self, clean: np.ndarray, ids: Sequence[str], seed: int, epoch: int,
             target: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The second noisy images: the real pairs given, else a second noise draw of ``clean`` from
        (seed, ``n2n:ID``, epoch)."""
        if target is not None:
            return {"target": nchw(target)}
        return {"target": nchw(add_noise_batch(clean, [f"n2n:{i}" for i in ids], self.noise, seed, epoch))}

    def train_loss(self, run, clean, noisy, sigma, extra, epoch):
        return self.loss_fn(run(noisy, sigma), extra["target"])
