"""The fused C++ window-attention kernel against a float64 reference written here, and its fallback.

Tolerances: float64 inputs run the kernel's generic double path and agree with the reference to
1e-12; float32 runs the AVX2 path (its own exp polynomial, relative error ~1e-7, and products
summed in another order) and agrees to 2e-5 of the largest magnitude, what float32 rounding of
64-term sums allows. Probabilities under exp(-60) of a row's maximum are zero by design.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from agileir.models.attention import dispatch, fused
from agileir.models.windows import shift_mask

needs_kernel = pytest.mark.skipif(not fused.available(), reason=f"fused kernel not built: {fused.unavailable_reason()}")
#: auto plans take the kernel only where it has its AVX2 path
needs_auto = pytest.mark.skipif(not dispatch.use_fused("cpu"), reason=f"auto plans keep eager: {fused.state()}")


def reference(q, k, v, bias, mask):
    """softmax(q k^T + bias + mask) v in float64, one window and head at a time."""
    q, k, v = q.double(), k.double(), v.double()
    b_, h, n, _ = q.shape
    out = torch.empty(b_, h, n, v.shape[-1], dtype=torch.float64)
    for b in range(b_):
        for j in range(h):
            s = q[b, j] @ k[b, j].T
            if bias is not None:
                s = s + bias[j].double()
            if mask is not None:
                s = s + mask[b % mask.shape[0]].double()
            out[b, j] = torch.softmax(s, dim=-1) @ v[b, j]
    return out


def _inputs(b_, h, n, dk, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()  # noqa: E731
    return make(b_, h, n, dk), make(b_, h, n, dk), make(b_, h, n, dv), make(h, n, n)


CASES = {  # (B_, h, N, dk, dv, mask window grid)
    "gswa-group-w8": (8, 1, 64, 8, 10, (16, 32, 8)),  # one GSWA group, 2 images of 2x4 windows
    "swinir-heads-w8": (4, 3, 64, 10, 10, (16, 16, 8)),
    "window7-unaligned": (6, 2, 49, 5, 7, (21, 14, 7)),  # N, dk, dv not multiples of 8
    "no-mask": (3, 2, 16, 4, 12, None),
}


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_and_gradients_match_the_float64_reference(case, dtype):
    b_, h, n, dk, dv, grid = CASES[case]
    q, k, v, bias = _inputs(b_, h, n, dk, dv, dtype)
    mask = None if grid is None else shift_mask(grid[0], grid[1], grid[2], grid[2] // 2, value=float("-inf"))
    if mask is not None:
        assert b_ % mask.shape[0] == 0 and (mask == float("-inf")).any()
        mask = mask.to(dtype)
    out = fused.fused_window_attention(q, k, v, bias, mask)
    assert out.dtype == dtype and out.shape == (b_, h, n, dv)
    q64, k64, v64, b64 = (t.detach().double().requires_grad_() for t in (q, k, v, bias))
    want = reference(q64, k64, v64, b64, mask)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got_grads = torch.autograd.grad(out, (q, k, v, bias), g.to(dtype))
    want_grads = torch.autograd.grad(want, (q64, k64, v64, b64), g)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (out.double() - want).abs().max() <= tol * want.abs().max()
    for name, a, b in zip("q k v bias".split(), got_grads, want_grads):
        assert (a.double() - b).abs().max() <= tol * b.abs().max(), name


@needs_kernel
def test_the_minus_100_mask_and_strided_inputs():
    """SwinIR's -100 mask (exp(-100) is a float32 subnormal: set to zero, within float32 resolution
    of the reference) and q, k, v as views of one qkv tensor, as the attention modules pass them."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(8, 2, 64, 8 + 8 + 10, generator=g)
    q, k, v = qkv.split([8, 8, 10], dim=-1)
    assert not q.is_contiguous()
    bias = torch.randn(2, 64, 64, generator=g)
    mask = shift_mask(16, 32, 8, 4)  # -100
    out = fused.fused_window_attention(q, k, v, bias, mask)
    want = reference(q, k, v, bias, mask)
    assert (out.double() - want).abs().max() <= 2e-5 * want.abs().max()


@needs_kernel
def test_bf16_inputs_compute_in_float32_and_return_bf16():
    q, k, v, bias = (t.detach() for t in _inputs(4, 2, 64, 8, 16, torch.float32))
    out = fused.fused_window_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias, None)
    assert out.dtype == torch.bfloat16
    want = reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias, None)
    assert (out.double() - want).abs().max() <= 2 ** -8 * want.abs().max()  # bf16's output rounding


@needs_kernel
def test_twice_differentiable_through_the_eager_reference():
    q, k, v, bias = _inputs(2, 1, 16, 4, 4, torch.float64)
    (gq,) = torch.autograd.grad(fused.fused_window_attention(q, k, v, bias, None).square().sum(), q, create_graph=True)
    (gq_ref,) = torch.autograd.grad(reference(q, k, v, bias, None).square().sum(), q, create_graph=True)
    (hk,) = torch.autograd.grad(gq.sum(), k)
    (hk_ref,) = torch.autograd.grad(gq_ref.sum(), k)
    assert torch.allclose(gq, gq_ref, atol=1e-12) and torch.allclose(hk, hk_ref, atol=1e-10)


@needs_auto
def test_auto_plans_take_it_on_the_cpu_but_not_under_a_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    plan = lambda **kw: dispatch.plan_attention("gswa", "auto", device_type="cpu", **kw)  # noqa: E731
    assert plan(training=True, grad_enabled=True) == dispatch.AttentionPlan("fused", True)
    assert plan(training=False, grad_enabled=True).kernel == "eager"  # eval with gradients
    assert dispatch.plan_attention("window", "auto", device_type="cpu", training=True,
                                   grad_enabled=True).kernel == "eager"  # SwinIR's official math
    with FlopCounterMode(display=False):
        assert plan(training=True, grad_enabled=True) == dispatch.AttentionPlan("eager", True)
    assert not dispatch.use_fused("cuda")


@needs_auto
def test_a_training_step_of_the_network_matches_the_eager_kernel():
    """The whole training default (recompute with the fused kernel inside) against attention_impl
    eager, in float64: loss and every parameter gradient."""
    from agileir.models.presets import build_model

    tiny = dict(embed_dim=12, depths=(2,), num_heads=(3,), window_size=4, key_dim=2, scale=2, drop_path_rate=0.0)
    grads = {}
    for impl in ("auto", "eager"):
        torch.manual_seed(0)
        model = build_model("agileir-s", **tiny, attention_impl=impl).double().train()
        assert model.layers[0].residual_group.blocks[1].plan(torch.zeros(1)).kernel == (
            "fused" if impl == "auto" else "eager")
        x = torch.rand(2, 3, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        model(x).square().mean().backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    assert grads["auto"].keys() == grads["eager"].keys()
    for name, g in grads["eager"].items():
        assert torch.allclose(grads["auto"][name], g, rtol=1e-9, atol=1e-12), name


def test_without_the_kernel_auto_plans_keep_the_eager_kernel():
    """AGILEIR_FUSED=0 (as on a machine without a compiler): a one-line reason, eager plans, the
    blocks' unfused LayerNorms, no bf16 cascade, and the explicit kernel refuses with that reason."""
    code = ("import torch; from agileir.models.attention import dispatch, fused, kernels as K\n"
            "assert not fused.available() and fused.unavailable_reason() == 'AGILEIR_FUSED=0'\n"
            "assert dispatch.plan_attention('gswa', 'auto', device_type='cpu', training=True,"
            " grad_enabled=True) == dispatch.AttentionPlan('eager', True)\n"
            "from agileir.models import token_norm\n"
            "with torch.no_grad():\n"
            "    assert not token_norm.available(torch.zeros(2, 4), torch.nn.LayerNorm(4))\n"
            "assert fused.cascade_bf16_engine() is None and not fused.cascade_bf16_available()\n"
            "q = torch.zeros(1, 1, 4, 2)\n"
            "try:\n    K.run_kernel('fused', q, q, q, None, None)\nexcept RuntimeError as e:\n    print(e)\n")
    env = dict(os.environ, AGILEIR_FUSED="0")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the fused window-attention kernel is not available: AGILEIR_FUSED=0"


# ---- GSWA's whole group cascade, fused per window -------------------------------------------------
needs_cascade = pytest.mark.skipif(not fused.cascade_available(), reason=f"fused cascade not built: {fused.state()}")


def cascade_reference(x, weight, qkv_bias, dw, dw_bias, bias, mask, m, scale, relu=False):
    """GSWA's cascade in float64, one window at a time; the depthwise conv as explicit taps; the
    ReLU (GSWA's activation) on the outputs only, after the cascade."""
    x, weight, qkv_bias, bias = x.double(), weight.double(), qkv_bias.double(), bias.double()
    groups, e, dv = weight.shape
    dk, n = (e - dv) // 2, x.shape[1]
    windows = []
    for w in range(x.shape[0]):
        ys, y = [], None
        for j in range(groups):
            z = x[w, :, j * dv:(j + 1) * dv] + (0 if y is None else y)
            qkv = z @ weight[j].T + qkv_bias[j]
            q0, k, v = qkv[:, :dk], qkv[:, dk:2 * dk], qkv[:, 2 * dk:]
            if dw is None:
                q = q0 * scale
            else:
                ks = dw.shape[-1]
                grid = torch.nn.functional.pad(q0.T.reshape(dk, m, m), [ks // 2] * 4)
                q = dw_bias[j].double()[:, None, None].expand(dk, m, m).clone()
                for a in range(ks):
                    for b in range(ks):
                        q = q + dw[j, :, a, b].double()[:, None, None] * grid[:, a:a + m, b:b + m]
                q = q.reshape(dk, n).T
            s = q @ k.T + bias[j] + (0 if mask is None else mask[w % mask.shape[0]].double())
            y = torch.softmax(s, dim=-1) @ v
            ys.append(y)
        windows.append(torch.cat(ys, dim=-1))
    out = torch.stack(windows)
    return out.clamp_min(0) if relu else out


CASCADES = {  # (B_, G, window m, dk, dv, depthwise kernel, mask window grid)
    "agileir-s-shifted": (16, 6, 8, 8, 10, 3, (16, 32, 8)),
    "no-conv-no-mask": (4, 3, 4, 4, 6, 0, None),
    "window7-kernel5": (6, 2, 7, 5, 7, 5, (21, 14, 7)),  # N, dk, dv not multiples of 8
}


def _cascade_inputs(b_, groups, m, dk, dv, ks, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s, std=1.0: (torch.randn(*s, generator=g) * std).requires_grad_()  # noqa: E731
    e, n = 2 * dk + dv, m * m
    # scales of a trained network's (logits of a few units): with much larger ones the softmax is so
    # peaked that float32 itself (PyTorch's own kernels too) drifts by 1e-3 through six groups
    x, weight, qkv_bias = make(b_, n, groups * dv), make(groups, e, dv, std=0.2), make(groups, e, std=0.1)
    dw = make(groups, dk, ks, ks, std=0.2) if ks else None
    dw_bias = make(groups, dk, std=0.1) if ks else None
    return x, weight, qkv_bias, dw, dw_bias, make(groups, n, n, std=0.5)


@needs_cascade
@pytest.mark.parametrize("case,relu", [(c, False) for c in CASCADES] + [("agileir-s-shifted", True),
                                                                          ("window7-kernel5", True)])
def test_cascade_forward_and_gradients_match_the_float64_reference(case, relu):
    """float32 against float64: 1e-5 of the largest magnitude, what float32 rounding of sums of up
    to 64 terms allows after six groups feed each other (each group's error enters the next).
    With ``relu`` the ReLU is fused into the kernel: outputs zeroed, their gradients stopped, while
    the next group still reads the unclipped output."""
    b_, groups, m, dk, dv, ks, grid = CASCADES[case]
    x, weight, qkv_bias, dw, dw_bias, bias = inputs = _cascade_inputs(b_, groups, m, dk, dv, ks)
    mask = None if grid is None else shift_mask(grid[0], grid[1], grid[2], grid[2] // 2)  # -100, as the network's
    scale = dk ** -0.5
    out = fused.fused_gswa_cascade(x, weight, qkv_bias, dw, dw_bias, bias, mask, m, scale, relu)
    assert out.dtype == torch.float32 and out.shape == x.shape
    if relu:  # about half the outputs are clipped, so the gradient check below sees the ReLU's mask
        assert 0.3 < (out == 0).double().mean() < 0.7
    leaves = [t for t in inputs if t is not None]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    it = iter(leaves64)
    want = cascade_reference(*(next(it) if t is not None else None for t in inputs), mask, m, scale, relu)
    assert (out.double() - want).abs().max() <= 1e-5 * want.abs().max()
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got_grads = torch.autograd.grad(out, leaves, g.float())
    want_grads = torch.autograd.grad(want, leaves64, g)
    for a, b in zip(got_grads, want_grads):
        assert a.shape == b.shape
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()


@needs_cascade
@pytest.mark.parametrize("case", ["agileir-s-shifted", "window7-kernel5"])
def test_cascade_backward_reads_a_bf16_gradient_and_writes_a_bf16_output(case):
    """Under bf16 autocast the output projection's gradient (what the kernel reads) and its input
    (the cascade's output the kernel writes) are bf16: the gradients equal those of that gradient
    widened to float32 (bf16 widens exactly), up to one float32 rounding where the compiler fuses a
    multiply-add differently in the two builds of the loop, and the output is the float32 output
    rounded to bf16 once."""
    b_, groups, m, dk, dv, ks, grid = CASCADES[case]
    x, weight, qkv_bias, dw, dw_bias, bias = _cascade_inputs(b_, groups, m, dk, dv, ks)
    mask = None if grid is None else shift_mask(grid[0], grid[1], grid[2], grid[2] // 2)
    args = fused._cascade_args(x.detach(), weight.detach(), qkv_bias.detach(), dw if dw is None else dw.detach(),
                               dw_bias if dw_bias is None else dw_bias.detach(), bias.detach(), mask)
    x_, w_, bq_, dw_, dwb_, bias_, mask_ = args
    taps = fused._taps(dw_, dwb_)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).bfloat16()
    ext = fused._load()
    y16, y32 = torch.empty_like(x_, dtype=torch.bfloat16), torch.empty_like(x_)
    got = ext.cascade_backward(x_, w_, bq_, *taps, bias_, mask_, m, dk ** -0.5, True, g, y16)
    want = ext.cascade_backward(x_, w_, bq_, *taps, bias_, mask_, m, dk ** -0.5, True, g.float(), y32)
    assert torch.equal(y16, y32.bfloat16())
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and (a - b).abs().max() <= 2.4e-7 * b.abs().max()
    with pytest.raises(RuntimeError, match="grad's dtype"):
        ext.cascade_backward(x_, w_, bq_, *taps, bias_, mask_, m, dk ** -0.5, True, g, y32)


@needs_cascade
def test_cascade_is_twice_differentiable_through_its_reference():
    x, weight, qkv_bias, dw, dw_bias, bias = _cascade_inputs(2, 2, 4, 2, 3, 3)
    args = (dw, dw_bias, bias, None, 4, 0.5, True)  # with the fused ReLU
    (gx,) = torch.autograd.grad(fused.fused_gswa_cascade(x, weight, qkv_bias, *args).square().sum(), x,
                                create_graph=True)
    (gx_ref,) = torch.autograd.grad(cascade_reference(x, weight, qkv_bias, *args).square().sum(), x,
                                    create_graph=True)
    (hw,) = torch.autograd.grad(gx.sum(), weight)
    (hw_ref,) = torch.autograd.grad(gx_ref.sum(), weight)
    assert (gx.double() - gx_ref).abs().max() <= 1e-5 * gx_ref.abs().max()
    assert (hw.double() - hw_ref).abs().max() <= 1e-5 * hw_ref.abs().max()


@needs_cascade
def test_gswa_runs_the_cascade_in_float32_only(monkeypatch):
    """The module on kernel "fused": float32 takes the cascade and matches the eager kernel (forward,
    input and parameter gradients; at inference all windows in one call, where the eager kernel
    takes chunks), under bf16 autocast as well
    (within bf16's rounding of the output projection: 8 bits of mantissa, 2e-2 of the largest
    output); float64 and a LayerNorm on the group inputs keep the per-group path."""
    from agileir.models.attention import gswa

    calls = []
    real = fused.fused_gswa_cascade
    monkeypatch.setattr(fused, "fused_gswa_cascade", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    torch.manual_seed(0)
    attn = gswa.GroupShiftedWindowAttention(60, 8, 6)
    x = torch.randn(16, 64, 60, requires_grad=True)
    mask = shift_mask(16, 32, 8, 4)
    outs, grads = {}, {}
    for kernel in ("eager", "fused"):
        attn.zero_grad()
        outs[kernel] = attn(x, mask, kernel=kernel)
        grads[kernel] = torch.autograd.grad(outs[kernel].square().sum(), [x, *attn.parameters()])
    assert calls == [16]
    assert (outs["fused"] - outs["eager"]).abs().max() <= 1e-5 * outs["eager"].abs().max()
    for a, b in zip(grads["fused"], grads["eager"]):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    monkeypatch.setattr(gswa, "WINDOW_CHUNK_BYTES", 4 * 64 * 64 * 4)  # chunks of 4 windows elsewhere
    with torch.no_grad():
        inferred = attn(x, mask, kernel="fused")
        chunked_eager = attn(x, mask, kernel="eager")
    assert calls[1:] == [16]  # the cascade holds one window at a time: all windows in one call
    assert (inferred - outs["eager"]).abs().max() <= 1e-5 * outs["eager"].abs().max()
    assert (chunked_eager - outs["eager"]).abs().max() <= 1e-5 * outs["eager"].abs().max()
    calls.clear()
    attn.double()(x.detach().double(), mask.double(), kernel="fused")
    assert gswa.GroupShiftedWindowAttention(12, 4, 3, qkv_norm=True).cascade_parameters() is None
    assert calls == []
    # bf16 autocast: the cascade in float32 (its input is float32), the output projection in bf16
    attn.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, mask, kernel="fused")
    assert calls == [16] and out.dtype == torch.bfloat16
    assert (out.float() - outs["eager"]).abs().max() <= 2e-2 * outs["eager"].abs().max()


# ---- The cascade's bf16 kernel on AVX-512 BF16 / AMX (inference) ------------------------------------
needs_bf16_cascade = pytest.mark.skipif(not fused.cascade_bf16_available(),
                                        reason="no AVX-512 BF16 here (or the kernel is not built)")
BF16_ENGINES = [pytest.param("avx512_bf16", id="avx512_bf16"),
                pytest.param("amx", id="amx", marks=pytest.mark.skipif(fused.cascade_bf16_engine() != "amx",
                                                                       reason="no AMX tiles here"))]
BF16_CASCADES = {  # (B_, G, window m, dk, dv, depthwise kernel, mask window grid)
    "agileir-s-shifted": (16, 6, 8, 8, 10, 3, (16, 32, 8)),
    "no-conv-dv16": (4, 3, 8, 4, 16, 0, None),  # the column of ones in a second block of v
    "window16-dv30": (2, 2, 16, 16, 30, 3, (32, 16, 16)),  # agileir-m's dk and dv, 256 tokens
}


def bf16_cascade_reference(x, weight, qkv_bias, dw, dw_bias, bias, mask, m, scale):
    """What the bf16 kernel computes, in float64: each group's input and projection weights (as
    autocast's linear layers do), q, k, v and the unnormalised probabilities rounded to bf16,
    everything else exact; the row sums of the rounded probabilities; ReLU out."""
    rnd = lambda t: t.to(torch.bfloat16).double()  # noqa: E731
    groups, e, dv = weight.shape
    dk, (b_, n, _) = (e - dv) // 2, x.shape
    ys, y = [], None
    for j in range(groups):
        z = x[..., j * dv:(j + 1) * dv].double() + (0 if y is None else y)
        q0, k, v = (rnd(z) @ rnd(weight[j]).T + qkv_bias[j].double()).split([dk, dk, dv], dim=-1)
        if dw is None:
            q = q0 * scale
        else:
            grid = q0.transpose(1, 2).reshape(b_, dk, m, m)
            q = torch.nn.functional.conv2d(grid, dw[j].double().unsqueeze(1), dw_bias[j].double(),
                                           padding=dw.shape[-1] // 2, groups=dk).reshape(b_, dk, n).transpose(1, 2)
        s = rnd(q) @ rnd(k).transpose(1, 2) + bias[j].double()
        if mask is not None:
            s = s + mask.double().repeat(b_ // mask.shape[0], 1, 1)
        p = rnd(torch.exp(s - s.amax(-1, keepdim=True)))
        y = (p @ rnd(v)) / p.sum(-1, keepdim=True)
        ys.append(y)
    return torch.cat(ys, dim=-1).clamp_min(0)


@needs_bf16_cascade
@pytest.mark.parametrize("engine", BF16_ENGINES)
@pytest.mark.parametrize("case", list(BF16_CASCADES))
def test_bf16_cascade_matches_the_float64_reference_within_bf16_rounding(case, engine):
    """The bf16 kernel (each engine this CPU runs) against float64 twice. Against the same roundings
    emulated in float64, what is left is the kernel's float32 sums and its output's own rounding
    to bf16 (2^-9 of each value): 6e-3 of the largest output at worst, 3e-3 of the RMS. Against
    exact float64, the roundings of each group's input and weights, q, k, P and v add up through
    the groups (more with dk 16 and 256 tokens): 2e-2 of the largest, 1e-2 of the RMS. Probabilities are exact zeros under the -100 mask's pairs."""
    b_, groups, m, dk, dv, ks, grid = BF16_CASCADES[case]
    x, weight, qkv_bias, dw, dw_bias, bias = (t if t is None else t.detach()
                                              for t in _cascade_inputs(b_, groups, m, dk, dv, ks))
    mask = None if grid is None else shift_mask(grid[0], grid[1], grid[2], grid[2] // 2)
    scale = dk ** -0.5
    out = fused.fused_gswa_cascade_bf16(x, weight, qkv_bias, dw, dw_bias, bias, mask, m, scale, True, engine)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    rms = lambda t: t.square().mean().sqrt()  # noqa: E731
    emulated = bf16_cascade_reference(x, weight, qkv_bias, dw, dw_bias, bias, mask, m, scale)
    want = cascade_reference(x, weight, qkv_bias, dw, dw_bias, bias, mask, m, scale, True)
    assert (out.double() - emulated).abs().max() <= 6e-3 * want.abs().max()
    assert rms(out.double() - emulated) <= 3e-3 * rms(want)
    assert (out.double() - want).abs().max() <= 2e-2 * want.abs().max()
    assert rms(out.double() - want) <= 1e-2 * rms(want)
    if mask is not None:  # the bounds see a wrong kernel: without the shift mask the outputs move by far more
        unmasked = cascade_reference(x, weight, qkv_bias, dw, dw_bias, bias, None, m, scale, True)
        assert rms(unmasked - want) > 10 * rms(out.double() - want)


@needs_bf16_cascade
def test_gswa_takes_the_bf16_cascade_under_bf16_autocast_inference_only(monkeypatch):
    """bf16 autocast without autograd on an AVX-512 BF16 / AMX CPU: the bf16 kernel, close to float32 (2e-2 of the
    largest output: bf16 rounding, as above, and the output projection's own); with autograd, in
    float32, or where the kernel is unavailable or the windows unsupported (7x7): the float32
    cascade, the same function."""
    from agileir.models.attention import gswa

    calls = []
    real = fused.fused_gswa_cascade_bf16
    monkeypatch.setattr(fused, "fused_gswa_cascade_bf16", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    torch.manual_seed(0)
    attn = gswa.GroupShiftedWindowAttention(60, 8, 6).eval()
    x, mask = torch.randn(16, 64, 60), shift_mask(16, 32, 8, 4)
    with torch.no_grad():
        want = attn(x, mask, kernel="fused")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = attn(x, mask, kernel="fused")
        assert calls == [16] and got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 2e-2 * want.abs().max()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            monkeypatch.setattr(fused, "cascade_bf16_available", lambda: False)
            fallback = attn(x, mask, kernel="fused")
        assert calls == [16] and (fallback.float() - want).abs().max() <= 2e-2 * want.abs().max()
    monkeypatch.undo()
    monkeypatch.setattr(fused, "fused_gswa_cascade_bf16", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x.requires_grad_(), mask, kernel="fused")  # autograd: float32 cascade
        with torch.no_grad():
            small = gswa.GroupShiftedWindowAttention(60, 7, 6).eval()
            small(torch.randn(4, 49, 60), None, kernel="fused")  # 49 tokens: not a multiple of 32
    assert calls == [16]


@needs_bf16_cascade
def test_bf16_cascade_refuses_an_engine_this_cpu_does_not_run():
    x, weight, qkv_bias, dw, dw_bias, bias = (t if t is None else t.detach() for t in _cascade_inputs(2, 2, 8, 8, 10, 3))
    with pytest.raises(ValueError, match="does not run here"):
        fused.fused_gswa_cascade_bf16(x, weight, qkv_bias, dw, dw_bias, bias, None, 8, 0.3, True, "vnni")
    if fused.cascade_bf16_engine() != "amx":
        with pytest.raises(ValueError, match="does not run here"):
            fused.fused_gswa_cascade_bf16(x, weight, qkv_bias, dw, dw_bias, bias, None, 8, 0.3, True, "amx")
