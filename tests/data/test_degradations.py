"""Degradations for every task and the image I/O conventions."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agileir.data.degradations import (
    add_gaussian_noise,
    bicubic_downscale,
    bicubic_upscale,
    jpeg_compress,
    modcrop,
)
from agileir.data.io import (
    read_image,
    rgb_to_gray,
    rgb_to_y_uint8,
    tensor_to_uint8,
    to_channels,
    uint8_to_tensor,
    write_image,
)
from agileir.errors import AgileIRError, ImageError
from agileir.metrics import psnr


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_modcrop() -> None:
    img = np.zeros((321, 480, 3), dtype=np.uint8)
    assert modcrop(img, 3).shape == (321, 480, 3)
    assert modcrop(img, 4).shape == (320, 480, 3)
    assert modcrop(img, 8).shape == (320, 480, 3)
    assert modcrop(img[:, :, 0], 2).shape == (320, 480)


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_downscale_matches_files(testdata_dir: Path, scale: int) -> None:
    hr = _load(testdata_dir / "Set5" / "HR" / "woman.png")  # 228 x 344: crop needed for x8-style sizes
    lr = _load(testdata_dir / "Set5" / "LR_bicubic" / f"X{scale}" / f"womanx{scale}.png")
    assert np.array_equal(bicubic_downscale(hr, scale, "replicate"), lr)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_bicubic_downscale_shapes(scale: int) -> None:
    hr = np.random.default_rng(0).integers(0, 256, (101, 77, 3), dtype=np.uint8)
    lr = bicubic_downscale(hr, scale)
    assert lr.shape == (101 // scale, 77 // scale, 3) and lr.dtype == np.uint8
    up = bicubic_upscale(lr, scale)
    assert up.shape == modcrop(hr, scale).shape


def test_gaussian_noise_convention() -> None:
    img = np.full((64, 64, 3), 128, dtype=np.uint8)
    a = add_gaussian_noise(img, 25, seed=0)
    b = add_gaussian_noise(img, 25, seed=0)
    c = add_gaussian_noise(img, 25, seed=1)
    assert a.dtype == np.float32 and a.shape == img.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    expected = 128 / 255 + np.random.RandomState(0).normal(0, 25 / 255, img.shape)
    np.testing.assert_allclose(a, expected.astype(np.float32), atol=1e-7)
    assert abs(float((a - 128 / 255).std()) - 25 / 255) < 0.003
    # not clipped: sigma 50 around white goes above 1
    white = add_gaussian_noise(np.full((32, 32), 255, dtype=np.uint8), 50)
    assert white.max() > 1.0 and white.min() < 1.0
    # float input in [0, 1] is used as is
    np.testing.assert_allclose(add_gaussian_noise(img / 255.0, 15), add_gaussian_noise(img, 15), atol=1e-7)


def test_jpeg_matches_pillow_and_degrades_with_quality(testdata_dir: Path) -> None:
    img = _load(testdata_dir / "Set5" / "HR" / "butterfly.png")
    q10 = jpeg_compress(img, 10)
    q40 = jpeg_compress(img, 40)
    assert q10.dtype == np.uint8 and q10.shape == img.shape
    assert psnr(q10, img) < psnr(q40, img) < 40
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=10)
    buf.seek(0)
    assert np.array_equal(q10, np.asarray(Image.open(buf).convert("RGB")))
    assert np.array_equal(jpeg_compress(img, 10), q10)  # deterministic
    gray = jpeg_compress(img, 20, gray=True)
    assert gray.shape == img.shape[:2]
    assert np.array_equal(gray, jpeg_compress(rgb_to_y_uint8(img), 20))
    with pytest.raises(AgileIRError):
        jpeg_compress(img, 0)


def test_gray_conversions() -> None:
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    # full-range luma, OpenCV cvtColor fixed point: (9798 R + 19235 G + 3735 B + 2^14) >> 15
    assert rgb_to_gray(img).tolist() == [[76, 150, 29, 255, 0]]
    # a pixel where float rounding of 0.299/0.587/0.114 and OpenCV's fixed point disagree
    assert rgb_to_gray(np.array([[[208, 73, 4]]], dtype=np.uint8)).tolist() == [[106]]  # float: 105
    # studio-range Y for gray JPEG models: 16 + (65.481 R + 128.553 G + 24.966 B) / 255
    assert rgb_to_y_uint8(img).tolist() == [[81, 145, 41, 235, 16]]
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(rgb_to_gray(gray), gray) and np.array_equal(rgb_to_y_uint8(gray), gray)


def _pillow_jpeg_bytes(arr: np.ndarray, q: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=q, **({"subsampling": "4:2:0"} if arr.ndim == 3 else {}))
    return buf.getvalue()


def test_jpeg_and_gray_match_opencv(testdata_dir: Path) -> None:
    """Bit-identical to OpenCV's imencode/imdecode and cvtColor, which made SwinIR's JPEG data
    (opencv-python-headless is in the test extra; skipped only where it is not installed)."""
    cv2 = pytest.importorskip("cv2")
    img = _load(testdata_dir / "Set5" / "HR" / "butterfly.png")
    assert np.array_equal(rgb_to_gray(img), cv2.cvtColor(img[:, :, ::-1], cv2.COLOR_BGR2GRAY))
    for q in (10, 20, 30, 40):
        # the encoded files themselves, not only the decoded pixels: same bytes, colour and gray
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok and buf.tobytes() == _pillow_jpeg_bytes(img, q)
        ok, buf = cv2.imencode(".jpg", rgb_to_y_uint8(img), [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok and buf.tobytes() == _pillow_jpeg_bytes(rgb_to_y_uint8(img), q)
        assert np.array_equal(jpeg_compress(img, q, gray=True), cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        assert np.array_equal(jpeg_compress(img, q), cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def test_read_write_roundtrip_and_modes(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", rgb)
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    write_image(tmp_path / "g.png", rgb[:, :, :1])
    assert read_image(tmp_path / "g.png").shape == (9, 7)
    Image.fromarray(np.dstack([rgb, np.full((9, 7), 128, np.uint8)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)


def test_read_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageError, match="cannot read image"):
        read_image(bad)
    with pytest.raises(ImageError, match="no such image"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ImageError, match="unsupported image mode"):
        read_image(tmp_path / "deep.png")


def test_tensor_conventions() -> None:
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)
    t = uint8_to_tensor(img)
    assert t.shape == (1, 3, 1, 1) and t.dtype == torch.float32
    assert np.array_equal(tensor_to_uint8(t), img)
    # clamp, scale, round
    x = torch.tensor([-0.2, 0.5 / 255, 1.6 / 255, 1.3]).view(1, 1, 1, 4)
    before = x.clone()
    assert tensor_to_uint8(x).tolist() == [[0, 0, 2, 255]]
    assert torch.equal(x, before), "the caller's tensor must not be clamped or scaled in place"
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert to_channels(gray, 3).shape == (2, 3, 3)
    assert to_channels(np.repeat(gray[:, :, None], 3, 2), 1)[:, :, 0].tolist() == gray.tolist()
