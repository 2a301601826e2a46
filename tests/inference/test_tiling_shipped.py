"""Tiled against whole-image inference with trained weights of both families (Set5 x4).

Random weights say little here (their outputs are noise-like, so PSNR differences are not about
seams); the shipped, trained x4 models of both attention types are the realistic check.
"""

from __future__ import annotations

import json

import pytest

from agileir.cli import main
from agileir.models import zoo


def _psnr_y(tmp_path, testdata_dir, name: str, *extra: str) -> dict[str, float]:
    out = tmp_path / f"{name}{'_'.join(extra)}.json"
    rc = main(["test", "--model", name, "--scale", "4", "--data", str(testdata_dir / "Set5"), "--device", "cpu",
               "--json", str(out), *extra])
    assert rc == 0
    method = next(m for m in json.loads(out.read_text())["methods"] if m["name"] != "bicubic")
    per_image = {row["name"]: row["psnr_y"] for row in method["images"]}
    return {"mean": method["mean"]["psnr_y"], **per_image}


@pytest.mark.parametrize("name", ["agileir-s_x4", "swinir-s_x4"])
def test_tiled_inference_with_default_overlap_matches_whole_images(tmp_path, testdata_dir, name):
    if zoo.find_weights(name) is None:
        pytest.fail(f"shipped weights {name} are missing")
    whole = _psnr_y(tmp_path, testdata_dir, name)
    tiled = _psnr_y(tmp_path, testdata_dir, name, "--tile", "48")  # 2x2 to 3x3 tiles per image
    assert abs(whole["mean"] - tiled["mean"]) < 0.02
    assert whole["mean"] != tiled["mean"]  # the tiles really ran (seams change the last digits)
