"""`agileir export`: ONNX and TorchScript files from weights, the check, and user errors."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from agileir import build_model, save_model
from agileir.cli import main

pytestmark = [pytest.mark.filterwarnings(r"ignore:`torch\.jit\.:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]



def _weights(tmp_path, family: str = "agileir"):
    torch.manual_seed(0)
    model = build_model(f"{family}-s", embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, scale=2)
    return save_model(model, tmp_path / f"{family}.safetensors")


def _differences(out: str) -> list[float]:
    return [float(v) for v in re.findall(r"max abs difference (\S+)", out)]


@pytest.mark.parametrize("family", ["agileir", "swinir"])
def test_export_onnx_and_torchscript(tmp_path, capsys, family):
    pytest.importorskip("onnxruntime")
    weights = _weights(tmp_path, family)
    onnx_path, ts_path = tmp_path / "out" / "m.onnx", tmp_path / "m.pt"
    code = main(["export", str(weights), "--onnx", str(onnx_path), "--dynamic", "--torchscript", str(ts_path),
                 "--size", "24x16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert onnx_path.is_file() and ts_path.is_file()
    assert "ONNX opset 17" in out and "dynamic batch, height and width" in out
    assert "1x3x17x25 input" in out  # checked on another size than the traced one
    diffs = _differences(out)
    assert len(diffs) == 2 and max(diffs) < 1e-4
    assert torch.jit.load(str(ts_path))(torch.rand(1, 3, 13, 9)).shape == (1, 3, 26, 18)


def test_export_static_onnx_with_opset(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    assert main(["export", str(_weights(tmp_path)), "--onnx", str(path), "--opset", "13", "--size", "20x12"]) == 0
    out = capsys.readouterr().out
    assert "ONNX opset 13" in out and "fixed input 1x3x12x20" in out and "1x3x12x20 input" in out
    assert max(_differences(out)) < 1e-4


def test_export_without_target_is_one_line_error(tmp_path, capsys):
    assert main(["export", str(_weights(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--onnx PATH, --torchscript PATH and/or --safetensors PATH" in err


def test_export_without_onnx_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    path = tmp_path / "m.onnx"
    assert main(["export", str(_weights(tmp_path)), "--onnx", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'agileir[onnx]'" in err and "Traceback" not in err
    assert not path.exists()


def test_export_bad_opset_and_size(tmp_path, capsys):
    pytest.importorskip("onnx")
    weights = str(_weights(tmp_path))
    assert main(["export", weights, "--onnx", str(tmp_path / "a.onnx"), "--opset", "9"]) == 2
    assert "opsets 11 to 20" in capsys.readouterr().err
    assert main(["export", weights, "--torchscript", str(tmp_path / "a.pt"), "--size", "40x2"]) == 2
    assert "too small" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "a.pt").exists()


def test_export_int8_onnx_and_safetensors(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    from agileir.models.loading import load_model
    from agileir.models.quantize import is_quantized

    onnx_path, st_path = tmp_path / "m8.onnx", tmp_path / "m8.safetensors"
    code = main(["export", str(_weights(tmp_path)), "--int8", "--onnx", str(onnx_path), "--dynamic",
                 "--safetensors", str(st_path), "--size", "24x16"])
    out = capsys.readouterr().out
    assert code == 0, out
    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert "MatMulInteger" in ops and "ConvInteger" not in ops  # the linear layers only, as in PyTorch
    onnx_diff, file_diff = _differences(out)
    assert 0 < onnx_diff < 5e-2  # int8 rounding, not a broken graph (cli/export.py: INT8_TOLERANCE)
    assert file_diff == 0.0  # the int8 safetensors file round-trips bit for bit
    assert is_quantized(load_model(st_path))


def test_export_int8_torchscript_is_refused(tmp_path, capsys):
    assert main(["export", str(_weights(tmp_path)), "--int8", "--torchscript", str(tmp_path / "m.pt")]) == 2
    assert "not to TorchScript" in capsys.readouterr().err
