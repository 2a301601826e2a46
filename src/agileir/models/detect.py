"""Recognising a model from its tensors: SwinIR or AgileIR, and every hyper-parameter.

Kept apart from the network's definition (as spandrel separates detection from architectures):
an official SwinIR checkpoint carries no configuration, but its key names and shapes determine
width, depths, heads, window, head and scale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from agileir.errors import ModelLoadError
from agileir.models.config import NetworkConfig

_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def detect_config(sd: Mapping[str, torch.Tensor]) -> NetworkConfig:
    """Recover the network configuration of a SwinIR or AgileIR state dict from its tensors.

    ``img_range`` is not stored in tensors: the official models use 255 only for JPEG artefact
    removal (the only models with 7x7 windows and no upsampler), so that convention decides it.
    """
    if "conv_first.weight" not in sd:
        sample = ", ".join(list(sd)[:3]) or "none"
        raise ModelLoadError(
            "not a SwinIR or AgileIR state dict: expected 'conv_first.weight' and "
            f"'layers.0.residual_group.blocks.0.attn...' keys, found keys such as {sample}")
    if "absolute_pos_embed" in sd:
        raise ModelLoadError("SwinIR with absolute position embedding (ape=True) is not supported")
    embed_dim, in_chans = _shape(sd, "conv_first.weight")[:2]
    depth_of: dict[int, int] = {}
    for key in sd:
        match = _BLOCK_KEY.match(key)
        if match:
            i, j = int(match.group(1)), int(match.group(2))
            depth_of[i] = max(depth_of.get(i, 0), j + 1)
    if not depth_of or sorted(depth_of) != list(range(len(depth_of))):
        raise ModelLoadError("state dict has no 'layers.{i}.residual_group.blocks.{j}' transformer blocks")
    n_layers = len(depth_of)
    depths = tuple(depth_of[i] for i in range(n_layers))
    first = "layers.0.residual_group.blocks.0."
    table_key = first + "attn.relative_position_bias_table"
    if table_key not in sd:
        raise ModelLoadError(f"state dict lacks '{table_key}'")
    heads = tuple(_shape(sd, f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")[1]
                  for i in range(n_layers))
    window = (math.isqrt(_shape(sd, table_key)[0]) + 1) // 2
    mlp_ratio = _shape(sd, first + "mlp.fc1.weight")[0] / embed_dim
    cfg: dict[str, Any] = dict(
        in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window,
        mlp_ratio=mlp_ratio, patch_norm="patch_embed.norm.weight" in sd,
        qkv_bias=(first + "attn.qkv.bias") in sd or (first + "attn.group_qkv.0.bias") in sd,
        resi_connection="3conv" if "conv_after_body.0.weight" in sd else "1conv")

    if first + "attn.group_qkv.0.weight" in sd:
        group_dim = embed_dim // heads[0]
        cfg.update(attention="gswa", key_dim=(_shape(sd, first + "attn.group_qkv.0.weight")[0] - group_dim) // 2,
                   qkv_norm=(first + "attn.qkv_norm.0.weight") in sd,
                   dwconv_kernel=_shape(sd, first + "attn.q_dwconv.0.weight")[-1]
                   if (first + "attn.q_dwconv.0.weight") in sd else 0)
    elif first + "attn.qkv.weight" not in sd:
        raise ModelLoadError(f"state dict has neither SwinIR's '{first}attn.qkv.weight' nor AgileIR's "
                             f"'{first}attn.group_qkv.0.weight'")

    if "conv_up1.weight" in sd:
        cfg.update(upsampler="nearest+conv", scale=4 if "conv_up2.weight" in sd else 2,
                   num_feat=_shape(sd, "conv_up1.weight")[0])
    elif "conv_before_upsample.0.weight" in sd:
        num_feat = _shape(sd, "conv_before_upsample.0.weight")[0]
        convs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"^upsample\.(\d+)\.weight$", k)))
        if not convs:
            raise ModelLoadError("pixelshuffle head without 'upsample.0.weight'")
        scale = 3 if _shape(sd, "upsample.0.weight")[0] == 9 * num_feat else 2 ** len(convs)
        cfg.update(upsampler="pixelshuffle", scale=scale, num_feat=num_feat)
    elif "upsample.0.weight" in sd:
        scale = math.isqrt(_shape(sd, "upsample.0.weight")[0] // in_chans)
        cfg.update(upsampler="pixelshuffledirect", scale=scale)
    elif "conv_last.weight" in sd:
        jpeg = window == 7
        cfg.update(upsampler="none", scale=1, task="jpeg" if jpeg else "denoise", img_range=255.0 if jpeg else 1.0)
    else:
        raise ModelLoadError("state dict has no reconstruction head (no 'upsample.*', 'conv_up1' or 'conv_last')")

    masks = [k for k in sd if k.endswith(".attn_mask")]
    if masks:
        n_windows = _shape(sd, masks[0])[0]
        cfg["img_size"] = math.isqrt(n_windows) * window
    return NetworkConfig(**cfg)


__all__ = ["detect_config"]
