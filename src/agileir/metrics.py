"""Image-quality metrics with the conventions of the SR literature (docs/evaluation.md).

Why a module of our own: library defaults differ (YIQ luma, padded or downsampled SSIM), which
moves scores by more than the gaps papers report. Here:

* inputs are ``uint8`` images (``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB), i.e. model
  outputs are clamped, scaled to 255 and rounded *before* measuring;
* ``crop_border`` pixels are removed from every side (the scale for SR, 0 for denoise/JPEG);
* ``y_channel=True`` measures BT.601 studio-range luma
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in [0, 1]) in float64, not rounded.
  A one-channel (grayscale) image is treated as the RGB image with three equal channels,
  so its Y is ``16 + 219/255 * gray``; this is what a colour pipeline that reads the gray file
  as RGB (Set14 ``bridge``) measures;
* PSNR is ``10 log10(255^2 / MSE)`` in float64 (MSE over all pixels and channels);
* SSIM is Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, population statistics, valid region only, no downsampling; colour SSIM is the mean
  over the channels. It equals scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)``;
* PSNR-B (Yim & Bovik 2011) adds the blocking effect factor of the *tested* image (8x8 grid)
  to the MSE, per channel, and averages the per-channel values;
* a data set's score is the mean of the per-image scores (:func:`mean_metrics`).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def _as_hwc(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"{name}: expected an (H, W), (H, W, 1) or (H, W, 3) image, got {arr.shape}")
    return arr


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma in float64, ``(H, W)``, values in [16, 235] for uint8 input.

    Accepts uint8 (0-255) RGB or gray; gray is treated as equal R = G = B.
    """
    arr = _as_hwc(image, "image").astype(np.float64)
    if arr.shape[2] == 1:
        return 16.0 + arr[:, :, 0] / 255.0 * float(_Y_WEIGHTS.sum())
    return 16.0 + (arr / 255.0) @ _Y_WEIGHTS


def _prepare(
    img: np.ndarray, ref: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    a = _as_hwc(img, "img")
    b = _as_hwc(ref, "ref")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"image sizes differ: {a.shape[:2]} vs {b.shape[:2]}")
    if a.shape[2] != b.shape[2]:
        # a gray reference against an RGB result (or vice versa): compare as RGB
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        else:
            b = np.repeat(b, 3, axis=2)
    if crop_border < 0:
        raise ValueError("crop_border must be >= 0")
    if crop_border:
        c = int(crop_border)
        if a.shape[0] <= 2 * c or a.shape[1] <= 2 * c:
            raise ValueError(f"image {a.shape[:2]} too small for crop_border={c}")
        a = a[c:-c, c:-c]
        b = b[c:-c, c:-c]
    if y_channel:
        return rgb_to_y(a)[:, :, None], rgb_to_y(b)[:, :, None]
    return a.astype(np.float64), b.astype(np.float64)


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB (peak 255) between two uint8 images.

    ``inf`` for identical images.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _gaussian_1d(sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _correlate_valid_axis0(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """'valid' correlation along axis 0 with a symmetric odd-length kernel (pairs of taps
    are added first: fewer passes over memory)."""
    n = len(k)
    r = n // 2
    m = x.shape[0] - n + 1
    out = np.multiply(x[r : r + m], k[r])
    tmp = np.empty_like(out)
    for i in range(r):
        np.add(x[i : i + m], x[n - 1 - i : n - 1 - i + m], out=tmp)
        tmp *= k[i]
        out += tmp
    return out


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D array with the symmetric 1-D kernel ``k`` on both axes."""
    rows = _correlate_valid_axis0(x, k)
    return np.ascontiguousarray(_correlate_valid_axis0(np.ascontiguousarray(rows.T), k).T)


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    k = _gaussian_1d()
    mu_a = _filter_valid(a, k)
    mu_b = _filter_valid(b, k)
    var_a = _filter_valid(a * a, k) - mu_a * mu_a
    var_b = _filter_valid(b * b, k) - mu_b * mu_b
    cov = _filter_valid(a * b, k) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return num / den


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity (Wang et al. 2004) between two uint8 images; mean over channels."""
    a, b = _prepare(sr, hr, crop_border, y_channel)
    if a.shape[0] < 11 or a.shape[1] < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[:2]}")
    return float(np.mean([_ssim_map(a[:, :, c], b[:, :, c]).mean() for c in range(a.shape[2])]))


def blocking_effect_factor(image: np.ndarray, block_size: int = 8) -> float:
    """Blocking effect factor (Yim & Bovik 2011) of one 2-D channel (float, 0-255 units).

    ``eta * (D_B - D_Bc)`` where ``D_B`` / ``D_Bc`` are the mean squared differences of
    horizontally and vertically neighbouring pixels across / not across the block grid, and
    ``eta = log2(B) / log2(min(H, W))`` when ``D_B > D_Bc`` (else 0).
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("blocking_effect_factor expects a 2-D array")
    h, w = x.shape
    dh = (x[:, :-1] - x[:, 1:]) ** 2  # pair (j, j+1), across a boundary when (j+1) % B == 0
    dv = (x[:-1, :] - x[1:, :]) ** 2
    col_b = (np.arange(1, w) % block_size) == 0
    row_b = (np.arange(1, h) % block_size) == 0
    n_b = dh[:, col_b].size + dv[row_b, :].size
    n_bc = dh[:, ~col_b].size + dv[~row_b, :].size
    if n_b == 0 or n_bc == 0:
        return 0.0
    d_b = (dh[:, col_b].sum() + dv[row_b, :].sum()) / n_b
    d_bc = (dh[:, ~col_b].sum() + dv[~row_b, :].sum()) / n_bc
    if d_b <= d_bc or min(h, w) < 2:
        return 0.0
    eta = math.log2(block_size) / math.log2(min(h, w))
    return float(eta * (d_b - d_bc))


def psnr_b(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR-B (Yim & Bovik 2011) of the tested image ``img`` against ``ref``, in dB.

    ``10 log10(255^2 / (MSE + BEF(img)))`` per channel, averaged over channels. The block grid
    is that of the cropped image, so use ``crop_border=0`` (the JPEG convention).
    """
    a, b = _prepare(img, ref, crop_border, y_channel)
    values = []
    for c in range(a.shape[2]):
        mse = float(np.mean((a[:, :, c] - b[:, :, c]) ** 2))
        total = mse + blocking_effect_factor(a[:, :, c])
        values.append(math.inf if total == 0 else 10.0 * math.log10(255.0 * 255.0 / total))
    return float(np.mean(values))


def evaluate_pair(
    out: np.ndarray,
    gt: np.ndarray,
    crop_border: int = 0,
    with_psnrb: bool = False,
    gray_is_y: bool = False,
) -> dict[str, float]:
    """All per-image scores: ``psnr``, ``ssim`` (RGB / gray), ``psnr_y``, ``ssim_y`` and,
    with ``with_psnrb``, ``psnrb`` and ``psnrb_y``.

    ``gray_is_y``: when both images have one channel, take the gray values themselves as the
    luma (the convention of one-channel denoising / JPEG models) instead of ``16 + 219/255 g``.
    """
    one_channel = np.asarray(out).ndim == 2 or np.asarray(out).shape[2] == 1
    one_channel = one_channel and (np.asarray(gt).ndim == 2 or np.asarray(gt).shape[2] == 1)
    use_y = not (gray_is_y and one_channel)
    res = {
        "psnr": psnr(out, gt, crop_border),
        "ssim": ssim(out, gt, crop_border),
    }
    res["psnr_y"] = psnr(out, gt, crop_border, y_channel=True) if use_y else res["psnr"]
    res["ssim_y"] = ssim(out, gt, crop_border, y_channel=True) if use_y else res["ssim"]
    if with_psnrb:
        res["psnrb"] = psnr_b(out, gt, crop_border)
        res["psnrb_y"] = psnr_b(out, gt, crop_border, y_channel=True) if use_y else res["psnrb"]
    return res


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Data-set score: the mean of each key over the per-image rows (keys of the first row)."""
    rows = list(rows)
    if not rows:
        return {}
    return {k: float(np.mean([float(r[k]) for r in rows])) for k in rows[0]}


__all__ = [
    "rgb_to_y",
    "psnr",
    "ssim",
    "psnr_b",
    "blocking_effect_factor",
    "evaluate_pair",
    "mean_metrics",
]
