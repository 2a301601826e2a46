"""Model export: the traceable shift mask, ONNX (onnxruntime, dynamic sizes) and TorchScript."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from agileir import build_model
from agileir.errors import ConfigError, ImageError
from agileir.inference import export as ex
from agileir.models.windows import ShiftMaskCache, is_exporting, shift_mask, traceable_shift_mask

# Sizes (H, W) checked after export: one a window multiple, one not (the padding runs).
SIZES = [(40, 56), (37, 50)]
TOL = 1e-4
pytestmark = [pytest.mark.filterwarnings(r"ignore:`torch\.jit\.:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


def _tiny(family: str, **overrides):
    torch.manual_seed(0)
    options = dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=8, scale=2)
    if family == "agileir":
        options["key_dim"] = 4
    return build_model(f"{family}-s", **{**options, **overrides}).eval()


def _rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))



@pytest.mark.parametrize("window", [4, 7, 8])
@pytest.mark.parametrize("value", [-100.0, float("-inf")])
def test_traceable_shift_mask_equals_cached(window, value):
    cache = ShiftMaskCache(window, window // 2)
    cache.value = value
    for windows_h, windows_w in [(1, 1), (1, 3), (2, 2), (3, 5), (6, 4)]:
        h, w = windows_h * window, windows_w * window
        expected = cache.get(h, w, torch.device("cpu"))
        got = traceable_shift_mask(h, w, window, window // 2, "cpu", value)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
        assert torch.equal(got, shift_mask(h, w, window, window // 2, value=value))


def test_traceable_shift_mask_follows_traced_sizes():
    def fn(x):
        return traceable_shift_mask(x.shape[0], x.shape[1], 4, 2)

    traced = torch.jit.trace(fn, (torch.zeros(8, 12),), check_trace=False)
    for h, w in [(8, 12), (12, 4), (16, 20)]:
        assert torch.equal(traced(torch.zeros(h, w)), shift_mask(h, w, 4, 2))


def test_is_exporting_only_while_tracing():
    seen = []

    def fn(x):
        seen.append(is_exporting())
        return x + 1

    assert not is_exporting()
    torch.jit.trace(fn, (torch.zeros(2),), check_trace=False)
    assert seen == [True]


@pytest.mark.parametrize("family", ["agileir", "swinir"])
def test_onnx_dynamic_matches_pytorch(tmp_path, family):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _tiny(family)
    path = ex.export_onnx(model, tmp_path / "m.onnx", dynamic=True, sample_size=(24, 32))
    assert path.is_file() and ex.onnx_opset(path) == ex.DEFAULT_OPSET["legacy"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    for batch, (h, w) in [(1, SIZES[0]), (1, SIZES[1]), (2, SIZES[1])]:
        x = _rand(batch, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {"input": x.numpy()})[0]
        assert out.shape == (batch, 3, 2 * h, 2 * w)
        assert np.abs(out - ref).max() < TOL, (family, batch, h, w)
    assert ex.verify_onnx(model, path, size=(45, 29)) < TOL
    assert ex.read_config_json(path)["attention"] == ("gswa" if family == "agileir" else "window")


def test_onnx_other_heads_and_tasks(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    for model in (_tiny("agileir", scale=4, upsampler="nearest+conv", num_feat=8, resi_connection="3conv"),
                  _tiny("swinir", task="jpeg", in_chans=1, scale=1)):  # 7x7 windows, img_range 255
        path = ex.export_onnx(model, tmp_path / "m.onnx", sample_size=(21, 28))
        for size in [(21, 28), (30, 23)]:
            assert ex.verify_onnx(model, path, size=size) < TOL


def test_onnx_static_has_fixed_input(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _tiny("agileir")
    path = ex.export_onnx(model, tmp_path / "m.onnx", dynamic=False, sample_size=(37, 50), opset=13)
    proto = onnx.load(str(path))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 37, 50]
    assert ex.onnx_opset(path) == 13
    assert ex.verify_onnx(model, path, size=(37, 50)) < TOL
    with pytest.raises(ConfigError, match="--dynamic"):
        ex.verify_onnx(model, path, size=(40, 56))


def test_export_leaves_the_model_alone(tmp_path):
    pytest.importorskip("onnx")
    model = _tiny("swinir", attention_impl="sdpa")
    x = _rand(1, 3, 20, 28)
    with torch.no_grad():
        before = model(x)
    ex.export_onnx(model, tmp_path / "m.onnx", sample_size=(16, 24))
    assert model.config.attention_impl == "sdpa" and not model.training
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("family", ["agileir", "swinir"])
def test_torchscript_roundtrip(tmp_path, family):
    model = _tiny(family)
    path = ex.export_torchscript(model, tmp_path / "m.pt", sample_size=(24, 32))
    loaded = torch.jit.load(str(path))
    for batch, (h, w) in [(1, SIZES[0]), (2, SIZES[1])]:
        x = _rand(batch, 3, h, w)
        with torch.no_grad():
            assert (loaded(x) - model(x)).abs().max() < TOL
    assert ex.verify_torchscript(model, path) < TOL
    assert ex.read_config_json(path)["embed_dim"] == 12


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    pytest.importorskip("onnx")

    def broken(*args, **kwargs):
        with open(args[2], "wb") as f:
            f.write(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        ex.export_onnx(_tiny("agileir"), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_user_errors(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    model = _tiny("agileir")
    with pytest.raises(ConfigError, match="opsets 11 to 20"):
        ex.export_onnx(model, tmp_path / "m.onnx", opset=9)
    with pytest.raises(ConfigError, match="exporter must be one of"):
        ex.export_onnx(model, tmp_path / "m.onnx", exporter="magic")
    with pytest.raises(ImageError, match="too small"):
        ex.export_torchscript(model, tmp_path / "m.pt", sample_size=(3, 40))
    with pytest.raises(ConfigError, match="RestorationTransformer"):
        ex.export_torchscript(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"pip install 'agileir\[onnx\]'"):
        ex.export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _tiny("agileir", window_size=4)
    path = ex.export_onnx(model, tmp_path / "m.onnx", exporter="dynamo", sample_size=(12, 16))
    assert ex.onnx_opset(path) == 18
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # weights inside, no external data file
    for size in SIZES:
        assert ex.verify_onnx(model, path, size=size) < TOL
    assert ex.verify_onnx(model, path, size=SIZES[1], batch=2) < TOL
