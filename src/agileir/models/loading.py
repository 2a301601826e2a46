"""Loading and saving weights: official SwinIR checkpoints and the project's safetensors.

An official checkpoint carries no configuration, so it is recovered from the tensors alone
(SwinIR's key names and shapes determine width, depths, heads, window, head and scale). The
project's own weights are safetensors files with the configuration as JSON in the metadata.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from agileir.errors import ModelLoadError
from agileir.fileio import atomic_path
from agileir.models.config import NetworkConfig
from agileir.models.network import RestorationTransformer

METADATA_KEY = "agileir.config"
FORMAT_KEY = "agileir.format"
FORMAT_VERSION = "1"
# Buffers that are derived from the configuration; checkpoints may or may not carry them.
DERIVED_SUFFIXES = (".attn_mask", ".relative_position_index")

_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: raw, or wrapped as ``params_ema`` (preferred) / ``params``."""
    if isinstance(obj, Mapping):
        for key in ("params_ema", "params", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError("the file does not hold a state dict of tensors (nor one wrapped as 'params'/'params_ema')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


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


def _load_tensors(model: RestorationTransformer, sd: Mapping[str, torch.Tensor]) -> None:
    """Load parameters strictly; derived buffers are rebuilt by the model, not taken from the file."""
    own = model.state_dict()
    tensors = {k: v for k, v in sd.items() if not k.endswith(DERIVED_SUFFIXES)}
    tensors.update({k: v for k, v in own.items() if k.endswith(DERIVED_SUFFIXES)})
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: file {tuple(tensors[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise ModelLoadError("weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkConfig | None]:
    """Tensors and, for the project's safetensors, the stored configuration."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: not a valid safetensors file ({exc})") from None
        config = None
        if METADATA_KEY in meta:
            import json

            try:
                config = NetworkConfig.from_dict(json.loads(meta[METADATA_KEY]))
            except (ValueError, TypeError) as exc:
                raise ModelLoadError(f"{path}: configuration in the metadata is invalid ({exc})") from None
        return sd, config
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise ModelLoadError(f"cannot read {path} as a PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    return unwrap_state_dict(obj), None


def load_model(source: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> RestorationTransformer:
    """A ready model (eval mode) from a weights path or a state dict.

    Accepts official SwinIR ``.pth`` checkpoints (raw or wrapped in ``params``/``params_ema``,
    any training patch size) and the project's ``.safetensors``. ``overrides`` change options
    that do not affect the weights (e.g. ``attention_impl``, ``use_checkpoint``).
    """
    if isinstance(source, Mapping):
        sd, config = unwrap_state_dict(source), None
    else:
        sd, config = read_checkpoint(source)
    if config is None:
        config = detect_config(sd)
    if overrides:
        config = config.replace(**overrides)
    model = RestorationTransformer(config)
    _load_tensors(model, sd)
    return model.eval()


def save_model(model: RestorationTransformer, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write weights + configuration as safetensors, atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
               if not k.endswith(DERIVED_SUFFIXES)}
    metadata = {METADATA_KEY: model.config.to_json(), FORMAT_KEY: FORMAT_VERSION, **(extra_metadata or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def official_state_dict(model: RestorationTransformer, img_size: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict in the official SwinIR layout, including each shifted block's ``attn_mask``.

    The official code registers the shift mask for its training patch as a buffer, so loading
    there with ``strict=True`` needs it; this network computes masks per input size instead.
    """
    from agileir.models.windows import shift_mask

    config = model.config
    sd = dict(model.state_dict())
    size = img_size or config.img_size
    m = config.window_size
    mask = shift_mask(size, size, m, m // 2)
    for i, depth in enumerate(config.depths):
        for j in range(1, depth, 2):
            sd[f"layers.{i}.residual_group.blocks.{j}.attn_mask"] = mask.clone()
    return sd


def resolve_model(spec: str | os.PathLike, scale: int | None = None, *, pretrained: bool = False,
                  **overrides: Any) -> RestorationTransformer:
    """A model from a preset name, a shipped weights name or a weights path (``--model``).

    ``agileir-s_x2`` (a name of :mod:`agileir.models.zoo`) loads the shipped weights. A preset
    name builds random weights configured by ``scale`` and ``overrides``, unless ``pretrained``
    asks for the preset's shipped weights at ``scale`` (an error when there are none). For
    weights, a ``scale`` other than the one they were trained for is an error, not a silent
    mismatch.
    """
    from agileir.models import zoo
    from agileir.models.presets import PRESETS, build_model

    text = str(spec)
    shipped = zoo.find_weights(text)
    if shipped is None and text.lower() in PRESETS:
        if not pretrained:
            return build_model(text, **({"scale": scale} if scale else {}), **overrides)
        shipped = zoo.require_weights(text, scale or 2)
    path = shipped or Path(text)
    if not path.exists():
        names = ", ".join([*PRESETS, *zoo.shipped_weights()])
        raise ModelLoadError(f"{text!r} is neither a model name ({names}) nor a weights file")
    model = load_model(path, **overrides)
    if scale and model.config.scale != scale:
        raise ModelLoadError(f"{path.name} is a x{model.config.scale} model but scale {scale} was requested; "
                             f"use --scale {model.config.scale} or weights trained for x{scale}")
    return model
