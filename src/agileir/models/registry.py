"""The one rule that turns a model name or path into a model, for every command and the API.

``spec`` may be:

* a shipped weights name (``agileir-s_x4``, see :mod:`agileir.models.zoo`);
* a preset name (``agileir-s``): its shipped weights for the requested task and scale, or --
  only when ``random_weights`` asks for it -- the preset with random weights;
* a shipped family that is not a preset (``agileir-s-real``, a fine-tune): its file at the
  requested scale (default 2, as for presets);
* a weights file (``.safetensors`` of this project, an official SwinIR ``.pth``).

A requested ``scale`` or ``task`` that the weights were not trained for is an error, never a
silent mismatch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agileir.errors import ModelLoadError
from agileir.models import zoo
from agileir.models.loading import load_model
from agileir.models.network import RestorationTransformer
from agileir.models.presets import PRESETS, build_model

#: file name endings that mark ``spec`` as a weights file rather than a name
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` names a file (a weights suffix or a folder separator), not a model name."""
    return spec.lower().endswith(WEIGHTS_SUFFIXES) or os.sep in spec or "/" in spec


def known_names() -> list[str]:
    """Every name ``resolve_model`` accepts besides paths: presets and shipped weights."""
    return list(dict.fromkeys([*PRESETS, *zoo.shipped_scales(("sr",)), *zoo.shipped_weights()]))


def resolve_model(spec: str | os.PathLike, scale: int | None = None, *, task: str | None = None,
                  random_weights: bool = False, **overrides: Any) -> RestorationTransformer:
    """The model ``spec`` names (see the module docstring), in eval mode.

    ``task``: the task the weights must have been trained for (None: any; presets default to sr).

    ``overrides`` are runtime options for weights (``attention_impl``, ``grad_checkpoint``) and
    any configuration field for a random preset. ``model.weights_source`` names what was used:
    the weights file, or "random".
    """
    text = str(spec)
    shipped = zoo.find_weights(text)
    family = (zoo.shipped_scales(("sr",)).get(text.lower())
              if shipped is None and text.lower() not in PRESETS and not looks_like_path(text) else None)
    if family:
        shipped = zoo.find_weights(text, scale or 2)
        if shipped is None:
            raise ModelLoadError(f"no shipped weights for {text} x{scale or 2} (shipped: "
                                 f"{', '.join(f'x{s}' for s in family)}); use --scale {family[-1]}")
    if shipped is None and text.lower() in PRESETS:
        task = task or "sr"
        shipped = zoo.find_weights(text, scale or 2) if task == "sr" else None
        if shipped is None:
            if random_weights:
                options = dict(overrides, task=task, **({"scale": scale} if scale and task == "sr" else {}))
                model = build_model(text, **options).eval()
                model.weights_source = "random"
                return model
            wanted = f"{text} x{scale or 2}" if task == "sr" else f"{text} for {task}"
            raise ModelLoadError(
                f"no shipped weights for {wanted} (shipped: {', '.join(zoo.shipped_weights()) or 'none'}); "
                "pass a weights file, or ask for the untrained preset with --random-weights")
    if shipped is None:
        path = Path(text)
        if not path.exists():
            if looks_like_path(text):
                raise ModelLoadError(f"weights file not found: {text}")
            raise ModelLoadError(f"unknown model {text!r}; use a preset or shipped weights name "
                                 f"({', '.join(known_names())}) or a weights file")
        if path.is_dir():
            raise ModelLoadError(f"{text} is a folder; pass a weights file (.safetensors or .pth)")
    model = load_model(shipped or Path(text), **overrides)
    model.weights_source = str(shipped or Path(text))
    name = (shipped or Path(text)).name
    cfg = model.config
    if task is not None and cfg.task != task:
        raise ModelLoadError(f"{name} is a {cfg.task!r} model, not a {task!r} one; "
                             f"use weights trained for {task}")
    if scale and cfg.task == "sr" and cfg.scale != scale:
        raise ModelLoadError(f"{name} is a x{cfg.scale} model but scale {scale} was requested; "
                             f"use --scale {cfg.scale} or weights trained for x{scale}")
    return model


__all__ = ["WEIGHTS_SUFFIXES", "looks_like_path", "known_names", "resolve_model"]
