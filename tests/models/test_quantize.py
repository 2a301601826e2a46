"""int8 dynamic quantization: what it replaces, what it costs, and its file round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from agileir.errors import ConfigError, ModelLoadError
from agileir.models.loading import load_model, save_model
from agileir.models.presets import build_model
from agileir.models.quantize import QUANTIZATION_KEY, is_quantized, quantize_int8

TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(3, 3), window_size=4, key_dim=2, scale=2)


def tiny(preset: str = "agileir-s") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset, **TINY).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("preset", ["agileir-s", "swinir-s"])
def test_linear_layers_are_int8_but_gswa_groups_and_the_float_model_is_untouched(preset: str) -> None:
    model = tiny(preset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    assert is_quantized(q) and not is_quantized(model)
    floats = {name for name, m in q.named_modules() if type(m) is torch.nn.Linear}
    groups = {name for name, _ in model.named_modules() if ".group_qkv." in name}
    assert floats == groups and bool(groups) == (preset == "agileir-s")
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules()) == (
        sum(type(m) is torch.nn.Linear for m in model.modules()) - len(groups))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model.double()(x.double()), q(x)
    # int8 weights (per-tensor, 1/254 of the largest magnitude per step) and per-call int8
    # activations: a few tenths of a percent per layer, a percent or two through the network;
    # never exact, or nothing was quantized
    err = rel_err(out, ref)
    assert 1e-6 < err < 3e-2


def test_int8_file_round_trips_bit_for_bit(tmp_path) -> None:
    q = quantize_int8(tiny())
    path = save_model(q, tmp_path / "tiny-int8.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()[QUANTIZATION_KEY] == "dynamic-int8"
        weights = [k for k in f.keys() if k.endswith(("mlp.fc1.weight", "attn.proj.weight"))]
        assert weights and all(f.get_tensor(k).dtype == torch.int8 for k in weights)
        groups = [k for k in f.keys() if k.endswith("group_qkv.0.weight")]
        assert groups and all(f.get_tensor(k).dtype == torch.float32 for k in groups)
    loaded = load_model(path)
    assert is_quantized(loaded)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


def test_int8_file_is_refused_where_float_weights_are_needed(tmp_path) -> None:
    from agileir.engine.builders import init_from_weights
    from agileir.inference.restorer import Restorer

    path = save_model(quantize_int8(tiny()), tmp_path / "q.safetensors")
    with pytest.raises(ConfigError, match="int8 inference weights"):
        init_from_weights(tiny().train(), path)
    with pytest.raises(ConfigError, match="int8"):
        Restorer(load_model(path), device="cpu", precision="bf16")
    assert Restorer(load_model(path), device="cpu", precision="auto").precision == "int8"


def test_unknown_quantization_is_a_load_error(tmp_path) -> None:
    path = save_model(tiny(), tmp_path / "f.safetensors", extra_metadata={QUANTIZATION_KEY: "int4-magic"})
    with pytest.raises(ModelLoadError, match="unknown quantization"):
        load_model(path)


def test_gswa_runs_its_fused_cascade_in_int8(monkeypatch) -> None:
    """The per-group projections stay float so that GSWA keeps its fused cascade kernel."""
    from agileir.models.attention import fused

    if not fused.cascade_available():
        pytest.skip("the fused kernel does not build here")
    calls = []
    real = fused.fused_gswa_cascade
    monkeypatch.setattr(fused, "fused_gswa_cascade", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        quantize_int8(tiny())(torch.rand(1, 3, 8, 8))
    assert calls


def test_int8_file_with_quantized_group_projections_loads_as_written(tmp_path) -> None:
    """A file of an earlier version (every linear int8, GSWA's groups included) loads with the
    same layers int8 and gives the same output as the model it was saved from."""
    model = tiny()
    every = {name for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    q = quantize_int8(model, layers=every)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    loaded = load_model(save_model(q, tmp_path / "all-int8.safetensors"))
    assert not any(type(m) is torch.nn.Linear for m in loaded.modules())
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
