"""The benchmark: figures are produced side by side, ratios follow from them, files are written."""

import json

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
