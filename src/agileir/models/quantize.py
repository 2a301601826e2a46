"""int8 post-training quantization for CPU inference: PyTorch's dynamic quantization of the linear layers.

Every ``nn.Linear`` but GSWA's per-group projections (SwinIR's qkv, both models' output
projections and MLPs) becomes :class:`torch.ao.nn.quantized.dynamic.Linear`: int8 weights (per
tensor, symmetric, as PyTorch's default dynamic qconfig), activations quantized per call from
their own range, int32 accumulation on VNNI/AMX, float output. Convolutions, LayerNorms, the
attention maps and the softmax stay float32, and so do GSWA's per-group projections: their
products are C/G = 10 deep, too shallow for int8 units to pay for the per-call quantization, and
int8 layers there would take GSWA off its fused cascade kernel (agileir-s int8 inference took
1.21x the time with them quantized, docs/performance.md). Files written with them quantized
still load as they were written. Being dynamic, it needs no calibration images: the activation
ranges are measured on each input itself. Measured cost on the shipped weights: at most 0.0002 dB
PSNR-Y on Set5/Set14 (docs/performance.md).

Quantized weights are saved as plain tensors in a safetensors file (``<layer>.weight`` int8,
``<layer>.weight_scale``, ``<layer>.weight_zero_point``, ``<layer>.bias``) with
:data:`QUANTIZATION_KEY` in the metadata, so a file round-trips bit for bit without pickles.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn

#: safetensors metadata key naming the quantization of a weights file
QUANTIZATION_KEY = "agileir.quantization"
#: the one scheme written today
DYNAMIC_INT8 = "dynamic-int8"


def _dynamic_linear() -> type:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


@contextlib.contextmanager
def _engine():
    """oneDNN's int8 kernels while packing weights (measured the fastest of PyTorch's engines on
    an AMX/VNNI CPU); the packed weights keep their kernels, the global engine is put back."""
    saved = torch.backends.quantized.engine
    engines = torch.backends.quantized.supported_engines
    for name in ("onednn", "x86", "fbgemm"):
        if name in engines:
            torch.backends.quantized.engine = name
            break
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            yield
    finally:
        torch.backends.quantized.engine = saved


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds int8 dynamic linear layers."""
    linear = _dynamic_linear()
    return any(isinstance(m, linear) for m in model.modules())


def int8_layer_names(model: nn.Module) -> set[str]:
    """The linear layers :func:`quantize_int8` makes int8: all but GSWA's per-group projections."""
    from agileir.models.attention.gswa import GroupShiftedWindowAttention

    groups = {id(lin) for m in model.modules() if isinstance(m, GroupShiftedWindowAttention) for lin in m.group_qkv}
    return {name for name, module in model.named_modules() if type(module) is nn.Linear and id(module) not in groups}


def quantize_int8(model: nn.Module, layers: set[str] | None = None) -> nn.Module:
    """An int8 copy of ``model`` for CPU inference (eval mode); ``model`` itself is left unchanged.

    ``layers``: the names of the linear layers to quantize (those of an int8 file being loaded);
    default :func:`int8_layer_names`.
    """
    if is_quantized(model):
        return model
    source = copy.deepcopy(model).cpu().float().eval()
    names = int8_layer_names(source) if layers is None else set(layers)
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    with _engine():
        quantized = torch.ao.quantization.quantize_dynamic(source, dict.fromkeys(names, qconfig), dtype=torch.qint8)
    quantized.weights_source = getattr(model, "weights_source", None)
    return quantized.eval()


def quantized_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a quantized model as plain (non-quantized) tensors for a safetensors file."""
    linear = _dynamic_linear()
    tensors: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, linear):
            weight = module.weight()
            if weight.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                raise ValueError(f"{name}: only per-tensor int8 weights are saved, got {weight.qscheme()}")
            tensors[f"{name}.weight"] = weight.int_repr().contiguous()
            tensors[f"{name}.weight_scale"] = torch.tensor(weight.q_scale(), dtype=torch.float64)
            tensors[f"{name}.weight_zero_point"] = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
            bias = module.bias()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().contiguous()
            skip.add(name + ".")
    for key, value in model.state_dict().items():
        if any(key.startswith(prefix) for prefix in skip) or not isinstance(value, torch.Tensor):
            continue
        tensors[key] = value.detach().contiguous()
    return tensors


def split_quantized(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """A quantized file's tensors split into float tensors (loaded as usual, with the int8
    weights stood in by zeros of their shape) and per-layer int8 parts."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key in sd:
        if key.endswith(".weight_scale"):
            name = key[: -len(".weight_scale")]
            layers[name] = {"weight": sd[f"{name}.weight"], "scale": sd[key],
                            "zero_point": sd[f"{name}.weight_zero_point"], "bias": sd.get(f"{name}.bias")}
    floats = {k: v for k, v in sd.items() if not k.endswith((".weight_scale", ".weight_zero_point"))}
    for name, parts in layers.items():
        floats[f"{name}.weight"] = torch.zeros(parts["weight"].shape, dtype=torch.float32)
    return floats, layers


def apply_quantized(model: nn.Module, layers: dict[str, dict[str, torch.Tensor]]) -> nn.Module:
    """``quantize_int8(model)`` with the stored int8 weights put in place of the re-quantized ones."""
    quantized = quantize_int8(model, layers=set(layers))
    modules = dict(quantized.named_modules())
    linear = _dynamic_linear()
    found = {name for name, m in modules.items() if isinstance(m, linear)}
    if found != set(layers):
        missing = sorted(found - set(layers)) or sorted(set(layers) - found)
        raise ValueError(f"the int8 layers of the file do not match the model (e.g. {missing[0]})")
    with _engine():
        for name, parts in layers.items():
            weight = torch._make_per_tensor_quantized_tensor(
                parts["weight"].to(torch.int8), float(parts["scale"]), int(parts["zero_point"]))
            bias = parts["bias"]
            modules[name].set_weight_bias(weight, None if bias is None else bias.float())
    return quantized


__all__ = ["QUANTIZATION_KEY", "DYNAMIC_INT8", "int8_layer_names", "is_quantized", "quantize_int8", "quantized_tensors",
           "split_quantized", "apply_quantized"]
