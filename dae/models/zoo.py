"""The model zoo: the seed notebooks' architectures and stronger denoisers.

Seed architectures (reproduced from the Keras notebooks, PyTorch layer for layer):
  keras_blog  blog.keras.io denoising AE: Conv32-pool-Conv32-pool, mirrored Conv32-upsample, sigmoid
  conv28k     keras.io denoising example: Conv32/MaxPool x2, Conv2DTranspose32(stride 2) x2,
              Conv to C, sigmoid: exactly 28,353 parameters at 1 channel
  svhn_ae     the SVHN notebook's deeper AE for 32x32 RGB (Conv64-128-256 with BN, mirrored)
  bn_leaky    four Conv2D+BN+LeakyReLU (decreasing filters), four Conv2DTranspose+BN+LeakyReLU
              (increasing filters), Conv2DTranspose sigmoid output
Stronger:
  dncnn       DnCNN (Zhang et al. 2017): predicts the noise, output = x - net(x)
  unet        a small residual U-Net, also predicting a residual
  cunet       the U-Net conditioned on the noise level: a sigma map as an extra input channel
              (FFDNet, DRUNet), one model for every level; called as model(x, sigma)

All map (N, C, H, W) images to (N, C, H, W) in [0, 1]; inputs may leave [0, 1] (unclipped noise).
Torch only.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def _up_t(cin: int, cout: int) -> nn.ConvTranspose2d:
    # stride-2 transposed conv, exact 2x (Keras "same" padding): (H, W) -> (2H, 2W)
    return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)


class _Seq(nn.Sequential):
    def __init__(self, *layers: nn.Module, multiple: int = 1):
        super().__init__(*layers)
        self.multiple = multiple


class _Residual(nn.Module):
    """output = clamp(x + sign * body(x), 0, 1): the body learns the noise (or its negative)."""

    def __init__(self, body: nn.Module, sign: float, multiple: int):
        super().__init__()
        self.body = body
        self.sign = sign
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + self.sign * self.body(x), 0.0, 1.0)


@register_model
def keras_blog(channels: int = 1, filters: int = 32) -> nn.Module:
    f = filters
    return _Seq(
        _conv(channels, f), nn.ReLU(), nn.MaxPool2d(2),
        _conv(f, f), nn.ReLU(), nn.MaxPool2d(2),  # (N, f, H/4, W/4): the code
        _conv(f, f), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
        _conv(f, f), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
        _conv(f, channels), nn.Sigmoid(),
        multiple=4,
    )


@register_model
def conv28k(channels: int = 1, filters: int = 32) -> nn.Module:
    f = filters
    return _Seq(
        _conv(channels, f), nn.ReLU(), nn.MaxPool2d(2),
        _conv(f, f), nn.ReLU(), nn.MaxPool2d(2),
        _up_t(f, f), nn.ReLU(),
        _up_t(f, f), nn.ReLU(),
        _conv(f, channels), nn.Sigmoid(),
        multiple=4,
    )


@register_model
def svhn_ae(channels: int = 3, width: int = 64) -> nn.Module:
    w = width

    def enc(cin, cout):
        return [_conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    def dec(cin, cout):
        return [_up_t(cin, cout), nn.BatchNorm2d(cout), nn.ReLU()]

    return _Seq(
        *enc(channels, w), *enc(w, 2 * w), *enc(2 * w, 4 * w),  # 32x32 -> 4x4 code
        *dec(4 * w, 2 * w), *dec(2 * w, w), *dec(w, w // 2),
        _conv(w // 2, channels), nn.Sigmoid(),
        multiple=8,
    )


@register_model
def bn_leaky(channels: int = 1, filters: tuple = (64, 32, 16, 8), slope: float = 0.2) -> nn.Module:
    filters = tuple(int(f) for f in filters)
    layers: list[nn.Module] = []
    cin = channels
    for f in filters:  # decreasing
        layers += [_conv(cin, f), nn.BatchNorm2d(f), nn.LeakyReLU(slope)]
        cin = f
    for f in reversed(filters):  # increasing
        layers += [nn.ConvTranspose2d(cin, f, 3, padding=1), nn.BatchNorm2d(f), nn.LeakyReLU(slope)]
        cin = f
    layers += [nn.ConvTranspose2d(cin, channels, 3, padding=1), nn.Sigmoid()]
    return _Seq(*layers, multiple=1)


@register_model
def dncnn(channels: int = 1, depth: int = 17, width: int = 64) -> nn.Module:
    if depth < 3:
        raise ValueError(f"dncnn depth must be >= 3, got {depth}")
    layers: list[nn.Module] = [_conv(channels, width), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
        layers += [_conv(width, width, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    layers += [_conv(width, channels)]
    return _Residual(nn.Sequential(*layers), sign=-1.0, multiple=1)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout), nn.ReLU(inplace=True), _conv(cout, cout))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class _Conditioned(nn.Module):
    """output = clamp(x + body([x, sigma map]), 0, 1) for a per-image noise sigma (0-1 scale): the
    FFDNet/DRUNet way of telling one network the level, so it neither over- nor under-smooths."""

    conditioned = True

    def __init__(self, body: nn.Module, multiple: int):
        super().__init__()
        self.body = body
        self.multiple = multiple

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        level = sigma.to(x.dtype).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.clamp(x + self.body(torch.cat([x, level], dim=1)), 0.0, 1.0)


class _UNet(nn.Module):
    def __init__(self, channels: int, width: int, levels: int, extra_inputs: int = 0):
        super().__init__()
        widths = [width * 2**i for i in range(levels + 1)]
        self.stem = _conv(channels + extra_inputs, width)
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        for i in range(levels):
            self.enc.append(_ResBlock(widths[i], widths[i]))
            self.down.append(nn.Conv2d(widths[i], widths[i + 1], 2, stride=2))  # (H, W) -> (H/2, W/2)
        self.mid = _ResBlock(widths[-1], widths[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(levels)):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.dec.append(_ResBlock(2 * widths[i], widths[i]))  # after concat with the skip
        self.head = _conv(width, channels)

    def forward(self, x):
        h = self.stem(x)
        skips = []
        for enc, down in zip(self.enc, self.down):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.mid(h)
        for up, dec in zip(self.up, self.dec):
            h = dec(torch.cat([up(h), skips.pop()], dim=1))
        return self.head(h)


@register_model
def unet(channels: int = 1, width: int = 32, levels: int = 2) -> nn.Module:
    if levels < 1:
        raise ValueError(f"unet levels must be >= 1, got {levels}")
    return _Residual(_UNet(channels, width, levels), sign=1.0, multiple=2**levels)


@register_model
def cunet(channels: int = 1, width: int = 32, levels: int = 2) -> nn.Module:
    if levels < 1:
        raise ValueError(f"cunet levels must be >= 1, got {levels}")
    return _Conditioned(_UNet(channels, width, levels, extra_inputs=1), multiple=2**levels)
