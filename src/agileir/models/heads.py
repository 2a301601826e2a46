"""SwinIR's reconstruction heads (upsamplers) and residual-connection convolutions.

Module names follow the official SwinIR so that its checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def residual_conv(dim: int, kind: str) -> nn.Module:
    """'1conv': one 3x3 conv; '3conv': 3x3 -> 1x1 -> 3x3 through dim/4 channels (saves parameters)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1))


class Upsample(nn.Sequential):
    """Pixel-shuffle upsampling for scale 2^n (n conv+shuffle x2 stages) or 3."""

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"pixelshuffle supports scales 2^n and 3, got {scale}")
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """One conv to scale^2 * out_ch channels and a pixel shuffle (lightweight SR)."""

    def __init__(self, scale: int, num_feat: int, out_ch: int) -> None:
        super().__init__(nn.Conv2d(num_feat, scale * scale * out_ch, 3, 1, 1), nn.PixelShuffle(scale))


class PixelShuffleHead(nn.Module):
    """Classical SR: conv + LeakyReLU to num_feat, Upsample, conv_last."""

    def __init__(self, dim: int, num_feat: int, scale: int, out_ch: int) -> None:
        super().__init__()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)

    def forward(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.upsample(self.conv_before_upsample(feat)))


class PixelShuffleDirectHead(nn.Module):
    """Lightweight SR: one conv straight to the output resolution."""

    def __init__(self, dim: int, scale: int, out_ch: int) -> None:
        super().__init__()
        self.upsample = UpsampleOneStep(scale, dim, out_ch)

    def forward(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(feat)


class NearestConvHead(nn.Module):
    """Real-world SR: nearest-neighbour x2 steps, each followed by a conv (fewer checkerboard artefacts)."""

    def __init__(self, dim: int, num_feat: int, scale: int, out_ch: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        if scale == 4:
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_before_upsample(feat)
        y = self.lrelu(self.conv_up1(F.interpolate(y, scale_factor=2, mode="nearest")))
        if self.scale == 4:
            y = self.lrelu(self.conv_up2(F.interpolate(y, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(y)))


class ResidualHead(nn.Module):
    """Denoising / JPEG: the network predicts a residual added to its (normalised) input."""

    def __init__(self, dim: int, out_ch: int) -> None:
        super().__init__()
        self.conv_last = nn.Conv2d(dim, out_ch, 3, 1, 1)

    def forward(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_last(feat)
