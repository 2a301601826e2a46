"""The restoration network shared by SwinIR and AgileIR (docs/architecture.md).

mean shift -> 3x3 conv -> K residual groups (L transformer blocks, a conv, a residual) ->
LayerNorm -> conv + long skip -> head -> mean back. The two families differ only in the
attention module each transformer block holds (``config.attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agileir.errors import ImageError
from agileir.models import fused_mlp, heads, token_norm
from agileir.models.attention.dispatch import is_official, mask_value, plan_attention
from agileir.models.attention.gswa import GroupShiftedWindowAttention
from agileir.models.attention.window import WindowAttention
from agileir.models.config import NetworkConfig
from agileir.models.recompute import lean_mlp, recompute_branch
from agileir.models.windows import (ShiftMaskCache, is_exporting, too_small_for_window, traceable_shift_mask,
                                    shifted_window_partition, shifted_window_reverse, window_partition,
                                    window_reverse, window_token_order)
from agileir.runtime import compute_dtype

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, as in SwinIR


def build_attention(config: NetworkConfig, num_heads: int) -> nn.Module:
    """The attention module of one transformer block, chosen by ``config.attention``."""
    if config.attention == "window":
        return WindowAttention(config.embed_dim, config.window_size, num_heads, config.qkv_bias,
                               align_values=not is_official(config.attention, config.attention_impl))
    return GroupShiftedWindowAttention(
        config.embed_dim, config.window_size, num_heads, key_dim=config.key_dim,
        dwconv_kernel=config.dwconv_kernel, activation=config.gswa_activation, qkv_norm=config.qkv_norm,
        zero_init_proj=config.zero_init_proj, qkv_bias=config.qkv_bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x + self(y)`` in one pass over the feature map (and one in backward): the per-sample
        factor keep / (1 - p) is formed first, on B numbers, and applied in the same pass
        (:func:`token_norm.scaled_residual`). The factor is in x's dtype (the float32 residual
        stream): in bf16, a branch's dtype under autocast, 1 / (1 - p) is off by up to 0.4% (1 for
        p below 1/256; 1.0078 for p = 0.0043), a bias on every kept branch, not rounding noise.
        The same random draw as :meth:`forward`; equal to ``x + self(y)`` up to float rounding."""
        if self.p == 0.0 or not self.training:
            return x + y
        keep = x.new_empty((x.shape[0],)).bernoulli_(1 - self.p).div_(1 - self.p)
        return token_norm.scaled_residual(x, y, keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """``x + attn(LN(x))`` over (shifted) windows, then ``x + MLP(LN(x))``; x is (B, H, W, C)."""

    def __init__(self, config: NetworkConfig, num_heads: int, shift: int, drop_path: float) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window_size, self.shift = config.window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = build_attention(config, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

        self.attention, self.attention_impl = config.attention, config.attention_impl
        self.grad_checkpoint = config.grad_checkpoint  # the whole block is recomputed: no recompute inside

    def plan(self, x: torch.Tensor):
        """This forward pass's attention plan (kernel, recompute), see models/attention/dispatch.py."""
        return plan_attention(self.attention, self.attention_impl, device_type=x.device.type,
                              training=self.training, grad_enabled=torch.is_grad_enabled(),
                              grad_checkpoint=self.grad_checkpoint)

    def uses_recompute(self) -> bool:
        """True when a forward pass now would take the recompute path (CPU plan)."""
        return plan_attention(self.attention, self.attention_impl, device_type="cpu", training=self.training,
                              grad_enabled=torch.is_grad_enabled(), grad_checkpoint=self.grad_checkpoint).recompute

    def _branch_parameters(self) -> list[torch.Tensor]:
        return [p for p in (*self.norm1.parameters(), *self.attn.parameters()) if p.requires_grad]

    def attention_branch(self, x: torch.Tensor, mask: torch.Tensor | None, kernel: str = "eager") -> torch.Tensor:
        """attn(LN(x)) over (shifted) windows, (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        if is_official(self.attention, self.attention_impl):  # the official code's rolls (its speed too)
            y = self.norm1(x)
            if self.shift:
                y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            y = self.attn(window_partition(y, self.window_size), mask if self.shift else None, kernel=kernel)
            y = window_reverse(y, self.window_size, h, w)
            return torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2)) if self.shift else y
        y = self.attn(self._normed_windows(x), mask if self.shift else None, kernel=kernel)  # (B*nW, N, C)
        return shifted_window_reverse(y, self.window_size, h, w, self.shift)

    def _normed_windows(self, x: torch.Tensor) -> torch.Tensor:
        """LN(x) in (shifted) window order, (B, H, W, C) -> (B*nW, N, C): the roll and partition as
        one gather, and where the kernels run (:func:`token_norm.trainable`) LayerNorm and gather
        in one pass forward and one backward."""
        b, h, w, c = x.shape
        if token_norm.trainable(x, self.norm1):
            order, _ = window_token_order(h, w, self.window_size, self.shift, x.device)
            norm = self.norm1
            return token_norm.layer_norm(x, norm.weight, norm.bias, norm.eps, order).view(-1, self.window_size ** 2, c)
        return shifted_window_partition(self.norm1(x), self.window_size, self.shift)

    def _fused_inference(self, x: torch.Tensor) -> bool:
        """CPU inference off SwinIR's official path (whose figures stand for the official code) with
        the LayerNorms, gathers and residual adds fused (models/token_norm.py) and, where the MLP is
        two float linears, its GELU and add fused into its products (models/fused_mlp.py)."""
        return (not self.training and not is_official(self.attention, self.attention_impl)
                and token_norm.available(x, self.norm1, self.norm2))

    def _fused_forward(self, x: torch.Tensor, mask: torch.Tensor | None, kernel: str) -> torch.Tensor:
        """:meth:`forward` at inference with the fused kernels: the same function, fewer passes."""
        b, h, w, c = x.shape
        order, inverse = window_token_order(h, w, self.window_size, self.shift, x.device)
        # the normed windows are only the attention's argument, and the attention's output is
        # released before the MLP: neither outlives its use (peak memory as the unfused block's)
        y = self.attn(token_norm.norm_gather(x, self.norm1, order).view(-1, self.window_size ** 2, c),
                      mask if self.shift else None, kernel=kernel)  # (B*nW, N, C), window order
        fused_products = fused_mlp.available(x, self.mlp)  # not for an int8 MLP
        dtype = fused_mlp.compute_dtype_for(x) if fused_products else torch.float32
        x, normed = token_norm.add_norm(x, y, inverse, self.norm2, dtype)
        del y
        if fused_products:
            return fused_mlp.mlp_residual(normed, self.mlp, x, in_place=True)
        return token_norm.add_(x, self.mlp(normed))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        plan = self.plan(x)
        if plan.recompute:
            y = recompute_branch(lambda t: self.attention_branch(t, mask, plan.kernel), x, self._branch_parameters,
                                 outputs_unread=True)  # only permutations follow the attention module
            x = self.drop_path.residual(x, y)
            return self.drop_path.residual(x, lean_mlp(x, self.norm2, self.mlp))
        if self._fused_inference(x):
            return self._fused_forward(x, mask, plan.kernel)
        x = x + self.drop_path(self.attention_branch(x, mask, plan.kernel))
        h = self.norm2(x)
        # CPU inference off SwinIR's official path (whose figures stand for the official code):
        # GELU and the residual add fused into the MLP's products (models/fused_mlp.py)
        if (not self.training and not is_official(self.attention, self.attention_impl)
                and fused_mlp.available(h, self.mlp)):
            return fused_mlp.mlp_residual(h, self.mlp, x)
        return x + self.drop_path(self.mlp(h))


class BlockSequence(nn.Module):
    """The transformer blocks of one residual group (SwinIR's ``residual_group``)."""

    def __init__(self, config: NetworkConfig, num_heads: int, depth: int, drop_paths: list[float]) -> None:
        super().__init__()
        shift = config.window_size // 2
        self.blocks = nn.ModuleList(
            TransformerBlock(config, num_heads, 0 if i % 2 == 0 else shift, drop_paths[i]) for i in range(depth))
        self.grad_checkpoint = config.grad_checkpoint

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = recompute_branch(lambda t, b=block: b(t, mask), x,
                                     lambda b=block: [p for p in b.parameters() if p.requires_grad], preserve_rng=True)
            else:
                x = block(x, mask)
        return x


class ResidualGroup(nn.Module):
    """SwinIR's RSTB: blocks, a conv, and a residual around both."""

    def __init__(self, config: NetworkConfig, num_heads: int, depth: int, drop_paths: list[float]) -> None:
        super().__init__()
        self.residual_group = BlockSequence(config, num_heads, depth, drop_paths)
        self.conv = heads.residual_conv(config.embed_dim, config.resi_connection)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.residual_group(x, mask).permute(0, 3, 1, 2)
        return self.conv(y).permute(0, 2, 3, 1) + x


class PatchEmbed(nn.Module):
    """Optional LayerNorm on the shallow features as tokens (SwinIR's ``patch_embed``)."""

    def __init__(self, dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def build_head(config: NetworkConfig) -> nn.Module:
    out_ch, dim = config.in_chans, config.embed_dim
    if config.upsampler == "pixelshuffle":
        return heads.PixelShuffleHead(dim, config.num_feat, config.scale, out_ch)
    if config.upsampler == "pixelshuffledirect":
        return heads.PixelShuffleDirectHead(dim, config.scale, out_ch)
    if config.upsampler == "nearest+conv":
        return heads.NearestConvHead(dim, config.num_feat, config.scale, out_ch)
    return heads.ResidualHead(dim, out_ch)


class RestorationTransformer(nn.Module):
    """SwinIR's network with a pluggable window attention; see :class:`NetworkConfig`.

    ``forward`` takes (B, C, H, W) images in [0, 1] of any size (padded internally to the window
    multiple by reflection, the output cropped back) and returns (B, C, scale*H, scale*W).
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.register_buffer("mean", torch.tensor(RGB_MEAN if config.in_chans == 3 else (0.0,)).view(1, -1, 1, 1),
                             persistent=False)
        self.conv_first = nn.Conv2d(config.in_chans, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim, config.patch_norm)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        self.layers = nn.ModuleList()
        start = 0
        for depth, num_heads in zip(config.depths, config.num_heads):
            self.layers.append(ResidualGroup(config, num_heads, depth, rates[start:start + depth]))
            start += depth
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = heads.residual_conv(dim, config.resi_connection)
        head = build_head(config)
        # The head's layers sit at the top level under the official SwinIR names
        # (conv_before_upsample, upsample, conv_last, ...); the head object only keeps the wiring.
        for name, module in head.named_children():
            self.add_module(name, module)
        object.__setattr__(self, "_head", head)
        self._masks = ShiftMaskCache(config.window_size, config.window_size // 2)
        self._masks.value = mask_value(config.attention, config.attention_impl)
        self.apply(_init_weights)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features of (B, C, H, W) shallow features, H and W multiples of the window."""
        h, w = x.shape[-2:]
        if is_exporting():  # symbolic sizes: no int-keyed cache
            mask = traceable_shift_mask(h, w, self.config.window_size, self.config.window_size // 2,
                                        x.device, self._masks.value)
        else:
            mask = self._masks.get(h, w, x.device, compute_dtype(x))  # values 0, -100, -inf: exact in bf16
        t = self.patch_embed(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            t = layer(t, mask)
        return self.norm(t).permute(0, 3, 1, 2)

    def pad_to_window(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.config.window_size
        pad_h, pad_w = (-h) % m, (-w) % m
        if is_exporting():  # symbolic sizes: pad unconditionally (a zero pad is a no-op)
            return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        if too_small_for_window(h, w, m):
            raise ImageError(
                f"input {w}x{h} is too small for this model's {m}x{m} windows; "
                f"use images at least {m // 2 + 1} pixels on each side")
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ImageError(f"expected a (B, {self.config.in_chans}, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x = self.pad_to_window(x)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.config.img_range
        # The residual stream keeps the input's dtype: under CPU bf16 autocast conv_first returns
        # bf16, every LayerNorm would then see bf16 input, and PyTorch's CPU LayerNorm backward sums
        # the weight/bias gradients of a bf16 input over the tokens in bf16 (70-90% off at training
        # sizes; CUDA autocast runs layer_norm in fp32). Matmuls and convolutions still run in bf16.
        shallow = self.conv_first(x).to(x.dtype)
        feat = self.conv_after_body(self.forward_features(shallow)) + shallow
        y = self._head(feat, x)
        y = y / self.config.img_range + mean
        s = self.config.scale
        return y[:, :, :h * s, :w * s]

    def extra_repr(self) -> str:
        c = self.config
        return f"attention={c.attention}, scale={c.scale}, upsampler={c.upsampler}"


def _init_weights(m: nn.Module) -> None:
    """SwinIR's initialisation: truncated normal for linear layers, unit LayerNorms; a layer
    marked ``zero_init`` (GSWA's ``zero_init_proj``) starts at zero."""
    if isinstance(m, nn.Linear):
        if getattr(m, "zero_init", False):
            nn.init.zeros_(m.weight)
        else:
            nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
