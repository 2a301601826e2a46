"""Model size and compute: parameter counts and multiply-adds for a given output size.

Multiply-adds are counted by PyTorch's FlopCounterMode on a "meta" copy of the model (shapes
only, no memory or compute), so they follow the real forward pass, attention matmuls included.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


def count_parameters(model: nn.Module, include_bias_tables: bool = True) -> int:
    """Number of trainable parameters; optionally without the relative-position bias tables."""
    return sum(p.numel() for n, p in model.named_parameters()
               if include_bias_tables or not n.endswith("relative_position_bias_table"))


@contextlib.contextmanager
def model_widths(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its attention values at the model's own width, not the eager paths' aligned
    (zero-padded) one, so that work counted inside is the model's maths."""
    aligned = [m for m in model.modules() if getattr(m, "align_values", False)]
    for module in aligned:
        module.align_values = False
    try:
        yield model
    finally:
        for module in aligned:
            module.align_values = True


def multiply_adds(model: nn.Module, out_height: int = 720, out_width: int = 1280) -> dict[str, int]:
    """Multiply-accumulate operations of one forward pass producing an out_height x out_width image.

    Returns {"total", "attention", "layers"}: the attention matmuls (q k^T and A v, batched
    matmuls) and everything else (convolutions and linear layers). Pointwise work (softmax,
    LayerNorm, GELU) is not counted, as is usual for MAC figures; published SwinIR figures count
    only the layers. Counted with the eager kernel, whichever kernel the model would run.
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = model.config
    h, w = -(-out_height // config.scale), -(-out_width // config.scale)
    meta = copy.deepcopy(model).to("meta").eval()
    for module in meta.modules():  # the model's maths, not a kernel's padding (SDPA pads GSWA's q/k)
        if hasattr(module, "attention_impl"):
            module.attention_impl = "eager"
    x = torch.empty(1, config.in_chans, h, w, device="meta")
    counter = FlopCounterMode(display=False)
    with model_widths(meta), counter, torch.no_grad():
        meta(x)
    ops = counter.get_flop_counts().get("Global", {})
    attention = sum(v for op, v in ops.items() if "bmm" in str(op)) // 2
    total = counter.get_total_flops() // 2
    return {"total": total, "attention": attention, "layers": total - attention}
