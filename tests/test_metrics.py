"""PSNR / SSIM / PSNR-B conventions (SPEC section 4), checked against scikit-image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agileir.data.resize import imresize
from agileir.metrics import (
    blocking_effect_factor,
    evaluate_pair,
    mean_metrics,
    psnr,
    psnr_b,
    rgb_to_y,
    ssim,
)

skm = pytest.importorskip("skimage.metrics")


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _pairs(root: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """(name, bicubic SR, GT, scale) from LR files: a realistic, imperfect restoration."""
    out = []
    wanted = [("Set5", n, 4) for n in ("baby", "bird", "butterfly", "head", "woman")]
    wanted += [("Set5", "woman", 2), ("Set14", "bridge", 3), ("Set14", "comic", 3), ("B100", "3096", 2)]
    for set_name, name, s in wanted:
        lr_path = root / set_name / "LR_bicubic" / f"X{s}" / f"{name}x{s}.png"
        if not lr_path.exists():
            continue
        lr = _load(lr_path)
        hr = _load(root / set_name / "HR" / f"{name}.png")
        gt = hr[: s * lr.shape[0], : s * lr.shape[1]]
        out.append((f"{set_name}/{name}x{s}", imresize(lr, s), gt, s))
    return out


@pytest.fixture(scope="module")
def pairs(any_benchmarks_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    found = _pairs(any_benchmarks_dir)
    assert len(found) >= 6
    return found


def test_y_metrics_match_scikit_image(pairs) -> None:
    for name, sr, gt, s in pairs:
        y_sr = rgb_to_y(sr)[s:-s, s:-s]
        y_gt = rgb_to_y(gt)[s:-s, s:-s]
        ref_ssim = skm.structural_similarity(
            y_sr, y_gt, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        ref_psnr = skm.peak_signal_noise_ratio(y_gt, y_sr, data_range=255)
        assert abs(ssim(sr, gt, s, y_channel=True) - ref_ssim) < 1e-6, name
        assert abs(psnr(sr, gt, s, y_channel=True) - ref_psnr) < 1e-6, name


def test_rgb_metrics_match_scikit_image(pairs) -> None:
    for name, sr, gt, s in pairs:
        a, b = sr[s:-s, s:-s], gt[s:-s, s:-s]
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        if a.ndim == 3:
            kw["channel_axis"] = -1
        ref_ssim = skm.structural_similarity(a.astype(np.float64), b.astype(np.float64), **kw)
        ref_psnr = skm.peak_signal_noise_ratio(b, a, data_range=255)
        assert abs(ssim(sr, gt, s) - ref_ssim) < 1e-6, name
        assert abs(psnr(sr, gt, s) - ref_psnr) < 1e-6, name


def test_ssim_differs_from_a_padded_or_uniform_window(pairs) -> None:
    # the test above would notice a different window: uniform 7x7 gives another value
    _, sr, gt, s = pairs[0]
    y_sr, y_gt = rgb_to_y(sr)[s:-s, s:-s], rgb_to_y(gt)[s:-s, s:-s]
    uniform = skm.structural_similarity(y_sr, y_gt, data_range=255)
    assert abs(ssim(sr, gt, s, y_channel=True) - uniform) > 1e-4


def test_bt601_luma() -> None:
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    y = rgb_to_y(img)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16.0 + 65.481], atol=1e-12)
    # not rounded
    assert rgb_to_y(np.array([[[1, 2, 3]]], dtype=np.uint8))[0, 0] != round(rgb_to_y(np.array([[[1, 2, 3]]], dtype=np.uint8))[0, 0])
    # a gray image is measured as the RGB image with three equal channels
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_allclose(rgb_to_y(gray), rgb_to_y(np.repeat(gray[:, :, None], 3, 2)), atol=1e-12)


def test_psnr_values_and_crop() -> None:
    a = np.full((20, 20, 3), 100, dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf
    b[:] = 101
    assert psnr(a, b) == pytest.approx(20 * math.log10(255), abs=1e-12)
    c = a.copy()
    c[:2] = 0  # damage only the border rows
    assert psnr(a, c, crop_border=2) == math.inf
    assert psnr(a, c, crop_border=1) < 30
    mse = (2 / 20) * 100**2  # two of twenty rows differ by 100
    assert psnr(a, c) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_metric_argument_errors() -> None:
    a = np.zeros((20, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        psnr(a, a[:10])
    with pytest.raises(ValueError):
        ssim(a[:8, :8], a[:8, :8])
    with pytest.raises(ValueError):
        psnr(a, a, crop_border=10)


def test_blocking_effect_factor_hand_computed() -> None:
    # 16x16, left 8 columns 0, right 8 columns 10: only the 16 pairs across column 7|8 differ
    img = np.zeros((16, 16))
    img[:, 8:] = 10
    # D_B = 16 * 100 / (16 horizontal + 16 vertical boundary pairs) = 50, D_Bc = 0,
    # eta = log2(8) / log2(16) = 0.75 -> BEF = 37.5
    assert blocking_effect_factor(img) == pytest.approx(37.5, abs=1e-12)
    # a step that is not on the 8x8 grid is not blocking
    img2 = np.zeros((16, 16))
    img2[:, 5:] = 10
    assert blocking_effect_factor(img2) == 0.0
    u8 = img.astype(np.uint8)
    assert psnr_b(u8, u8) == pytest.approx(10 * math.log10(255**2 / 37.5), abs=1e-9)
    ref = np.zeros((16, 16), dtype=np.uint8)
    assert psnr_b(img2.astype(np.uint8), ref) == pytest.approx(psnr(img2.astype(np.uint8), ref), abs=1e-12)
    assert psnr_b(u8, ref) < psnr(u8, ref)


def test_evaluate_pair_and_means() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = np.clip(gt.astype(int) + rng.integers(-3, 4, gt.shape), 0, 255).astype(np.uint8)
    res = evaluate_pair(out, gt, crop_border=2, with_psnrb=True)
    assert set(res) == {"psnr", "ssim", "psnr_y", "ssim_y", "psnrb", "psnrb_y"}
    assert res["psnr"] == psnr(out, gt, 2) and res["ssim_y"] == ssim(out, gt, 2, True)
    rows = [{"psnr": 30.0, "ssim": 0.5}, {"psnr": 32.0, "ssim": 0.7}]
    assert mean_metrics(rows) == pytest.approx({"psnr": 31.0, "ssim": 0.6})
    assert mean_metrics([]) == {}


def test_gray_is_y_for_one_channel_models() -> None:
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    out = np.clip(gt.astype(int) + rng.integers(-5, 6, gt.shape), 0, 255).astype(np.uint8)
    studio = evaluate_pair(out, gt)
    direct = evaluate_pair(out, gt, gray_is_y=True)
    assert direct["psnr_y"] == direct["psnr"]
    # studio-range Y compresses the range by 219/255: +1.32 dB
    assert studio["psnr_y"] - direct["psnr_y"] == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
