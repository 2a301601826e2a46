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
    label, kind = re.fullmatch(r"(.+)_(x\d|denoise|jpeg)", name).groups()
    model = agileir.load_model(zoo.shipped_weights()[name])
    assert model.config.name == label  # a fine-tune is labelled as such (agileir-s-real: real-world degradations)
    preset = label.removesuffix("-real")
    if kind.startswith("x"):
        reference = agileir.build_model(preset, scale=int(kind[1:])).config
    else:  # the release JPEG recipe keeps img_range 1 (it starts from SR weights): configs/release/
        reference = agileir.build_model(preset, task=kind, **({"img_range": 1.0} if kind == "jpeg" else {})).config
        assert model.config.task == kind
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


def test_a_shipped_fine_tune_family_resolves_by_scale():
    """`--model agileir-s-real --scale 4` is the real-world x4 file; x2 by default, as for presets."""
    assert resolve_model("agileir-s-real", 4).weights_source.endswith("agileir-s-real_x4.safetensors")
    assert resolve_model("agileir-s-real").weights_source.endswith("agileir-s-real_x2.safetensors")
    with pytest.raises(ModelLoadError, match=r"no shipped weights for agileir-s-real x3 \(shipped: x2, x4\)"):
        resolve_model("agileir-s-real", 3)


def _readme_scores() -> dict[str, float]:
    """The README's table of shipped-weight scores: name -> Set5 PSNR-Y."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`([\w.-]+_(?:x\d|denoise|jpeg))`\s*\|\s*([\d.]+)\s*/", line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    return rows


# the level each README row is measured at (scores.json "level"); denoising and JPEG at one level
MEASURED_WITH = {"agileir-s_x2": ["--scale", "2"], "agileir-s_x4": ["--scale", "4"], "swinir-s_x4": ["--scale", "4"],
                 "agileir-s_denoise": ["--noise", "25"], "agileir-s_jpeg": ["--jpeg", "20"],
                 "agileir-s-real_x2": ["--lr-variant", "LR_realworld"],
                 "agileir-s-real_x4": ["--lr-variant", "LR_realworld"]}
# LR_realworld rows (the real-world models) are scored on Set5 degraded by `agileir degrade --seed 0`


@pytest.mark.parametrize("name", sorted(MEASURED_WITH))
def test_readme_scores_are_reproduced_by_agileir_test_on_set5(tmp_path, testdata_dir, name):
    stated = _readme_scores()
    assert name in stated, "the README must state the shipped weights' Set5 score"
    out = tmp_path / "scores.json"
    data = testdata_dir / "Set5"
    if "LR_realworld" in MEASURED_WITH[name]:
        data = tmp_path / "Set5-degraded"
        assert main(["degrade", str(testdata_dir / "Set5"), str(data), "--scale", str(zoo.weights_info(name).scale),
                     "--seed", "0"]) == 0
    rc = main(["test", "--model", name, *MEASURED_WITH[name], "--data", str(data),
               "--json", str(out), "--device", "cpu"])
    assert rc == 0
    report = json.loads(out.read_text())
    measured = _psnr_y_of(report)
    assert abs(measured - stated[name]) < 0.005, (measured, stated[name])


def test_every_shipped_file_is_measured_here():
    assert set(MEASURED_WITH) == set(zoo.shipped_weights())


def _psnr_y_of(report: dict) -> float:
    from agileir.evaluation.protocol import BASELINE_LABELS

    for method in report["methods"]:
        if method["name"] not in BASELINE_LABELS.values():
            return float(method["mean"]["psnr_y"])
    raise AssertionError(f"no model row in {report}")
