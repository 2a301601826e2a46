"""GELU and its gradient in one pass, for the lean MLP's backward (CPU, float32).

Why: the recompute path keeps the MLP's fc1 output h and recomputes GELU(h) in backward, where
ATen then runs GELU and its backward as two passes over h, each evaluating erf. The extension's
``gelu.cpp`` reads h and the incoming gradient once and writes GELU(h) and the gradient of h,
evaluating erfc and the normal density once per element (measured on an AVX2 CPU, one thread,
7.9 M elements: 0.90x ATen's two passes, both near the core's memory bandwidth). Within 2.4e-7
of float64 maths relative to max(1, |x|) (ATen's own: 2.7e-7). The forward pass keeps ATen's
GELU, which is as fast there.
ATen runs wherever :func:`applies` is False (bf16, CUDA, export, a dispatch mode, no extension).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from agileir.models.attention import fused
from agileir.models.windows import is_exporting


def applies(h: torch.Tensor) -> bool:
    """Whether :func:`gelu_and_grad` takes the extension's kernel for ``h``: float32 on the CPU,
    the extension built with its AVX2 path, not while exporting or under a Python dispatch mode."""
    return (h.device.type == "cpu" and h.dtype == torch.float32 and not is_exporting()
            and _get_current_dispatch_mode() is None and fused.vectorized()
            and hasattr(fused.extension(), "gelu_backward"))


def gelu_and_grad(h: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(GELU(h), grad * GELU'(h))`` (the exact, erf GELU), shaped like ``h``."""
    if applies(h) and grad.dtype == torch.float32:
        g, grad_h = fused.extension().gelu_backward(h.contiguous(), grad.contiguous())
        return g.view(h.shape), grad_h.view(h.shape)
    with torch.enable_grad():
        leaf = h.detach().requires_grad_(True)
        g = F.gelu(leaf)
    (grad_h,) = torch.autograd.grad(g, leaf, grad.view_as(g))
    return g.detach(), grad_h


__all__ = ["applies", "gelu_and_grad"]
