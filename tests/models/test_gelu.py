"""GELU with its gradient in one pass (the lean MLP's backward) against float64 maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from agileir.models import gelu
from agileir.models.attention import fused

needs_kernel = pytest.mark.skipif(not fused.vectorized() or not hasattr(fused.extension(), "gelu_backward"),
                                  reason="the fused CPU extension did not build with its AVX2 path here")

# float32 results of the erf GELU: a few float32 ulps (1.2e-7 each) of max(1, |x|) for the value and
# of max(1, |grad|) for the gradient; ATen's own kernels are at 1.6e-7 and 2.7e-7 on these inputs
TOL = 5e-7


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(n, generator=g) * 3, torch.linspace(-20, 20, 4001),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 6.3, -6.3, 12.8, -12.8, 50.0, -50.0, 1e4, -1e4])])
    return x, torch.randn(x.shape, generator=g)


def _reference(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xd = x.double().requires_grad_()
    ref = F.gelu(xd)
    (grad,) = torch.autograd.grad(ref, xd, d.double())
    return ref.detach(), grad


@needs_kernel
@pytest.mark.parametrize("n", [0, 5, 100_003])  # lengths that end in a partial register
def test_kernel_matches_float64(n):
    x, d = _inputs(n)
    x, d = x[: max(n, 1) + 4000], d[: max(n, 1) + 4000]  # a length that is no multiple of 8 either
    assert gelu.applies(x)
    g, gh = gelu.gelu_and_grad(x, d)
    ref, ref_grad = _reference(x, d)
    err_g = ((g.double() - ref).abs() / x.abs().double().clamp_min(1)).max().item()
    err_gh = ((gh.double() - ref_grad).abs() / d.abs().double().clamp_min(1)).max().item()
    assert err_g < TOL and err_gh < TOL, (err_g, err_gh)
    assert torch.isfinite(g).all() and torch.isfinite(gh).all()
    # the tails exactly: x for large x, 0 for very negative x, derivative 1 and 0
    big = x.abs() > 13
    assert torch.equal(g[big & (x > 0)], x[big & (x > 0)]) and (g[big & (x < 0)].abs() < 1e-30).all()
    assert torch.equal(gh[big & (x > 0)], d[big & (x > 0)]) and (gh[big & (x < 0)] == 0).all()


@needs_kernel
def test_kernel_keeps_the_shape_of_a_multidimensional_input():
    x, d = _inputs(3 * 5 * 7 * 120 - 4001 - 12)
    x, d = x.view(3, 5, 7, 120), d.view(3, 5, 7, 120)
    g, gh = gelu.gelu_and_grad(x, d)
    ref, ref_grad = _reference(x, d)
    assert g.shape == x.shape and gh.shape == x.shape
    assert torch.allclose(g.double(), ref, atol=TOL * 30) and torch.allclose(gh.double(), ref_grad, atol=TOL * 30)


def test_fallback_is_atens_gelu_and_backward():
    """bf16 and anything under a dispatch mode keep ATen's GELU (identical results)."""
    x, d = _inputs(1000)
    xb, db = x.bfloat16(), d.bfloat16()
    assert not gelu.applies(xb)
    g, gh = gelu.gelu_and_grad(xb, db)
    leaf = xb.clone().requires_grad_()
    (want,) = torch.autograd.grad(F.gelu(leaf), leaf, db)
    assert g.dtype == torch.bfloat16 and torch.equal(g, F.gelu(xb)) and torch.equal(gh, want)
    with FlopCounterMode(display=False):
        assert not gelu.applies(x)


@needs_kernel
def test_lean_mlp_gradients_use_the_kernel_and_match_float64(monkeypatch):
    """The lean MLP's backward takes the kernel, and its gradients equal float64 autograd of the plain MLP."""
    from agileir.models.network import Mlp
    from agileir.models.recompute import lean_mlp

    calls = []
    ext = fused.extension()
    real = ext.gelu_backward
    monkeypatch.setattr(ext, "gelu_backward", lambda h, g: calls.append(h.shape) or real(h, g))
    torch.manual_seed(0)
    norm, mlp = torch.nn.LayerNorm(12), Mlp(12, 24)
    x = torch.randn(2, 5, 7, 12, requires_grad=True)
    out = lean_mlp(x, norm, mlp)
    go = torch.randn_like(out)
    params = [x, norm.weight, norm.bias, *mlp.parameters()]
    grads = torch.autograd.grad(out, params, go)
    assert calls, "the lean MLP's backward did not take the kernel"
    ref_params = [p.detach().double().requires_grad_() for p in params]
    xd, wn, bn, w1, b1, w2, b2 = ref_params
    u = F.layer_norm(xd, (12,), wn, bn, norm.eps)
    ref = F.linear(F.gelu(F.linear(u, w1, b1)), w2, b2)
    want = torch.autograd.grad(ref, ref_params, go.double())
    for got, exp in zip(grads, want):
        assert torch.allclose(got.double(), exp, rtol=1e-5, atol=1e-6)
