"""SwinIR's window multi-head self-attention (W-MSA / SW-MSA), parameter-compatible with the
official implementation (``qkv``, ``proj``, ``relative_position_bias_table``,
``relative_position_index``)."""

from __future__ import annotations

import torch
from torch import nn

from agileir.models.windows import relative_position_index


def add_bias_and_mask(logits: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """logits (B_, h, N, N) + bias (h, N, N) [+ mask (nW, N, N) broadcast over images and heads]."""
    logits = logits + bias.unsqueeze(0)
    if mask is None:
        return logits
    b_, h, n, _ = logits.shape
    nw = mask.shape[0]
    logits = logits.view(b_ // nw, nw, h, n, n) + mask.unsqueeze(1).unsqueeze(0).to(logits.dtype)
    return logits.view(b_, h, n, n)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
           mask: torch.Tensor | None, impl: str = "eager") -> torch.Tensor:
    """softmax(q k^T + bias + mask) v for pre-scaled q; shapes (B_, h, N, d) -> (B_, h, N, dv).

    ``impl`` picks the kernel: "eager" keeps the N x N probabilities for backward (what the
    official SwinIR does); the others live in :mod:`agileir.models.kernels`.
    """
    if impl == "eager":
        probs = add_bias_and_mask(q @ k.transpose(-2, -1), bias, mask).softmax(dim=-1)
        return probs @ v
    from agileir.models import kernels

    return kernels.window_attention(q, k, v, bias, mask, impl=impl)


def resolve_impl(impl: str, device: torch.device, fast_inference: bool = True) -> str:
    """The attention kernel to run now for ``impl`` ("auto", "eager", "lean" or "fast").

    "auto" is SDPA ("fast") for inference on CUDA and batched-matmul "eager" otherwise: on CPU,
    eager with an exact-zero mask measured 2x faster than SDPA for GSWA's one-head groups
    (1024 windows, N=64: 41 ms vs 92 ms). Training memory is handled a level up, by the block's
    lean policy (models/lean.py); "lean" here is the flash-style kernel of models/kernels.py.
    """
    if impl == "auto":
        return "fast" if fast_inference and device.type == "cuda" and not torch.is_grad_enabled() else "eager"
    return impl


class RelativePositionBias(nn.Module):
    """A learnable ((2M-1)^2, heads) table, gathered into an (heads, N, N) bias."""

    def __init__(self, window_size: int, num_heads: int, persistent_index: bool = True) -> None:
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # SwinIR's state dict carries the (derived) index; the official key layout keeps it. Other
        # attentions leave it out, so detectors keyed on it do not mistake them for SwinIR.
        self.register_buffer("relative_position_index", relative_position_index(window_size),
                             persistent=persistent_index)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if "relative_position_index" in self._non_persistent_buffers_set:
            state_dict.pop(prefix + "relative_position_index", None)  # derived; older files carry it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table on every call.

        Not cached: edits through ``.data`` (as EMA code and user scripts do) change the table
        without bumping its version counter, so no cache key can see them. The gather is
        heads * N * N elements per block, measured below timing noise (docs/performance.md).
        """
        n = self.window_size * self.window_size
        table = self.relative_position_bias_table
        bias = table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        return bias if torch.is_grad_enabled() else bias.contiguous()


class WindowAttention(RelativePositionBias):
    """Swin/SwinIR W-MSA: one qkv projection, ``num_heads`` heads of ``dim/num_heads`` channels.

    Input and output: windows of tokens, (B_, N, C); ``mask`` is the (nW, N, N) shift mask or None.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 impl: str = "eager") -> None:
        super().__init__(window_size, num_heads)
        self.dim = dim
        self.scale = (dim // num_heads) ** -0.5
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, impl: str | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        impl = resolve_impl(impl or self.impl, x.device, fast_inference=False)  # SwinIR default: the official math
        out = attend(q, k, v, self.relative_position_bias(), mask, impl)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"
