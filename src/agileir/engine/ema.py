"""Exponential moving average of the weights (SwinIR / KAIR: decay 0.999, saved as ``params_ema``).

Why: the averaged weights score higher than the last iterate and are what gets validated and
exported; they are kept as a separate, frozen copy of the network.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from agileir.errors import ConfigError


class ModelEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step.

    Parameters are averaged; buffers (none of them learnable in these networks) are copied.
    ``module`` is an eval-mode copy of the network that can be validated or saved directly.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (same architecture)."""
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA and model have different parameter lists")
        torch._foreach_mul_(ema_params, self.decay)
        torch._foreach_add_(ema_params, params, alpha=1.0 - self.decay)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged tensors (SwinIR's ``params_ema``)."""
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)


__all__ = ["ModelEMA"]
