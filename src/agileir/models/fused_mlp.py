"""The transformer block's MLP and residual add as two oneDNN products with fused post-ops (CPU inference).

Why: in the network the MLP's GELU and the residual add are separate passes over tensors far
larger than the caches (65536 x 120 floats per block at a 256x256 input); oneDNN applies both
inside the linear layers' output loop instead. Measured on an AMX CPU (agileir-s, 256x256, one
thread): inference 0.90x its time in fp32 with a bit-identical output, 0.92x under bf16 autocast
(docs/performance.md). PyTorch has no public API for these post-ops; the operators used here are
those its inductor CPU backend emits (``torch.ops.mkldnn._linear_pointwise``), so every use is
guarded by :func:`available` and the unfused module stays the reference.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from agileir.models import token_norm
from agileir.models.windows import is_exporting


@functools.lru_cache(maxsize=None)
def _has_ops() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and ops is not None
                    and hasattr(ops._linear_pointwise, "binary"))
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=None)
def _bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fusable(mlp: nn.Module) -> bool:
    """True for an MLP of two plain float linear layers around an exact GELU (not an int8 copy)."""
    return (type(getattr(mlp, "fc1", None)) is nn.Linear and type(getattr(mlp, "fc2", None)) is nn.Linear
            and type(getattr(mlp, "act", None)) is nn.GELU and mlp.act.approximate == "none")


def compute_dtype_for(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the fused products run in for ``x`` now, or None where they do not apply."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 and _bf16_supported() else None
    return torch.float32


def available(x: torch.Tensor, mlp: nn.Module) -> bool:
    """Whether :func:`mlp_residual` may run for ``x`` (a float32 CPU tensor, fp32 or bf16 autocast):
    inference only (no gradients: the operators have no backward), never while exporting or under a
    Python dispatch mode (FLOP counters must see the linear layers as ATen operations)."""
    return (not torch.is_grad_enabled() and _has_ops() and fusable(mlp) and compute_dtype_for(x) is not None
            and not is_exporting() and _get_current_dispatch_mode() is None)


def mlp_residual(h: torch.Tensor, mlp: nn.Module, residual: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``residual + fc2(gelu(fc1(h)))`` for (..., C) tensors, each product with its post-op fused.

    In fp32 the residual add is fused into fc2 as well; under bf16 autocast the products run in
    bf16 (as autocast runs linear layers) and the residual stream stays float32, so the add is
    separate, as in the unfused module; ``in_place`` does it into ``residual`` (a tensor the caller
    owns). ``h`` may already be bf16 there (normed in the dtype of the products).
    """
    dtype = compute_dtype_for(residual)
    shape = h.shape
    flat = h.reshape(-1, shape[-1]).to(dtype)
    w1, b1 = mlp.fc1.weight.to(dtype), None if mlp.fc1.bias is None else mlp.fc1.bias.to(dtype)
    w2, b2 = mlp.fc2.weight.to(dtype), None if mlp.fc2.bias is None else mlp.fc2.bias.to(dtype)
    ops = torch.ops.mkldnn
    hidden = ops._linear_pointwise(flat, w1, b1, "gelu", [], "none")
    if dtype == torch.float32 and residual.dtype == torch.float32:
        other = residual.reshape(-1, residual.shape[-1])
        if not other.is_contiguous():
            other = other.contiguous()
        return ops._linear_pointwise.binary(hidden, other, w2, b2, "add").view(residual.shape)
    branch = ops._linear_pointwise(hidden, w2, b2, "none", [], "").view(*shape[:-1], -1)
    return token_norm.add_(residual, branch) if in_place else residual + branch


__all__ = ["available", "compute_dtype_for", "fusable", "mlp_residual"]
