"""agileir: image restoration with memory-efficient window-attention transformers.

AgileIR (SwinIR with Group Shifted Window Attention) and a faithful SwinIR port share one network
body; ``build_model`` makes a preset, ``load_model`` reads official SwinIR or agileir weights.
"""

from __future__ import annotations

import importlib
from typing import Any

from agileir.models.config import NetworkConfig
from agileir.models.loading import load_model, save_model
from agileir.models.network import RestorationTransformer
from agileir.models.presets import build_model
from agileir.models.registry import resolve_model
from agileir.version import __version__

#: loaded on first use (they pull in image and metric code a model does not need)
_LAZY = {"imresize": "agileir.data.resize", "Restorer": "agileir.inference.restorer",
         "metrics": "agileir.metrics", "evaluation": "agileir.evaluation"}

__all__ = ["__version__", "NetworkConfig", "RestorationTransformer", "build_model", "load_model",
           "save_model", "resolve_model", "imresize", "Restorer", "metrics", "evaluation"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'agileir' has no attribute {name!r}")
