"""Group Shifted Window Attention (GSWA), the attention of AgileIR (docs/architecture.md).

The C channels are split into G groups, one head each. Groups run in cascade: group j attends
over ``X_j + Y_{j-1}`` (its own channel slice plus the previous group's output), with small
queries and keys (``key_dim``, the "projection re-allocation"), values of width C/G, an optional
depthwise convolution on the queries over the M x M window grid, and its own relative position
bias. The concatenated group outputs pass an activation and one output projection.
"""

from __future__ import annotations

import torch
from torch import nn

from agileir.models.attention.core import RelativePositionBias, add_bias_and_mask, add_mask_
from agileir.models.attention.kernels import run_kernel


def group_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """One group's softmax(q k^T + bias + mask) v; q, k (B_, N, dk), v (B_, N, dv), bias (N, N).

    The bias is added inside the batched matmul (baddbmm) and the mask in place: one N x N
    pass less than separate adds, measured 30% faster on CPU (1024 windows, N=64).
    """
    logits = torch.baddbmm(bias.unsqueeze(0), q, k.transpose(1, 2))  # (B_, N, N)
    if mask is not None:
        logits = add_mask_(logits.unsqueeze(1), mask).squeeze(1)
    return torch.softmax(logits, dim=-1) @ v


class GroupShiftedWindowAttention(RelativePositionBias):
    """GSWA over windows: (B_, N, C) -> (B_, N, C); ``mask`` is the (nW, N, N) shift mask or None.

    Options (the paper leaves them open; docs/architecture.md): ``key_dim`` (q/k width per group), ``dwconv_kernel`` (0 turns
    the depthwise conv on q off), ``activation`` ("relu" or "identity" before the output
    projection), ``qkv_norm`` (LayerNorm on each group's input before its projection),
    ``zero_init_proj`` (start the output projection at zero so a block starts as identity).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, key_dim: int = 8,
                 dwconv_kernel: int = 3, activation: str = "relu", qkv_norm: bool = False,
                 zero_init_proj: bool = False, qkv_bias: bool = True) -> None:
        super().__init__(window_size, num_heads, persistent_index=False)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} groups")
        self.dim, self.key_dim = dim, key_dim
        self.group_dim = dim // num_heads
        self.scale = key_dim ** -0.5
        self.group_qkv = nn.ModuleList(
            nn.Linear(self.group_dim, 2 * key_dim + self.group_dim, bias=qkv_bias) for _ in range(num_heads))
        self.qkv_norm = nn.ModuleList(nn.LayerNorm(self.group_dim) for _ in range(num_heads)) if qkv_norm else None
        self.q_dwconv = nn.ModuleList(
            nn.Conv2d(key_dim, key_dim, dwconv_kernel, padding=dwconv_kernel // 2, groups=key_dim)
            for _ in range(num_heads)) if dwconv_kernel else None
        self.act = nn.ReLU() if activation == "relu" else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj.zero_init = zero_init_proj  # applied by the network's one initialisation pass
        if zero_init_proj:
            nn.init.zeros_(self.proj.weight)  # standalone use starts at zero too; the pass is idempotent
            nn.init.zeros_(self.proj.bias)

    def group_qkv_projection(self, j: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group j's q (pre-scaled, after the DW conv), k, v from its input z: (B_, N, C/G)."""
        if self.qkv_norm is not None:
            z = self.qkv_norm[j](z)
        q, k, v = self.group_qkv[j](z).split([self.key_dim, self.key_dim, self.group_dim], dim=-1)
        if self.q_dwconv is not None:
            b_, n, d = q.shape
            m = self.window_size
            grid = q.transpose(1, 2).reshape(b_, d, m, m)
            q = self.q_dwconv[j](grid).reshape(b_, d, n).transpose(1, 2)
        return q * self.scale, k, v

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kernel: str = "eager") -> torch.Tensor:
        bias = self.relative_position_bias()  # (G, N, N)
        outputs = []
        y = None
        for j, x_j in enumerate(x.split(self.group_dim, dim=-1)):
            z = x_j if y is None else x_j + y
            q, k, v = self.group_qkv_projection(j, z)
            if kernel == "eager":  # (B_, N, C/G); the 3-D form of the eager kernel
                y = group_attention(q, k, v, bias[j], mask)
            else:
                y = run_kernel(kernel, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), bias[j:j + 1], mask).squeeze(1)
            outputs.append(y)
        return self.proj(self.act(torch.cat(outputs, dim=-1)))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B_, G, N, N) attention probabilities of every group, for inspection and tests."""
        bias = self.relative_position_bias()
        maps, y = [], None
        for j, x_j in enumerate(x.split(self.group_dim, dim=-1)):
            z = x_j if y is None else x_j + y
            q, k, v = self.group_qkv_projection(j, z)
            probs = add_bias_and_mask((q @ k.transpose(-2, -1)).unsqueeze(1), bias[j:j + 1], mask).softmax(-1)
            y = (probs @ v.unsqueeze(1)).squeeze(1)
            maps.append(probs)
        return torch.cat(maps, dim=1)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, groups={self.num_heads}, "
                f"key_dim={self.key_dim}")


__all__ = ["group_attention", "GroupShiftedWindowAttention"]
