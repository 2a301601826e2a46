"""State-dict layout of the official SwinIR (JingyunLiang/SwinIR, models/network_swinir.py) and
round trips through ``agileir.load_model``.

``official_layout`` below lists, for a SwinIR configuration, every key of the official module's
state dict with its shape (written out from the official module structure: SwinIR ->
conv_first, patch_embed.norm, layers[i] = RSTB(residual_group = BasicLayer(blocks[j] =
SwinTransformerBlock(norm1, attn = WindowAttention(relative_position_bias_table,
relative_position_index, qkv, proj), norm2, mlp.fc1/fc2, attn_mask buffer in shifted blocks)),
conv), norm, conv_after_body, reconstruction head). Official checkpoints are trained with the
module built for one patch size, so every shifted block carries an ``attn_mask`` of shape
(nW, N, N) for that patch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import agileir
import agileir_tests_reference as R
from agileir.models import official_state_dict


# ----------------------------------------------------------------------------- official layout

def official_layout(*, in_chans=3, embed_dim, depths, num_heads, window_size, mlp_ratio=2.0,
                    img_size, upscale, upsampler, resi_connection="1conv", num_feat=64,
                    qkv_bias=True, patch_norm=True):
    """{key: (shape, kind)} of the official SwinIR state dict; kind is "param" or "buffer"."""
    out = {}

    def param(key, *shape):
        out[key] = (tuple(shape), "param")

    def buffer(key, *shape):
        out[key] = (tuple(shape), "buffer")

    def conv(key, cin, cout, k):
        param(key + ".weight", cout, cin, k, k)
        param(key + ".bias", cout)

    def ln(key, c):
        param(key + ".weight", c)
        param(key + ".bias", c)

    def resi(key, c):
        if resi_connection == "1conv":
            conv(key, c, c, 3)
        else:
            conv(key + ".0", c, c // 4, 3)
            conv(key + ".2", c // 4, c // 4, 1)
            conv(key + ".4", c // 4, c, 3)

    c, m = embed_dim, window_size
    # the official block disables the shift (and shrinks the window) only when the training
    # patch is not larger than the window; none of the reference configurations do that
    assert img_size > m and img_size % m == 0
    n = m * m
    hidden = int(c * mlp_ratio)
    conv("conv_first", in_chans, c, 3)
    if patch_norm:
        ln("patch_embed.norm", c)
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        for j in range(depth):
            pre = f"layers.{i}.residual_group.blocks.{j}."
            ln(pre + "norm1", c)
            param(pre + "attn.relative_position_bias_table", (2 * m - 1) ** 2, heads)
            buffer(pre + "attn.relative_position_index", n, n)
            param(pre + "attn.qkv.weight", 3 * c, c)
            if qkv_bias:
                param(pre + "attn.qkv.bias", 3 * c)
            param(pre + "attn.proj.weight", c, c)
            param(pre + "attn.proj.bias", c)
            ln(pre + "norm2", c)
            param(pre + "mlp.fc1.weight", hidden, c)
            param(pre + "mlp.fc1.bias", hidden)
            param(pre + "mlp.fc2.weight", c, hidden)
            param(pre + "mlp.fc2.bias", c)
            if j % 2 == 1:
                buffer(pre + "attn_mask", (img_size // m) ** 2, n, n)
        resi(f"layers.{i}.conv", c)
    ln("norm", c)
    resi("conv_after_body", c)
    if upsampler == "pixelshuffle":
        conv("conv_before_upsample.0", c, num_feat, 3)
        if upscale & (upscale - 1) == 0:
            for t in range(int(math.log2(upscale))):
                conv(f"upsample.{2 * t}", num_feat, 4 * num_feat, 3)
        else:
            assert upscale == 3
            conv("upsample.0", num_feat, 9 * num_feat, 3)
        conv("conv_last", num_feat, in_chans, 3)
    elif upsampler == "pixelshuffledirect":
        conv("upsample.0", c, upscale ** 2 * in_chans, 3)
    elif upsampler == "nearest+conv":
        assert upscale == 4
        conv("conv_before_upsample.0", c, num_feat, 3)
        conv("conv_up1", num_feat, num_feat, 3)
        conv("conv_up2", num_feat, num_feat, 3)
        conv("conv_hr", num_feat, num_feat, 3)
        conv("conv_last", num_feat, in_chans, 3)
    else:
        conv("conv_last", c, in_chans, 3)
    return out


def n_params(layout):
    return sum(math.prod(shape) for shape, kind in layout.values() if kind == "param")


S = dict(embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4, window_size=8, img_size=64,
         upsampler="pixelshuffledirect")
M = dict(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=8, img_size=48,
         upsampler="pixelshuffle")
L = dict(embed_dim=240, depths=(6,) * 9, num_heads=(8,) * 9, window_size=8, img_size=64,
         upsampler="nearest+conv", resi_connection="3conv")

# name -> (preset, build overrides, official constructor arguments, img_range)
LAYOUTS = {
    "swinir-s-x2": ("swinir-s", dict(scale=2), dict(S, upscale=2), 1.0),
    "swinir-s-x4": ("swinir-s", dict(scale=4), dict(S, upscale=4), 1.0),
    "swinir-m-x2": ("swinir-m", dict(scale=2), dict(M, upscale=2), 1.0),
    "swinir-m-x3": ("swinir-m", dict(scale=3), dict(M, upscale=3), 1.0),
    "swinir-m-x4": ("swinir-m", dict(scale=4), dict(M, upscale=4), 1.0),
    "swinir-m-x8": ("swinir-m", dict(scale=8), dict(M, upscale=8), 1.0),
    "swinir-l-x4": ("swinir-l", dict(scale=4), dict(L, upscale=4), 1.0),
    # color denoising: 128 x 128 training patches, window 8
    "swinir-m-denoise": ("swinir-m", dict(task="denoise"),
                         dict(M, img_size=128, upscale=1, upsampler="none"), 1.0),
    # JPEG artifact removal: window 7, 126 x 126 patches (attn_mask (324, 49, 49)), range 255
    "swinir-m-jpeg": ("swinir-m", dict(task="jpeg"),
                      dict(M, window_size=7, img_size=126, upscale=1, upsampler="none"), 255.0),
    # the released grayscale models (004_grayDN_DFWB_s128w8, 006_CAR_DFWB_s126w7)
    "swinir-m-denoise-gray": ("swinir-m", dict(task="denoise", in_chans=1),
                              dict(M, in_chans=1, img_size=128, upscale=1, upsampler="none"),
                              1.0),
    "swinir-m-jpeg-gray": ("swinir-m", dict(task="jpeg", in_chans=1),
                           dict(M, in_chans=1, window_size=7, img_size=126, upscale=1,
                                upsampler="none"), 255.0),
    # real-world SwinIR-M x4 (003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4)
    "swinir-m-real-x4": ("swinir-m", dict(upsampler="nearest+conv", scale=4, img_size=64),
                         dict(M, img_size=64, upscale=4, upsampler="nearest+conv"), 1.0),
}

PARAM_COUNTS = {
    "swinir-s-x2": 910_152,
    "swinir-s-x4": 929_628,
    "swinir-m-x2": 11_752_487,
    "swinir-m-x4": 11_900_199,
}

_CACHE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _module_setup():
    yield from R.single_thread()
    _CACHE.clear()


def _source(name):
    """The package's model for a layout, eval mode, parameters randomised (cached per module)."""
    if name not in _CACHE:
        preset, overrides, _, _ = LAYOUTS[name]
        torch.manual_seed(0)
        model = agileir.build_model(preset, **overrides)
        R.perturb_parameters(model, seed=0, std=0.02, table_std=0.5)
        _CACHE[name] = model.eval()
    return _CACHE[name]


def _official(name):
    return official_layout(**LAYOUTS[name][2])


# ----------------------------------------------------------------------------- layout

def test_generator_reproduces_published_parameter_counts():
    for name, count in PARAM_COUNTS.items():
        assert n_params(_official(name)) == count, name


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_official_state_dict_keys_and_shapes(name):
    want = _official(name)
    got = official_state_dict(_source(name))
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing[:5]} extra {extra[:5]}"
    wrong = [(k, tuple(got[k].shape), want[k][0]) for k in want if tuple(got[k].shape) != want[k][0]]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_model_state_dict_is_official_without_masks(name):
    model = _source(name)
    want = {k: v for k, v in _official(name).items() if not k.endswith("attn_mask")}
    sd = model.state_dict()
    assert set(sd) == set(want)
    assert all(tuple(sd[k].shape) == want[k][0] for k in want)
    params = dict(model.named_parameters())
    assert set(params) == {k for k, (_, kind) in want.items() if kind == "param"}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts(name):
    model = _source(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", ["swinir-s-x2", "swinir-m-jpeg", "swinir-m-denoise"])
def test_official_buffers_values(name):
    args = LAYOUTS[name][2]
    m, img = args["window_size"], args["img_size"]
    sd = official_state_dict(_source(name))
    index = R.relative_position_index(m)
    mask = R.shift_masks(img, img, m, m // 2)
    for key, value in sd.items():
        if key.endswith("relative_position_index"):
            np.testing.assert_array_equal(value.numpy(), index, err_msg=key)
        elif key.endswith("attn_mask"):
            np.testing.assert_array_equal(value.double().numpy(), mask, err_msg=key)


def test_official_state_dict_for_other_patch_size():
    sd = official_state_dict(_source("swinir-m-x2"), img_size=64)
    masks = [k for k in sd if k.endswith("attn_mask")]
    assert len(masks) == 18
    assert all(tuple(sd[k].shape) == (64, 64, 64) for k in masks)
    np.testing.assert_array_equal(sd[masks[0]].double().numpy(), R.shift_masks(64, 64, 8, 4))
    loaded = agileir.load_model(sd)
    assert loaded.config.img_size == 64


# ----------------------------------------------------------------------------- loading

def _wrap(sd, how, tmp_path):
    if how == "raw":
        return sd
    if how in ("params", "params_ema"):
        return {how: sd}
    path = tmp_path / "model.pth"
    torch.save({"params_ema": sd} if how == "file-ema" else sd, path)
    # what official checkpoints are: loadable with weights_only
    torch.load(path, map_location="cpu", weights_only=True)
    return str(path) if how == "file-str" else path


def _check_detection(loaded, name):
    preset, overrides, args, img_range = LAYOUTS[name]
    cfg = loaded.config
    assert cfg.attention == "window"
    assert cfg.in_chans == args.get("in_chans", 3)
    assert cfg.embed_dim == args["embed_dim"]
    assert tuple(cfg.depths) == tuple(args["depths"])
    assert tuple(cfg.num_heads) == tuple(args["num_heads"])
    assert cfg.window_size == args["window_size"]
    assert cfg.mlp_ratio == 2.0
    assert cfg.upsampler == args["upsampler"]
    if args["upsampler"] != "none":
        assert cfg.scale == args["upscale"]
        assert cfg.task == "sr"
    else:
        assert cfg.task == ("jpeg" if img_range == 255.0 else "denoise")
    assert cfg.resi_connection == args.get("resi_connection", "1conv")
    assert float(cfg.img_range) == img_range
    assert cfg.img_size == args["img_size"]
    assert not loaded.training


def _assert_same_weights(loaded, source):
    got, ref = loaded.state_dict(), source.state_dict()
    assert set(got) == set(ref)
    differing = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not differing, differing[:5]


def _assert_same_outputs(loaded, source):
    c = loaded.config.in_chans
    x = torch.rand(1, c, 11, 13, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = source(x), loaded(x)
    assert torch.equal(a, b), f"max |diff| {(a - b).abs().max().item():.3e}"


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_load_model_round_trip(name):
    """Detection recovers the configuration of every official layout; same weights, same
    outputs."""
    source = _source(name)
    loaded = agileir.load_model(official_state_dict(source))
    _check_detection(loaded, name)
    _assert_same_weights(loaded, source)
    _assert_same_outputs(loaded, source)


@pytest.mark.parametrize("how", ["params", "params_ema", "file", "file-str", "file-ema"])
@pytest.mark.parametrize("name", ["swinir-s-x4", "swinir-m-jpeg"])
def test_load_model_wrapped_and_from_file(name, how, tmp_path):
    source = _source(name)
    loaded = agileir.load_model(_wrap(official_state_dict(source), how, tmp_path))
    _check_detection(loaded, name)
    _assert_same_weights(loaded, source)
    if how == "file-ema":
        _assert_same_outputs(loaded, source)


def _synthetic_official(name, seed=0):
    """A checkpoint built only from the official layout: random weights, official buffers."""
    args = LAYOUTS[name][2]
    m, img = args["window_size"], args["img_size"]
    gen = torch.Generator().manual_seed(seed)
    index = torch.from_numpy(R.relative_position_index(m))
    mask = torch.from_numpy(R.shift_masks(img, img, m, m // 2)).float()
    sd = {}
    for key, (shape, kind) in official_layout(**args).items():
        if key.endswith("relative_position_index"):
            sd[key] = index.clone()
        elif key.endswith("attn_mask"):
            sd[key] = mask.clone()
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.02
    return sd


@pytest.mark.parametrize("name", ["swinir-s-x2", "swinir-m-x3", "swinir-m-jpeg-gray",
                                  "swinir-l-x4"])
def test_load_synthetic_official_checkpoint(name, tmp_path):
    sd = _synthetic_official(name)
    path = tmp_path / "official.pth"
    torch.save({"params": sd}, path)
    loaded = agileir.load_model(path)
    _check_detection(loaded, name)
    got = loaded.state_dict()
    want = {k: v for k, v in sd.items() if not k.endswith("attn_mask")}
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k].to(got[k].dtype)) for k in want)
    # and back out in the official layout, masks included
    again = official_state_dict(loaded)
    assert set(again) == set(sd)
    assert all(torch.equal(again[k], sd[k].to(again[k].dtype)) for k in sd)


class _Payload:
    triggered = False

    def __reduce__(self):
        return (_trigger, ())


def _trigger():
    _Payload.triggered = True
    return {}


def test_load_model_does_not_unpickle_arbitrary_objects(tmp_path):
    sd = _synthetic_official("swinir-s-x2")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"params": sd, "extra": _Payload()}, f)
    _Payload.triggered = False
    try:
        agileir.load_model(path)
    except Exception:
        pass
    assert not _Payload.triggered
