"""Restoration networks: one SwinIR body with pluggable window attention (SwinIR's or GSWA)."""

from agileir.models.attention.gswa import GroupShiftedWindowAttention
from agileir.models.attention.window import WindowAttention
from agileir.models.config import NetworkConfig
from agileir.models.detect import detect_config
from agileir.models.loading import load_model, official_state_dict, save_model
from agileir.models.network import RestorationTransformer
from agileir.models.presets import PRESETS, build_model, preset_config
from agileir.models.registry import resolve_model

__all__ = [
    "NetworkConfig", "RestorationTransformer", "WindowAttention", "GroupShiftedWindowAttention",
    "PRESETS", "build_model", "preset_config", "load_model", "save_model", "detect_config",
    "official_state_dict", "resolve_model",
]
