"""Reading and writing users' images in their own format: bit depth, alpha, orientation, colour
profile and EXIF kept.

Why a second reader beside :mod:`agileir.data.io`: evaluation wants plain 8-bit RGB/gray, but a
user's photo may be 16-bit, carry an alpha channel or an EXIF orientation, and the restored file
should come back the same way. Pillow reads most formats; it reduces 16-bit colour to 8 bits, so
16-bit colour PNG goes through pypng and TIFF through tifffile. Pixels are returned upright
(EXIF orientation applied), as ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` arrays of ``uint8``
or ``uint16``. The ICC profile (any format that holds one) and the EXIF block (JPEG, PNG, WebP)
are carried to the output: dropping a Display P3 profile shifts a phone photo's colours, and
EXIF holds the camera and date. Orientation is applied once to the pixels, so the written EXIF
says "upright" and gives the new pixel dimensions.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agileir.data.io import FORMATS, check_pixels, read_errors
from agileir.errors import ImageError
from agileir.fileio import atomic_path

_EIGHT_BIT_ONLY = ("JPEG", "WEBP", "BMP", "PPM")
_ORIENTATION_TAG = 0x0112
_EXIF_IFD, _PIXEL_X, _PIXEL_Y = 0x8769, 0xA002, 0xA003
_TIFF_ICC_TAG = 34675
_EXIF_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
# TIFF keeps its EXIF in the first IFD beside the structural tags: only these are carried over,
# with the Exif and GPS sub-IFDs (the structure of the output is its writer's)
_TIFF_DESCRIPTIVE_TAGS = (270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 33432)
_GPS_IFD = 0x8825
_ICC_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")


def _pillow_metadata(im: Image.Image) -> tuple[bytes | None, bytes | None, int]:
    """(ICC profile, EXIF bytes, orientation) of an open Pillow image."""
    exif = im.getexif()
    orientation = int(exif.get(_ORIENTATION_TAG, 1))
    return im.info.get("icc_profile") or None, exif.tobytes() if len(exif) else None, orientation


def exif_for_output(exif: bytes, width: int, height: int) -> bytes:
    """The EXIF block for upright pixels of ``width x height``: orientation 1, new dimensions."""
    parsed = Image.Exif()
    parsed.load(exif)
    if _ORIENTATION_TAG in parsed:
        parsed[_ORIENTATION_TAG] = 1
    ifd = parsed.get_ifd(_EXIF_IFD)
    for tag, value in ((_PIXEL_X, width), (_PIXEL_Y, height)):
        if tag in ifd:
            ifd[tag] = value
    return parsed.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _png_metadata_chunks(icc: bytes | None, exif: bytes | None) -> bytes:
    """iCCP and eXIf chunks (PNG spec 11.3.3.3 and the 2017 eXIf extension) for pypng's files."""
    out = b""
    if icc:
        out += _png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc))
    if exif:
        out += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    return out


@dataclass
class Picture:
    """Pixels of an image file and what is needed to write the result back the same way."""

    pixels: np.ndarray  # (H, W), (H, W, 3) or (H, W, 4); uint8 or uint16; upright
    format: str  # Pillow format name (PNG, JPEG, ...)
    icc_profile: bytes | None = None  # the embedded colour profile, as stored
    exif: bytes | None = None  # the EXIF block as stored (orientation still in it; write_picture resets it)


@dataclass(frozen=True)
class PictureInfo:
    """What :func:`read_picture` will return for a file, learnt from its header alone.

    Why: a command can check every input against its options (output format, model window)
    before the first image spends minutes in the model.
    """

    width: int  # upright (EXIF orientation applied), like read_picture's pixels
    height: int
    channels: int  # 1, 3 or 4 (alpha)
    bits: int  # 8 or 16
    format: str  # Pillow format name


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


def _read_tiff(path: Path) -> tuple[np.ndarray, bytes | None]:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            shape = page.shape
            planar = len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4)
            check_pixels(path, *((shape[2], shape[1]) if planar else (shape[1], shape[0])))
            arr = page.asarray()
            tag = page.tags.get(274)  # Orientation
            orientation = int(tag.value) if tag is not None else 1
            icc_tag = page.tags.get(_TIFF_ICC_TAG)
            icc = bytes(icc_tag.value) if icc_tag is not None else None
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise ImageError(f"{path}: cannot read image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar storage
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageError(f"{path}: unsupported TIFF layout {arr.shape} {arr.dtype} (8/16-bit gray, RGB or RGBA expected)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return orient(arr, orientation), icc


def _tiff_exif(path: Path) -> bytes | None:
    """The descriptive EXIF of a TIFF (camera, date, Exif and GPS sub-IFDs), or None."""
    try:
        with Image.open(path) as im:
            src = im.getexif()
            out = Image.Exif()
            for tag in _TIFF_DESCRIPTIVE_TAGS:
                if tag in src:
                    out[tag] = src[tag]
            for ifd in (_EXIF_IFD, _GPS_IFD):
                sub = src.get_ifd(ifd)
                if sub:
                    out.get_ifd(ifd).update(sub)
            return out.tobytes() if set(out) - {274, 282, 283, 296} or out.get_ifd(_EXIF_IFD) else None
    except Exception:  # metadata Pillow cannot parse: the pixels (read by tifffile) still count
        return None


def _read_pillow(path: Path) -> tuple[np.ndarray, bytes | None, bytes | None]:
    with Image.open(path) as im:
        check_pixels(path, *im.size)
        im.load()
        icc, exif, orientation = _pillow_metadata(im)
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
    return orient(np.ascontiguousarray(arr), orientation), icc, exif


def _pillow_layout(mode: str, info: dict) -> tuple[int, int]:
    """(channels, bits) that :func:`_read_pillow` makes of an image of this Pillow mode."""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return 1, 16
    if mode in ("L", "1"):
        return 1, 8
    if mode == "RGBA" or mode in ("LA", "PA") or (mode == "P" and "transparency" in info):
        return 4, 8
    return 3, 8


def _png16_channels(path: Path) -> int:
    """Channels :func:`_read_png16` gives: from IHDR's colour type, plus alpha from a tRNS chunk."""
    with open(path, "rb") as f:
        head = f.read(33)
        colour = head[25]
        has_trns = False
        f.seek(8)
        while True:  # chunk headers up to the first IDAT: length, type
            chunk = f.read(8)
            if len(chunk) < 8 or chunk[4:] == b"IDAT":
                break
            if chunk[4:] == b"tRNS":
                has_trns = True
            f.seek(int.from_bytes(chunk[:4], "big") + 4, os.SEEK_CUR)
    base = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if base is None:
        raise ImageError(f"{path}: cannot read image (16-bit PNG with colour type {colour})")
    planes = base + (1 if has_trns and base in (1, 3) else 0)
    return {1: 1, 2: 4, 3: 3, 4: 4}[planes]


def _tiff_info(path: Path) -> tuple[int, int, int, int, int]:
    """(height, width, channels, bits, orientation) of the first page, as :func:`_read_tiff` reads it."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            shape, dtype = tuple(page.shape), np.dtype(page.dtype)
            tag = page.tags.get(274)
            orientation = int(tag.value) if tag is not None else 1
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise ImageError(f"{path}: cannot read image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
        shape = (shape[1], shape[2], shape[0])  # planar storage
    if dtype not in (np.uint8, np.uint16) or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise ImageError(f"{path}: unsupported TIFF layout {shape} {dtype} (8/16-bit gray, RGB or RGBA expected)")
    channels = 1 if len(shape) == 2 else shape[2]
    return shape[0], shape[1], channels, 8 * dtype.itemsize, orientation


def _existing_image(path: str | os.PathLike) -> tuple[Path, str]:
    """The path and its format, or a one-line :class:`ImageError` (unsupported or missing)."""
    p = Path(path)
    fmt = image_format(p)
    if not p.is_file():
        raise ImageError(f"{p}: no such image file")
    return p, fmt


def probe_picture(path: str | os.PathLike) -> PictureInfo:
    """Size, channels and bit depth :func:`read_picture` would give, from the header only (cheap).

    A file whose header reads but whose pixels are corrupt passes here and fails in
    :func:`read_picture`; :class:`ImageError` with one line for anything else.
    """
    p, fmt = _existing_image(path)
    with read_errors(p):
        if fmt == "TIFF":
            height, width, channels, bits, orientation = _tiff_info(p)
            check_pixels(p, width, height)
        else:
            with Image.open(p) as im:
                width, height = im.size
                check_pixels(p, width, height)  # before getexif, which may decode a PNG
                orientation = im.getexif().get(_ORIENTATION_TAG, 1)
                if fmt == "PNG" and _png_bit_depth(p) == 16:
                    channels, bits = _png16_channels(p), 16
                else:
                    channels, bits = _pillow_layout(im.mode, im.info)
    if int(orientation) in (5, 6, 7, 8):  # a quarter turn: upright width is the stored height
        width, height = height, width
    return PictureInfo(width, height, channels, bits, fmt)


def check_writable(path: str | os.PathLike, fmt: str, channels: int, bits: int) -> None:
    """:class:`ImageError` when format ``fmt`` cannot hold ``channels``/``bits`` (e.g. alpha in JPEG).

    The same rule :func:`write_picture` applies, callable before the pixels exist.
    """
    if bits == 16 and fmt in _EIGHT_BIT_ONLY:
        raise ImageError(f"{path}: {fmt} cannot hold 16-bit images; write PNG or TIFF (--format png)")
    if channels == 4 and fmt == "JPEG":
        raise ImageError(f"{path}: JPEG cannot hold an alpha channel; write PNG, WebP or TIFF (--format png)")


def read_picture(path: str | os.PathLike) -> Picture:
    """Read an image file for restoration; :class:`ImageError` with one line if it cannot be read."""
    p, fmt = _existing_image(path)
    icc = exif = None
    with read_errors(p):
        if fmt == "TIFF":
            pixels, icc = _read_tiff(p)
            exif = _tiff_exif(p)
        elif fmt == "PNG" and _png_bit_depth(p) == 16:
            with Image.open(p) as im:  # the size and metadata from Pillow, the pixels from pypng
                check_pixels(p, *im.size)
                im.load()
                icc, exif, orientation = _pillow_metadata(im)
            pixels = orient(_read_png16(p), orientation)
        else:
            pixels, icc, exif = _read_pillow(p)
    return Picture(pixels, fmt, icc, exif)


def _write_png16(f, pixels: np.ndarray) -> None:
    import png

    h, w = pixels.shape[:2]
    planes = 1 if pixels.ndim == 2 else pixels.shape[2]
    writer = png.Writer(width=w, height=h, bitdepth=16, greyscale=planes == 1, alpha=planes == 4)
    writer.write(f, pixels.reshape(h, w * planes))


def write_picture(path: str | os.PathLike, pixels: np.ndarray, fmt: str | None = None, quality: int = 95, *,
                  icc_profile: bytes | None = None, exif: bytes | None = None) -> Path:
    """Write ``pixels`` atomically (temporary file, then rename): a failure leaves no partial file.

    ``fmt`` defaults to the extension's format. 16-bit and alpha are kept where the format holds
    them; asking JPEG/WebP/BMP for 16 bits or JPEG for alpha is an :class:`ImageError`
    (:func:`check_writable`). ``quality`` (1-100) is the JPEG and WebP quality. ``icc_profile``
    is embedded where the format holds one (JPEG, PNG, WebP, TIFF), ``exif`` (as read) in JPEG,
    PNG, WebP and TIFF (not 16-bit colour TIFF, which tifffile writes), with the orientation
    reset and the pixel dimensions of ``pixels``.
    """
    p = Path(path)
    fmt = fmt or image_format(p)
    arr = np.ascontiguousarray(pixels)
    alpha = arr.ndim == 3 and arr.shape[2] == 4
    check_writable(p, fmt, 4 if alpha else 1, 16 if arr.dtype == np.uint16 else 8)
    if not 1 <= int(quality) <= 100:
        raise ImageError(f"{p}: quality must be 1-100, got {quality}")
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{p}: only uint8/uint16 pixels can be written, got {arr.dtype}")
    icc = icc_profile if fmt in _ICC_FORMATS else None
    exif = exif_for_output(exif, arr.shape[1], arr.shape[0]) if exif and fmt in _EXIF_FORMATS else None
    try:
        with atomic_path(p) as tmp:
            if fmt == "TIFF" and arr.dtype == np.uint16 and arr.ndim == 3:  # Pillow writes no 16-bit colour
                import tifffile

                tifffile.imwrite(str(tmp), arr, photometric="minisblack" if arr.ndim == 2 else "rgb",
                                 extrasamples=("unassalpha",) if alpha else None, iccprofile=icc)
            elif fmt == "PNG" and arr.dtype == np.uint16 and arr.ndim == 3:
                buf = io.BytesIO()
                _write_png16(buf, arr)
                data = buf.getvalue()  # pypng writes no iCCP / eXIf: insert them after IHDR (8 + 25 bytes)
                tmp.write_bytes(data[:33] + _png_metadata_chunks(icc, exif) + data[33:])
            else:
                image = Image.fromarray(arr)
                options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
                if icc:
                    options["icc_profile"] = icc
                if exif:
                    options["exif"] = exif
                image.save(tmp, format=fmt, **options)
    except ImageError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageError(f"{p}: cannot write image ({reason})") from None
    return p


__all__ = ["FORMATS", "Picture", "PictureInfo", "image_format", "is_supported", "orient", "probe_picture",
           "check_writable", "read_picture", "write_picture"]
