"""Test-time degradations for every task: bicubic downscaling, Gaussian noise, JPEG.

Why: when a benchmark folder holds only ground truth, the degraded input must be made exactly
the way published numbers were made (docs/evaluation.md), or scores are not comparable.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from agileir.data.io import rgb_to_y_uint8
from agileir.data.resize import Border, imresize
from agileir.errors import ConfigError, ImageError


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so that height and width are multiples of ``scale`` (MATLAB modcrop)."""
    if scale < 1:
        raise ConfigError(f"scale must be >= 1, got {scale}")
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def bicubic_downscale(hr: np.ndarray, scale: int, border: Border = "mirror") -> np.ndarray:
    """LR image = MATLAB ``imresize(modcrop(hr, scale), 1/scale, 'bicubic')`` (uint8 in, uint8 out).

    ``border="mirror"`` gives the EDSR/SwinIR benchmark files, ``"replicate"`` the legacy ones.
    """
    scale = int(scale)
    if scale < 1:
        raise ConfigError(f"scale must be >= 1, got {scale}")
    gt = modcrop(hr, scale)
    if gt.shape[0] < scale or gt.shape[1] < scale:
        raise ImageError(f"image of size {hr.shape[:2]} is smaller than the scale {scale}")
    if scale == 1:
        return gt.copy()
    out_shape = (gt.shape[0] // scale, gt.shape[1] // scale)
    return imresize(gt, 1.0 / scale, border, output_shape=out_shape)


def bicubic_upscale(lr: np.ndarray, scale: int, border: Border = "mirror") -> np.ndarray:
    """The bicubic baseline: MATLAB ``imresize(lr, scale, 'bicubic')``, uint8 output."""
    return imresize(lr, float(scale), border)


def add_gaussian_noise(image: np.ndarray, sigma: float,
                       seed: int | None | np.random.Generator = 0) -> np.ndarray:
    """Noisy float image: ``image / 255 + N(0, sigma / 255)``, float32, **not** clipped.

    ``image`` is uint8 (0-255) or float in [0, 1]; ``sigma`` is in 0-255 units. With an integer
    ``seed`` (the evaluation protocol) the generator is numpy's legacy ``RandomState(seed)``
    drawn in the image's ``(H, W[, C])`` order, seeded per image so that results do not depend
    on the order images are processed; training passes its per-sample ``Generator``.
    """
    if sigma < 0:
        raise ConfigError(f"noise sigma must be >= 0, got {sigma}")
    arr = np.asarray(image)
    x = arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.RandomState(seed)
    noisy = x + rng.normal(0.0, sigma / 255.0, size=x.shape)
    return noisy.astype(np.float32)


def jpeg_compress(image: np.ndarray, quality: int, gray: bool = False) -> np.ndarray:
    """Encode to JPEG at ``quality`` with Pillow (libjpeg, 4:2:0 chroma, standard tables)
    and decode again; uint8 in, uint8 out.

    ``gray=True`` first reduces colour input to studio-range BT.601 Y rounded to uint8
    (:func:`agileir.data.io.rgb_to_y_uint8`, what gray JPEG models are tested on) and returns
    ``(H, W)``. The encoded bytes are identical to OpenCV's ``imencode`` (which made SwinIR's
    JPEG data) at the benchmark qualities: both use libjpeg(-turbo) with the same defaults.
    """
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageError("jpeg_compress expects a uint8 image")
    if gray:
        arr = rgb_to_y_uint8(arr)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    # 4:2:0 for colour only: on one channel Pillow would write 2x2 sampling factors, OpenCV 1x1
    options = {"subsampling": "4:2:0"} if arr.ndim == 3 else {}
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality), **options)
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("L" if arr.ndim == 2 else "RGB"))
    return np.ascontiguousarray(out)


__all__ = [
    "modcrop",
    "bicubic_downscale",
    "bicubic_upscale",
    "add_gaussian_noise",
    "jpeg_compress",
]
