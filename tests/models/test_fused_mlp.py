"""The MLP with oneDNN's fused post-ops against float64 maths, and where the package uses it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agileir.models import fused_mlp
from agileir.models.network import Mlp
from agileir.models.presets import build_model

pytestmark = pytest.mark.skipif(not fused_mlp._has_ops(), reason="this torch has no oneDNN linear post-ops")


def _mlp(dim: int = 12, hidden: int = 24) -> Mlp:
    torch.manual_seed(0)
    return Mlp(dim, hidden).eval()


def _float64_reference(h: torch.Tensor, mlp: Mlp, residual: torch.Tensor) -> torch.Tensor:
    m = Mlp(mlp.fc1.in_features, mlp.fc1.out_features).double()
    m.load_state_dict(mlp.state_dict())
    return residual.double() + m(h.double())


@pytest.mark.parametrize("contiguous", [True, False])
def test_fp32_matches_float64_maths(contiguous: bool) -> None:
    """fp32 rounding only: products over K = 12 and 24 of unit-scale values stay within 1e-5."""
    mlp = _mlp()
    h = torch.randn(2, 6, 7, 12)
    residual = torch.randn(2, 7, 6, 12).transpose(1, 2) if not contiguous else torch.randn(2, 6, 7, 12)
    with torch.no_grad():
        assert fused_mlp.available(h, mlp)
        out = fused_mlp.mlp_residual(h, mlp, residual)
    assert out.shape == residual.shape and out.dtype == torch.float32
    assert (out.double() - _float64_reference(h, mlp, residual)).abs().max().item() < 1e-5


def test_bf16_autocast_matches_the_unfused_module() -> None:
    """Under autocast both run the products in bf16 (8-bit mantissa): within 3e-2 of float64 for
    unit-scale values, like the unfused module; the residual stream stays float32."""
    if not fused_mlp._bf16_supported():
        pytest.skip("oneDNN has no bf16 on this CPU")
    mlp = _mlp()
    h, residual = torch.randn(64, 12), torch.randn(64, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_mlp.compute_dtype_for(h) == torch.bfloat16
        out = fused_mlp.mlp_residual(h, mlp, residual)
        unfused = residual + mlp(h)
    ref = _float64_reference(h, mlp, residual)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max().item() < 3e-2
    assert (unfused.double() - ref).abs().max().item() < 3e-2


def test_not_available_where_it_must_not_run() -> None:
    mlp, h = _mlp(), torch.randn(8, 12)
    assert not fused_mlp.available(h, mlp)  # gradients on: the operators have no backward
    with torch.no_grad():
        assert fused_mlp.available(h, mlp)
        assert not fused_mlp.available(h.double(), mlp)
        tanh = _mlp()
        tanh.act = nn.GELU(approximate="tanh")
        assert not fused_mlp.available(h, tanh)
        int8 = _mlp()
        int8.fc1 = torch.ao.nn.quantized.dynamic.Linear(12, 24)
        assert not fused_mlp.available(h, int8)
        with FlopCounterMode(display=False):
            assert not fused_mlp.available(h, mlp)


TINY = dict(embed_dim=12, depths=(2,), num_heads=(3,), window_size=4, key_dim=2, scale=2)


def test_network_inference_uses_it_off_the_official_path_and_agrees_with_the_eager_module(count_calls) -> None:
    calls = count_calls(fused_mlp, "mlp_residual")
    torch.manual_seed(0)
    model = build_model("agileir-s", **TINY).eval()
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        out = model(x)
    assert len(calls) == 2  # one per block
    with torch.enable_grad():  # gradients on: the unfused module
        ref = model(x)
    assert len(calls) == 2
    assert (out - ref).abs().max().item() < 1e-5


def test_official_swinir_keeps_the_unfused_module(count_calls) -> None:
    calls = count_calls(fused_mlp, "mlp_residual")
    tiny = {k: v for k, v in TINY.items() if k != "key_dim"}
    official = build_model("swinir-s", **tiny).eval()
    fast = build_model("swinir-s", **tiny, attention_impl="sdpa").eval()
    with torch.no_grad():
        official(torch.rand(1, 3, 8, 8))
        assert calls == []
        fast(torch.rand(1, 3, 8, 8))
    assert len(calls) == 2
