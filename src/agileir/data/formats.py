"""Reading and writing users' images in their own format: bit depth, alpha and orientation kept.

Why a second reader beside :mod:`agileir.data.io`: evaluation wants plain 8-bit RGB/gray, but a
user's photo may be 16-bit, carry an alpha channel or an EXIF orientation, and the restored file
should come back the same way. Pillow reads most formats; it reduces 16-bit colour to 8 bits, so
16-bit colour PNG goes through pypng and TIFF through tifffile. Pixels are returned upright
(EXIF orientation applied), as ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` arrays of ``uint8``
or ``uint16``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agileir.data.io import read_errors
from agileir.errors import ImageError
from agileir.fileio import atomic_path

# Extension -> Pillow format name, for the formats the upscale command reads and writes.
FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
    ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}
_EIGHT_BIT_ONLY = ("JPEG", "WEBP", "BMP")
_ORIENTATION_TAG = 0x0112


@dataclass
class Picture:
    """Pixels of an image file and what is needed to write the result back the same way."""

    pixels: np.ndarray  # (H, W), (H, W, 3) or (H, W, 4); uint8 or uint16; upright
    format: str  # Pillow format name (PNG, JPEG, ...)


def image_format(path: str | os.PathLike) -> str:
    """Pillow format name for the file's extension; :class:`ImageError` for unsupported ones."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ImageError(f"{path}: unsupported image format {ext or '(no extension)'!r}; "
                         f"use one of {', '.join(sorted(set(FORMATS)))}")
    return FORMATS[ext]


def is_supported(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in FORMATS


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to ``(H, W[, C])`` pixels so the image is upright."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(int(orientation))
    return np.ascontiguousarray(op(pixels)) if op else pixels


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ImageError(f"{path}: cannot read image (not a PNG file, or corrupt)")
    return head[24]


def _read_png16(path: Path) -> np.ndarray:
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    except (png.Error, OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    planes = info["planes"]
    arr = arr.reshape(height, width, planes)
    if planes == 2:  # gray + alpha -> RGBA
        arr = np.concatenate([np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1:]], axis=2)
    return arr[:, :, 0] if planes == 1 else arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            arr = page.asarray()
            tag = page.tags.get(274)  # Orientation
            orientation = int(tag.value) if tag is not None else 1
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise ImageError(f"{path}: cannot read image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar storage
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageError(f"{path}: unsupported TIFF layout {arr.shape} {arr.dtype} (8/16-bit gray, RGB or RGBA expected)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return orient(arr, orientation)


def _read_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            arr = np.asarray(im).astype(np.uint16)
        elif mode == "I":  # 32-bit integer gray (e.g. some 16-bit PNG decodes): values fit 16 bits
            arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        elif mode in ("L", "RGB", "RGBA"):
            arr = np.asarray(im)
        elif mode in ("1",):
            arr = np.asarray(im.convert("L"))
        elif mode in ("LA", "PA") or (mode == "P" and "transparency" in im.info):
            arr = np.asarray(im.convert("RGBA"))
        else:
            arr = np.asarray(im.convert("RGB"))
    return orient(np.ascontiguousarray(arr), orientation)


def read_picture(path: str | os.PathLike) -> Picture:
    """Read an image file for restoration; :class:`ImageError` with one line if it cannot be read."""
    p = Path(path)
    fmt = image_format(p)
    if not p.is_file():
        raise ImageError(f"{p}: no such image file")
    with read_errors(p):
        if fmt == "TIFF":
            pixels = _read_tiff(p)
        elif fmt == "PNG" and _png_bit_depth(p) == 16:
            pixels = _read_png16(p)
            with Image.open(p) as im:  # Pillow still reads the orientation
                pixels = orient(pixels, im.getexif().get(_ORIENTATION_TAG, 1))
        else:
            pixels = _read_pillow(p)
    return Picture(pixels, fmt)


def _write_png16(f, pixels: np.ndarray) -> None:
    import png

    h, w = pixels.shape[:2]
    planes = 1 if pixels.ndim == 2 else pixels.shape[2]
    writer = png.Writer(width=w, height=h, bitdepth=16, greyscale=planes == 1, alpha=planes == 4)
    writer.write(f, pixels.reshape(h, w * planes))


def write_picture(path: str | os.PathLike, pixels: np.ndarray, fmt: str | None = None, quality: int = 95) -> Path:
    """Write ``pixels`` atomically (temporary file, then rename): a failure leaves no partial file.

    ``fmt`` defaults to the extension's format. 16-bit and alpha are kept where the format holds
    them; asking JPEG/WebP/BMP for 16 bits or JPEG for alpha is an :class:`ImageError`.
    """
    p = Path(path)
    fmt = fmt or image_format(p)
    arr = np.ascontiguousarray(pixels)
    alpha = arr.ndim == 3 and arr.shape[2] == 4
    if arr.dtype == np.uint16 and fmt in _EIGHT_BIT_ONLY:
        raise ImageError(f"{p}: {fmt} cannot hold 16-bit images; write PNG or TIFF (--format png)")
    if alpha and fmt == "JPEG":
        raise ImageError(f"{p}: JPEG cannot hold an alpha channel; write PNG, WebP or TIFF (--format png)")
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{p}: only uint8/uint16 pixels can be written, got {arr.dtype}")
    try:
        with atomic_path(p) as tmp:
            if fmt == "TIFF":
                import tifffile

                tifffile.imwrite(str(tmp), arr, photometric="minisblack" if arr.ndim == 2 else "rgb",
                                 extrasamples=("unassalpha",) if alpha else None)
            elif fmt == "PNG" and arr.dtype == np.uint16 and arr.ndim == 3:
                with open(tmp, "wb") as f:
                    _write_png16(f, arr)
            else:
                image = Image.fromarray(arr)
                options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
                image.save(tmp, format=fmt, **options)
    except ImageError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageError(f"{p}: cannot write image ({reason})") from None
    return p


__all__ = ["FORMATS", "Picture", "image_format", "is_supported", "orient", "read_picture", "write_picture"]
