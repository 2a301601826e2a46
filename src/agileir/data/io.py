"""Image reading/writing and the uint8 <-> tensor conventions used for evaluation.

Why: every score in the project goes through the same steps (read 8-bit image, float in
[0, 1] for the model, clamp/scale/round back to uint8 before measuring), so they live here once.
Errors are raised as :class:`agileir.errors.ImageError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from agileir.errors import ImageError

#: the one table of image files the package reads and writes: extension -> Pillow format name
FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
    ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM",
}
IMAGE_EXTENSIONS = tuple(FORMATS)

# Full-range BT.601 luma 0.299 R + 0.587 G + 0.114 B in OpenCV's 15-bit fixed point (cvtColor).
_GRAY_FIXED = (9798, 19235, 3735)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for file names with a common image extension (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def pixel_limit() -> int | None:
    """The largest image (pixels) the package opens: Pillow's decompression-bomb guard, shared
    by every reader (``None``: no limit)."""
    return Image.MAX_IMAGE_PIXELS


def set_pixel_limit(pixels: int | None) -> None:
    """Raise or lower :func:`pixel_limit` for this process (``None`` or 0: no limit)."""
    Image.MAX_IMAGE_PIXELS = int(pixels) if pixels else None


def too_many_pixels(path: str | os.PathLike, pixels: int | None) -> ImageError:
    """The one-line error for an image above the limit, naming the flag that raises it."""
    size = f"{pixels:,} pixels" if pixels else "its size"
    return ImageError(f"{path}: {size} is above the limit of {pixel_limit() or 0:,} pixels (Pillow's guard "
                      f"against decompression bombs); if you trust the file, raise it with --max-pixels "
                      f"{pixels or 'N'}")


def check_pixels(path: str | os.PathLike, width: int, height: int) -> None:
    """:class:`ImageError` when ``width x height`` is above :func:`pixel_limit`."""
    limit = pixel_limit()
    if limit and width * height > limit:
        raise too_many_pixels(path, width * height)


@contextlib.contextmanager
def read_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn the ways a decoder fails on a bad file into one-line :class:`ImageError` exceptions
    (the decompression-bomb guard included; its warning is replaced by :func:`check_pixels`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise too_many_pixels(path, int(found.group(1)) if found else None) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: cannot read image (not a recognised image format, or corrupt)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image as ``uint8``: ``(H, W)`` for grayscale, ``(H, W, 3)`` for colour.

    Alpha is dropped and palette images are expanded to RGB. Raises :class:`ImageError` for
    missing, unreadable or non-8-bit files.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such image file")
    with read_errors(p):
        with Image.open(p) as im:
            check_pixels(p, *im.size)
            im.load()
            mode = im.mode
            if mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif mode in ("1", "LA"):
                arr = np.asarray(im.convert("L"))
            elif mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "RGBX"):
                arr = np.asarray(im.convert("RGB"))
            else:
                raise ImageError(f"{p}: unsupported image mode {mode!r} (8-bit gray or RGB expected)")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a ``uint8`` ``(H, W)`` / ``(H, W, 1)`` / ``(H, W, 3)`` image; format from the extension."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageError(f"{path}: only uint8 images can be written, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ImageError(f"{path}: cannot write an image of shape {arr.shape}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(arr).save(p)
    except (OSError, ValueError, KeyError) as exc:
        raise ImageError(f"{p}: cannot write image ({exc})") from None


def rgb_to_gray(image: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` as uint8, bit-exact with OpenCV's
    ``cvtColor(BGR2GRAY)`` (15-bit fixed point, rounded).

    This is the gray image one-channel denoising (and SR) models get from colour files.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.copy()
    if arr.shape[2] == 1:
        return arr[:, :, 0].copy()
    x = arr[:, :, :3].astype(np.int64)
    r, g, b = _GRAY_FIXED
    y = (x[:, :, 0] * r + x[:, :, 1] * g + x[:, :, 2] * b + (1 << 14)) >> 15
    return y.astype(np.uint8)


def rgb_to_y_uint8(image: np.ndarray) -> np.ndarray:
    """Studio-range BT.601 luma ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` rounded to uint8.

    The gray input of one-channel JPEG models made from colour files (SwinIR's ``jpeg_car``
    test reduces colour images to this Y before encoding). Gray input is returned unchanged.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.copy()
    if arr.shape[2] == 1:
        return arr[:, :, 0].copy()
    x = arr[:, :, :3].astype(np.float64)
    # same operation order as the common numpy reference (B, G, R dot product, / 255, + 16)
    y = (x[:, :, 2] * 24.966 + x[:, :, 1] * 128.553 + x[:, :, 0] * 65.481) / 255.0 + 16.0
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Return ``image`` as ``(H, W, channels)`` uint8: gray is replicated to RGB, RGB is
    reduced to luma (:func:`rgb_to_gray`) for one-channel models."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == channels:
        return arr
    if channels == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 1 and arr.shape[2] == 3:
        return rgb_to_gray(arr)[:, :, None]
    raise ImageError(f"cannot convert a {arr.shape[2]}-channel image to {channels} channels")


def uint8_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8`` ``(H, W[, C])`` -> float32 ``(1, C, H, W)`` in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div_(255.0)
    return t.unsqueeze(0)


def float_to_tensor(image: np.ndarray) -> torch.Tensor:
    """float ``(H, W[, C])`` (already in [0, 1] units, not clipped) -> float32 ``(1, C, H, W)``."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).unsqueeze(0)


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` or ``(C, H, W)`` float in [0, 1] -> uint8 ``(H, W, C)`` (``(H, W)`` if C=1).

    The evaluation convention: clamp to [0, 1], multiply by 255, round half to even
    (``torch.round``), convert.
    """
    t = x.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError("tensor_to_uint8 expects a batch of one image")
        t = t[0]
    # out of place first: .float() of a float32 tensor is the caller's tensor itself, and the
    # in-place steps would clamp and scale it (the denoising protocol reuses its noisy input)
    t = t.float().clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).cpu()
    arr = t.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return np.ascontiguousarray(arr)


__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "read_errors",
    "pixel_limit",
    "set_pixel_limit",
    "check_pixels",
    "read_image",
    "write_image",
    "rgb_to_gray",
    "rgb_to_y_uint8",
    "to_channels",
    "uint8_to_tensor",
    "float_to_tensor",
    "tensor_to_uint8",
]
