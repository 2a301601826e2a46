"""How attention runs: the kernel, whether the block recomputes in backward, the mask value.

Every "auto" decision of the package is made here and nowhere else. ``attention_impl`` (a
runtime option of :class:`~agileir.models.config.NetworkConfig`) names a policy:

* ``auto`` -- SwinIR (``attention="window"``): the official math everywhere (eager kernel, -100
  shift mask), so ported checkpoints reproduce the official numbers. GSWA: the recompute policy
  when training (the memory saving of AgileIR); for inference SDPA (on CPU PyTorch's flash
  kernel, which needs q/k padded to v's width for GSWA's groups) on CUDA; on the CPU the fused
  kernel wherever it builds, else SDPA on CPUs with AMX and the eager kernel on others (measured,
  docs/performance.md, agileir-s at 256x256, one thread: the fused kernel took 0.72x SDPA's time
  in fp32 and 0.74x under bf16 autocast on an AMX CPU, 0.64x (fp32) on an AVX-512 BF16 CPU
  without AMX; on an AVX2-only CPU the eager kernel already took 0.80x SDPA's time; without the
  fused kernel SDPA was 1-25% faster than the eager kernel on the AMX CPU).
* ``recompute`` -- the same policy as GSWA's ``auto``, for either attention: while training, each
  block keeps only its inputs and recomputes the attention branch in backward (with the eager
  kernel inside the recompute); the MLP keeps its input and its hidden layer.
* ``eager``, ``chunked``, ``sdpa``, ``fused`` -- that kernel always, no block recompute. ``chunked``
  is the flash-style kernel of :mod:`agileir.models.attention.kernels` that saves the row
  log-sum-exp instead of the N x N probabilities; ``fused`` the C++ CPU kernel of
  :mod:`agileir.models.attention.fused` (one window's scores in L1 at a time; for GSWA in
  float32, the whole group cascade of a window per call).

Wherever a policy above says "the eager kernel" on the CPU (GSWA's and SwinIR-recompute's
training recompute) and for GSWA's CPU inference, the fused kernel runs instead when
it is built (:func:`use_fused`; measured on an AVX2 CPU: the agileir-s training step 0.81-0.85x,
inference about 0.94x their time with the eager kernel, and GSWA's whole cascade in it a further
0.87-0.90x and 0.74-0.89x, its small passes removed a further 0.71-0.77x of the step;
docs/performance.md). GSWA's cascade runs in float32 under bf16 autocast too (its projections
have K = C/G: nothing for bf16 units to gain), the linear layers around it in bf16. Never while exporting (it is not traceable),
under a Python dispatch mode (FlopCounterMode and other tools that watch ATen operations would
not see inside it) or in eval mode with gradients (attribution and tests need a
twice-differentiable kernel).


Everything but SwinIR's official path masks shifted windows with -inf instead of -100: exact
zeros instead of float32 subnormals (exp(-100)), which slow CPU matrix products about tenfold.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from agileir.models.windows import MASK_VALUE, is_exporting

IMPLS = ("auto", "recompute", "eager", "chunked", "sdpa", "fused")
KERNELS = ("eager", "chunked", "sdpa", "fused")
#: spellings of earlier versions, still read from configurations and weights files
LEGACY_IMPLS = {"lean": "recompute", "fast": "sdpa"}


@dataclass(frozen=True)
class AttentionPlan:
    """What one transformer block does in the current forward pass."""

    kernel: str  # one of KERNELS
    recompute: bool  # keep the block input only; recompute the attention branch in backward


def canonical_impl(impl: str) -> str:
    """``impl`` in today's vocabulary; an earlier spelling is translated with a DeprecationWarning."""
    if impl in LEGACY_IMPLS:
        new = LEGACY_IMPLS[impl]
        warnings.warn(f"attention_impl {impl!r} is now called {new!r}", DeprecationWarning, stacklevel=3)
        return new
    return impl


def is_official(attention: str, impl: str) -> bool:
    """True for SwinIR's official math (the port's default): eager kernel and the -100 mask."""
    return attention == "window" and impl in ("auto", "eager")


def mask_value(attention: str, impl: str) -> float:
    """The additive value of masked token pairs in shifted windows."""
    return MASK_VALUE if is_official(attention, impl) else float("-inf")


def plan_attention(attention: str, impl: str, *, device_type: str, training: bool, grad_enabled: bool,
                   grad_checkpoint: bool = False) -> AttentionPlan:
    """The plan for a block in this forward pass (see the module docstring for the policies).

    ``training`` is the module's train mode; the recompute applies only when gradients are
    also being recorded, and never inside gradient checkpointing (which already recomputes the
    whole block).
    """
    if impl in KERNELS:
        return AttentionPlan(impl, False)
    if impl == "auto" and attention == "window":
        return AttentionPlan("eager", False)
    if impl not in ("auto", "recompute"):
        raise ValueError(f"attention_impl must be one of {IMPLS}, got {impl!r}")
    if training and grad_enabled and not grad_checkpoint:
        return AttentionPlan("fused" if use_fused(device_type) else "eager", True)
    if grad_enabled:  # eval mode with gradients (attribution, tests): a differentiable kernel
        return AttentionPlan("eager", False)
    # inference: on the CPU the fused kernel wherever it builds (measured faster than SDPA on AVX2,
    # AVX-512 and AMX CPUs); without it SDPA's flash kernel (GSWA's q/k padded to v's width) where
    # that beat the eager kernel; SDPA's fused kernels off the CPU
    if device_type == "cpu":
        if use_fused(device_type):
            return AttentionPlan("fused", False)
        if not cpu_prefers_sdpa():
            return AttentionPlan("eager", False)
    return AttentionPlan("sdpa", False)


def use_fused(device_type: str) -> bool:
    """Whether an auto plan that would run the eager kernel runs the fused CPU kernel instead: on
    the CPU when it is built (or builds now) with its AVX2 path, neither while exporting nor under
    a Python dispatch mode (a FLOP counter must see the model's maths as ATen operations)."""
    if device_type != "cpu" or is_exporting() or _get_current_dispatch_mode() is not None:
        return False
    from agileir.models.attention import fused

    return fused.available() and fused.vectorized()


@functools.lru_cache(maxsize=None)
def cpu_prefers_sdpa() -> bool:
    """Where the fused kernel does not build: True on CPUs with AMX tiles, the one CPU where SDPA's
    flash kernel beat the eager kernel for GSWA's inference; on AVX2 and on AVX-512 CPUs without
    AMX the eager kernel was measured faster."""
    from agileir.runtime import cpu_capabilities

    return cpu_capabilities()["amx"]


__all__ = ["IMPLS", "KERNELS", "LEGACY_IMPLS", "AttentionPlan", "canonical_impl", "is_official", "mask_value",
           "plan_attention", "cpu_prefers_sdpa", "use_fused"]
