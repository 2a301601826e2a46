"""The fused LayerNorm / gather / residual-add kernels against float64 maths, and the block that uses them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agileir.models import token_norm
from agileir.models.attention import fused
from agileir.models.presets import build_model
from agileir.models.windows import shifted_window_partition, window_token_order

pytestmark = pytest.mark.skipif(not fused.vectorized() or not hasattr(fused.extension(), "norm_gather"),
                                reason="the fused CPU extension did not build with its AVX2 path here")

# float32 LayerNorm of unit-scale rows: a few ulps of values of magnitude ~3 (1e-6 relative)
FP32_TOL = 1e-5
# bf16 output: the float64 result rounded once to 8 bits of mantissa, plus the float32 statistics'
# ulps that may move a value across a rounding boundary: one bf16 step at |v| < 4 is 2^-6
BF16_TOL = 2.0 ** -6


def _norm(c: int) -> nn.LayerNorm:
    torch.manual_seed(1)
    norm = nn.LayerNorm(c)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


def _reference(rows: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    r = rows.double()
    mean = r.mean(-1, keepdim=True)
    var = ((r - mean) ** 2).mean(-1, keepdim=True)
    return (r - mean) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()


@pytest.mark.parametrize("c", [60, 12, 7, 180])  # vector body + tail, tail only, several vectors
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_gather_is_layer_norm_of_the_permuted_rows(c: int, dtype: torch.dtype) -> None:
    norm = _norm(c)
    x = torch.randn(2, 4, 6, c) * 3 + 1
    order = torch.randperm(24)
    with torch.no_grad():
        out = token_norm.norm_gather(x, norm, order, dtype)
    assert out.shape == (2, 24, c) and out.dtype == dtype
    ref = _reference(x.reshape(2, 24, c)[:, order], norm)
    assert (out.double() - ref).abs().max().item() < (FP32_TOL if dtype == torch.float32 else BF16_TOL)
    if dtype == torch.bfloat16:  # rounded to nearest: as torch's own cast of the float32 result
        fp32 = token_norm.norm_gather(x, norm, order)
        assert (out.double() - fp32.to(torch.bfloat16).double()).abs().max().item() <= BF16_TOL / 2


def test_norm_gather_without_order_and_on_the_window_order_of_the_network() -> None:
    norm = _norm(12)
    x = torch.randn(1, 8, 8, 12)
    with torch.no_grad():
        plain = token_norm.norm_gather(x, norm)
        order, _ = window_token_order(8, 8, 4, 2, x.device)
        windows = token_norm.norm_gather(x, norm, order).view(-1, 16, 12)
        ref = shifted_window_partition(norm(x), 4, 2)
    assert (plain.double() - _reference(x.reshape(1, 64, 12), norm)).abs().max().item() < FP32_TOL
    assert (windows - ref).abs().max().item() < FP32_TOL


@pytest.mark.parametrize("ydtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_norm_adds_the_reordered_rows_and_norms_the_sum(ydtype: torch.dtype, dtype: torch.dtype) -> None:
    norm = _norm(60)
    x = torch.randn(2, 4, 6, 60)
    y = torch.randn(2, 24, 60).to(ydtype)
    order = torch.randperm(24)
    with torch.no_grad():
        s, normed = token_norm.add_norm(x, y, order, norm, dtype)
    expected = x.reshape(2, 24, 60) + y[:, order].float()  # one float32 add per element: exact
    assert s.dtype == torch.float32 and s.shape == x.shape
    assert torch.equal(s.reshape(2, 24, 60), expected)
    assert normed.dtype == dtype and normed.shape == x.shape
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL
    assert (normed.reshape(2, 24, 60).double() - _reference(expected, norm)).abs().max().item() < tol


def test_add_in_place_of_a_bf16_branch_is_the_float32_sum() -> None:
    x = torch.randn(3, 1000)
    y = torch.randn(3, 1000).to(torch.bfloat16)
    expected = x + y  # ATen's promotion: float32(x) + float32(y)
    out = token_norm.add_(x, y)
    assert out is x and torch.equal(x, expected)


def test_not_available_where_it_must_not_run() -> None:
    norm, x = _norm(12), torch.randn(2, 4, 4, 12)
    assert not token_norm.available(x, norm)  # gradients on: no backward
    with torch.no_grad():
        assert token_norm.available(x, norm)
        assert not token_norm.available(x.double(), norm)
        assert not token_norm.available(x, nn.LayerNorm(12, elementwise_affine=False))
        assert not token_norm.available(x, nn.LayerNorm(8))
        with FlopCounterMode(display=False):
            assert not token_norm.available(x, norm)


TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(3, 3), window_size=4, scale=2)


@pytest.mark.parametrize("preset, extra", [("agileir-s", dict(key_dim=2)), ("swinir-s", dict(attention_impl="sdpa"))])
def test_network_inference_takes_the_fused_blocks_and_agrees_with_the_unfused_ones(monkeypatch, count_calls,
                                                                                    preset, extra) -> None:
    """The whole network (shifted and unshifted blocks, padding to the window) with the fused blocks
    against the same weights with them turned off: float32 rounding only."""
    calls = count_calls(token_norm, "norm_gather")
    torch.manual_seed(0)
    model = build_model(preset, **TINY, **extra).eval()
    x = torch.rand(1, 3, 10, 13)
    with torch.no_grad():
        out = model(x)
        assert len(calls) == 4  # every block
        monkeypatch.setattr(token_norm, "available", lambda *args: False)
        ref = model(x)
    assert len(calls) == 4
    assert (out - ref).abs().max().item() < 1e-5


def test_official_swinir_and_training_keep_the_unfused_blocks(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(token_norm, "norm_gather", lambda *a, **k: calls.append(1))
    official = build_model("swinir-s", **TINY).eval()
    with torch.no_grad():
        official(torch.rand(1, 3, 8, 8))
    agile = build_model("agileir-s", **TINY, key_dim=2).train()
    agile(torch.rand(1, 3, 8, 8)).sum().backward()
    assert calls == []


def test_int8_models_take_the_fused_blocks_with_their_quantized_mlp(monkeypatch, count_calls) -> None:
    """int8 MLPs are not oneDNN's fused products, but the norms, gathers and adds around them are:
    the same outputs as the unfused int8 blocks up to float32 rounding of the norms (2.4e-7 with
    this seed; a rounding that moved an activation across a step of the dynamic quantization
    would show as about 1e-5, seen at other seeds, still inside the bound)."""
    from agileir.models.quantize import quantize_int8

    torch.manual_seed(0)
    model = quantize_int8(build_model("agileir-s", **TINY, key_dim=2).eval())
    calls = count_calls(token_norm, "add_")
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        out = model(x)
        assert len(calls) == 4
        monkeypatch.setattr(token_norm, "available", lambda *args: False)
        ref = model(x)
    assert (out - ref).abs().max().item() < 1e-4


def test_fused_blocks_release_the_attention_output_before_the_mlp(monkeypatch) -> None:
    """Peak memory: the attention's output (a whole feature map) is dead by the time the MLP runs,
    as in the unfused block, where it is a temporary of the residual add."""
    import weakref

    from agileir.models import fused_mlp

    torch.manual_seed(0)
    model = build_model("agileir-s", **TINY, key_dim=2).eval()
    block = model.layers[0].residual_group.blocks[1]  # a shifted block
    outputs: list = []
    real_forward = block.attn.forward

    def attn_forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        outputs.append(weakref.ref(out))
        return out

    alive_at_mlp: list[bool] = []
    real_mlp = fused_mlp.mlp_residual

    def mlp_residual(*args, **kwargs):
        if outputs and len(alive_at_mlp) < len(outputs):
            alive_at_mlp.append(outputs[-1]() is not None)
        return real_mlp(*args, **kwargs)

    monkeypatch.setattr(block.attn, "forward", attn_forward)
    monkeypatch.setattr(fused_mlp, "mlp_residual", mlp_residual)
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
    assert alive_at_mlp == [False]


# ---- the training step's LayerNorm (differentiable, optionally with the window gather) ----------

@pytest.mark.parametrize("c,permuted", [(60, True), (60, False), (16, True), (5, False)])
def test_layer_norm_forward_and_gradients_match_float64(c, permuted):
    """Values and the gradients of x, weight and bias against float64 autograd of F.layer_norm and
    the gather; c = 60 ends in a partial register, 5 has none."""
    norm = _norm(c)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 6, 8, c, generator=g) * 2 + 0.5).requires_grad_()
    order = torch.randperm(48, generator=g) if permuted else None
    assert token_norm.trainable(x, norm)
    out = token_norm.layer_norm(x, norm.weight, norm.bias, norm.eps, order)
    grad = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (x, norm.weight, norm.bias), grad)
    leaves = [t.detach().double().requires_grad_() for t in (x, norm.weight, norm.bias)]
    ref = F.layer_norm(leaves[0], (c,), leaves[1], leaves[2], norm.eps).reshape(2, 48, c)
    ref = ref[:, order] if permuted else ref
    want = torch.autograd.grad(ref, leaves, grad.double())
    assert (out.double() - ref).abs().max() < FP32_TOL
    for name, a, b in zip(("x", "weight", "bias"), got, want):
        err = (a.double() - b).abs().max() / b.abs().max()
        assert err < FP32_TOL, f"grad {name}: {err:.2e}"


@pytest.mark.parametrize("c,permuted", [(60, True), (5, False)])
def test_layer_norm_in_bf16_is_the_float32_result_rounded_and_takes_a_bf16_gradient(c, permuted):
    """dtype=bfloat16 (the lean MLP's fc1 input under bf16 autocast): the float32 values rounded
    once, as autocast's cast rounds them, and a bf16 gradient gives the float32 kernel's gradients
    of that gradient widened (bf16 widens exactly): the same step as the cast pass it saves, up to
    one float32 rounding where the compiler fuses a multiply-add differently in the two builds of
    the loop."""
    norm = _norm(c)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 6, 8, c, generator=g) * 2 + 0.5).requires_grad_()
    order = torch.randperm(48, generator=g) if permuted else None
    out32 = token_norm.layer_norm(x, norm.weight, norm.bias, norm.eps, order)
    out16 = token_norm.layer_norm(x, norm.weight, norm.bias, norm.eps, order, dtype=torch.bfloat16)
    assert out16.dtype == torch.bfloat16 and torch.equal(out16, out32.detach().bfloat16())
    grad = torch.randn(out16.shape, generator=g).bfloat16()
    got = torch.autograd.grad(out16, (x, norm.weight, norm.bias), grad)
    want = torch.autograd.grad(out32, (x, norm.weight, norm.bias), grad.float())
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and ((a - b).abs().max() <= 2.4e-7 * b.abs().max())
    # twice differentiable in bf16 too (ATen's maths, the output rounded alike)
    out = token_norm.layer_norm(x, norm.weight, norm.bias, norm.eps, order, dtype=torch.bfloat16)
    (gx,) = torch.autograd.grad(out.float().square().sum(), x, create_graph=True)
    assert gx.requires_grad and torch.isfinite(gx).all()


def test_lean_mlp_under_bf16_autocast_reads_a_bf16_norm(monkeypatch):
    """The lean MLP's LayerNorm writes bf16 under CPU bf16 autocast (no cast pass before fc1) and
    float32 otherwise; the attention's norm (GSWA's cascade reads float32) stays float32."""
    dtypes = []
    real = token_norm.layer_norm
    monkeypatch.setattr(token_norm, "layer_norm", lambda *a, **k: dtypes.append(k.get("dtype", torch.float32))
                        or real(*a, **k))
    tiny = dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, key_dim=3)
    model = build_model("agileir-s", **tiny).train()
    x = torch.rand(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().mean().backward()
    assert dtypes.count(torch.bfloat16) == 4 and dtypes.count(torch.float32) == 4, dtypes  # 2 blocks, fwd + recompute
    dtypes.clear()
    model(x).mean().backward()
    assert dtypes and set(dtypes) == {torch.float32}


def test_layer_norm_is_twice_differentiable():
    """create_graph=True (a gradient penalty) differentiates through ATen's maths in backward."""
    norm = _norm(12)
    x = torch.randn(2, 9, 12, requires_grad=True)
    order = torch.randperm(9)
    (gx,) = torch.autograd.grad(token_norm.layer_norm(x, norm.weight, norm.bias, norm.eps, order).square().sum(),
                                x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.square().sum(), x)
    xd = x.detach().double().requires_grad_()
    ref = F.layer_norm(xd, (12,), norm.weight.double(), norm.bias.double(), norm.eps)[:, order]
    (gxd,) = torch.autograd.grad(ref.square().sum(), xd, create_graph=True)
    (ggxd,) = torch.autograd.grad(gxd.square().sum(), xd)
    assert torch.allclose(gx.double(), gxd, atol=1e-5) and torch.allclose(ggx.double(), ggxd, rtol=1e-4, atol=1e-4)


def test_training_blocks_take_the_trainable_norm_and_official_swinir_does_not(monkeypatch):
    calls = []
    real = token_norm.layer_norm
    monkeypatch.setattr(token_norm, "layer_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    tiny = dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, key_dim=3)
    x = torch.rand(1, 3, 8, 8)
    build_model("agileir-s", **tiny).train()(x).mean().backward()
    assert len(calls) >= 4  # two blocks: the attention's norm and the MLP's, forward and recompute
    calls.clear()
    build_model("swinir-s", **{k: v for k, v in tiny.items() if k != "key_dim"}).train()(x).mean().backward()
    assert not calls  # SwinIR's official path keeps its own LayerNorm, rolls and partition
