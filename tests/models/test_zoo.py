"""Shipped weights: present, the configuration they claim, and the scores the README states."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import agileir
from agileir.cli import main
from agileir.errors import ModelLoadError
from agileir.models import zoo
from agileir.models.registry import resolve_model

REPO = Path(__file__).resolve().parents[2]
EXPECTED = ("agileir-s_x2", "agileir-s_x4")


def test_the_promised_weights_ship_with_the_package():
    available = zoo.shipped_weights()
    for name in EXPECTED:
        assert name in available and available[name].stat().st_size > 1_000_000


@pytest.mark.parametrize("name", sorted(zoo.shipped_weights()))
def test_shipped_weights_are_their_preset_at_their_scale(name):
    label, scale = re.fullmatch(r"(.+)_x(\d)", name).groups()
    model = agileir.load_model(zoo.shipped_weights()[name])
    assert model.config.name == label  # a fine-tune is labelled as such (agileir-s-real: real-world degradations)
    preset = label.removesuffix("-real")
    reference = agileir.build_model(preset, scale=int(scale)).config
    for field in ("attention", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "upsampler",
                  "scale", "key_dim", "resi_connection", "img_range", "in_chans"):
        assert getattr(model.config, field) == getattr(reference, field), field
    assert model.config.attention_impl == "auto"  # inference picks the device's fastest path


def test_names_resolve_and_missing_ones_say_what_exists():
    assert resolve_model("agileir-s", 4).config.scale == 4
    assert resolve_model("agileir-s_x2").config.scale == 2
    with pytest.raises(ModelLoadError, match="no shipped weights for swinir-m x2.*agileir-s_x2.*--random-weights"):
        resolve_model("swinir-m", 2)
    assert resolve_model("swinir-m", 2, random_weights=True).weights_source == "random"
    with pytest.raises(ModelLoadError, match="weights file not found: nothing.safetensors"):
        resolve_model("nothing.safetensors")
    with pytest.raises(ModelLoadError, match="x4 model but scale 2"):
        resolve_model("agileir-s_x4", 2)


def _readme_scores() -> dict[tuple[str, int], float]:
    """The README's table of shipped-weight scores: (name, scale) -> Set5 PSNR-Y."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`(agileir-s|swinir-s)_x(\d)`\s*\|\s*([\d.]+)\s*/", line)
        if m:
            rows[(m.group(1), int(m.group(2)))] = float(m.group(3))
    return rows


@pytest.mark.parametrize("name,scale", [("agileir-s", 2), ("agileir-s", 4), ("swinir-s", 4)])
def test_readme_scores_are_reproduced_by_agileir_test_on_set5(tmp_path, testdata_dir, name, scale):
    stated = _readme_scores()
    assert (name, scale) in stated, "the README must state the shipped weights' Set5 score"
    out = tmp_path / "scores.json"
    rc = main(["test", "--model", name, "--scale", str(scale), "--data", str(testdata_dir / "Set5"),
               "--json", str(out), "--device", "cpu"])
    assert rc == 0
    report = json.loads(out.read_text())
    measured = _psnr_y_of(report)
    assert abs(measured - stated[(name, scale)]) < 0.005, (measured, stated[(name, scale)])


def _psnr_y_of(report: dict) -> float:
    for method in report["methods"]:
        if method["name"] != "bicubic":
            return float(method["mean"]["psnr_y"])
    raise AssertionError(f"no model row in {report}")
