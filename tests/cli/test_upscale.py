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


def test_a_decompression_bomb_is_one_line_and_the_batch_goes_on(tmp_path, weights, capsys, bomb_png):
    for name in ("a_good.png", "c_good.png"):
        _photo(tmp_path / "in" / name)
    bomb_png(tmp_path / "in" / "b_bomb.png")
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(weights["x2"]),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    bomb_lines = [line for line in err.splitlines() if "b_bomb.png" in line]
    assert len(bomb_lines) == 1
    assert "400,000,000 pixels" in bomb_lines[0] and "--max-pixels 400000000" in bomb_lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good_x2.png", "c_good_x2.png"]
    assert "2 written, 0 skipped, 1 failed" in err


def test_max_pixels_sets_the_limit_for_the_command_only(tmp_path, weights, capsys):
    from agileir.data.io import pixel_limit

    before = pixel_limit()
    src = _photo(tmp_path / "small.png")  # 16 x 12 = 192 pixels
    rc = main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "--model", str(weights["x2"]),
               "--quiet", "--max-pixels", "100"])
    assert rc == 1 and "192 pixels is above the limit of 100 pixels" in capsys.readouterr().err
    assert pixel_limit() == before and not (tmp_path / "out.png").exists()
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "--model", str(weights["x2"]),
                 "--quiet", "--max-pixels", "192"]) == 0


def test_an_unexpected_failure_on_one_file_does_not_stop_the_batch(tmp_path, weights, capsys, monkeypatch):
    from agileir.inference.restorer import Restorer

    for name in ("a.png", "b.png", "c.png"):
        _photo(tmp_path / "in" / name)
    real = Restorer.restore_array
    calls = []

    def flaky(self, pixels, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated kernel failure\nsecond line")
        return real(self, pixels, **kw)

    monkeypatch.setattr(Restorer, "restore_array", flaky)
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(weights["x2"]),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "second line" not in err
    assert "b.png: unexpected RuntimeError: simulated kernel failure" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png", "c_x2.png"]
    assert _leftovers(tmp_path / "out") == []


def test_denoising_models_run_through_restore(tmp_path, weights, capsys):
    _photo(tmp_path / "noisy.png")
    assert main(["restore", str(tmp_path / "noisy.png"), "--model", str(weights["denoise"]), "--quiet"]) == 0
    assert Image.open(tmp_path / "noisy_restored.png").size == (16, 12)
    assert main(["upscale", str(tmp_path / "noisy.png"), "--model", str(weights["denoise"]), "--quiet"]) == 2
    assert "agileir restore" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "noisy.png"), "--model", str(weights["x2"]), "--quiet"]) == 2


@pytest.mark.parametrize("task", ["denoise", "jpeg"])
def test_restore_task_picks_the_shipped_model_and_says_so(tmp_path, task, capsys):
    """--task alone runs the shipped blind colour model of that task (nothing to download)."""
    from agileir.models import zoo

    _photo(tmp_path / "p.png", shape=(24, 28, 3))
    assert main(["restore", str(tmp_path / "p.png"), "--task", task, "--quiet", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert f"agileir-s_{task} (gswa, {task} x1)" in err
    assert zoo.weights_info(f"agileir-s_{task}").task == task
    assert read_picture(tmp_path / "p_restored.png").pixels.shape == (24, 28, 3)


def test_restore_strength_blends_input_and_model_output(tmp_path, weights):
    """strength s gives input + s (model - input): checked against the model's full output (s=1)
    and the input (s=0), in float64, on the uint8 files."""
    src = _photo(tmp_path / "n.png", shape=(12, 16, 3))
    outs = {}
    for s in ("0", "0.5", "1"):
        assert main(["restore", str(src), "--model", str(weights["denoise"]), "--strength", s, "--quiet",
                     "--suffix", f"_{s}", "--tile", "0"]) == 0
        outs[s] = read_picture(tmp_path / f"n_{s}.png").pixels.astype(np.float64)
    x = read_picture(src).pixels.astype(np.float64)
    assert np.array_equal(outs["0"], x)
    from agileir.errors import ConfigError
    from agileir.inference.restorer import Restorer
    with pytest.raises(ConfigError, match="strength applies to denoising and JPEG"):
        Restorer(agileir.load_model(weights["x2"]), strength=0.5)  # SR: no same-size input to blend with
    inside = (outs["1"] > 0) & (outs["1"] < 255)  # where the full output was not clipped to the range
    assert inside.mean() > 0.5
    assert np.abs(outs["0.5"] - (x + outs["1"]) / 2)[inside].max() <= 1.0  # each output rounded once


@pytest.mark.parametrize("case", ["strength_high", "strength_nan", "sr_weights_for_denoise", "no_task",
                                  "gray_weights_colour_image"])
def test_restore_errors_are_one_line_and_write_nothing(tmp_path, weights, case, capsys):
    src = _photo(tmp_path / "in" / "c.png")
    out = tmp_path / "out"
    args = ["restore", str(src), "-o", str(out), "--quiet"]
    if case == "strength_high":
        args += ["--model", str(weights["denoise"]), "--strength", "1.5"]
    elif case == "strength_nan":
        args += ["--model", str(weights["denoise"]), "--strength", "nan"]
    elif case == "sr_weights_for_denoise":
        args += ["--model", str(weights["x2"]), "--task", "denoise"]
    elif case == "gray_weights_colour_image":
        torch.manual_seed(0)
        gray = agileir.build_model("agileir-s", embed_dim=12, depths=(2,), num_heads=(2,), window_size=4,
                                   task="denoise", in_chans=1)
        args += ["--model", str(agileir.save_model(gray, tmp_path / "gray.safetensors"))]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc in (1, 2) and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    message = {"strength_high": "strength must be between 0", "strength_nan": "strength must be between 0",
               "sr_weights_for_denoise": "not a 'denoise' one", "no_task": "--task denoise or --task jpeg",
               "gray_weights_colour_image": "restores gray images only"}[case]
    assert message in err
    assert not out.exists() or list(out.iterdir()) == []


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


# --------------------------------------------------------------- checks before any model runs


@pytest.fixture()
def model_must_not_run(monkeypatch):
    """Any image reaching the model fails the test: the checks must come first."""
    from agileir.inference.restorer import Restorer

    def boom(self, *args, **kwargs):
        raise AssertionError("the model ran before the error was reported")

    monkeypatch.setattr(Restorer, "_run", boom)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", ["unwritable", "read_only", "rgba_jpg", "deep_webp", "overlap", "auto_overlap"])
def test_option_errors_are_reported_before_the_model_runs(tmp_path, weights, capsys, model_must_not_run,
                                                          monkeypatch, case):
    _photo(tmp_path / "in" / "a.png")
    _photo(tmp_path / "in" / "b.png")
    args = ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(weights["x2"]), "--quiet"]
    expected = {"unwritable": "blocker is a file, not a folder", "read_only": "cannot write to",
                "rgba_jpg": "JPEG cannot hold an alpha channel", "deep_webp": "WEBP cannot hold 16-bit",
                "overlap": "--tile-overlap 40 must be smaller than --tile 32",
                "auto_overlap": "lower --tile-overlap"}[case]
    if case == "unwritable":
        (tmp_path / "blocker").write_text("a file where the output folder should go")
        args[3] = str(tmp_path / "blocker" / "sub")
    elif case == "read_only":  # root passes permission checks, so fail the probe write itself
        import errno
        import tempfile

        def refuse(*a, **kw):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    elif case == "rgba_jpg":
        _photo(tmp_path / "in" / "c.png", shape=(12, 16, 4))
        args += ["--format", "jpg"]
    elif case == "deep_webp":
        _photo(tmp_path / "in" / "c.png", dtype=np.uint16)
        args += ["--format", "webp"]
    elif case == "overlap":
        args += ["--tile", "32", "--tile-overlap", "40"]
    elif case == "auto_overlap":  # the automatic tile is at least 4 windows (16 px here)
        from agileir.inference import restorer as restorer_mod

        monkeypatch.setattr(restorer_mod, "available_memory_bytes", lambda device: 1)
        args += ["--tile-overlap", "16"]
    assert main(args) == 2  # an option error: exit 2, once, not once per image
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_output_file_name_with_several_inputs_is_refused(tmp_path, weights, capsys, model_must_not_run):
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "b.png")
    rc = main(["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "big.png"),
               "--model", str(weights["x2"]), "--quiet"])
    assert rc == 2
    assert "names one image file but there are 2 inputs" in _one_error_line(capsys)
    assert not (tmp_path / "big.png").exists()  # no folder called big.png either


def test_output_file_takes_its_extensions_format(tmp_path, weights, capsys):
    _photo(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "big.jpg"), "--model",
                 str(weights["x2"]), "--quiet"]) == 0
    assert Image.open(tmp_path / "big.jpg").format == "JPEG"
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "big.png"), "--format", "jpg",
                 "--model", str(weights["x2"]), "--quiet"]) == 2
    assert "disagree" in _one_error_line(capsys)


@pytest.mark.parametrize("case", ["negative_tile", "missing_weights", "missing_weights_dir", "too_small"])
def test_wording_of_common_mistakes(tmp_path, weights, capsys, model_must_not_run, case):
    _photo(tmp_path / "ok.png")
    args = ["upscale", str(tmp_path / "ok.png"), "--model", str(weights["x2"]), "--quiet"]
    if case == "negative_tile":
        args += ["--tile", "-8"]
        expected, rc = "--tile must be positive", 2
    elif case == "missing_weights":
        args[3] = "x.safetensors"
        expected, rc = "weights file not found: x.safetensors", 2
    elif case == "missing_weights_dir":
        args[3] = str(tmp_path / "nowhere" / "model")
        expected, rc = f"weights file not found: {tmp_path / 'nowhere' / 'model'}", 2
    else:
        tiny = _photo(tmp_path / "tiny.png", shape=(2, 3, 3))
        args[1] = str(tiny)
        expected, rc = f"{tiny}: image 3x2 is too small for this model's 4x4 windows", 1
    assert main(args) == rc
    line = _one_error_line(capsys)
    assert expected in line, line
    if case == "negative_tile":
        assert "multiple" not in line.split("must be positive")[0]


def test_unsupported_images_in_a_folder_are_named_once_each(tmp_path, weights, capsys):
    _photo(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "in" / "notes.txt").write_text("not an image, not mentioned")
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(weights["x2"]),
                 "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "anim.gif" in warnings[0] and "unsupported image format '.gif'" in warnings[0]


def test_train_without_a_config_says_to_give_one(capsys):
    assert main(["train"]) == 2
    line = _one_error_line(capsys)
    assert "give --config FILE (e.g. configs/quickstart.yaml)" in line and "hr_dir is required" not in line


# --------------------------------------------------------------- options of issue 16


def test_jpeg_quality_changes_the_file_and_is_range_checked(tmp_path, weights, capsys):
    _photo(tmp_path / "a.jpg", shape=(32, 32, 3))
    sizes = {}
    for q in (20, 95):
        out = tmp_path / f"q{q}.jpg"
        assert main(["upscale", str(tmp_path / "a.jpg"), "-o", str(out), "--model", str(weights["x2"]),
                     "--quiet", "--jpeg-quality", str(q)]) == 0
        sizes[q] = out.stat().st_size
    assert sizes[20] < sizes[95]
    with pytest.raises(SystemExit) as info:
        main(["upscale", str(tmp_path / "a.jpg"), "--jpeg-quality", "101"])
    assert info.value.code == 2 and "must be from 1 to 100" in capsys.readouterr().err


def test_threads_option_sets_torch_threads_for_the_run_only(tmp_path, weights, monkeypatch, capsys):
    from agileir.inference.restorer import Restorer

    seen = []
    run = Restorer._run
    monkeypatch.setattr(Restorer, "_run", lambda self, *a, **k: seen.append(torch.get_num_threads()) or run(self, *a, **k))
    _photo(tmp_path / "a.png")
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    assert main(["upscale", str(tmp_path / "a.png"), "--model", str(weights["x2"]), "--quiet",
                 "--threads", str(other)]) == 0
    assert seen == [other] and torch.get_num_threads() == before
    assert f"{other} thread" in capsys.readouterr().err


def test_default_threads_is_capped_by_the_cpus_this_process_may_use(monkeypatch):
    import os

    from agileir.runtime import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_threads() == 1


def test_help_lists_the_shipped_weights_per_command_and_no_fp16(capsys, monkeypatch):
    from agileir.models import zoo

    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens otherwise

    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    up = " ".join(capsys.readouterr().out.split())
    for info in zoo.shipped_info(("sr",)):
        assert info.name in up
    assert "fp16" not in up and "shipped: agileir-s-real x2, x4; agileir-s x2, x4; swinir-s x4" in up and "_x<scale>" in up
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    restore = " ".join(capsys.readouterr().out.split())
    assert "agileir-s_x2" not in restore and "_x<scale>" not in restore and "_restored" in restore
    assert "auto (CUDA if available), cpu or cuda" in up and "auto (CUDA if available), cpu or cuda" in restore


@pytest.mark.parametrize("content, expected", [(b"", "the file is empty"),
                                               (b"hello, these are notes\n", "a text file, not a PyTorch checkpoint")])
def test_a_pth_that_is_no_checkpoint_says_so(tmp_path, capsys, model_must_not_run, content, expected):
    _photo(tmp_path / "a.png")
    (tmp_path / "notes.pth").write_bytes(content)
    assert main(["upscale", str(tmp_path / "a.png"), "--model", str(tmp_path / "notes.pth"), "--quiet"]) == 2
    assert expected in _one_error_line(capsys)


def test_binary_checkpoints_pass_the_text_check(tmp_path, weights):
    from agileir.models.loading import official_state_dict, read_checkpoint

    model = agileir.load_model(weights["x2"])
    for name, zipped in (("zip.pth", True), ("legacy.pth", False)):
        torch.save({"params": official_state_dict(model, img_size=8)}, tmp_path / name,
                   _use_new_zipfile_serialization=zipped)
        sd, _ = read_checkpoint(tmp_path / name)  # no error from the text check
        assert "conv_first.weight" in sd


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _camera_exif(width: int, height: int, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0110] = "TestCam 9"  # Model
    exif[0x0112] = orientation
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = "2026:12:02 10:00:00"  # DateTimeOriginal
    ifd[0xA002], ifd[0xA003] = width, height
    return exif.tobytes()


@pytest.mark.parametrize("ext,dtype,with_exif", [
    (".jpg", np.uint8, True), (".png", np.uint8, True), (".png", np.uint16, True), (".webp", np.uint8, True),
    (".tif", np.uint8, True), (".tif", np.uint8, False), (".tif", np.uint16, False)])
def test_colour_profile_and_exif_reach_the_output(tmp_path, weights, capsys, ext, dtype, with_exif):
    """ICC profile bytes unchanged; EXIF camera and date kept, orientation applied once (tag reset to 1)
    and pixel dimensions updated. 16-bit colour TIFF carries the profile only (tifffile writes it)."""
    icc = _srgb_profile()
    h, w = 12, 16
    stored = RNG.integers(0, 256 if dtype == np.uint8 else 65536, (h, w, 3), dtype=np.int64).astype(dtype)
    exif = _camera_exif(w, h) if with_exif else None
    src = write_picture(tmp_path / f"in{ext}", stored, icc_profile=icc)
    if exif:  # write_picture resets orientation, so store the rotated file's EXIF as a camera would
        if ext == ".png" and dtype == np.uint16:
            data = src.read_bytes()
            from agileir.data.formats import _png_metadata_chunks

            src.write_bytes(data[:33] + _png_metadata_chunks(None, exif) + data[33:])
        else:
            im = Image.open(src)
            im.load()
            im.save(src, exif=exif, icc_profile=icc, **({"quality": 95} if ext in (".jpg", ".webp") else {}))
    picture = read_picture(src)
    assert picture.icc_profile == icc
    upright = (w, h) if exif else (h, w)  # orientation 6: a quarter turn
    assert picture.pixels.shape[:2] == upright
    out = tmp_path / f"out{ext}"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(weights["x2"]), "--quiet"]) == 0
    result = read_picture(out)
    assert result.icc_profile == icc and result.pixels.shape[:2] == (2 * upright[0], 2 * upright[1])
    assert result.pixels.dtype == dtype
    if exif:
        written = Image.Exif()
        written.load(result.exif)
        assert written[0x0110] == "TestCam 9" and written[0x0112] == 1
        ifd = written.get_ifd(0x8769)
        assert ifd[0x9003] == "2026:12:02 10:00:00"
        assert (ifd[0xA002], ifd[0xA003]) == (2 * upright[1], 2 * upright[0])
