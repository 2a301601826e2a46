"""Inference precisions: auto, the capability fallback, and each path against fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agileir import runtime
from agileir.errors import ConfigError
from agileir.inference.precision import prepare_precision
from agileir.inference.restorer import Restorer
from agileir.models.presets import build_model
from agileir.models.quantize import is_quantized

CPU = torch.device("cpu")
TINY = dict(embed_dim=12, depths=(2,), num_heads=(3,), window_size=4, key_dim=2, scale=2)


def caps(**on: bool) -> dict[str, bool]:
    base = dict.fromkeys(("amx", "avx512_bf16", "vnni", "avx512", "avx2"), False)
    return {**base, **on}


def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: caps(avx2=True))
    assert runtime.fastest_precision(CPU) == "fp32"
    assert "no bf16 matrix units" in runtime.precision_note("bf16", CPU)
    assert "no VNNI or AMX" in runtime.precision_note("int8", CPU)
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: caps(amx=True, vnni=True))
    assert runtime.fastest_precision(CPU) == "bf16"
    assert runtime.precision_note("bf16", CPU) is None and runtime.precision_note("int8", CPU) is None
    assert runtime.fastest_precision(torch.device("cuda")) == "bf16"


def test_precisions_without_their_hardware_still_run(monkeypatch) -> None:
    """The fallback: a CPU without AMX/VNNI gets the same results, only a note about speed."""
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: caps())
    torch.manual_seed(0)
    model = build_model("agileir-s", **TINY)
    image = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    ref = Restorer(model, device="cpu").restore(image).astype(int)
    for precision in ("auto", "bf16", "int8"):
        r = Restorer(model, device="cpu", precision=precision)
        assert r.precision == {"auto": "fp32"}.get(precision, precision)
        out = r.restore(image).astype(int)
        # bf16: 8-bit mantissas, about 1/256 relative, so at most a few of 255 levels; int8 less
        assert out.shape == ref.shape and np.abs(out - ref).max() <= 3


def test_int8_and_bf16_against_fp32_on_a_real_image() -> None:
    """Shipped weights on a Set5 LR image: both within the quality bound measured on the sets
    (docs/performance.md: at most 0.02 dB); here per pixel, 0.3 dB of PSNR against fp32's output."""
    from agileir.data.io import read_image
    from agileir.metrics import psnr

    from pathlib import Path

    import agileir

    lr = read_image(Path(agileir.__file__).parent / "assets/testdata/Set5/LR_bicubic/X2/birdx2.png")
    restorer = Restorer.from_name("agileir-s", 2, device="cpu")
    ref = restorer.restore(lr)
    for precision in ("bf16", "int8"):
        out = Restorer(restorer.model, device="cpu", precision=precision).restore(lr)
        assert psnr(out, ref, 0) > 45.0, precision  # the two outputs agree to within ~1.5 grey levels RMS


def test_prepare_precision_and_its_errors() -> None:
    model = build_model("agileir-s", **TINY)
    same, p = prepare_precision(model, "fp32", CPU)
    assert same is model and p == "fp32"
    q, p = prepare_precision(model, "int8", CPU)
    assert p == "int8" and is_quantized(q) and not is_quantized(model)
    with pytest.raises(ConfigError, match="precision must be auto, fp32, bf16 or int8"):
        prepare_precision(model, "fp16", CPU)
    with pytest.raises(ConfigError, match="CPU only"):
        runtime.resolve_inference_precision("int8", torch.device("cuda"))
