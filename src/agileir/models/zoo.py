"""Weights shipped inside the package, so restoring works offline with nothing to download.

Each entry is a preset trained at one scale by the project's own training command; how, on what
data and with what scores is stated in ``docs/weights.md``. Names are ``<preset>_x<scale>``
(e.g. ``agileir-s_x2``); a preset name plus a scale finds the same file.

What each file is (task, scale, architecture) is read from its own safetensors metadata, so it
cannot disagree with the weights; the measured scores, which the file cannot know, are data
beside the weights (``assets/weights/scores.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from agileir.errors import ModelLoadError
from agileir.models.loading import METADATA_KEY

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "weights"
SCORES_FILE = WEIGHTS_DIR / "scores.json"


@dataclass(frozen=True)
class WeightsInfo:
    """One shipped file: what it restores and how well (for listings and help texts)."""

    name: str
    path: Path
    preset: str  # the preset it was trained as, e.g. agileir-s
    task: str  # sr, denoise or jpeg
    scale: int  # 1 for denoise / jpeg
    attention: str  # window (SwinIR) or gswa (AgileIR)
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # set -> (PSNR-Y, SSIM-Y)
    training: str = ""
    level: str = ""  # denoise / jpeg: the degradation the scores are at ("noise sigma 25", "JPEG q 20")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (safetensors reads the header only, no tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: not a valid safetensors file ({exc})") from None


def _scores() -> dict[str, dict]:
    try:
        return dict(json.loads(SCORES_FILE.read_text())["weights"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def weights_info(name: str) -> WeightsInfo:
    """:class:`WeightsInfo` of the shipped file ``name`` (``agileir-s_x2``)."""
    path = require_weights(name, None)
    meta = read_metadata(path)
    try:
        config = json.loads(meta[METADATA_KEY])
    except (KeyError, ValueError):
        raise ModelLoadError(f"{path}: no agileir configuration in its metadata") from None
    task = str(config.get("task", "sr"))
    entry = _scores().get(path.stem, {})
    scores = {bench: (float(v["psnr_y"]), float(v["ssim_y"]))
              for bench, v in entry.items() if isinstance(v, dict) and {"psnr_y", "ssim_y"} <= set(v)}
    return WeightsInfo(name=path.stem, path=path, preset=str(config.get("name") or path.stem.rsplit("_x", 1)[0]),
                       task=task, scale=int(config.get("scale", 1)) if task == "sr" else 1,
                       attention=str(config.get("attention", "window")), scores=scores,
                       training=str(entry.get("training", "")), level=str(entry.get("level", "")))


def shipped_info(tasks: tuple[str, ...] | None = None) -> list[WeightsInfo]:
    """Every shipped file's :class:`WeightsInfo`, by name; only ``tasks`` (e.g. ``("sr",)``) if given."""
    infos = [weights_info(name) for name in shipped_weights()]
    return [i for i in infos if tasks is None or i.task in tasks]


def shipped_scales(tasks: tuple[str, ...] = ("sr",)) -> dict[str, list[int]]:
    """Preset -> the scales shipped for it, e.g. ``{"agileir-s": [2, 4], "swinir-s": [4]}``."""
    out: dict[str, list[int]] = {}
    for info in shipped_info(tasks):
        out.setdefault(info.preset, []).append(info.scale)
    return {k: sorted(v) for k, v in out.items()}


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


__all__ = ["WEIGHTS_DIR", "SCORES_FILE", "WeightsInfo", "shipped_weights", "weights_name", "find_weights",
           "require_weights", "read_metadata", "weights_info", "shipped_info", "shipped_scales"]
