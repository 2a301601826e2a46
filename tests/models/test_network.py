"""The shared network: every head, both attentions, any input size, cached masks, presets."""

import pytest
import torch

from agileir.errors import ConfigError, ImageError
from agileir.models import PRESETS, build_model
from agileir.models import windows

TINY = dict(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, key_dim=2, num_feat=8)
HEADS = [
    dict(upsampler="pixelshuffle", scale=2), dict(upsampler="pixelshuffle", scale=3),
    dict(upsampler="pixelshuffle", scale=4), dict(upsampler="pixelshuffle", scale=8),
    dict(upsampler="pixelshuffledirect", scale=3), dict(upsampler="nearest+conv", scale=2),
    dict(upsampler="nearest+conv", scale=4), dict(task="denoise"), dict(task="jpeg", in_chans=1),
    dict(upsampler="pixelshuffledirect", scale=2, resi_connection="3conv", in_chans=1, img_range=255.0),
]


@pytest.mark.parametrize("attention", ["window", "gswa"])
@pytest.mark.parametrize("head", HEADS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_any_size_for_every_head(attention, head):
    model = build_model("swinir-s", attention=attention, **TINY, **head).eval()
    c, s = model.config.in_chans, model.config.scale
    for h, w in [(17, 23), (4, 4), (9, 5)]:
        x = torch.rand(2, c, h, w)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (2, c, h * s, w * s)
        assert torch.isfinite(y).all()


def test_padding_leaves_valid_region_independent_of_batchmates():
    """Images of one size padded together give the same output as alone (no cross-image leaks)."""
    model = build_model("agileir-s", **TINY, scale=2).eval()
    x = torch.rand(3, 3, 13, 10)
    with torch.no_grad():
        batched = model(x)
        single = model(x[1:2])
    torch.testing.assert_close(batched[1:2], single, rtol=1e-5, atol=1e-6)


def test_too_small_input_is_a_clear_error():
    model = build_model("swinir-s", **dict(TINY, window_size=8)).eval()
    with pytest.raises(ImageError, match="too small"):
        model(torch.rand(1, 3, 3, 20))
    with pytest.raises(ImageError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 16, 16))


def test_shift_mask_is_built_once_per_size(monkeypatch):
    calls = []
    original = windows.shift_mask
    monkeypatch.setattr(windows, "shift_mask", lambda *a, **k: calls.append(a) or original(*a, **k))
    model = build_model("agileir-s", **dict(TINY, depths=(4, 4), num_heads=(2, 2))).eval()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(1, 3, 16, 16))
        model(torch.rand(1, 3, 8, 12))
    assert [c[:2] for c in calls] == [(16, 16), (8, 12)]


def test_shift_mask_matches_brute_force():
    """Mask entry is 0 exactly when two tokens of a window both wrapped (or not) in each axis."""
    m, s, h, w = 4, 2, 12, 8
    mask = windows.shift_mask(h, w, m, s)
    wrap_h = (torch.arange(h) + s >= h).long()
    wrap_w = (torch.arange(w) + s >= w).long()
    label = (wrap_h[:, None] * 2 + wrap_w[None, :]).view(1, h, w, 1).float()
    lab = windows.window_partition(label, m).squeeze(-1)
    expected = torch.where(lab[:, :, None] == lab[:, None, :], 0.0, windows.MASK_VALUE)
    assert torch.equal(mask, expected)


def test_window_partition_roundtrip_and_relative_index():
    x = torch.randn(2, 8, 12, 5)
    assert torch.equal(windows.window_reverse(windows.window_partition(x, 4), 4, 8, 12), x)
    m = 3
    idx = windows.relative_position_index(m)
    for a in range(m * m):
        for b in range(m * m):
            dy, dx = a // m - b // m, a % m - b % m
            assert idx[a, b] == (dy + m - 1) * (2 * m - 1) + (dx + m - 1)


@pytest.mark.parametrize("shift", [0, 2, 3])
def test_shifted_window_partition_is_roll_then_partition(shift):
    """The one-gather partition against torch.roll and the plain partition (exact), its inverse,
    and its gradients (the inverse permutation) by gradcheck in float64, twice differentiable."""
    m, h, w = 4, 8, 12
    x = torch.randn(2, h, w, 5, dtype=torch.float64)
    ref = windows.window_partition(torch.roll(x, (-shift, -shift), (1, 2)), m)
    got = windows.shifted_window_partition(x, m, shift)
    assert torch.equal(got, ref)
    assert torch.equal(windows.shifted_window_reverse(got, m, h, w, shift), x)
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: windows.shifted_window_partition(t, m, shift), (xg,))
    assert torch.autograd.gradgradcheck(lambda t: windows.shifted_window_reverse(t, m, h, w, shift),
                                        (ref.clone().requires_grad_(True),))


def test_shifted_window_index_cached_in_inference_mode_trains_later():
    """The cached gather index first built under ``torch.inference_mode`` (an upscale before a
    training step, as in one process running both) is still usable by autograd afterwards."""
    m, h, w, shift = 4, 12, 20, 2  # a feature size no other test caches
    windows.window_token_order.cache_clear()
    with torch.inference_mode():
        windows.shifted_window_partition(torch.randn(1, h, w, 3), m, shift)
    x = torch.randn(1, h, w, 3, requires_grad=True)
    windows.shifted_window_reverse(windows.shifted_window_partition(x, m, shift) * 2.0, m, h, w, shift).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_official_swinir_keeps_its_rolls(monkeypatch):
    """SwinIR's official path runs the official code's torch.roll; every other path the gather."""
    rolls = []
    real = torch.roll
    monkeypatch.setattr(torch, "roll", lambda *a, **k: rolls.append(1) or real(*a, **k))
    tiny = {k: v for k, v in TINY.items() if k != "key_dim"}
    with torch.no_grad():
        build_model("swinir-s", **tiny).eval()(torch.rand(1, 3, 8, 8))
        assert len(rolls) == 2  # the shifted block: one roll each way
        build_model("swinir-s", **tiny, attention_impl="sdpa").eval()(torch.rand(1, 3, 8, 8))
        build_model("agileir-s", **TINY).eval()(torch.rand(1, 3, 8, 8))
    assert len(rolls) == 2


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build(name):
    model = build_model(name)
    assert model.config.name == name
    assert sum(p.numel() for p in model.parameters()) > 0


def test_agileir_presets_mirror_swinir_macro_configuration():
    for small, agile in [("swinir-s", "agileir-s"), ("swinir-m", "agileir-m")]:
        a, b = build_model(small).config, build_model(agile).config
        for field in ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "upsampler",
                      "resi_connection", "img_range", "scale"):
            assert getattr(a, field) == getattr(b, field), field
        assert (a.attention, b.attention) == ("window", "gswa")


def test_task_overrides():
    jpeg = build_model("swinir-m", task="jpeg", in_chans=1).config
    assert (jpeg.upsampler, jpeg.scale, jpeg.img_range, jpeg.window_size) == ("none", 1, 255.0, 7)
    dn = build_model("agileir-s", task="denoise").config
    assert (dn.upsampler, dn.scale, dn.window_size) == ("none", 1, 8)


@pytest.mark.parametrize("bad", [dict(scale=5, upsampler="pixelshuffle"), dict(upsampler="nearest+conv", scale=3),
                                 dict(embed_dim=61), dict(attention="flash"), dict(bogus=1)])
def test_bad_configuration_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        build_model("swinir-s", **bad)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="choose one of"):
        build_model("swinir-xl")


@pytest.mark.parametrize("preset", ["swinir-s", "agileir-s"])
def test_checkpointing_gives_same_gradients_with_stochastic_depth(preset):
    """Checkpointed blocks replay the same drop-path draws, so gradients equal the plain run's."""
    a = build_model(preset, **TINY, drop_path_rate=0.5).train()
    b = build_model(preset, **TINY, drop_path_rate=0.5, grad_checkpoint=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 8, 8)
    for model in (a, b):
        torch.manual_seed(123)
        model(x).square().mean().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_checkpointing_keeps_only_block_inputs():
    from agileir.engine.memory import saved_activation_bytes

    tiny = dict(TINY, drop_path_rate=0.0)
    plain = build_model("swinir-s", **tiny).train()
    ckpt = build_model("swinir-s", **tiny, grad_checkpoint=True).train()
    x = torch.rand(1, 3, 8, 8)
    _, r_plain = saved_activation_bytes(plain, x, exclude=plain)
    _, r_ckpt = saved_activation_bytes(ckpt, x, exclude=ckpt)
    # the checkpointed blocks each keep their (1, 8, 8, 8) float input and nothing else
    blocks = sum(TINY["depths"])
    block_bytes = blocks * 8 * 8 * TINY["embed_dim"] * 4
    assert r_plain.total_bytes - r_ckpt.total_bytes > 5 * block_bytes
    assert r_ckpt.total_bytes >= block_bytes


def test_inference_bias_follows_weight_updates():
    model = build_model("agileir-s", **TINY).eval()
    attn = model.layers[0].residual_group.blocks[0].attn
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        y0 = model(x)
        attn.relative_position_bias_table.add_(torch.randn_like(attn.relative_position_bias_table))  # a step
        y1 = model(x)
    assert not torch.equal(y0, y1)
    fresh = build_model("agileir-s", **TINY).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), y1)


def test_drop_path_residual_is_x_plus_drop_path_with_the_same_draw():
    """The lean path's one-pass residual against float64 x + keep * y / (1 - p) with the draw of forward."""
    from agileir.models.network import DropPath

    drop = DropPath(0.5).train()
    x, y = torch.randn(64, 3, 5, 4), torch.randn(64, 3, 5, 4, requires_grad=True)
    torch.manual_seed(3)
    got = drop.residual(x, y)
    torch.manual_seed(3)
    keep = torch.empty(64, 1, 1, 1).bernoulli_(0.5)
    assert 0 < keep.sum() < 64  # some samples dropped, some kept
    want = x.double() + keep.double() * y.detach().double() / 0.5
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(got.sum(), y)
    assert torch.equal(grad, (keep / 0.5).expand_as(y))
    torch.manual_seed(3)
    plain = x + DropPath.forward(drop, y)  # forward's own draw
    assert torch.allclose(got, plain)
    assert torch.equal(drop.eval().residual(x, y), x + y)


@pytest.mark.parametrize("p", [0.0043, 0.3])  # 1 / (1 - 0.0043) has no bf16 value within 0.3%
def test_drop_path_residual_of_a_bf16_branch_keeps_the_factor_in_float32(p, monkeypatch):
    """Under bf16 autocast the branch y is bf16 and the stream x float32: the factor 1 / (1 - p)
    stays float32 (in bf16, 1.0043 would read 1.0078), the sum is float32 against float64 maths,
    and y's gradient is keep / (1 - p) times the incoming one, rounded to bf16 once. Where the
    extension built, its one-pass kernels compute both; else addcmul does, to the same bounds."""
    from agileir.models.attention import fused
    from agileir.models.network import DropPath

    kernels = []
    if fused.vectorized() and hasattr(fused.extension(), "residual_bf16"):
        ext = fused.extension()
        for name in ("residual_bf16", "scale_to_bf16"):
            real = getattr(ext, name)
            monkeypatch.setattr(ext, name, lambda *a, _r=real, _n=name: kernels.append(_n) or _r(*a))

    drop = DropPath(p).train()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 5, 7, 12, generator=g)  # 420 elements per sample: runs of 8 and a tail
    y = torch.randn(64, 5, 7, 12, generator=g).bfloat16().requires_grad_()
    torch.manual_seed(5)
    got = drop.residual(x, y)
    torch.manual_seed(5)
    keep = torch.empty(64, 1, 1, 1).bernoulli_(1 - p)
    assert 0 < keep.sum() < 64 or p < 0.01
    factor = keep.double() / (1 - p)
    assert got.dtype == torch.float32
    assert (got.double() - (x.double() + factor * y.detach().double())).abs().max() < 1e-5
    upstream = torch.randn(x.shape, generator=g)
    (grad,) = torch.autograd.grad(got, y, upstream)
    want = (upstream.double() * factor).float().bfloat16()  # float32 product, one rounding
    assert grad.dtype == torch.bfloat16
    assert ((grad.double() - want.double()).abs() <= want.double().abs() * 2 ** -8).all()
    assert (grad.double() == want.double()).double().mean() > 0.999
    if fused.vectorized() and hasattr(fused.extension(), "residual_bf16"):
        assert kernels == ["residual_bf16", "scale_to_bf16"]
    # twice differentiable (a gradient penalty): ATen's maths in backward
    y2 = y.detach().requires_grad_()
    torch.manual_seed(5)
    (gy,) = torch.autograd.grad(drop.residual(x, y2).float().square().sum(), y2, create_graph=True)
    assert gy.requires_grad
