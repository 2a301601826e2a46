"""The benchmark: figures are produced side by side, ratios follow from them, files are written."""

import json

import pytest

import torch

from agileir.cli import main
from agileir.engine.benchmark import Row, Variant, activation_bytes, format_table, ratio_rows


def test_variant_parsing():
    v = Variant.parse("swinir-s:recompute", scale=4, checkpoint=True)
    assert v.preset == "swinir-s"
    assert v.overrides == {"scale": 4, "grad_checkpoint": True, "attention_impl": "recompute"}


def test_activation_census_scales_with_batch_and_favours_lean_gswa():
    tiny = dict(embed_dim=12, depths=(2,), num_heads=(3,), window_size=4, key_dim=2, scale=2)
    swin = Variant("s", "swinir-s", dict(tiny))
    agile = Variant("a", "agileir-s", dict(tiny))
    dev = torch.device("cpu")
    a1, a2 = activation_bytes(agile, 1, 16, dev, "fp32"), activation_bytes(agile, 2, 16, dev, "fp32")
    s1 = activation_bytes(swin, 1, 16, dev, "fp32")
    assert a2 == 2 * a1
    assert a1 < s1


def test_ratios_are_second_over_first():
    rows = [Row("a", 4, 100.0, 1000.0, 10.0, 5.0), Row("b", 4, 25.0, 400.0, 8.0, 2.5)]
    (r,) = ratio_rows(rows, "a", "b")
    assert r == {"batch": 4, "activation_mib": 0.25, "peak_mib": 0.4, "step_ms": 0.8, "infer_ms": 0.5}
    assert "0.250" in format_table(rows, "a", "b")


def test_bench_command_writes_table_and_files(tmp_path, capsys):
    rc = main(["bench", "swinir-s", "agileir-s", "--batch", "1", "--patch", "16", "--infer-size", "16",
               "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ratios agileir-s / swinir-s" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"swinir-s", "agileir-s"}
    assert all(r["peak_mib"] > 0 and r["step_ms"] > 0 for r in data["rows"])
    assert (tmp_path / "bench.csv").read_text().startswith("model,batch")
    assert not list(tmp_path.glob(".*.tmp"))


def test_bench_rejects_unknown_model(capsys):
    assert main(["bench", "swinir-xxl", "--no-peak"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_variant_precision_suffix() -> None:
    v = Variant.parse("swinir-s:sdpa@bf16", scale=2, checkpoint=False)
    assert (v.preset, v.overrides["attention_impl"], v.precision) == ("swinir-s", "sdpa", "bf16")
    assert v.trains("fp32") and not Variant.parse("agileir-s@int8", 2, False).trains("fp32")
    assert Variant.parse("agileir-s", 2, False).precision_for("bf16") == "bf16"
    from agileir.errors import ConfigError

    with pytest.raises(ConfigError):
        Variant.parse("agileir-s@fp16", 2, False)


def test_flop_counts_follow_the_model_maths() -> None:
    from agileir.engine.speed import inference_gflop, training_step_gflop
    from agileir.models.complexity import multiply_adds
    from agileir.models.presets import build_model

    tiny = dict(embed_dim=12, depths=(2,), num_heads=(3,), window_size=4, key_dim=2, scale=2)
    model = build_model("agileir-s", **tiny)
    assert inference_gflop(model, 16, 24) == pytest.approx(2 * multiply_adds(model, 32, 48)["total"] / 1e9)
    fwd = inference_gflop(model, 16, 16)
    step = training_step_gflop(model, 1, 16, "fp32")
    # backward is about twice the forward; the recompute path adds the attention branch again
    assert 3 * fwd < step < 5 * fwd
    assert training_step_gflop(model, 4, 16, "fp32") == pytest.approx(4 * step)


def test_speed_rows_and_ceiling() -> None:
    from agileir.engine.speed import SpeedRow, format_speed_table, gemm_ceiling

    row = SpeedRow("m", "fp32", "infer 8x8", gflop=10.0, ms=500.0, ceiling_gflops=100.0)
    assert row.gflops == pytest.approx(20.0) and row.fraction == pytest.approx(0.2)
    assert SpeedRow("m", "fp32", "x", None, 1.0, 1.0).fraction is None
    table = format_speed_table([row], {"fp32": 100.0}, threads=1)
    assert "20.0%" in table and "fp32 100.0 GFLOPS" in table
    assert "fp32 100.0 GFLOPS at 512^3" in format_speed_table([row], {"fp32": 100.0}, 1, {"fp32": 512})
    assert gemm_ceiling("fp32", torch.device("cpu"), size=256, repeats=1) > 0.1


def test_ceiling_size_stops_at_the_time_budget_or_the_largest_size() -> None:
    """A precision that runs in software must not cost minutes of 2048^3 products."""
    from agileir.engine.speed import timed_gemm_ceiling

    cpu = torch.device("cpu")
    gflops, size = timed_gemm_ceiling("fp32", cpu, max_size=512, repeats=1, budget_s=0.0)
    assert size == 256 and gflops > 0.1  # the first product already exceeds a zero budget
    assert timed_gemm_ceiling("fp32", cpu, max_size=512, repeats=1, budget_s=float("inf"))[1] == 512


def test_ceiling_kernels() -> None:
    from agileir.engine.speed import gemm_ceiling

    cpu = torch.device("cpu")
    assert gemm_ceiling("bf16", cpu, size=256, repeats=1, kernel="linear") > 0.01
    with pytest.raises(ValueError, match="matmul or linear"):
        gemm_ceiling("fp32", cpu, size=256, repeats=1, kernel="conv")


def test_bench_inference_only_with_precisions(tmp_path, capsys) -> None:
    rc = main(["bench", "agileir-s", "agileir-s@int8", "--no-train", "--infer-size", "16", "24x16",
               "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ceiling" in out and "int8" in out and "infer 24x16" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["precision"] for r in data["speed"]} == {"fp32", "int8"}
    assert all(r["gflops"] > 0 for r in data["speed"])
    assert set(data["ceilings_gflops"]) == {"fp32", "bf16", "int8"}
    sizes = data["ceiling_sizes"]
    assert set(sizes) == {"fp32", "bf16", "int8"} and all(n >= 256 for n in sizes.values())
