"""What a run configuration builds: the network, its optimiser and the training patches."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from agileir.engine.config import resolve_path
from agileir.errors import ConfigError

def model_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """NetworkConfig overrides of the ``model`` section (everything but ``preset``/``init_from``)."""
    out = {k: v for k, v in config["model"].items() if k not in ("preset", "init_from")}
    for key in ("depths", "num_heads"):
        if key in out and isinstance(out[key], list):
            out[key] = tuple(out[key])
    if config["train"]["grad_checkpoint"]:
        out["grad_checkpoint"] = True
    return out


def build_network(config: Mapping[str, Any]) -> torch.nn.Module:
    """The network the configuration describes (random initialisation)."""
    from agileir.models.presets import build_model

    try:
        return build_model(str(config["model"]["preset"]), **model_overrides(config))
    except TypeError as exc:
        raise ConfigError(f"cannot build the model: {exc}") from None


def init_from_weights(model: torch.nn.Module, path: str | os.PathLike) -> tuple[int, list[str]]:
    """Copy every tensor of ``path`` whose name and shape match ``model`` (x3/x4 from x2: all but
    the upsampler). Returns (tensors copied, names of model tensors left as initialised)."""
    from agileir.models.loading import DERIVED_SUFFIXES, read_checkpoint_with_metadata
    from agileir.models.quantize import QUANTIZATION_KEY

    p = resolve_path(path)
    assert p is not None
    if not p.is_file():
        raise ConfigError(f"model.init_from: weights file not found: {p}")
    sd, _, meta = read_checkpoint_with_metadata(p)
    if QUANTIZATION_KEY in meta:
        raise ConfigError(f"model.init_from: {p} holds int8 inference weights; start from the float weights "
                          "it was quantized from")
    own = model.state_dict()
    matched = {k: v for k, v in sd.items()
               if k in own and not k.endswith(DERIVED_SUFFIXES) and tuple(v.shape) == tuple(own[k].shape)}
    if not matched:
        raise ConfigError(f"model.init_from: no tensor of {p} fits this model")
    model.load_state_dict(matched, strict=False)
    left = sorted(k for k in own if k not in matched and not k.endswith(DERIVED_SUFFIXES))
    return len(matched), left


def build_optimizer(params: Sequence[torch.nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam or AdamW from ``train.optimizer``."""
    name = str(cfg["name"]).lower()
    kwargs = dict(lr=float(cfg["lr"]), betas=tuple(float(b) for b in cfg["betas"]),
                  weight_decay=float(cfg["weight_decay"] or 0.0), eps=float(cfg["eps"]))
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    return torch.optim.Adam(params, **kwargs)


def task_of(config: Mapping[str, Any]) -> tuple[str, int]:
    """(task, scale) of the model the configuration builds."""
    from agileir.models.presets import preset_config

    cfg = preset_config(str(config["model"]["preset"]),
                        **{k: v for k, v in model_overrides(config).items() if k != "grad_checkpoint"})
    return cfg.task, int(cfg.scale)


def _as_list(value: Any) -> list:
    """A config value that may be one item or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def build_train_dataset(config: Mapping[str, Any], in_chans: int, progress: bool = False):
    """The training patches of ``data.train`` for the model's task."""
    from agileir.data.datasets import RestorationPatches, list_images, pair_images

    d = config["data"]["train"]
    task, scale = task_of(config)
    if d["hr_dir"] in (None, ""):
        raise ConfigError("data.train.hr_dir is required (a folder of ground-truth images)")
    realworld = bool(d["realworld"]["enabled"])
    if realworld and (task != "sr" or d["lr_dir"]):
        raise ConfigError("data.train.realworld makes the LR from the HR images: it needs model.task sr and "
                          "no data.train.lr_dir")
    folders = _as_list(d["hr_dir"])
    lr_files = None
    if d["lr_dir"]:
        lr_dirs = _as_list(d["lr_dir"])
        if len(lr_dirs) != len(folders):
            raise ConfigError(f"data.train.lr_dir lists {len(lr_dirs)} folders for {len(folders)} in hr_dir: "
                              "give one LR folder per HR folder (e.g. DF2K: DIV2K's and Flickr2K's)")
        pairs = [p for hr, lr in zip(folders, lr_dirs)
                 for p in pair_images(list_images(resolve_path(hr)), resolve_path(lr), scale)]
        hr_files, lr_files = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        hr_files = list_images([resolve_path(f) for f in folders])
    cache = bool(d["cache"])
    if cache:
        limit = float(d["cache_max_gb"] or 0.0) * 2 ** 30
        needed = RestorationPatches.estimate_bytes(hr_files + (lr_files or []))
        if needed > limit:
            warnings.warn(f"decoded training images need {needed / 2**30:.1f} GiB, above "
                          f"data.train.cache_max_gb={d['cache_max_gb']}; decoding on the fly instead",
                          RuntimeWarning, stacklevel=2)
            cache = False
    context = int(d["realworld_context"]) if realworld else 0  # the trainer cuts it away after degrading
    return RestorationPatches(
        hr_files, lr_files, scale=scale, patch_size=int(d["patch_size"]) + 2 * context, task=task,
        make_lr=not realworld,
        noise_sigma=d["noise_sigma"], jpeg_quality=d["jpeg_quality"], in_chans=in_chans,
        flip=bool(d["flip"]), rotate=bool(d["rotate"]), cache=cache, lr_border=str(d["lr_border"]), progress=progress)


def build_realworld(config: Mapping[str, Any]):
    """The real-world degradation of ``data.train.realworld``, or None when it is off."""
    from agileir.data.realworld import RealWorldDegradation, RealWorldSettings

    section = config["data"]["train"]["realworld"]
    if not section["enabled"]:
        return None
    return RealWorldDegradation(RealWorldSettings.from_mapping(section, "data.train.realworld"), task_of(config)[1])


__all__ = ["model_overrides", "build_realworld", "build_network", "init_from_weights", "build_optimizer", "task_of",
           "build_train_dataset"]
