"""Benchmark folder discovery: EDSR, BasicSR and ground-truth-only layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agileir.data.degradations import bicubic_downscale
from agileir.data.io import read_image, write_image
from agileir.data.pairs import discover, load_sr_pair
from agileir.errors import AgileIRError, ImageError


def _img(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_edsr_layout(testdata_dir: Path) -> None:
    folder = discover(testdata_dir / "Set5", 4)
    assert folder.layout == "edsr" and folder.lr_dir is not None
    assert folder.lr_dir.parts[-2:] == ("LR_bicubic", "X4")
    assert [s.name for s in folder.samples] == ["baby", "bird", "butterfly", "head", "woman"]
    lr, gt = load_sr_pair(folder, folder.samples[-1])
    assert gt.shape[:2] == (4 * lr.shape[0], 4 * lr.shape[1])
    assert folder.lr_source == "files LR_bicubic/X4"


def test_variant_folder_and_generated(testdata_dir: Path) -> None:
    edsr = discover(testdata_dir / "Set5", 4, "LR_bicubic_edsr")
    assert edsr.lr_dir is not None and edsr.lr_dir.parts[-2] == "LR_bicubic_edsr"
    gen = discover(testdata_dir / "Set5", 4, "mirror")
    assert gen.lr_dir is None and "mirror" in gen.lr_source
    lr_gen, gt_gen = load_sr_pair(gen, gen.samples[0])
    lr_file, gt_file = load_sr_pair(edsr, edsr.samples[0])
    assert np.array_equal(lr_gen, lr_file) and np.array_equal(gt_gen, gt_file)


def test_missing_scale_folder_is_one_error(testdata_dir: Path) -> None:
    with pytest.raises(AgileIRError, match="no LR folder for scale x3"):
        discover(testdata_dir / "Set5", 3)
    with pytest.raises(AgileIRError, match="LR_bicubic_edsr/X2"):
        discover(testdata_dir / "Set5", 2, "LR_bicubic_edsr")


def test_basicsr_layout(tmp_path: Path, testdata_dir: Path) -> None:
    src = testdata_dir / "Set5"
    (tmp_path / "GTmod12").mkdir()
    (tmp_path / "LRbicx2").mkdir()
    for hr in sorted((src / "HR").glob("*.png")):
        shutil.copy(hr, tmp_path / "GTmod12" / hr.name)
        shutil.copy(src / "LR_bicubic" / "X2" / f"{hr.stem}x2.png", tmp_path / "LRbicx2" / hr.name)
    folder = discover(tmp_path, 2)
    assert folder.layout == "basicsr" and folder.lr_dir == tmp_path / "LRbicx2"
    assert all(s.lr_path is not None and s.lr_path.name == s.hr_path.name for s in folder.samples)
    with pytest.raises(AgileIRError, match="LRbicx2"):
        discover(tmp_path, 4)


def test_hr_only_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", _img(30, 41))
    write_image(tmp_path / "b.png", _img(17, 16, 1, channels=1))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = discover(tmp_path, 3)
    assert folder.layout == "hr-only" and folder.lr_dir is None
    assert [s.name for s in folder.samples] == ["a", "b"]
    lr, gt = load_sr_pair(folder, folder.samples[0])
    assert gt.shape == (30, 39, 3) and lr.shape == (10, 13, 3)
    assert np.array_equal(lr, bicubic_downscale(read_image(tmp_path / "a.png"), 3))
    assert discover(tmp_path).scale is None  # denoise / JPEG: ground truth only


def test_size_mismatch_and_missing_partner(tmp_path: Path) -> None:
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR_bicubic" / "X2").mkdir(parents=True)
    write_image(tmp_path / "HR" / "good.png", _img(20, 20))
    write_image(tmp_path / "LR_bicubic" / "X2" / "goodx2.png", _img(10, 10))
    write_image(tmp_path / "HR" / "wrong.png", _img(20, 20))
    write_image(tmp_path / "LR_bicubic" / "X2" / "wrongx2.png", _img(12, 10))
    write_image(tmp_path / "HR" / "alone.png", _img(20, 20))
    folder = discover(tmp_path, 2)
    by_name = {s.name: s for s in folder.samples}
    lr, gt = load_sr_pair(folder, by_name["good"])
    assert gt.shape == (20, 20, 3)
    with pytest.raises(ImageError, match="does not match"):
        load_sr_pair(folder, by_name["wrong"])
    with pytest.raises(ImageError, match="no LR image"):
        load_sr_pair(folder, by_name["alone"])


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(AgileIRError, match="no such data folder"):
        discover(tmp_path / "nope", 2)
    with pytest.raises(AgileIRError, match="no images"):
        discover(tmp_path, 2)
