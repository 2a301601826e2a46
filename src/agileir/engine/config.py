"""Run configuration of ``agileir train``: one source of defaults, YAML files, overrides.

A configuration is a nested dict; :data:`DEFAULTS` lists every option with its default (the only
place defaults are written). :func:`load_config` reads DEFAULTS, then a YAML file, then
``dotted.key=value`` overrides; :func:`resolve_config` completes a partial dict the same way
without touching the caller's. Earlier spellings (``train.bf16``, ``data.train.degradation``)
still load, translated with a deprecation message.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from agileir.data.realworld import realworld_defaults
from agileir.engine.losses import build_loss
from agileir.engine.schedule import LRSchedule
from agileir.errors import ConfigError
from agileir.runtime import PRECISIONS

ASSETS_TOKEN = "${agileir_assets}"

# The full set of options with their defaults. ``model`` also takes any NetworkConfig field
# (scale, depths, drop_path_rate, key_dim, ...) as an override of the preset.
DEFAULTS: dict[str, Any] = {
    "name": None,  # default: the config file's stem
    "output_dir": "runs",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "threads": None,  # torch intra-op threads per process (None: torch's default)
    "resume": None,  # None | auto | path to a run folder / latest.json / iter_*.state.pth
    "overwrite": False,  # start afresh even though the run folder has checkpoints
    "model": {
        "preset": "agileir-s",
        "init_from": None,  # weights to start from (x3/x4 from x2): tensors with equal names and shapes
    },
    "data": {
        "train": {
            "hr_dir": None,  # folder (or list of folders) of ground-truth images
            "lr_dir": None,  # paired LR folder (or its parent with X<s>/); None: LR made on the fly
            "noise_sigma": 25,  # denoising: sigma (0-255) or [low, high]
            "jpeg_quality": 40,  # JPEG: quality or [low, high]
            "patch_size": 64,  # LR (input) patch side
            "flip": True,
            "rotate": True,
            "cache": True,  # keep decoded images in memory
            "cache_max_gb": 8.0,  # ... unless they would take more than this
            "lr_border": "mirror",  # MATLAB resize border for on-the-fly LR (EDSR/SwinIR files)
            # real-world SR (model.task sr): LR made from each HR batch on the training device by the
            # second-order degradation model; every range of it (defaults: data/realworld.py Stage)
            "realworld": {"enabled": False, **realworld_defaults()},
            # LR pixels degraded around each patch and cut away after: the blur and sinc kernels (up
            # to 21 taps) then see image content at the patch's edge, not padding (Real-ESRGAN
            # degrades crops larger than its patches for the same reason)
            "realworld_context": 0,
        },
        "val": {
            "dir": None,  # benchmark folder (layouts of ``agileir test``); None: no validation
            "lr_variant": "auto",
            "noise_sigma": None,  # denoising validation sigma (default: the training sigma)
            "jpeg_quality": None,  # JPEG validation quality (default: the training quality)
            "tile": None,
            "tile_overlap": None,
            "max_images": None,
            "seed": 0,
        },
        "batch_size": 16,  # global batch, split across processes
        "num_workers": 4,  # DataLoader workers per process
    },
    "train": {
        "iterations": 500000,
        "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.9, 0.99], "weight_decay": 0.0, "eps": 1e-8},
        "scheduler": {"name": "multistep", "milestones": [250000, 400000, 450000, 475000], "gamma": 0.5,
                      "warmup_iterations": 0, "min_lr_ratio": 0.0},
        "loss": {"name": "l1", "eps": 1e-3},
        "grad_clip": None,  # max global gradient norm; None: no clipping
        "ema_decay": 0.999,  # None or 0: no EMA
        "precision": "fp32",  # fp32 | bf16 (autocast for the forward pass; the loss in fp32)
        "grad_checkpoint": False,  # recompute each whole block in backward (model.grad_checkpoint)
        "max_nonfinite": 5,  # stop after this many non-finite losses in a row
        "val_every": 5000,
        "checkpoint_every": 5000,
        "keep_checkpoints": 2,
        "log_every": 100,
    },
    "log": {
        "tensorboard": "auto",  # auto (if installed) | true | false
        "progress": "auto",  # tqdm bar: auto (when stderr is a terminal) | true | false
    },
}

_OPEN_SECTIONS = ("model",)  # sections that accept keys not listed in DEFAULTS

# ============================================================================= reading


def assets_dir() -> Path:
    """The folder of files shipped inside the package (``agileir/assets``)."""
    return Path(__file__).resolve().parents[1] / "assets"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``2e-4`` as a float (PyYAML would give a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _parse_value(text: str) -> Any:
    try:
        return _yaml_load(text)
    except yaml.YAMLError:
        return text


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in out and prefix.rstrip(".").split(".")[0] not in _OPEN_SECTIONS:
            raise ConfigError(f"unknown option {dotted!r}")
        if isinstance(out.get(key), dict) and isinstance(value, Mapping):
            out[key] = _merge(out[key], value, dotted + ".")
        elif isinstance(out.get(key), dict) and value is not None:
            raise ConfigError(f"option {dotted!r} is a section; give its keys ({dotted}.KEY=VALUE)")
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings (values parsed as YAML: numbers, lists, null, ...)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.iterations=200)")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        nested: Any = _parse_value(text)
        for part in reversed(parts):
            nested = {part: nested}
        config = _merge(config, nested)
    return config


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The run configuration: :data:`DEFAULTS`, then the YAML file, then the overrides.

    Unknown keys are errors (``model`` accepts any network option). ``name`` defaults to the
    file's stem.
    """
    config = copy.deepcopy(DEFAULTS)
    legacy: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"configuration file not found: {p}")
        try:
            doc = _yaml_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{p}: the top level must be a mapping of options")
        doc = _migrate_legacy(doc, str(p))
        legacy = doc.pop("_legacy", {})
        config = _merge(config, doc)
        if config.get("name") is None:
            config["name"] = p.stem
    config = apply_overrides(config, overrides)
    if legacy:
        config["_legacy"] = legacy
    return resolve_config(config)


def resolve_path(value: str | os.PathLike | None) -> Path | None:
    """A path from the configuration: ``${agileir_assets}`` expands to the package's assets."""
    if value is None:
        return None
    text = str(value)
    if ASSETS_TOKEN in text:
        text = text.replace(ASSETS_TOKEN, str(assets_dir()))
    return Path(os.path.expandvars(os.path.expanduser(text)))


def validate_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for values the trainer cannot use (before any work is done)."""
    t, d = config["train"], config["data"]

    def positive(value: Any, name: str, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, got {value!r}")

    positive(t["iterations"], "train.iterations")
    positive(d["batch_size"], "data.batch_size")
    positive(d["train"]["patch_size"], "data.train.patch_size")
    context = d["train"]["realworld_context"]
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise ConfigError(f"data.train.realworld_context must be an integer >= 0, got {context!r}")
    for key in ("val_every", "checkpoint_every", "log_every", "max_nonfinite"):
        positive(t[key], f"train.{key}")
    positive(t["grad_clip"], "train.grad_clip", allow_none=True)
    if not isinstance(d["num_workers"], int) or d["num_workers"] < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {d['num_workers']!r}")
    decay = t["ema_decay"]
    if decay not in (None, 0, 0.0) and not (isinstance(decay, (int, float)) and 0 < decay < 1):
        raise ConfigError(f"train.ema_decay must be in (0, 1) or null, got {decay!r}")
    if t["precision"] not in PRECISIONS:
        raise ConfigError(f"train.precision must be fp32 or bf16, got {t['precision']!r}")
    if str(t["optimizer"]["name"]).lower() not in ("adam", "adamw"):
        raise ConfigError(f"train.optimizer.name must be adam or adamw, got {t['optimizer']['name']!r}")
    positive(t["optimizer"]["lr"], "train.optimizer.lr")
    if not config["model"].get("preset"):
        raise ConfigError("model.preset is required (e.g. agileir-s)")
    if config["resume"] not in (None, False) and not isinstance(config["resume"], (str, os.PathLike)):
        raise ConfigError(f"resume must be null, 'auto' or a path, got {config['resume']!r}")
    for key in ("tensorboard", "progress"):
        if config["log"][key] not in ("auto", True, False):
            raise ConfigError(f"log.{key} must be auto, true or false, got {config['log'][key]!r}")
    LRSchedule.from_config(t["scheduler"], int(t["iterations"]))  # validates the schedule
    build_loss(t["loss"]["name"], float(t["loss"].get("eps", 1e-3)))


def dump_config(config: Mapping[str, Any]) -> str:
    """The configuration as YAML (what ``runs/<name>/config.yaml`` holds)."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj



#: earlier option names -> (new dotted name, value translation)
LEGACY_OPTIONS = {
    "train.bf16": ("train.precision", lambda v: "bf16" if v else "fp32"),
}


def _migrate_legacy(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``doc`` with earlier option names translated (a DeprecationWarning names each)."""
    doc = copy.deepcopy(dict(doc))
    for old, (new, translate) in LEGACY_OPTIONS.items():
        section, key = old.split(".")
        if isinstance(doc.get(section), dict) and key in doc[section]:
            value = translate(doc[section].pop(key))
            new_section, new_key = new.split(".")
            doc.setdefault(new_section, {}).setdefault(new_key, value)
            warnings.warn(f"{where}: option {old!r} is now {new!r} ({new_key}: {value})", DeprecationWarning,
                          stacklevel=3)
    train = (doc.get("data") or {}).get("train")
    if isinstance(train, dict) and "degradation" in train:
        value = train.pop("degradation")
        warnings.warn(f"{where}: data.train.degradation is no longer needed (the degradation follows "
                      f"model.task); {value!r} is checked against it", DeprecationWarning, stacklevel=3)
        doc.setdefault("_legacy", {})["degradation"] = value
    return doc


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A complete configuration from a possibly partial one: :data:`DEFAULTS` filled in,
    earlier spellings translated, validated. The argument is not modified."""
    legacy = dict(config.get("_legacy") or {})
    doc = _migrate_legacy({k: v for k, v in config.items() if k != "_legacy"}, "configuration")
    legacy.update(doc.pop("_legacy", {}))
    out = _merge(copy.deepcopy(DEFAULTS), doc)
    if not out.get("name"):
        out["name"] = "run"
    validate_config(out)
    if legacy.get("degradation") not in (None, "auto"):
        _check_legacy_degradation(out, str(legacy["degradation"]))
    return out


def _check_legacy_degradation(config: Mapping[str, Any], degradation: str) -> None:
    expected = {"bicubic": "sr", "noise": "denoise", "jpeg": "jpeg"}.get(degradation)
    task = str(config["model"].get("task", "sr"))
    if expected != task:
        raise ConfigError(f"data.train.degradation {degradation!r} does not fit model.task {task!r}; "
                          "remove the option (the degradation follows the task)")


__all__ = ["ASSETS_TOKEN", "DEFAULTS", "LEGACY_OPTIONS", "assets_dir", "apply_overrides", "load_config",
           "resolve_config", "resolve_path", "validate_config", "dump_config"]
