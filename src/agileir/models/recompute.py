"""The recompute training path (``attention_impl`` "recompute", GSWA's default): keep block
inputs, recompute the rest in backward.

Per transformer block and token, the plain path keeps about ``12*C + heads*N`` floats for
backward (docs/performance.md). The recompute path keeps ``4*C``:

* the attention branch (LayerNorm, windows, all groups' projections and N x N maps, output
  projection) keeps only its input ``x``; backward recomputes the branch from it, so N x N maps
  exist only transiently while one block is back-propagated, never for the whole network;
* the MLP keeps its input and the fc1 output ``h`` (2C); the LayerNorm output and GELU(h) are
  pointwise and recomputed instead of stored.

Every tensor is kept with ``ctx.save_for_backward`` so the activation census sees it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from agileir.models import token_norm
from agileir.models.gelu import gelu_and_grad
from agileir.runtime import compute_dtype


def _autocast_state(x: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    device = x.device.type
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def _autocast_like(state: tuple[str, bool, torch.dtype]):
    """Re-enter the forward pass's autocast state (backward runs outside it)."""
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


_state = threading.local()


def values_unused() -> bool:
    """True while a backward pass recomputes a branch whose output values nobody reads (only its
    graph is differentiated): a module may then return an unfilled output whose gradients are
    exact (GSWA's fused cascade skips its forward there, models/attention/fused.py)."""
    return getattr(_state, "values_unused", False)


@contextlib.contextmanager
def _values_unused(flag: bool) -> Iterator[None]:
    saved = values_unused()
    _state.values_unused = flag
    try:
        yield
    finally:
        _state.values_unused = saved


class _RecomputedBranch(torch.autograd.Function):
    """y = fn(x), keeping only x; backward re-runs fn with grad and back-propagates through it."""

    @staticmethod
    def forward(ctx, fn: Callable[[torch.Tensor], torch.Tensor], params_fn: Callable[[], Sequence[torch.Tensor]],
                preserve_rng: bool, outputs_unread: bool, x: torch.Tensor, *params: torch.Tensor):
        ctx.fn, ctx.params_fn, ctx.param_ids = fn, params_fn, [id(p) for p in params]
        ctx.outputs_unread = outputs_unread
        ctx.autocast = _autocast_state(x)
        ctx.rng = _rng_state(x.device) if preserve_rng else None
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, *params = ctx.saved_tensors
        if [id(p) for p in ctx.params_fn()] != ctx.param_ids:
            raise RuntimeError("the recompute path recomputes with the module's own parameters, which were "
                               "swapped since the forward pass (torch.func.functional_call?); "
                               "use attention_impl='eager' for that")
        # create_graph=True (a gradient penalty) runs backward with grad mode on: the recompute is
        # then built on the saved input itself, so the returned gradients stay differentiable
        # with respect to it (double backward); otherwise on a detached copy.
        double = torch.is_grad_enabled()
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=ctx.rng is not None):
            if ctx.rng is not None:
                _set_rng_state(x.device, ctx.rng)
            # the recomputed output is only differentiated (never with create_graph: its values
            # would then be differentiated too)
            with torch.enable_grad(), _autocast_like(ctx.autocast), _values_unused(ctx.outputs_unread and not double):
                x_in = x if double else x.detach().requires_grad_(x.requires_grad)
                # a non-leaf view: hooks that tools put on module inputs (FlopCounterMode's
                # module tracker) cannot take a leaf inside a nested autograd.grad
                out = ctx.fn(x_in.view_as(x_in))
        wanted = ([x_in] if x.requires_grad else []) + [p for p in params if p.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True, create_graph=double))
        grad_x = next(grads) if x.requires_grad else None
        grad_params = [next(grads) if p.requires_grad else None for p in params]
        return (None, None, None, None, grad_x, *grad_params)


def recompute_branch(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     params_fn: Callable[[], Sequence[torch.Tensor]], preserve_rng: bool = False,
                     outputs_unread: bool = False) -> torch.Tensor:
    """``fn(x)`` whose intermediates are recomputed in backward; ``params_fn()`` lists the weights fn uses.

    This is also the project's gradient checkpointing (``preserve_rng=True`` replays random ops such as
    stochastic depth identically): unlike ``torch.utils.checkpoint`` it keeps its input through
    ``save_for_backward``, so the activation census sees what checkpointing holds.
    ``outputs_unread``: while fn is recomputed, :func:`values_unused` is True, so a module inside
    it may return an unfilled output; the caller promises that nothing after that module reads the
    values (only copies and permutations follow it, whose gradients need none): a block's
    attention branch, not a whole block (its MLP reads the attention's output).
    """
    return _RecomputedBranch.apply(fn, params_fn, preserve_rng, outputs_unread, x, *params_fn())


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, fast: bool) -> torch.Tensor:
    """LayerNorm over x's last dimension, for a linear layer to read: the extension's one-pass
    kernels where ``fast`` (:func:`token_norm.trainable`), written in bf16 under CPU bf16 autocast
    (the values autocast's cast would give, without that pass), else ATen's."""
    if fast:
        return token_norm.layer_norm(x, weight, bias, eps, dtype=compute_dtype(x)).view(x.shape)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class _LeanMlp(torch.autograd.Function):
    """fc2(GELU(fc1(LN(x)))) keeping x and h = fc1(LN(x)); LN(x) and GELU(h) are recomputed."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w1, b1, w2, b2, eps: float, fast_norm: bool):
        u = _layer_norm(x, ln_w, ln_b, eps, fast_norm)
        h = F.linear(u, w1, b1)
        out = F.linear(F.gelu(h), w2, b2)
        ctx.eps, ctx.fast_norm, ctx.autocast = eps, fast_norm, _autocast_state(x)
        ctx.save_for_backward(x, h, ln_w, ln_b, w1, b1, w2, b2)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recompute (double backward)
            return _LeanMlp._differentiable_backward(ctx, grad_out)
        with _autocast_like(ctx.autocast):
            grads = _LeanMlp._backward(ctx, grad_out)
        return tuple(g if g is None or g.dtype == t.dtype else g.to(t.dtype)
                     for g, t in zip(grads, ctx.saved_tensors[:1] + ctx.saved_tensors[2:])) + (None, None)

    @staticmethod
    def _differentiable_backward(ctx, grad_out):
        """Gradients built with autograd from the saved inputs, so they can be differentiated again."""
        x, _, ln_w, ln_b, w1, b1, w2, b2 = ctx.saved_tensors
        inputs = (x, ln_w, ln_b, w1, b1, w2, b2)
        with _autocast_like(ctx.autocast):
            u = F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, ctx.eps)
            out = F.linear(F.gelu(F.linear(u, w1, b1)), w2, b2)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True, create_graph=True))
        return tuple(next(grads) if t.requires_grad else None for t in inputs) + (None, None)

    @staticmethod
    def _backward(ctx, grad_out):
        x, h, ln_w, ln_b, w1, b1, w2, b2 = ctx.saved_tensors
        dtype = h.dtype  # the compute dtype of the forward (bf16 under autocast)
        go = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)
        grad_g = (go @ w2.to(dtype)).view_as(h)
        g, grad_h = gelu_and_grad(h, grad_g)  # GELU(h) recomputed with its gradient, one pass
        grad_w2 = go.t() @ g.reshape(-1, g.shape[-1])
        grad_b2 = go.sum(0)
        gh = grad_h.reshape(-1, grad_h.shape[-1])
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            ln_w_leaf = ln_w.detach().requires_grad_(True)
            ln_b_leaf = ln_b.detach().requires_grad_(True)
            u = _layer_norm(x_leaf, ln_w_leaf, ln_b_leaf, ctx.eps, ctx.fast_norm)
        # as (u^T gh)^T: the product with 120 output columns, not 60 (0.84x its time on an AVX2 CPU)
        grad_w1 = (u.detach().reshape(-1, u.shape[-1]).to(dtype).t() @ gh).t()
        grad_b1 = gh.sum(0)
        grad_u = (gh @ w1.to(dtype)).view_as(u)
        grad_x, grad_ln_w, grad_ln_b = torch.autograd.grad(u, (x_leaf, ln_w_leaf, ln_b_leaf), grad_u.to(u.dtype))
        return grad_x, grad_ln_w, grad_ln_b, grad_w1, grad_b1, grad_w2, grad_b2


def lean_mlp(x: torch.Tensor, norm: nn.LayerNorm, mlp: nn.Module) -> torch.Tensor:
    """``mlp(norm(x))`` for an ``Mlp`` (fc1, GELU, fc2), storing 3C instead of 6C per token."""
    return _LeanMlp.apply(x, norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight,
                          mlp.fc2.bias, norm.eps, token_norm.trainable(x, norm))
