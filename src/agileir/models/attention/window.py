"""SwinIR's window multi-head self-attention (W-MSA / SW-MSA), parameter-compatible with the
official implementation (``qkv``, ``proj``, ``relative_position_bias_table``,
``relative_position_index``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agileir.models.attention.core import RelativePositionBias, aligned_width
from agileir.models.attention.kernels import run_kernel


class WindowAttention(RelativePositionBias):
    """Swin/SwinIR W-MSA: one qkv projection, ``num_heads`` heads of ``dim/num_heads`` channels.

    Input and output: windows of tokens, (B_, N, C); ``mask`` is the (nW, N, N) shift mask or
    None; ``kernel`` is the attention kernel the block's plan chose (models/attention/dispatch.py).
    ``align_values``: on the eager kernel, compute each head's values at an aligned width (zero
    columns past C/h, as GSWA does; the same maths, faster CPU products). Off for the official
    path, which is timed as the official code runs.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 align_values: bool = False) -> None:
        super().__init__(window_size, num_heads)
        self.dim = dim
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.align_values = align_values

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kernel: str = "eager") -> torch.Tensor:
        b_, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        width = aligned_width(d) if self.align_values and kernel == "eager" else d
        if width == d:
            qkv = self.qkv(x).reshape(b_, n, 3, h, d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # (B_, h, N, C/h) each
        else:
            weight, bias = self.qkv.weight, self.qkv.bias
            qk = F.linear(x, weight[:2 * c], None if bias is None else bias[:2 * c])
            qk = qk.reshape(b_, n, 2, h, d).permute(2, 0, 3, 1, 4)
            q, k = qk[0] * self.scale, qk[1]
            v_weight = F.pad(weight[2 * c:].view(h, d, c), (0, 0, 0, width - d)).reshape(h * width, c)
            v_bias = None if bias is None else F.pad(bias[2 * c:].view(h, d), (0, width - d)).reshape(-1)
            v = F.linear(x, v_weight, v_bias).view(b_, n, h, width).transpose(1, 2)  # (B_, h, N, width)
        out = run_kernel(kernel, q, k, v, self.relative_position_bias(), mask)[..., :d]
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


__all__ = ["WindowAttention"]
