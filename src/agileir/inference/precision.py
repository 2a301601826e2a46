"""Which numeric precision an inference runs in, and the model prepared for it.

``fp32`` is the reference. ``bf16`` runs under autocast: matrix products and convolutions in
bf16 (on AMX / AVX-512 BF16 units on CPU, tensor cores on GPU), softmax, LayerNorm and the
residual stream in float32. ``int8`` is dynamic quantization of the linear layers
(:mod:`agileir.models.quantize`), CPU only. ``auto`` is the fastest of these whose measured
quality cost is nil within the bound of docs/performance.md: bf16 where the device has bf16
units, else fp32.
"""

from __future__ import annotations

import contextlib

import torch

from agileir.errors import ConfigError
from agileir.models.quantize import is_quantized, quantize_int8
from agileir.runtime import autocast, check_inference_precision, resolve_inference_precision


def prepare_precision(model: torch.nn.Module, precision: str | None, device: torch.device
                      ) -> tuple[torch.nn.Module, str]:
    """``(model to run, resolved precision)``; int8 gets an int8 copy, the others ``model`` itself.

    ``None`` is the model's own precision: fp32, or int8 for a model loaded from an int8 weights
    file. Such a model runs in int8 only (``None``, ``auto`` or ``int8``); asking it for another
    precision is refused in one line, since its float weights are gone.
    """
    if precision is not None:
        check_inference_precision(precision)
    if is_quantized(model):
        if precision not in (None, "auto", "int8"):
            raise ConfigError(f"these weights are int8 (quantized); they run with precision int8, not {precision}")
        if device.type != "cpu":
            raise ConfigError("int8 weights run on the CPU only; use --device cpu")
        return model, "int8"
    precision = resolve_inference_precision(precision or "fp32", device)
    if precision == "int8":
        return quantize_int8(model), precision
    return model, precision


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass of a prepared model runs in (bf16 autocast, or nothing)."""
    return autocast(device, "bf16") if precision == "bf16" else contextlib.nullcontext()


__all__ = ["prepare_precision", "precision_context"]
