"""Restoration networks: one SwinIR body with pluggable window attention (SwinIR's or GSWA)."""

from agileir.models.config import NetworkConfig
from agileir.models.gswa import GroupShiftedWindowAttention
from agileir.models.loading import detect_config, load_model, official_state_dict, resolve_model, save_model
from agileir.models.network import RestorationTransformer
from agileir.models.presets import PRESETS, build_model, preset_config
from agileir.models.window_attention import WindowAttention

__all__ = [
    "NetworkConfig", "RestorationTransformer", "WindowAttention", "GroupShiftedWindowAttention",
    "PRESETS", "build_model", "preset_config", "load_model", "save_model", "detect_config",
    "official_state_dict", "resolve_model",
]
