"""SwinIR's window multi-head self-attention (W-MSA / SW-MSA), parameter-compatible with the
official implementation (``qkv``, ``proj``, ``relative_position_bias_table``,
``relative_position_index``)."""

from __future__ import annotations

import torch
from torch import nn

from agileir.models.attention.core import RelativePositionBias
from agileir.models.attention.kernels import run_kernel


class WindowAttention(RelativePositionBias):
    """Swin/SwinIR W-MSA: one qkv projection, ``num_heads`` heads of ``dim/num_heads`` channels.

    Input and output: windows of tokens, (B_, N, C); ``mask`` is the (nW, N, N) shift mask or
    None; ``kernel`` is the attention kernel the block's plan chose (models/attention/dispatch.py).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__(window_size, num_heads)
        self.dim = dim
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kernel: str = "eager") -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # (B_, h, N, C/h) each
        out = run_kernel(kernel, q, k, v, self.relative_position_bias(), mask)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


__all__ = ["WindowAttention"]
