"""supervised: the loss between f(noisy) and the clean image (``--loss``: MSE, L1 or BCE). Needs clean
targets, so it trains only on data that has clean images.

``--objective-kwargs '{average: psnr}'`` (with ``--loss mse``): the batch's loss is the mean over its
images of log(MSE of the image) instead of the MSE of the batch: the mean PSNR of the batch, up to a
factor. A blind model's batch mixes sigmas 0-55; in the plain MSE the noisiest crops weigh most (their
errors are the largest), so the low sigmas are undertrained; the log gives every crop the weight a
PSNR average gives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Model, Objective, Option
from .registry import register_objective


def supervised_loss(model: Model, noisy: torch.Tensor, sigma: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(noisy, sigma), clean)


@register_objective
class Supervised(Objective):
    name = "supervised"
    title = "supervised training"
    needs = "clean"

    options = {"average": Option("batch", "batch: the loss over the whole batch; psnr (mse only): the mean over "
                                          "images of log(MSE), i.e. of their PSNR", choices=("batch", "psnr"))}

    def __init__(self, loss: str = "mse", noise="none", epochs: int = 1, **kwargs):
        super().__init__(loss, noise, epochs, **kwargs)
        if self.kwargs["average"] == "psnr" and loss != "mse":
            raise ValueError(f"--objective-kwargs average: psnr needs --loss mse, got --loss {loss}")

    def train_loss(self, run, clean, noisy, sigma, extra, epoch):
        out = run(noisy, sigma)
        if self.kwargs["average"] == "psnr":
            per_image = (out - clean).pow(2).flatten(1).mean(1)
            return torch.log(per_image + 1e-10).mean()  # the floor: a perfect crop gives no inf
        return self.loss_fn(out, clean)
