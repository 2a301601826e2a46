"""A transformer block's LayerNorms fused with the window gathers and residual adds (CPU).

Why: at inference each LayerNorm, the (shifted) window gather before the attention, the reverse
gather after it and each residual add is a separate pass over a feature map much larger than the
caches, and ATen's LayerNorm is slow at 60 channels (4.2 ms of a 256x256 input's 65536 tokens,
one thread). The extension's ``token_norm.cpp`` does gather, add and norm while a token's row is
in registers, and writes the normed row in the dtype the next product reads (bf16 under bf16
autocast), so no cast follows. Statistics in float32 as :class:`torch.nn.LayerNorm`; results
equal it up to float32 rounding (the tests bound it against float64). The unfused block stays the
reference and runs wherever :func:`available` is False (training, autograd, export, FLOP
counting, a CPU where the extension did not build).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from agileir.models.attention import fused
from agileir.models.windows import is_exporting

_EMPTY = torch.empty(0, dtype=torch.int64)


def _plain_norm(norm: nn.Module, channels: int) -> bool:
    return (type(norm) is nn.LayerNorm and norm.normalized_shape == (channels,) and norm.weight is not None
            and norm.bias is not None and norm.weight.dtype == torch.float32 and norm.bias.dtype == torch.float32)


def _kernels_run(x: torch.Tensor) -> bool:
    """Float32 CPU token rows, not while exporting or under a Python dispatch mode, the extension
    built with its AVX2 path (these kernels with it)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not is_exporting()
            and _get_current_dispatch_mode() is None and fused.vectorized()
            and hasattr(fused.extension(), "norm_gather_stats"))


def available(x: torch.Tensor, *norms: nn.Module) -> bool:
    """Whether the fused inference kernels may run for ``x`` (a float32 CPU tensor of token rows)
    and these LayerNorms: no gradients (they have no backward), and :func:`_kernels_run`."""
    return (not torch.is_grad_enabled() and all(_plain_norm(norm, x.shape[-1]) for norm in norms)
            and _kernels_run(x))


def trainable(x: torch.Tensor, norm: nn.Module) -> bool:
    """Whether :func:`layer_norm` takes the kernels for ``x`` and ``norm``: as :func:`available`,
    with gradients allowed (the norm's backward is a kernel too)."""
    return _plain_norm(norm, x.shape[-1]) and _kernels_run(x)


class _NormGather(torch.autograd.Function):
    """norm(x) with each image's tokens in ``order``, differentiable: backward is one pass too."""

    @staticmethod
    def forward(ctx, x, weight, bias, order, eps: float, bf16: bool):  # type: ignore[override]
        ctx.eps = eps
        ext = fused.extension()
        # bf16 only when asked: a build from before the flag still runs the float32 call
        out, stats = (ext.norm_gather_stats(_rows(x), order, weight, bias, eps, True) if bf16
                      else ext.norm_gather_stats(_rows(x), order, weight, bias, eps))
        ctx.save_for_backward(x, weight, bias, order, stats)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias, order, stats = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            with torch.enable_grad():
                out = F.layer_norm(x.reshape(x.shape[0], -1, x.shape[-1]), x.shape[-1:], weight, bias, ctx.eps)
                out = (out[:, order] if order.numel() else out).to(grad.dtype)
            wanted = [t for t in (x, weight, bias) if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            return (*(next(grads) if t.requires_grad else None for t in (x, weight, bias)), None, None, None)
        dx, dw, db = fused.extension().norm_gather_backward(_rows(x), order, grad.contiguous(), weight, stats)
        return dx.view(x.shape), dw, db, None, None, None


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, x.shape[-1]).contiguous()


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               order: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``F.layer_norm`` over the last dimension of x (B, ..., C) -> (B, T, C), each image's T tokens
    taken in ``order`` (None: as they are), with autograd (:func:`trainable` must hold for x and
    the norm): the training step's LayerNorms, and the window gather after the attention's, in one
    pass forward and one backward. ``dtype`` bfloat16: the float32 result rounded once, as bf16
    autocast rounds a linear layer's input, for a norm that feeds one (its gradient arrives in bf16)."""
    return _NormGather.apply(x, weight, bias, _order(order), eps, dtype == torch.bfloat16)


def _order(order: torch.Tensor | None) -> torch.Tensor:
    return _EMPTY if order is None else order.contiguous()


def norm_gather(x: torch.Tensor, norm: nn.LayerNorm, order: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``norm(x)`` with each image's tokens taken in ``order`` (B, H, W, C) -> (B, H*W, C), in ``dtype``
    (float32 or bfloat16). ``order``: a permutation of one image's H*W token indices, or None."""
    return fused.extension().norm_gather(_rows(x), _order(order), norm.weight, norm.bias, norm.eps,
                                         dtype == torch.bfloat16)


def add_norm(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None, norm: nn.LayerNorm,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, norm(s))`` for ``s = x + y`` with y's rows of each image taken in ``order``: the residual
    add after a window attention (y in window order, float32 or bf16) and the LayerNorm of the
    MLP. ``s`` is float32 shaped like x; the normed rows are in ``dtype``."""
    xs = x.contiguous()
    s, normed = fused.extension().add_norm(xs.view(xs.shape[0], -1, xs.shape[-1]), y.contiguous(), _order(order),
                                       norm.weight, norm.bias, norm.eps, dtype == torch.bfloat16)
    return s.view(x.shape), normed.view(x.shape)


def add_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x += y`` in place for a contiguous float32 ``x``; a bf16 ``y`` without ATen's slower
    mixed-dtype loop (the same float32 sums)."""
    if y.dtype == torch.bfloat16 and x.is_contiguous() and hasattr(fused.extension(), "add_bf16_"):
        fused.extension().add_bf16_(x, y.contiguous())
        return x
    return x.add_(y)


class _ScaledResidual(torch.autograd.Function):
    """x + scale_b * y for a float32 x and a bf16 y: one pass each way (no widened copy of y)."""

    @staticmethod
    def forward(ctx, x, y, scale):  # type: ignore[override]
        ctx.save_for_backward(scale)
        return fused.extension().residual_bf16(x, y, scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (scale,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: ATen's maths, differentiable again
            return grad, (grad * scale.view((-1,) + (1,) * (grad.ndim - 1))).to(torch.bfloat16), None
        return grad, fused.extension().scale_to_bf16(grad.contiguous(), scale), None


def scaled_residual(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x + scale[b] * y`` per sample b (``scale`` float32, shape (B,) or (B, 1, ...)): the
    stochastic-depth residual. A bf16 ``y`` (a branch under bf16 autocast) on a float32 ``x``
    takes one-pass kernels forward and backward where they run; elsewhere ``addcmul``."""
    if (y.dtype == torch.bfloat16 and scale.dtype == torch.float32 and _kernels_run(x) and x.is_contiguous()
            and y.shape == x.shape and hasattr(fused.extension(), "residual_bf16")):
        return _ScaledResidual.apply(x, y.contiguous(), scale.reshape(-1).contiguous())
    return torch.addcmul(x, y, scale.view((-1,) + (1,) * (x.ndim - 1)))


__all__ = ["available", "trainable", "layer_norm", "norm_gather", "add_norm", "add_", "scaled_residual"]
