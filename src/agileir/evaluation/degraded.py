"""Benchmark folders degraded by the real-world model, for scoring real-photo models.

Why: a real-world model must be scored full-reference on inputs it has never seen, made the same
way on every machine. Each image gets its own degradation seed from (seed, CRC-32 of its file
name): independent of the order and of the other images in the set, and outside the
(seed, step, rank) seeds training draws from, so the inputs are held out. The degradation runs
on one thread, so the files do not depend on the caller's thread count. The result is a folder
``agileir test --lr-variant LR_realworld`` reads like any EDSR-layout benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Mapping

from PIL import Image

from agileir.data.degradations import modcrop
from agileir.data.io import is_image_file, read_image, tensor_to_uint8, uint8_to_tensor
from agileir.data.realworld import RealWorldDegradation, RealWorldSettings, realworld_defaults
from agileir.errors import ImageError
from agileir.fileio import atomic_path, atomic_write_text
from agileir.runtime import torch_threads

VARIANT = "LR_realworld"


def image_seed(seed: int, name: str) -> tuple[int, int]:
    """The degradation seed of one benchmark image."""
    return int(seed), zlib.crc32(name.encode("utf-8"))


def _ground_truth(source: Path) -> list[Path]:
    folder = source / "HR" if (source / "HR").is_dir() else source
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise ImageError(f"{folder}: no images (give a folder of ground-truth images, or one with HR/)")
    return files


def degrade_benchmark(source: str | os.PathLike, destination: str | os.PathLike, scale: int, seed: int = 0,
                      settings: Mapping[str, Any] | None = None) -> int:
    """Write ``destination/HR/`` (the ground truth) and ``destination/LR_realworld/X{scale}/``
    (its degraded LR, ``<name>x{scale}.png``) for every image of ``source``; returns the count.
    Every file is written atomically; a ``degradation.json`` records seed and settings."""
    source, destination = Path(source), Path(destination)
    options = RealWorldSettings.from_mapping(settings)
    degrade = RealWorldDegradation(options, scale)
    lr_dir = destination / VARIANT / f"X{scale}"
    files = _ground_truth(source)
    for path in files:
        hr = modcrop(read_image(path), scale)
        if min(hr.shape[:2]) < scale:
            raise ImageError(f"{path}: smaller than the scale {scale}")
        # one thread: some kernels (bilinear resize, the JPEG DCT's products) round differently with
        # the thread count, and the JPEG quantizer turns a last-bit difference into whole blocks
        with torch_threads(1):
            lr = tensor_to_uint8(degrade(uint8_to_tensor(hr), image_seed(seed, path.name)))
        (destination / "HR").mkdir(parents=True, exist_ok=True)
        with atomic_path(destination / "HR" / path.name) as tmp:
            shutil.copyfile(path, tmp)
        lr_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(lr_dir / f"{path.stem}x{scale}.png") as tmp:
            Image.fromarray(lr).save(tmp, format="PNG")
    record = {"source": str(source), "scale": int(scale), "seed": int(seed), "seeds": "(seed, crc32(file name))",
              "settings": realworld_defaults(options)}
    atomic_write_text(destination / "degradation.json", json.dumps(record, indent=2) + "\n")
    return len(files)


__all__ = ["degrade_benchmark", "image_seed", "VARIANT"]
