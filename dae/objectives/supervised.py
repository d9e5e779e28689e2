"""supervised: the loss between f(noisy) and the clean image (``--loss``: MSE, L1 or BCE). Needs clean
targets, so it trains only on data that has clean images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Model, Objective
from .registry import register_objective


def supervised_loss(model: Model, noisy: torch.Tensor, sigma: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(noisy, sigma), clean)


@register_objective
class Supervised(Objective):
    name = "supervised"
    title = "supervised training"
    needs = "clean"

    def train_loss(self, run, clean, noisy, sigma, extra, epoch):
        return self.loss_fn(run(noisy, sigma), clean)
