"""``agileir test``: bicubic reference numbers, layouts, tasks, outputs and error handling."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agileir.cli import main
from agileir.data.io import write_image

# Published-style bicubic PSNR-Y (border = scale) on the shared LR_bicubic files, +-0.02 dB.
BICUBIC_PSNR_Y = {
    ("Set5", 2): 33.68, ("Set5", 3): 30.41, ("Set5", 4): 28.43,
    ("Set14", 2): 30.33, ("Set14", 3): 27.63, ("Set14", 4): 26.09,
    ("B100", 2): 29.56, ("B100", 3): 27.21, ("B100", 4): 25.96,
}
# All nine run by default (B100 takes ~8 s of CPU per scale). AGILEIR_SKIP_SLOW_TESTS=1 keeps
# Set5 and Set14 at every scale and B100 at x4 only.
SLOW = {("B100", 2), ("B100", 3)}
RUN_SLOW = os.environ.get("AGILEIR_SKIP_SLOW_TESTS") != "1"


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["test", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _mean(doc: dict, method_index: int = 0) -> dict:
    return doc["methods"][method_index]["mean"]


@pytest.mark.parametrize(
    "set_name,scale",
    [pytest.param(s, x, marks=pytest.mark.skipif((s, x) in SLOW and not RUN_SLOW,
                                                 reason="AGILEIR_SKIP_SLOW_TESTS=1"))
     for s, x in BICUBIC_PSNR_Y],
)
def test_bicubic_reference_numbers(benchmarks_dir: Path, tmp_path: Path, capsys, set_name: str, scale: int) -> None:
    out_json = tmp_path / "r.json"
    rc, out, _ = _run(["--model", "bicubic", "--data", benchmarks_dir / set_name, "--scale", scale,
                       "--json", out_json], capsys)
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert doc["crop_border"] == scale and doc["lr_source"] == f"files LR_bicubic/X{scale}"
    expected_images = {"Set5": 5, "Set14": 14, "B100": 100}[set_name]
    assert len(doc["methods"][0]["images"]) == expected_images
    assert abs(_mean(doc)["psnr_y"] - BICUBIC_PSNR_Y[(set_name, scale)]) <= 0.02
    assert f"{_mean(doc)['psnr_y']:.2f}" in out  # the printed table shows the same number


@pytest.mark.parametrize("scale,expected", [(2, 33.68), (4, 28.43)])
def test_bicubic_reference_numbers_packaged_copy(testdata_dir: Path, tmp_path: Path, capsys,
                                                 scale: int, expected: float) -> None:
    out_json = tmp_path / "r.json"
    rc, _, _ = _run(["--model", "bicubic", "--data", testdata_dir / "Set5", "--scale", scale,
                     "--json", out_json], capsys)
    assert rc == 0
    assert abs(_mean(json.loads(out_json.read_text()))["psnr_y"] - expected) <= 0.02


def test_table_csv_json_and_lr_variant(testdata_dir: Path, tmp_path: Path, capsys) -> None:
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    rc, out, _ = _run(["--model", "bicubic", "--data", testdata_dir / "Set5", "--scale", 4,
                       "--lr-variant", "LR_bicubic_edsr", "--json", out_json, "--csv", out_csv], capsys)
    assert rc == 0
    for header in ("PSNR", "SSIM", "PSNR-Y", "SSIM-Y", "time/img", "peak RSS", "bicubic"):
        assert header in out
    doc = json.loads(out_json.read_text())
    assert doc["lr_source"] == "files LR_bicubic_edsr/X4"
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["image"] for r in rows] == ["baby", "bird", "butterfly", "head", "woman", "mean"]
    assert float(rows[-1]["psnr_y"]) == pytest.approx(_mean(doc)["psnr_y"], abs=1e-6)
    per_image = [r["psnr_y"] for r in doc["methods"][0]["images"]]
    assert _mean(doc)["psnr_y"] == pytest.approx(float(np.mean(per_image)), abs=1e-12)
    # the EDSR variant differs from the legacy files near the border only: close, not equal
    rc, _, _ = _run(["--model", "bicubic", "--data", testdata_dir / "Set5", "--scale", 4,
                     "--json", tmp_path / "legacy.json"], capsys)
    legacy = _mean(json.loads((tmp_path / "legacy.json").read_text()))["psnr_y"]
    assert 0 < abs(legacy - _mean(doc)["psnr_y"]) < 0.05


def test_basicsr_layout_gives_the_same_scores(testdata_dir: Path, tmp_path: Path, capsys) -> None:
    src = testdata_dir / "Set5"
    root = tmp_path / "Set5"
    (root / "GTmod12").mkdir(parents=True)
    (root / "LRbicx2").mkdir()
    for hr in sorted((src / "HR").glob("*.png")):
        shutil.copy(hr, root / "GTmod12" / hr.name)
        shutil.copy(src / "LR_bicubic" / "X2" / f"{hr.stem}x2.png", root / "LRbicx2" / hr.name)
    _run(["--model", "bicubic", "--data", root, "--scale", 2, "--json", tmp_path / "b.json"], capsys)
    _run(["--model", "bicubic", "--data", src, "--scale", 2, "--json", tmp_path / "e.json"], capsys)
    a = json.loads((tmp_path / "b.json").read_text())
    b = json.loads((tmp_path / "e.json").read_text())
    assert _mean(a)["psnr_y"] == _mean(b)["psnr_y"] and _mean(a)["ssim"] == _mean(b)["ssim"]


def _small_hr_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    base = np.asarray(Image.open(Path(__file__).resolve().parents[2] / "src" / "agileir" / "assets"
                                 / "testdata" / "Set5" / "LR_bicubic" / "X4" / "birdx4.png"))
    write_image(root / "color.png", base[:40, :44])
    write_image(root / "gray.png", base[20:56, 10:46, 1])  # grayscale like Set14 'bridge'
    write_image(root / "noise.png", rng.integers(0, 256, (24, 28, 3), dtype=np.uint8))
    return root


def test_hr_only_folder_generates_lr(tmp_path: Path, capsys) -> None:
    data = _small_hr_folder(tmp_path / "hr")
    rc, out, _ = _run(["--model", "bicubic", "--data", data, "--scale", 2, "--json", tmp_path / "r.json",
                       "--save-images", tmp_path / "sr"], capsys)
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert "generated" in doc["lr_source"] and len(doc["methods"][0]["images"]) == 3
    assert Image.open(tmp_path / "sr" / "gray.png").mode == "L"
    assert Image.open(tmp_path / "sr" / "color.png").size == (44, 40)


def test_one_bad_file_is_reported_and_the_rest_finish(testdata_dir: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "Set5"
    shutil.copytree(testdata_dir / "Set5", root)
    (root / "HR" / "bird.png").write_bytes(b"\x89PNG broken")
    write_image(root / "LR_bicubic" / "X2" / "headx2.png", np.zeros((10, 12, 3), dtype=np.uint8))
    rc, out, err = _run(["--model", "bicubic", "--data", root, "--scale", 2, "--json", tmp_path / "r.json"], capsys)
    assert rc == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    assert sorted(f["name"] for f in doc["failed"]) == ["bird", "head"]
    assert [r["name"] for r in doc["methods"][0]["images"]] == ["baby", "butterfly", "woman"]
    assert "bird.png: cannot read image" in err and "does not match HR" in err
    assert "Traceback" not in err
    assert "2 of 5 images failed" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "bicubic", "--data", "{missing}", "--scale", "2"], "no such data folder"),
        (["--model", "bicubic", "--data", "{set5}", "--scale", "3"], "no LR folder for scale x3"),
        (["--model", "bicubic", "--data", "{set5}", "--scale", "2", "--lr-variant", "LR_bicubic_edsr"],
         "no LR folder LR_bicubic_edsr/X2"),
        (["--model", "bicubic", "--data", "{set5}"], "needs --scale"),
        (["--model", "{missing}/w.pth", "--data", "{set5}", "--scale", "2"], "weights file not found"),
        (["--model", "no-such-preset", "--data", "{set5}", "--scale", "2"], "no-such-preset"),
        (["--model", "bicubic", "--data", "{empty}", "--scale", "2"], "no images"),
    ],
)
def test_user_errors_are_one_line(testdata_dir: Path, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    subst = {"missing": str(tmp_path / "missing"), "set5": str(testdata_dir / "Set5"), "empty": str(tmp_path / "empty")}
    rc, _, err = _run([a.format(**subst) for a in args], capsys)
    assert rc == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("agileir: error:") and message in lines[0]


def test_all_images_unreadable_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.png").write_bytes(b"nope")
    rc, _, err = _run(["--model", "bicubic", "--data", tmp_path, "--scale", 2], capsys)
    assert rc == 2 and "none of the 1 images could be evaluated" in err


# ----------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    agileir = pytest.importorskip("agileir")
    out = {}
    root = tmp_path_factory.mktemp("weights")
    for task, extra in (("sr", {"scale": 2}), ("denoise", {}), ("jpeg", {})):
        try:
            model = agileir.build_model("swinir-s", embed_dim=12, depths=(1,), num_heads=(2,), window_size=4,
                                        task=task, **extra)
        except Exception as exc:  # pragma: no cover - model code not there yet
            pytest.skip(f"build_model unavailable: {exc}")
        out[task] = agileir.save_model(model, root / f"tiny_{task}.safetensors")
    return out


def test_model_with_tiles_ensemble_and_saved_images(tiny_weights, tmp_path: Path, capsys) -> None:
    data = _small_hr_folder(tmp_path / "hr")
    rc, out, _ = _run(["--model", tiny_weights["sr"], "--data", data, "--scale", 2, "--self-ensemble",
                       "--tile", 12, "--tile-overlap", 4, "--device", "cpu", "--save-images", tmp_path / "sr",
                       "--json", tmp_path / "r.json"], capsys)
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [m["name"] for m in doc["methods"]] == ["bicubic", "tiny_sr+"]
    assert doc["self_ensemble"] is True and doc["tile"] == 12 and doc["tile_overlap"] == 4
    assert doc["methods"][1]["peak_memory_mib"] > 0
    assert all(r["time_s"] > 0 for r in doc["methods"][1]["images"])
    # gray input through a 3-channel model: RGB output of the modcropped size
    saved = Image.open(tmp_path / "sr" / "gray.png")
    assert saved.mode == "RGB" and saved.size == (36, 36)
    assert "tiny_sr+" in out
    # SwinIR-style padding runs too and gives (slightly) different scores
    rc, _, _ = _run(["--model", tiny_weights["sr"], "--data", data, "--scale", 2, "--pad", "swinir",
                     "--json", tmp_path / "p.json"], capsys)
    rc2, _, _ = _run(["--model", tiny_weights["sr"], "--data", data, "--scale", 2, "--json", tmp_path / "m.json"],
                     capsys)
    assert rc == rc2 == 0
    padded = json.loads((tmp_path / "p.json").read_text())
    plain = json.loads((tmp_path / "m.json").read_text())
    assert "swinir" in padded["padding"]
    assert padded["methods"][1]["images"][0]["psnr"] != plain["methods"][1]["images"][0]["psnr"]


def test_model_scale_mismatch(tiny_weights, tmp_path: Path, capsys) -> None:
    data = _small_hr_folder(tmp_path / "hr")
    rc, _, err = _run(["--model", tiny_weights["sr"], "--data", data, "--scale", 3], capsys)
    assert rc == 2 and "x2 model but scale 3" in err


def test_denoise_task(tiny_weights, tmp_path: Path, capsys) -> None:
    data = _small_hr_folder(tmp_path / "hr")
    rc, out, _ = _run(["--model", tiny_weights["denoise"], "--data", data, "--noise", 25,
                       "--json", tmp_path / "r.json"], capsys)
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["crop_border"] == 0 and doc["methods"][0]["name"] == "noisy input"
    # clipped sigma-25 noise: about 20.2 dB (a little more where clipping helps)
    assert 19.5 < _mean(doc)["psnr"] < 22.5
    rc, _, err = _run(["--model", tiny_weights["denoise"], "--data", data], capsys)
    assert rc == 2 and "--noise" in err


@pytest.mark.parametrize("level,message", [(["--noise", -5], "noise sigma must be >= 0"),
                                           (["--noise", "nan"], "noise sigma must be >= 0"),
                                           (["--jpeg", 0], "JPEG quality must be in 1..100"),
                                           (["--jpeg", 101], "JPEG quality must be in 1..100")])
def test_levels_out_of_range_are_one_line_errors(tiny_weights, tmp_path: Path, capsys, level, message) -> None:
    data = _small_hr_folder(tmp_path / "hr")
    model = tiny_weights["denoise" if level[0] == "--noise" else "jpeg"]
    rc, out, err = _run(["--model", model, "--data", data, *level, "--json", tmp_path / "r.json"], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_jpeg_task_reports_psnrb(tiny_weights, tmp_path: Path, capsys) -> None:
    data = _small_hr_folder(tmp_path / "hr")
    rc, out, _ = _run(["--model", tiny_weights["jpeg"], "--data", data, "--jpeg", 10,
                       "--csv", tmp_path / "r.csv"], capsys)
    assert rc == 0 and "PSNR-B" in out
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {"psnrb", "psnrb_y"} <= set(rows[0])
    assert {r["method"] for r in rows} == {"JPEG input", "tiny_jpeg"}


def test_preset_without_weights_needs_the_random_weights_flag(tmp_path: Path, capsys, monkeypatch) -> None:
    """Refused before any model runs (as upscale refuses the same name), unless asked for."""
    from agileir.models.network import RestorationTransformer

    data = tmp_path / "hr"
    data.mkdir()
    write_image(data / "a.png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    real_forward = RestorationTransformer.forward

    def forbidden(self, x):
        raise AssertionError("the model ran before the error")

    monkeypatch.setattr(RestorationTransformer, "forward", forbidden)
    for args in (["--model", "swinir-s", "--scale", 2], ["--model", "agileir-s", "--scale", 3]):
        rc, out, err = _run([*args, "--data", data], capsys)
        assert rc == 2 and "no shipped weights" in err and "--random-weights" in err
    monkeypatch.setattr(RestorationTransformer, "forward", real_forward)
    rc, out, err = _run(["--model", "swinir-s", "--data", data, "--scale", 2, "--random-weights"], capsys)
    assert rc == 0 and "random weights" in err and "swinir-s" in out
