"""Regression tests for answers that were wrong without an error (issue: no silent wrongness).

Each test compares against an independent reference: a freshly built model holding the same
weights (for the bias), the eager attention path (for double backward) and plain autograd.
"""

import pytest
import torch

from agileir.models import build_model

TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(3, 3), window_size=4, key_dim=3, drop_path_rate=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("preset", ["swinir-s", "agileir-s"])
@pytest.mark.parametrize("edit", ["data_add", "data_copy", "ema_style_lerp"])
def test_inference_follows_edits_through_data(preset, edit):
    """``p.data.add_`` / ``.copy_`` (BasicSR/KAIR-style EMA code) bump no version counter; the
    next no-grad forward must still use the edited relative-position bias."""
    torch.manual_seed(0)
    model = build_model(preset, **TINY).eval()
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        model(x)  # a first forward (fills any cache)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            delta = torch.randn(p.shape, generator=g)
            if edit == "data_add":
                p.data.add_(delta)
            elif edit == "data_copy":
                p.data.copy_(p.data + delta)
            else:
                p.data.mul_(0.5).add_(delta, alpha=0.5)
    with torch.no_grad():
        edited = model(x)
    fresh = build_model(preset, **TINY).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(edited, fresh(x), rtol=0, atol=1e-6)


def _penalty_grads(model, x):
    """Parameter gradients of a gradient penalty (WGAN-GP / R1 style): a double backward."""
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    y = model(x)
    (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (gx.pow(2).sum() + y.mean()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset,impl,checkpoint", [
    ("agileir-s", "auto", False),  # the training default: block recompute + lean MLP
    ("swinir-s", "recompute", False),
    ("agileir-s", "chunked", False),  # the flash-style kernel
    ("agileir-s", "eager", True),  # gradient checkpointing
])
def test_double_backward_matches_eager(preset, impl, checkpoint):
    torch.manual_seed(0)
    eager = build_model(preset, **TINY, attention_impl="eager").double().train()
    other = build_model(preset, **TINY, attention_impl=impl, grad_checkpoint=checkpoint).double().train()
    other.load_state_dict(eager.state_dict())
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ge, go = _penalty_grads(eager, x), _penalty_grads(other, x)
    assert set(ge) == set(go)
    for name in ge:
        torch.testing.assert_close(go[name], ge[name], rtol=1e-9, atol=1e-12, msg=name)


def test_flop_counter_works_on_the_training_default():
    """FlopCounterMode around a training step of the lean path counts, not raises, and counts
    the recomputation (the lean step does more work than the eager one)."""
    from torch.utils.flop_counter import FlopCounterMode

    def step_flops(impl):
        torch.manual_seed(0)
        model = build_model("agileir-s", **TINY, attention_impl=impl).train()
        x = torch.rand(1, 3, 8, 8)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x).mean().backward()
        return counter.get_total_flops()

    eager, lean = step_flops("eager"), step_flops("auto")
    assert eager > 0
    assert lean > eager
