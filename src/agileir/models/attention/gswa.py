"""Group Shifted Window Attention (GSWA), the attention of AgileIR (docs/architecture.md).

The C channels are split into G groups, one head each. Groups run in cascade: group j attends
over ``X_j + Y_{j-1}`` (its own channel slice plus the previous group's output), with small
queries and keys (``key_dim``, the "projection re-allocation"), values of width C/G, an optional
depthwise convolution on the queries over the M x M window grid, and its own relative position
bias. The concatenated group outputs pass an activation and one output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agileir.models.attention import fused
from agileir.models.attention.core import (RelativePositionBias, add_bias_and_mask, add_mask, add_mask_,
                                           aligned_width)
from agileir.models.attention.kernels import default_chunk_size, run_kernel
from agileir.models.windows import is_exporting
from agileir.models.recompute import values_unused

#: Size of one group's (windows, N, N) score block per chunk of windows in inference: 1 MiB
#: (64 windows of 8x8) measured fastest of 0.5-4 MiB for the whole cascade on CPU.
WINDOW_CHUNK_BYTES = 1024 * 1024


def group_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                    mask: torch.Tensor | None, start: int = 0) -> torch.Tensor:
    """One group's softmax(q k^T + bias + mask) v; q, k (B_, N, dk), v (B_, N, dv), bias (N, N).

    ``start``: the index in B_ of the first row of q (rows of a chunk of windows), for the mask.
    The bias is added inside the batched matmul (baddbmm) and, without autograd, the mask in
    place: one N x N pass less than separate adds, measured 30% faster on CPU (1024 windows, N=64).
    """
    logits = torch.baddbmm(bias.unsqueeze(0), q, k.transpose(1, 2))  # (B_, N, N)
    if mask is not None:  # in place unless autograd records the scores (core.add_mask)
        add = add_mask if logits.requires_grad else add_mask_
        logits = add(logits.unsqueeze(1), mask, start).squeeze(1)
    return torch.softmax(logits, dim=-1) @ v


class GroupShiftedWindowAttention(RelativePositionBias):
    """GSWA over windows: (B_, N, C) -> (B_, N, C); ``mask`` is the (nW, N, N) shift mask or None.

    Options (the paper leaves them open; docs/architecture.md): ``key_dim`` (q/k width per group), ``dwconv_kernel`` (0 turns
    the depthwise conv on q off), ``activation`` ("relu" or "identity" before the output
    projection), ``qkv_norm`` (LayerNorm on each group's input before its projection),
    ``zero_init_proj`` (start the output projection at zero so a block starts as identity).
    ``align_values`` (attribute, default True): the eager path computes v at
    :func:`aligned_width` columns; off, at C/G (FLOP counts of the model's own maths).
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
        self.align_values = True
        self.proj.zero_init = zero_init_proj  # applied by the network's one initialisation pass
        if zero_init_proj:
            nn.init.zeros_(self.proj.weight)  # standalone use starts at zero too; the pass is idempotent
            nn.init.zeros_(self.proj.bias)

    def group_projections(self, value_width: int | None = None) -> list:
        """Per group, what :meth:`group_qkv_projection` applies: a float linear's (weight, bias),
        with the value rows zero-padded to ``value_width`` columns when that is wider than C/G, or
        the module itself (an int8 layer, whose values are padded after the call)."""
        pad = max(0, (value_width or self.group_dim) - self.group_dim)
        projections = []
        for lin in self.group_qkv:
            if type(lin) is nn.Linear and pad:
                bias = None if lin.bias is None else F.pad(lin.bias, (0, pad))
                projections.append((F.pad(lin.weight, (0, 0, 0, pad)), bias))
            else:
                projections.append(lin)
        return projections

    def group_qkv_projection(self, j: int, z: torch.Tensor,
                             projection=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group j's q (pre-scaled, after the DW conv), k, v from its input z: (B_, N, C/G).

        ``projection``: group j's entry of :meth:`group_projections` (v as wide as it makes it);
        default the plain layer, v of C/G columns.
        """
        if self.qkv_norm is not None:
            z = self.qkv_norm[j](z)
        dk = self.key_dim
        if projection is None or isinstance(projection, nn.Module):
            qkv = (projection or self.group_qkv[j])(z)
        else:
            qkv = F.linear(z, *projection)
        q, k, v = qkv.split([dk, dk, qkv.shape[-1] - 2 * dk], dim=-1)
        if self.q_dwconv is None:
            return q * self.scale, k, v
        # the scale folded into the depthwise conv: one pass over q less
        conv = self.q_dwconv[j]
        b_, n, d = q.shape
        m = self.window_size
        grid = q.transpose(1, 2).reshape(b_, d, m, m)
        bias = None if conv.bias is None else conv.bias * self.scale
        q = F.conv2d(grid, conv.weight * self.scale, bias, padding=conv.padding, groups=conv.groups)
        return q.reshape(b_, d, n).transpose(1, 2), k, v

    def cascade_parameters(self) -> tuple | None:
        """The groups' parameters as :func:`~agileir.models.attention.fused.fused_gswa_cascade`
        takes them (the query scale folded into the depthwise conv), or None where the fused
        cascade does not apply: not built, a LayerNorm on the group inputs, int8 projections."""
        if (self.qkv_norm is not None or any(type(lin) is not nn.Linear for lin in self.group_qkv)
                or not fused.cascade_available()):
            return None
        weight = torch.stack([lin.weight for lin in self.group_qkv])
        qkv_bias = (weight.new_zeros(weight.shape[:2]) if self.group_qkv[0].bias is None
                    else torch.stack([lin.bias for lin in self.group_qkv]))
        if self.q_dwconv is None:
            return weight, qkv_bias, None, None
        dw_weight = torch.stack([conv.weight.squeeze(1) for conv in self.q_dwconv]) * self.scale
        dw_bias = None if self.q_dwconv[0].bias is None else torch.stack([c.bias for c in self.q_dwconv]) * self.scale
        return weight, qkv_bias, dw_weight, dw_bias

    def _windows(self, x: torch.Tensor, mask: torch.Tensor | None, start: int, bias: torch.Tensor,
                 projections: list, value_width: int, kernel: str, cascade: tuple | None = None) -> torch.Tensor:
        """The module's output for rows ``start ..`` of B_ (x: those rows), on the eager or the
        fused kernel (``cascade``: the whole cascade fused, :meth:`cascade_parameters`); a chunk
        of rows lies inside one period of windows or covers whole periods."""
        if kernel == "fused" and mask is not None:  # the mask rows of this chunk, as the kernel indexes them
            s0 = start % mask.shape[0]
            mask = mask[s0:s0 + min(x.shape[0], mask.shape[0])]
        if cascade is not None:
            relu = type(self.act) is nn.ReLU  # fused into the cascade
            if (values_unused() and torch.is_grad_enabled() and (relu or type(self.act) is nn.Identity)
                    and type(self.proj) is nn.Linear):  # a training recompute: only the gradients
                return fused.gswa_cascade_projection_gradients(x, *cascade, bias, mask, self.window_size, self.scale,
                                                               relu, self.proj.weight, self.proj.bias)
            # bf16 autocast inference on an AVX-512 BF16 / AMX CPU: the cascade's products on the bf16 units
            run = (fused.fused_gswa_cascade_bf16 if fused.cascade_bf16_applies(x, self.key_dim, self.group_dim)
                   else fused.fused_gswa_cascade)
            y = run(x, *cascade, bias, mask, self.window_size, self.scale, relu)
            return self.proj(y if relu else self.act(y))
        outputs, y = [], None
        for j, x_j in enumerate(x.split(self.group_dim, dim=-1)):
            z = x_j if y is None else x_j + y
            q, k, v = self.group_qkv_projection(j, z, projections[j])
            if kernel == "fused":
                y = run_kernel("fused", q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), bias[j:j + 1], mask).squeeze(1)
            else:
                if v.shape[-1] < value_width:  # an int8 layer: padded after the call
                    v = F.pad(v, (0, value_width - v.shape[-1]))
                y = group_attention(q, k, v, bias[j], mask, start)[..., :self.group_dim]
            outputs.append(y)
        return self.proj(self.act(torch.cat(outputs, dim=-1)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kernel: str = "eager") -> torch.Tensor:
        bias = self.relative_position_bias()  # (G, N, N)
        if kernel in ("eager", "fused"):
            # eager: v at an aligned width. Without autograd, cache-sized chunks of windows run the
            # whole cascade each, so no (all windows, N, N) tensor exists (docs/performance.md)
            align = kernel == "eager" and self.align_values
            width = aligned_width(self.group_dim) if align else self.group_dim
            # float32 inputs only (float64 keeps the per-group kernel's double path); under bf16
            # autocast too: the groups' projections (K = C/G) gain nothing from bf16 units, and on an
            # AVX-512 BF16 CPU the cascade made agileir-s bf16 inference 0.58x its per-group time.
            # On an AVX-512 BF16 or AMX CPU, bf16 inference takes the cascade's bf16 kernel (see _windows)
            cascade = (self.cascade_parameters() if kernel == "fused" and x.dtype == torch.float32
                       else None)
            projections = self.group_projections(width) if cascade is None else []
            # whole: with autograd, in an exported graph, and on meta tensors (FLOP counting), which
            # hold no memory, so chunks would only multiply the counter's dispatch calls; and on the
            # fused cascade, which holds one window at a time in cache anyway: chunks there only add
            # calls and a copy of each chunk's output (all windows at once: agileir-s inference
            # 0.93-0.96x in bf16, 0.97x in fp32, AMX CPU; docs/performance.md)
            b_, n, _ = x.shape
            whole = torch.is_grad_enabled() or is_exporting() or x.is_meta or cascade is not None
            rows = b_ if whole else default_chunk_size(b_, 1, n, 1 if mask is None else mask.shape[0],
                                                       chunk_bytes=WINDOW_CHUNK_BYTES)
            if rows >= b_:
                return self._windows(x, mask, 0, bias, projections, width, kernel, cascade)
            out = None
            for s0 in range(0, b_, rows):
                y = self._windows(x[s0:s0 + rows], mask, s0, bias, projections, width, kernel, cascade)
                if out is None:  # in the chunks' dtype (bf16 under autocast)
                    out = y.new_empty((b_, n, y.shape[-1]))
                out[s0:s0 + rows] = y
            return out
        outputs = []
        y = None
        for j, x_j in enumerate(x.split(self.group_dim, dim=-1)):
            z = x_j if y is None else x_j + y
            q, k, v = self.group_qkv_projection(j, z)
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


__all__ = ["WINDOW_CHUNK_BYTES", "group_attention", "GroupShiftedWindowAttention"]
