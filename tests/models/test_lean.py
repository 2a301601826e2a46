"""The memory-lean training path: same gradients as the plain path, and a fixed memory bill."""

import pytest
import torch

from agileir.engine.memory import saved_activation_bytes
from agileir.models import build_model, preset_config
from agileir.models.network import TransformerBlock
from agileir.models.windows import shift_mask

TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(3, 3), window_size=4, key_dim=3, drop_path_rate=0.0)


def grads(model, x):
    model.zero_grad()
    (model(x) ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("preset", ["swinir-s", "agileir-s"])
def test_lean_gradients_equal_eager(preset):
    torch.manual_seed(0)
    eager = build_model(preset, **TINY, attention_impl="eager").train()
    lean = build_model(preset, **TINY, attention_impl="recompute").train()
    lean.load_state_dict(eager.state_dict())
    x = torch.rand(2, 3, 11, 9)
    ge, gl = grads(eager, x), grads(lean, x)
    assert any(n.endswith("relative_position_bias_table") for n in ge)
    for name in ge:
        rel = (ge[name] - gl[name]).norm() / ge[name].norm().clamp_min(1e-30)
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"
        assert ge[name].abs().sum() > 0, f"{name} has no gradient"


def test_lean_is_the_default_for_gswa_training_only():
    gswa = build_model("agileir-s", **TINY).train()
    swin = build_model("swinir-s", **TINY).train()
    block = gswa.layers[0].residual_group.blocks[0]
    assert block.uses_recompute()
    assert not swin.layers[0].residual_group.blocks[0].uses_recompute()
    gswa.eval()
    assert not block.uses_recompute()


@pytest.mark.parametrize("shift", [0, 4])
@pytest.mark.parametrize("preset,heads", [("agileir-s", 6), ("swinir-s", 6)])
def test_lean_block_keeps_four_c_floats_per_token(preset, heads, shift):
    """Lean block: block input (C) + MLP input (C) + fc1 output (2C) = 4C floats per token."""
    c, b, size = 60, 2, 16
    block = TransformerBlock(preset_config(preset, attention_impl="recompute"), heads, shift, 0.0).train()
    x = torch.randn(b, size, size, c, requires_grad=True)
    _, report = saved_activation_bytes(block, x, shift_mask(size, size, 8, 4), exclude=block)
    tokens = b * size * size
    assert report.total_bytes == tokens * 4 * c * 4


def test_eager_block_keeps_attention_maps():
    """The plain path keeps at least one N x N map per head: heads * N floats per token more."""
    c, b, size, n, heads = 60, 2, 16, 64, 6
    block = TransformerBlock(preset_config("agileir-s", attention_impl="eager"), heads, 0, 0.0).train()
    x = torch.randn(b, size, size, c, requires_grad=True)
    _, report = saved_activation_bytes(block, x, None, exclude=block)
    assert report.total_bytes >= b * size * size * (4 * c + heads * n) * 4


def test_lean_path_refuses_swapped_parameters():
    """Recomputing with other weights than the forward used would give silently wrong gradients."""
    from torch.func import functional_call

    model = build_model("agileir-s", **TINY).train()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    out = functional_call(model, params, (torch.rand(1, 3, 8, 8),))
    with pytest.raises(RuntimeError, match="attention_impl='eager'"):
        out.sum().backward()


@pytest.mark.parametrize("preset", ["swinir-s", "agileir-s"])
def test_lean_under_bf16_autocast_matches_eager(preset):
    """The recompute re-enters the forward's autocast, so bf16 training gets the same gradients as
    the same kernel without the recompute (the fused kernel where it builds: GSWA's cascade runs in
    float32 under autocast there, which the eager kernel's bf16 group projections would not match)."""
    from agileir.models.attention import dispatch

    torch.manual_seed(0)
    kernel = "fused" if dispatch.use_fused("cpu") else "eager"
    eager = build_model(preset, **TINY, attention_impl=kernel).train()
    lean = build_model(preset, **TINY, attention_impl="recompute").train()
    lean.load_state_dict(eager.state_dict())
    x = torch.rand(2, 3, 8, 8)

    def bf16_grads(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    ge, gl = bf16_grads(eager), bf16_grads(lean)
    for name in ge:
        assert gl[name].dtype == torch.float32
        rel = (ge[name] - gl[name]).norm() / ge[name].norm().clamp_min(1e-12)
        assert rel < 3e-2, f"{name}: relative error {rel:.2e}"


def _count_gradient_only_passes(monkeypatch) -> list[int]:
    from agileir.models.attention import fused

    calls: list[int] = []
    real = fused.gswa_cascade_projection_gradients
    monkeypatch.setattr(fused, "gswa_cascade_projection_gradients", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("relu", [True, False])
def test_recompute_skips_the_cascade_forward_with_exact_gradients(monkeypatch, relu):
    """GSWA's recompute on the fused cascade runs its gradients-only pass (no forward values) once
    per block; gradients equal the eager path's to fp32 rounding (1e-5 relative)."""
    from agileir.models.attention import dispatch, fused

    if not fused.cascade_available():
        pytest.skip(f"fused cascade not built: {fused.unavailable_reason()}")
    calls = _count_gradient_only_passes(monkeypatch)
    monkeypatch.setattr(dispatch, "use_fused", lambda device_type: device_type == "cpu")
    torch.manual_seed(0)
    act = dict(gswa_activation="relu" if relu else "identity")
    eager = build_model("agileir-s", **TINY, **act, attention_impl="eager").train()
    lean = build_model("agileir-s", **TINY, **act).train()
    lean.load_state_dict(eager.state_dict())
    x = torch.rand(2, 3, 11, 9)
    ge, gl = grads(eager, x), grads(lean, x)
    assert len(calls) == 4  # one per block
    for name in ge:
        rel = (ge[name] - gl[name]).norm() / ge[name].norm().clamp_min(1e-30)
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"


def test_gradient_only_pass_under_bf16_matches_the_full_recompute(monkeypatch):
    """Under bf16 autocast the output projection's gradient products run in bf16 as autocast's
    would: within 2e-2 relative of the recompute that runs the cascade forward."""
    from agileir.models import recompute
    from agileir.models.attention import dispatch, fused

    if not fused.cascade_available():
        pytest.skip(f"fused cascade not built: {fused.unavailable_reason()}")
    monkeypatch.setattr(dispatch, "use_fused", lambda device_type: device_type == "cpu")
    torch.manual_seed(0)
    model = build_model("agileir-s", **TINY).train()
    x = torch.rand(2, 3, 11, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        calls = _count_gradient_only_passes(monkeypatch)
        deferred = grads(model, x)
        assert len(calls) == 4
        monkeypatch.setattr(recompute, "values_unused", lambda: False)
        monkeypatch.setattr("agileir.models.attention.gswa.values_unused", lambda: False)
        full = grads(model, x)
        assert len(calls) == 4
    for name in full:
        rel = (full[name] - deferred[name]).norm() / full[name].norm().clamp_min(1e-30)
        assert rel < 2e-2, f"{name}: relative error {rel:.2e}"


def test_gradient_penalty_recomputes_with_values(monkeypatch):
    """create_graph=True (double backward) never takes the gradients-only pass; the penalty's own
    backward may (it only differentiates), and its gradients equal the eager model's."""
    from agileir.models.attention import dispatch, fused

    if not fused.cascade_available():
        pytest.skip(f"fused cascade not built: {fused.unavailable_reason()}")
    calls = _count_gradient_only_passes(monkeypatch)
    monkeypatch.setattr(dispatch, "use_fused", lambda device_type: device_type == "cpu")
    torch.manual_seed(0)
    eager = build_model("agileir-s", **TINY, attention_impl="eager").train()
    model = build_model("agileir-s", **TINY).train()
    model.load_state_dict(eager.state_dict())
    x = torch.rand(1, 3, 8, 8)
    for m in (eager, model):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(xi).square().mean(), xi, create_graph=True)
        if m is model:
            assert calls == []
        g.square().sum().backward()
    for (name, pe), pm in zip(eager.named_parameters(), model.parameters()):
        rel = (pe.grad - pm.grad).norm() / pe.grad.norm().clamp_min(1e-30)
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"
