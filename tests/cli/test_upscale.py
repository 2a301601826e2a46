"""``agileir upscale`` / ``agileir restore`` as a user runs them: files in, files out, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import agileir
from agileir.cli import main
from agileir.data.formats import read_picture, write_picture

RNG = np.random.default_rng(2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for name, kw in {"x2": dict(scale=2), "x4": dict(scale=4),
                     "denoise": dict(scale=1, task="denoise", upsampler="none")}.items():
        torch.manual_seed(0)
        model = agileir.build_model("agileir-s", embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, **kw)
        out[name] = agileir.save_model(model, d / f"tiny_{name}.safetensors")
    return out


def _photo(path: Path, shape=(12, 16, 3), dtype=np.uint8) -> Path:
    top = 65535 if dtype == np.uint16 else 255
    return write_picture(path, RNG.integers(0, top + 1, shape, dtype=np.int64).astype(dtype))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")


def test_folder_in_folder_out_keeps_format_depth_and_alpha(tmp_path, weights, capsys):
    src = tmp_path / "in"
    _photo(src / "rgb.jpg")
    _photo(src / "deep.png", dtype=np.uint16)
    _photo(src / "alpha.png", shape=(12, 16, 4))
    _photo(src / "gray.tif", shape=(12, 16))
    _photo(src / "pic.webp")
    _photo(src / "pic.bmp")
    (src / "notes.txt").write_text("not an image")
    rc = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(weights["x2"]), "--quiet"])
    assert rc == 0
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["alpha_x2.png", "deep_x2.png", "gray_x2.tif", "pic_x2.bmp", "pic_x2.webp", "rgb_x2.jpg"]
    deep = read_picture(out / "deep_x2.png")
    assert deep.pixels.shape == (24, 32, 3) and deep.pixels.dtype == np.uint16
    assert read_picture(out / "alpha_x2.png").pixels.shape == (24, 32, 4)
    assert read_picture(out / "gray_x2.tif").pixels.shape == (24, 32)
    assert Image.open(out / "rgb_x2.jpg").format == "JPEG"


def test_exif_orientation_is_respected(tmp_path, weights):
    image = Image.fromarray(RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert main(["upscale", str(tmp_path / "phone.jpg"), "--model", str(weights["x2"]), "--quiet"]) == 0
    assert Image.open(tmp_path / "phone_x2.jpg").size == (24, 40)  # upright: 12 wide, 20 high, x2


def test_single_output_file_and_default_beside_input(tmp_path, weights):
    _photo(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "big.png"),
                 "--model", str(weights["x4"]), "--quiet"]) == 0
    assert Image.open(tmp_path / "big.png").size == (64, 48)
    assert main(["upscale", str(tmp_path / "a.png"), "--model", str(weights["x4"]), "--quiet",
                 "--format", "jpg"]) == 0
    assert (tmp_path / "a_x4.jpg").is_file()


def test_existing_outputs_are_skipped_unless_overwrite_and_inputs_never_touched(tmp_path, weights, capsys):
    _photo(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    args = ["upscale", str(tmp_path / "a.png"), "--model", str(weights["x2"]), "--quiet"]
    assert main(args) == 0
    (tmp_path / "a_x2.png").write_bytes(b"old")
    assert main(args) == 0
    assert (tmp_path / "a_x2.png").read_bytes() == b"old"
    assert "skipped" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert (tmp_path / "a_x2.png").read_bytes() != b"old"
    # writing onto the input itself is refused, even with --overwrite
    assert main(args + ["--overwrite", "--suffix", ""]) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert (tmp_path / "a.png").read_bytes() == before


def test_bad_file_is_reported_and_the_others_finish(tmp_path, weights, capsys):
    _photo(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(weights["x2"]),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "broken.png: cannot read image" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_x2.png"]


def test_denoising_models_run_through_restore(tmp_path, weights, capsys):
    _photo(tmp_path / "noisy.png")
    assert main(["restore", str(tmp_path / "noisy.png"), "--model", str(weights["denoise"]), "--quiet"]) == 0
    assert Image.open(tmp_path / "noisy_restored.png").size == (16, 12)
    assert main(["upscale", str(tmp_path / "noisy.png"), "--model", str(weights["denoise"]), "--quiet"]) == 2
    assert "agileir restore" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "noisy.png"), "--model", str(weights["x2"]), "--quiet"]) == 2


@pytest.mark.parametrize("case", ["corrupt", "unsupported", "empty_dir", "missing", "wrong_scale",
                                  "unwritable", "fp16", "too_small", "bad_tile"])
def test_user_errors_are_one_line_nonzero_and_leave_no_files(tmp_path, weights, case):
    _photo(tmp_path / "ok.png")
    out = tmp_path / "out"
    args = ["upscale", str(tmp_path / "ok.png"), "-o", str(out), "--model", str(weights["x2"]), "--quiet"]
    if case == "corrupt":
        (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
        args[1] = str(tmp_path / "bad.jpg")
    elif case == "unsupported":
        (tmp_path / "anim.gif").write_bytes(b"GIF89a")
        args[1] = str(tmp_path / "anim.gif")
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    elif case == "missing":
        args[1] = str(tmp_path / "nope.png")
    elif case == "wrong_scale":
        args += ["--scale", "4"]
    elif case == "unwritable":
        (tmp_path / "blocker").write_text("a file where the output folder should go")
        args[3] = str(tmp_path / "blocker" / "sub")
    elif case == "fp16":
        args += ["--precision", "fp16"]
    elif case == "too_small":
        _photo(tmp_path / "tiny.png", shape=(1, 1, 3))
        args[1] = str(tmp_path / "tiny.png")
    elif case == "bad_tile":
        args += ["--tile", "13"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "agileir", *args], capture_output=True, text=True)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() or not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing new, no partial files
    assert _leftovers(tmp_path) == []
