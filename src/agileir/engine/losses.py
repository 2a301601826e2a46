"""Pixel losses for restoration training: L1 (SR) and Charbonnier (denoising, JPEG).

Why: SwinIR trains classical/lightweight SR with L1 and denoising / JPEG artefact removal with
the Charbonnier loss ``sqrt((x - y)^2 + eps^2)``, eps = 1e-3.
"""

from __future__ import annotations

import torch
from torch import nn

from agileir.errors import ConfigError

LOSSES = ("l1", "charbonnier", "mse")


class CharbonnierLoss(nn.Module):
    """Mean of ``sqrt((x - y)^2 + eps^2)``: a differentiable L1 (SwinIR uses eps = 1e-3)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if eps <= 0:
            raise ConfigError(f"Charbonnier eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((pred - target).pow(2) + self.eps ** 2).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def build_loss(name: str, eps: float = 1e-3) -> nn.Module:
    """The loss module named by ``train.loss.name`` (``l1``, ``charbonnier`` or ``mse``)."""
    key = str(name).lower()
    if key == "l1":
        return nn.L1Loss()
    if key == "charbonnier":
        return CharbonnierLoss(eps)
    if key == "mse":
        return nn.MSELoss()
    raise ConfigError(f"train.loss.name must be one of {LOSSES}, got {name!r}")


__all__ = ["CharbonnierLoss", "build_loss", "LOSSES"]
