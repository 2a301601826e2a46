"""agileir: image restoration with memory-efficient window-attention transformers.

AgileIR (SwinIR with Group Shifted Window Attention) and a faithful SwinIR port share one network
body; ``build_model`` makes a preset, ``load_model`` reads official SwinIR or agileir weights.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from agileir.models import NetworkConfig, RestorationTransformer, build_model, load_model, save_model

__all__ = ["__version__", "NetworkConfig", "RestorationTransformer", "build_model", "load_model",
           "save_model", "imresize", "Restorer"]


def __getattr__(name: str) -> Any:
    # Lazy: the resize lives with the data code and is not needed to build a model.
    if name == "imresize":
        from agileir.data.resize import imresize

        return imresize
    if name == "Restorer":
        from agileir.inference.restorer import Restorer

        return Restorer
    raise AttributeError(f"module 'agileir' has no attribute {name!r}")
