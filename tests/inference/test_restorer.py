"""Restorer: the same image kind back, channels/alpha/bit depth handled, options checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import agileir
from agileir.data.resize import imresize
from agileir.errors import ConfigError, ImageError
from agileir.inference import restorer as restorer_mod
from agileir.inference.ensemble import inverse_transform, transform
from agileir.inference.restorer import Restorer, auto_tile, inference_bytes_per_pixel

RNG = np.random.default_rng(1)


def _tiny(in_chans: int = 3, scale: int = 2, **kw) -> agileir.RestorationTransformer:
    torch.manual_seed(0)
    model = agileir.build_model("agileir-s", scale=scale, in_chans=in_chans, embed_dim=12, depths=(2,),
                                num_heads=(2,), window_size=4, **kw)
    return model.eval()


def _direct(model, chw: np.ndarray) -> np.ndarray:
    """The model on a float (C, H, W) array, clamped: the reference the conversions must meet."""
    with torch.no_grad():
        y = model(torch.from_numpy(chw.astype(np.float32))[None])[0]
    return y.clamp(0, 1).numpy()


def test_uint8_rgb_matches_the_model_on_the_scaled_tensor():
    model = _tiny()
    img = RNG.integers(0, 256, (13, 10, 3), dtype=np.uint8)
    out = Restorer(model, device="cpu").restore(img)
    ref = np.round(_direct(model, img.transpose(2, 0, 1) / 255.0) * 255).transpose(1, 2, 0)
    assert out.dtype == np.uint8 and out.shape == (26, 20, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # float32 rounding at .5 boundaries


def test_uint16_keeps_sixteen_bit_precision():
    model = _tiny()
    img = RNG.integers(0, 65536, (9, 11, 3), dtype=np.int64).astype(np.uint16)
    out = Restorer(model, device="cpu").restore(img)
    ref = _direct(model, img.transpose(2, 0, 1) / 65535.0).transpose(1, 2, 0) * 65535
    assert out.dtype == np.uint16
    assert np.abs(out.astype(np.float64) - ref).max() <= 1.0
    assert len(np.unique(out)) > 256  # not squeezed through 8 bits


def test_gray_through_a_colour_model_is_the_luma_of_the_replicated_pass():
    model = _tiny()
    gray = RNG.random((12, 12)).astype(np.float32)
    out = Restorer(model, device="cpu").restore(gray)
    with torch.no_grad():  # luma of the raw output, clamped once at the end
        rgb = model(torch.from_numpy(np.repeat(gray[None, None], 3, axis=1)))[0].numpy()
    ref = np.clip(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], 0, 1)
    assert out.shape == (24, 24) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_colour_through_a_gray_model_restores_each_channel():
    model = _tiny(in_chans=1)
    img = RNG.random((10, 9, 3)).astype(np.float32)
    out = Restorer(model, device="cpu").restore(img)
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], _direct(model, img[None, :, :, c])[0], atol=1e-5)


def test_alpha_is_upscaled_with_matlab_bicubic_apart_from_the_model():
    model = _tiny()
    img = RNG.random((11, 14, 4)).astype(np.float32)
    out = Restorer(model, device="cpu").restore(img)
    assert out.shape == (22, 28, 4)
    np.testing.assert_allclose(out[:, :, 3], np.clip(imresize(img[:, :, 3].astype(np.float64), 2), 0, 1), atol=1e-5)
    np.testing.assert_allclose(out[:, :, :3], _direct(model, img[:, :, :3].transpose(2, 0, 1)).transpose(1, 2, 0),
                               atol=1e-5)


def test_denoising_model_keeps_size_and_alpha():
    model = _tiny(scale=1, task="denoise", upsampler="none")
    img = RNG.random((12, 12, 4)).astype(np.float32)
    out = Restorer(model, device="cpu").restore(img)
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[:, :, 3], img[:, :, 3])


def test_pil_and_tensor_inputs_come_back_as_the_same_kind():
    model = _tiny()
    r = Restorer(model, device="cpu")
    for mode in ("L", "RGB", "RGBA"):
        im = Image.fromarray(RNG.integers(0, 256, (8, 10, len(mode)), dtype=np.uint8).squeeze())
        out = r.restore(im)
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == (20, 16)
    t = torch.rand(3, 8, 12, dtype=torch.float64)
    out = r.restore(t)
    assert torch.is_tensor(out) and out.shape == (3, 16, 24) and out.dtype == torch.float64
    batch = r.restore(torch.rand(2, 3, 8, 8))
    assert batch.shape == (2, 3, 16, 16)


def test_self_ensemble_is_the_mean_of_the_eight_transformed_passes():
    model = _tiny()
    img = RNG.random((3, 12, 12)).astype(np.float32)
    out = Restorer(model, device="cpu", self_ensemble=True).restore(torch.from_numpy(img))
    x = torch.from_numpy(img)[None]
    with torch.no_grad():
        ref = sum(inverse_transform(model(transform(x, k)), k) for k in range(8)) / 8
    torch.testing.assert_close(out, ref[0].clamp(0, 1), atol=1e-5, rtol=0)


def test_bf16_stays_close_to_fp32():
    model = _tiny()
    img = RNG.random((16, 16, 3)).astype(np.float32)
    a = Restorer(model, device="cpu").restore(img)
    b = Restorer(model, device="cpu", precision="bf16").restore(img)
    assert np.abs(a - b).max() < 0.05


def test_bad_options_and_inputs_are_refused():
    model = _tiny()
    with pytest.raises(ConfigError, match="float16 overflows"):
        Restorer(model, precision="fp16")
    with pytest.raises(ConfigError, match="multiple of the model's window"):
        Restorer(model, tile=10)
    with pytest.raises(ConfigError, match="'auto'"):
        Restorer(model, tile="big")
    r = Restorer(model, device="cpu")
    with pytest.raises(ImageError, match="too small"):
        r.restore(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageError):
        r.restore(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError):
        r.restore("photo.png")


def test_auto_tile_fits_the_budget_and_is_a_window_multiple(monkeypatch):
    cfg = agileir.build_model("agileir-s", scale=4).config
    per_pixel = inference_bytes_per_pixel(cfg)
    monkeypatch.setattr(restorer_mod, "available_memory_bytes", lambda device: 1 << 40)
    assert auto_tile(cfg, 512, 512, torch.device("cpu")) is None  # plenty: whole image
    budget = 200 * 200 * per_pixel * 2  # half of it is used
    monkeypatch.setattr(restorer_mod, "available_memory_bytes", lambda device: budget)
    tile = auto_tile(cfg, 1000, 1000, torch.device("cpu"))
    assert tile % cfg.window_size == 0 and tile <= 200 and tile >= 192
    assert tile * tile * per_pixel <= budget / 2


def test_auto_tile_runs_tiles_and_reports_progress(monkeypatch):
    model = _tiny()
    monkeypatch.setattr(restorer_mod, "available_memory_bytes",
                        lambda device: 2 * 16 * 16 * inference_bytes_per_pixel(model.config))
    calls = []
    out = Restorer(model, device="cpu", tile="auto", tile_overlap=4).restore(
        RNG.random((40, 40, 3)).astype(np.float32), progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (80, 80, 3)
    assert calls and calls[-1][0] == calls[-1][1] > 1


@pytest.mark.parametrize(("dtype", "in_chans", "shape"), [(np.uint8, 3, (37, 29, 3)), (np.uint16, 3, (21, 30, 3)),
                                                          (np.uint8, 1, (25, 18)), (np.float32, 3, (20, 24, 3))])
def test_tiled_arrays_are_assembled_band_by_band_like_the_float_path(dtype, in_chans, shape):
    model = _tiny(in_chans=in_chans)
    img = (RNG.random(shape) * (np.iinfo(dtype).max if dtype != np.float32 else 1)).astype(dtype)
    restorer = Restorer(model, device="cpu", tile=8, tile_overlap=4)
    out = restorer.restore_array(img)  # the banded path (no ensemble, channels match)
    peak = np.float32(np.iinfo(dtype).max) if dtype != np.float32 else np.float32(1)
    chw = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
    ref = restorer.restore_tensor(torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32) / peak)).numpy()
    ref = ref[0] if img.ndim == 2 else np.moveaxis(ref, 0, -1)
    ref = (np.rint(ref * peak) if dtype != np.float32 else ref).astype(dtype)
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


LARGE_OUTPUT = r"""
import resource, sys
import numpy as np, torch
import agileir
from agileir.inference.restorer import Restorer

torch.set_num_threads(1)
torch.manual_seed(0)
model = agileir.build_model("agileir-s", scale=4, embed_dim=8, depths=(1,), num_heads=(1,), window_size=8,
                            num_feat=8).eval()
img = np.random.default_rng(0).integers(0, 256, (768, 768, 3), dtype=np.uint8)
restorer = Restorer(model, device="cpu", tile=64, tile_overlap=8)
restorer.restore_array(img[:64, :64])  # warm-up: allocator pools and kernels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = restorer.restore_array(img)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(out.nbytes, peak - base)
"""


def test_large_output_memory_is_bounded_by_the_tile_not_the_image():
    """A 3072x3072 output (28 MiB as uint8, 108 MiB as a float32 copy): the process grows by the
    output, one band of tile rows and the input's float copy, far from a float image."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", LARGE_OUTPUT], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out_bytes, growth = map(int, run.stdout.split())
    float_image = out_bytes * 4
    band = 64 * 4 * 3072 * 3 * 4  # one band of tile rows, float32
    input_float = 768 * 768 * 3 * 4
    assert out_bytes == 3072 * 3072 * 3
    assert growth < out_bytes + input_float + 2 * band + 24 * 2 ** 20, (growth, float_image)
    assert growth < out_bytes + float_image // 2
