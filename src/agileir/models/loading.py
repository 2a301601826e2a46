"""Reading and writing weights files: official SwinIR checkpoints and the project's safetensors.

An official checkpoint carries no configuration, so it is recognised from its tensors
(:mod:`agileir.models.detect`). The project's own weights are safetensors files with the
configuration as JSON in the metadata. Which model a *name* means is decided one level up, in
:mod:`agileir.models.registry`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from agileir.errors import ModelLoadError
from agileir.fileio import atomic_path
from agileir.models.config import NetworkConfig
from agileir.models.detect import detect_config
from agileir.models.network import RestorationTransformer
from agileir.models.quantize import (DYNAMIC_INT8, QUANTIZATION_KEY, apply_quantized, is_quantized, quantized_tensors,
                                     split_quantized)
from agileir.models.windows import shift_mask

METADATA_KEY = "agileir.config"
FORMAT_KEY = "agileir.format"
FORMAT_VERSION = "1"
# Buffers that are derived from the configuration; checkpoints may or may not carry them.
DERIVED_SUFFIXES = (".attn_mask", ".relative_position_index")


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
    sd, config, _ = read_checkpoint_with_metadata(path)
    return sd, config


def read_checkpoint_with_metadata(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NetworkConfig | None,
                                                                       dict[str, str]]:
    """:func:`read_checkpoint` plus the safetensors metadata (empty for ``.pth`` files)."""
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
            try:
                config = NetworkConfig.from_dict(json.loads(meta[METADATA_KEY]))
            except (ValueError, TypeError) as exc:
                raise ModelLoadError(f"{path}: configuration in the metadata is invalid ({exc})") from None
        return sd, config, dict(meta)
    _refuse_non_checkpoint(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        detail = (str(exc).splitlines() or [""])[0]
        raise ModelLoadError(f"cannot read {path}: not a PyTorch checkpoint, or a damaged one "
                             f"({type(exc).__name__}{': ' + detail if detail else ''})") from None
    return unwrap_state_dict(obj), None, {}


def _refuse_non_checkpoint(path: Path) -> None:
    """An empty or plain-text file given as ``.pth`` gets a plain message, not torch.load's (a
    text file makes it raise ``KeyError: '101'``). A torch.save file is a zip archive or a binary
    pickle: both have bytes below 0x09, or invalid UTF-8, within their first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise ModelLoadError(f"cannot read {path}: the file is empty, not a PyTorch checkpoint")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return
    if all(ch >= "\t" for ch in text):
        raise ModelLoadError(f"cannot read {path}: a text file, not a PyTorch checkpoint (give an official SwinIR .pth "
                             "or an agileir .safetensors file)")


def load_model(source: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> RestorationTransformer:
    """A ready model (eval mode) from a weights path or a state dict.

    Accepts official SwinIR ``.pth`` checkpoints (raw or wrapped in ``params``/``params_ema``,
    any training patch size) and the project's ``.safetensors``. ``overrides`` change options
    that do not affect the weights (the runtime options, e.g. ``attention_impl``). A file written
    from an int8 model (:func:`save_model` of :func:`~agileir.models.quantize.quantize_int8`'s
    result) loads as that int8 model, its weights bit for bit.
    """
    if isinstance(source, Mapping):
        sd, config, meta = unwrap_state_dict(source), None, {}
    else:
        sd, config, meta = read_checkpoint_with_metadata(source)
    quantization = meta.get(QUANTIZATION_KEY)
    if quantization not in (None, DYNAMIC_INT8):
        raise ModelLoadError(f"{source}: unknown quantization {quantization!r} (this version reads {DYNAMIC_INT8!r})")
    layers = None
    if quantization == DYNAMIC_INT8:
        sd, layers = split_quantized(sd)
    if config is None:
        config = detect_config(sd)
    if overrides:
        config = config.replace(**overrides)
    model = RestorationTransformer(config)
    _load_tensors(model, sd)
    if layers is not None:
        try:
            model = apply_quantized(model, layers)
        except ValueError as exc:
            raise ModelLoadError(f"{source}: {exc}") from None
    return model.eval()


def save_model(model: RestorationTransformer, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write weights + configuration as safetensors, atomically (temporary file, then rename);
    an int8 model is written with its int8 weights (see :mod:`agileir.models.quantize`)."""
    from safetensors.torch import save_file

    path = Path(path)
    quantized = is_quantized(model)
    state = quantized_tensors(model) if quantized else model.state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if not k.endswith(DERIVED_SUFFIXES)}
    metadata = {METADATA_KEY: model.config.to_json(), FORMAT_KEY: FORMAT_VERSION, **(extra_metadata or {})}
    if quantized:
        metadata[QUANTIZATION_KEY] = DYNAMIC_INT8
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def official_state_dict(model: RestorationTransformer, img_size: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict in the official SwinIR layout, including each shifted block's ``attn_mask``.

    The official code registers the shift mask for its training patch as a buffer, so loading
    there with ``strict=True`` needs it; this network computes masks per input size instead.
    """
    config = model.config
    sd = dict(model.state_dict())
    size = img_size or config.img_size
    m = config.window_size
    mask = shift_mask(size, size, m, m // 2)
    for i, depth in enumerate(config.depths):
        for j in range(1, depth, 2):
            sd[f"layers.{i}.residual_group.blocks.{j}.attn_mask"] = mask.clone()
    return sd


__all__ = ["METADATA_KEY", "FORMAT_KEY", "DERIVED_SUFFIXES", "unwrap_state_dict", "read_checkpoint",
           "read_checkpoint_with_metadata", "load_model",
           "save_model", "official_state_dict"]
