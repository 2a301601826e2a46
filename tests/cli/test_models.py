"""``agileir models``: every shipped file is listed with what its own metadata says and the scores
the README states (which tests/models/test_zoo.py re-measures with ``agileir test``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import agileir
from agileir.cli import main
from agileir.models import zoo

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_table() -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """The README's shipped-weights table: name -> ((Set5 PSNR, SSIM), (Set14 PSNR, SSIM))."""
    rows = {}
    number = r"([\d.]+)\s*/\s*([\d.]+)"
    for line in README.read_text().splitlines():
        m = re.match(rf"\|\s*`([\w.-]+_(?:x\d|denoise|jpeg))`\s*\|\s*{number}\s*\|\s*{number}\s*\|", line)
        if m:
            a, b, c, d = (float(x) for x in m.groups()[1:])
            rows[m.group(1)] = ((a, b), (c, d))
    return rows


def test_listing_shows_every_shipped_file_with_its_metadata_and_readme_scores(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    table = _readme_table()
    assert set(table) == set(zoo.shipped_weights()), "README table and shipped files differ"
    for name, path in zoo.shipped_weights().items():
        config = agileir.load_model(path).config  # the weights themselves, not the listing's source
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        cells = re.split(r"\s{2,}", line.strip())
        assert cells[1] == config.task and cells[2] == f"x{config.scale}"
        assert cells[3] == f"{config.name} ({config.attention})"
        (p5, s5), (p14, s14) = table[name]
        assert cells[4] == f"{p5:.2f} / {s5:.4f}" and cells[5] == f"{p14:.2f} / {s14:.4f}"


def test_json_listing_and_the_scores_file_agree_with_the_readme(capsys):
    assert main(["models", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    for name, ((p5, s5), (p14, s14)) in _readme_table().items():
        scores = listed[name]["scores"]
        assert (scores["Set5"]["psnr_y"], scores["Set5"]["ssim_y"]) == (p5, s5)
        assert (scores["Set14"]["psnr_y"], scores["Set14"]["ssim_y"]) == (p14, s14)
    assert set(json.loads(zoo.SCORES_FILE.read_text())["weights"]) == set(zoo.shipped_weights())


def test_task_and_scale_come_from_the_files_own_metadata(tmp_path, monkeypatch):
    model = agileir.build_model("agileir-s", embed_dim=12, depths=(2,), num_heads=(2,), window_size=4,
                                task="denoise")
    agileir.save_model(model, tmp_path / "tiny-denoise_x1.safetensors")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    (info,) = zoo.shipped_info()
    assert (info.task, info.scale, info.scores) == ("denoise", 1, {})  # no score entry: none invented
    assert zoo.shipped_info(("sr",)) == []
