"""Real-world degradation (data/realworld.py) against independent references: closed-form
kernels and their moments, scipy's convolution, Pillow's JPEG encoder, noise statistics."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from agileir.data import realworld as rw
from agileir.data.io import read_image
from agileir.errors import ConfigError

SET5 = Path(rw.__file__).resolve().parents[1] / "assets" / "testdata" / "Set5" / "HR"


def _set5(name: str) -> np.ndarray:
    return read_image(SET5 / name)


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("seed", range(5))
def test_every_random_kernel_sums_to_one_and_stays_in_its_support(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    stage = rw.Stage(sinc_prob=0.3, kernel_size=(7, 13))
    kernels = rw.random_blur_kernels(g, stage, 64)
    assert kernels.shape == (64, rw.MAX_KERNEL, rw.MAX_KERNEL)
    np.testing.assert_allclose(kernels.sum(dim=(1, 2)).numpy(), 1.0, atol=1e-12)
    outside = rw.MAX_KERNEL // 2 - 13 // 2  # no kernel reaches beyond 13x13
    assert kernels[:, :outside].abs().max() == 0 and kernels[:, :, -outside:].abs().max() == 0


def test_isotropic_gaussian_is_the_closed_form() -> None:
    s = torch.tensor([1.3], dtype=torch.float64)
    k = rw.gaussian_kernels(torch.tensor([9]), s, s, torch.tensor([0.0]))[0]
    y, x = np.mgrid[-10:11, -10:11]
    ref = np.exp(-(x ** 2 + y ** 2) / (2 * 1.3 ** 2)) * ((abs(x) <= 4) & (abs(y) <= 4))
    np.testing.assert_allclose(k.numpy(), ref / ref.sum(), rtol=1e-12, atol=1e-15)


def test_anisotropic_gaussian_has_the_rotated_covariance() -> None:
    theta = math.pi / 6
    k = rw.gaussian_kernels(torch.tensor([21]), torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([theta]))[0]
    y, x = np.mgrid[-10:11, -10:11]
    k = k.numpy()
    cov = np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    np.testing.assert_allclose(cov, r @ np.diag([4.0, 1.0]) @ r.T, atol=1e-4)  # truncation at 5 sigma


def test_generalized_and_plateau_shapes() -> None:
    one = torch.tensor([1.5], dtype=torch.float64)
    size = torch.tensor([21])
    gauss = rw.gaussian_kernels(size, one, one, torch.tensor([0.0]))[0]
    gen_1 = rw.gaussian_kernels(size, one, one, torch.tensor([0.0]), torch.tensor([1.0]), "generalized")[0]
    torch.testing.assert_close(gen_1, gauss)  # beta = 1 is the Gaussian
    flat = rw.gaussian_kernels(size, one, one, torch.tensor([0.0]), torch.tensor([4.0]), "generalized")[0]
    assert flat[10, 10] / flat[10, 11] < gauss[10, 10] / gauss[10, 11]  # beta > 1: flatter top
    plateau = rw.gaussian_kernels(size, one, one, torch.tensor([0.0]), torch.tensor([2.0]), "plateau")[0]
    d = (np.arange(21) - 10) ** 2 / 1.5 ** 2
    ref = 1 / (1 + d ** 2)  # along the centre row, 1 / (1 + d^beta), before normalisation
    np.testing.assert_allclose((plateau[10] / plateau[10, 10]).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("cutoff", [math.pi / 3, math.pi / 2])
def test_sinc_kernel_is_a_low_pass_at_its_cutoff(cutoff: float) -> None:
    k = rw.sinc_kernels(torch.tensor([21]), torch.tensor([cutoff]))[0].numpy()
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    response = np.abs(np.fft.fftshift(np.fft.fft2(k, s=(128, 128))))
    f = np.fft.fftshift(np.fft.fftfreq(128)) * 2 * np.pi
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    assert response[radius < 0.7 * cutoff].min() > 0.8  # pass band (21 taps: some ripple)
    assert response[radius > 1.3 * cutoff].mean() < 0.05  # stop band


def test_filter_batch_matches_scipy_per_image() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((2, 3, 30, 26)))
    kernels = rw.random_blur_kernels(torch.Generator().manual_seed(1), rw.Stage(), 2)
    out = rw.filter_batch(images, kernels).numpy()
    for b in range(2):
        for c in range(3):
            ref = ndimage.correlate(images[b, c].numpy(), kernels[b].numpy(), mode="mirror")
            np.testing.assert_allclose(out[b, c], ref, atol=1e-12)


# ----------------------------------------------------------------------------- JPEG


def test_quantization_tables_follow_the_standard_scaling() -> None:
    luma, chroma = rw.quantization_tables(torch.tensor([50, 100, 10]))
    assert luma[0].flatten().tolist() == rw._LUMA_TABLE and chroma[0].flatten().tolist() == rw._CHROMA_TABLE
    assert luma[1].max() == 1 and chroma[1].max() == 1
    assert luma[2, 0, 0] == (16 * 500 + 50) // 100


def _pillow_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert(Image.fromarray(image).mode))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


@pytest.mark.parametrize("quality", [10, 30, 50, 90])
def test_jpeg_has_the_distortion_of_pillows_encoder_at_the_same_quality(quality: int) -> None:
    """Float DCT against libjpeg's integer DCT: coefficients on a rounding boundary may land on
    either side, so pixels differ a little, but the distortion is the encoder's at that quality
    (far closer to it than to the encoder's at quality +-5)."""
    for path in sorted(SET5.glob("*.png")):
        image = read_image(path)
        t = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        ours = rw.jpeg_batch(t, torch.tensor([quality]))[0].permute(1, 2, 0).numpy() * 255
        np.testing.assert_allclose(ours, np.round(ours))  # on the 8-bit grid
        pillow = _pillow_jpeg(image, quality)
        ref = _mse(pillow, image)
        gap = min(abs(_mse(_pillow_jpeg(image, q), image) - ref) for q in (quality - 5, min(quality + 5, 100)))
        assert abs(_mse(ours, image) - ref) < min(0.3 * gap, 0.06 * ref), path.name
        if quality <= 30:
            assert _mse(ours, pillow) < 0.15 * ref, path.name  # most of the error is the same error


def test_gray_jpeg_matches_pillow() -> None:
    gray = np.asarray(Image.fromarray(_set5("bird.png")).convert("L"))
    pillow = _pillow_jpeg(gray, 20)
    ours = rw.jpeg_batch(torch.from_numpy(gray.copy())[None, None].float() / 255, torch.tensor([20]))[0, 0] * 255
    ref = _mse(pillow, gray)
    assert abs(_mse(ours.numpy(), gray) - ref) < 0.06 * ref and _mse(ours.numpy(), pillow) < 0.15 * ref


# ----------------------------------------------------------------------------- noise


def _noise_only(**kw) -> rw.Stage:
    return rw.Stage(blur_prob=0.0, resize_kinds=(0, 0, 1), **kw)


def test_gaussian_noise_statistics() -> None:
    images = torch.full((4, 3, 128, 128), 0.5, dtype=torch.float64)
    stage = _noise_only(gaussian_noise_prob=1.0, noise_sigma=(10.0, 10.0), gray_noise_prob=0.0)
    noise = rw._random_noise(torch.Generator().manual_seed(0), images, stage) - images
    n = noise.numel()
    assert abs(float(noise.mean())) < 4 * (10 / 255) / math.sqrt(n)
    assert float(noise.std()) == pytest.approx(10 / 255, rel=4 * math.sqrt(1 / (2 * n)))
    assert not torch.equal(noise[:, 0], noise[:, 1])  # colour noise: channels independent


def test_gray_noise_is_the_same_on_every_channel() -> None:
    images = torch.full((2, 3, 32, 32), 0.5, dtype=torch.float64)
    for gaussian in (1.0, 0.0):
        stage = _noise_only(gaussian_noise_prob=gaussian, gray_noise_prob=1.0)
        noise = rw._random_noise(torch.Generator().manual_seed(3), images, stage) - images
        assert torch.equal(noise[:, 0], noise[:, 1]) and torch.equal(noise[:, 1], noise[:, 2])
        assert float(noise.abs().max()) > 0


def test_poisson_noise_statistics() -> None:
    level = 0.4
    images = torch.full((4, 3, 128, 128), level, dtype=torch.float64)
    stage = _noise_only(gaussian_noise_prob=0.0, poisson_scale=(1.0, 1.0), gray_noise_prob=0.0)
    noise = rw._random_noise(torch.Generator().manual_seed(0), images, stage) - images
    n = noise.numel()
    expected = math.sqrt(level / 255)  # counts ~ Poisson(255 * level), divided by 255
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(n)
    assert float(noise.std()) == pytest.approx(expected, rel=0.02)


# ----------------------------------------------------------------------------- the pipeline


def _hr_batch() -> torch.Tensor:
    image = torch.from_numpy(_set5("baby.png").copy()).permute(2, 0, 1).double() / 255
    return torch.stack([image[:, 40 * i: 40 * i + 96, 30 * i: 30 * i + 96] for i in range(4)]).float()


@pytest.mark.parametrize("scale", [2, 4])
def test_pipeline_is_seeded_and_lands_on_the_8bit_grid(scale: int) -> None:
    hr = _hr_batch()
    degrade = rw.RealWorldDegradation(scale=scale)
    lr = degrade(hr, (0, 5))
    assert lr.shape == (4, 3, 96 // scale, 96 // scale) and lr.dtype == torch.float32
    assert float(lr.min()) >= 0 and float(lr.max()) <= 1
    torch.testing.assert_close(lr * 255, torch.round(lr * 255), atol=1e-4, rtol=0)
    assert torch.equal(lr, degrade(hr, (0, 5)))
    assert not torch.equal(lr, degrade(hr, (0, 6)))


def test_jpeg_qualities_are_integers_in_the_configured_range(monkeypatch) -> None:
    seen: list[float] = []
    real = rw.jpeg_batch

    def spy(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        seen.extend(quality.tolist())
        return real(images, quality)

    monkeypatch.setattr(rw, "jpeg_batch", spy)
    settings = rw.RealWorldSettings.from_mapping({"first": {"jpeg_quality": [40, 60]},
                                                  "second": {"jpeg_quality": [40, 60]}})
    degrade = rw.RealWorldDegradation(settings, scale=4)
    hr = _hr_batch()
    for seed in range(12):
        degrade(hr, seed)
    assert len(seen) == 12 * 2 * 4
    assert all(q == int(q) and 40 <= q <= 60 for q in seen)
    assert min(seen) <= 42 and max(seen) >= 58


def test_settings_reject_unknown_and_out_of_range_options() -> None:
    assert rw.RealWorldSettings.from_mapping({"first": {"noise_sigma": [1, 5]}}).first.noise_sigma == (1.0, 5.0)
    for bad, words in (({"first": {"sigma": 1}}, "unknown option realworld.first.sigma"),
                       ({"second": {"blur_prob": 1.5}}, "realworld.second.blur_prob"),
                       ({"first": {"jpeg_quality": [90, 30]}}, "realworld.first.jpeg_quality"),
                       ({"first": {"kernel_size": [8, 8]}}, "no odd size"),
                       ({"final_sinc_prob": -1}, "final_sinc_prob"),
                       ({"colour": True}, "unknown option realworld.colour")):
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            rw.RealWorldSettings.from_mapping(bad)


def test_cut_context_keeps_the_aligned_centre_of_the_pair() -> None:
    """LR pixel (i, j) of the cut pair is LR (i + c, j + c) of the degraded crop, and its HR block is
    the one under it: the pair stays aligned at any scale."""
    scale, c = 3, 2
    lr = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    hr = torch.arange(2 * 3 * 30 * 36, dtype=torch.float32).reshape(2, 3, 30, 36)
    small_lr, small_hr = rw.cut_context(lr, hr, c)
    assert small_lr.shape[-2:] == (6, 8) and small_hr.shape[-2:] == (18, 24)
    lr_np, hr_np = lr.numpy(), hr.numpy()
    for i, j in ((0, 0), (5, 7), (2, 4)):
        assert small_lr[1, 2, i, j] == lr_np[1, 2, i + c, j + c]
        assert np.array_equal(small_hr[1, 2, i * scale:(i + 1) * scale, j * scale:(j + 1) * scale].numpy(),
                              hr_np[1, 2, (i + c) * scale:(i + c + 1) * scale, (j + c) * scale:(j + c + 1) * scale])
    same_lr, same_hr = rw.cut_context(lr, hr, 0)
    assert same_lr is lr and same_hr is hr
