"""Weights shipped inside the package, so restoring works offline with nothing to download.

Each entry is a preset trained at one scale by the project's own training command; how, on what
data and with what scores is stated in ``docs/weights.md``. Names are ``<preset>_x<scale>``
(e.g. ``agileir-s_x2``); a preset name plus a scale finds the same file.
"""

from __future__ import annotations

from pathlib import Path

from agileir.errors import ModelLoadError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "weights"


def shipped_weights() -> dict[str, Path]:
    """All shipped weights, name -> file (``{"agileir-s_x2": Path(...), ...}``)."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def weights_name(preset: str, scale: int) -> str:
    return f"{preset.lower()}_x{int(scale)}"


def find_weights(name: str, scale: int | None = None) -> Path | None:
    """The shipped file for ``name`` (``agileir-s_x2``, or a preset with ``scale``), else None."""
    available = shipped_weights()
    key = name.lower()
    if key in available:
        return available[key]
    if scale is not None:
        return available.get(weights_name(key, scale))
    return None


def require_weights(name: str, scale: int | None) -> Path:
    """Like :func:`find_weights`, but a missing entry is a one-line :class:`ModelLoadError`."""
    path = find_weights(name, scale)
    if path is not None:
        return path
    available = ", ".join(shipped_weights()) or "none"
    wanted = weights_name(name, scale) if scale is not None else name
    raise ModelLoadError(f"no shipped weights named {wanted!r} (shipped: {available}); "
                         f"pass a weights file (.safetensors, or an official SwinIR .pth) with --model")


__all__ = ["WEIGHTS_DIR", "shipped_weights", "weights_name", "find_weights", "require_weights"]
