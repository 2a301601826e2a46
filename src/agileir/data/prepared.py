"""Training images stored decoded, as ``.npy`` arrays that are read memory-mapped.

Why: a 2K PNG takes tens of milliseconds to decode, so a data loader that decodes a DIV2K image
per patch starves a GPU (the problem BasicSR and KAIR solve by cutting sub-images). A decoded
array needs no decoding at all: a patch is a slice of a memory map, its pages come from the
operating system's page cache, and every DataLoader worker and DDP process shares that cache
instead of holding its own copy. ``agileir prepare`` writes the arrays once; training folders
may then hold ``.npy`` files instead of images (LR partners too, with the same naming rule).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agileir.data.io import is_image_file, read_image
from agileir.errors import ImageError
from agileir.fileio import atomic_path

SUFFIX = ".npy"


def is_prepared_file(path: str | os.PathLike) -> bool:
    """True for a decoded training array written by :func:`prepare_folder`."""
    return str(path).lower().endswith(SUFFIX)


def read_prepared(path: str | os.PathLike) -> np.ndarray:
    """The (H, W) or (H, W, 3) ``uint8`` array, memory-mapped read-only (nothing is read yet)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable .npy array ({exc})") from None
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ImageError(f"{path}: expected an (H, W) or (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    return array


def prepare_folder(source: str | os.PathLike, destination: str | os.PathLike, *, progress: bool = False) -> tuple[int, int]:
    """Write every image under ``source`` (sub-folders included, e.g. ``X2/``) as a ``.npy`` array
    at the same relative path under ``destination``. Existing arrays are kept, so an interrupted
    run continues; each array is written atomically. Returns (written, already there)."""
    src, dst = Path(source).expanduser(), Path(destination).expanduser()
    if not src.is_dir():
        raise ImageError(f"{src}: no such folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and is_image_file(p.name))
    if not files:
        raise ImageError(f"{src}: no image files found")
    items: Sequence[Path] = files
    if progress:
        from tqdm import tqdm

        items = tqdm(files, desc=f"prepare {src.name}", unit="img", file=sys.stderr, leave=False)
    written = kept = 0
    for f in items:
        out = (dst / f.relative_to(src)).with_suffix(SUFFIX)
        if out.is_file():
            kept += 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        array = read_image(f)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        written += 1
    return written, kept


__all__ = ["SUFFIX", "is_prepared_file", "read_prepared", "prepare_folder"]
