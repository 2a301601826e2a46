"""Decoded training arrays (``agileir prepare``): the same pixels as the images, read
memory-mapped, resumable writing, and clear refusals of arrays that are not images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agileir.cli import main as cli_main
from agileir.data.datasets import RestorationPatches, StepBatchSampler, list_images, pair_images
from agileir.data.prepared import prepare_folder, read_prepared
from agileir.errors import ImageError


def _folder(root: Path) -> Path:
    """HR images plus an EDSR-style LR folder with an X2 sub-folder."""
    rng = np.random.default_rng(3)
    (root / "HR").mkdir(parents=True)
    (root / "LR" / "X2").mkdir(parents=True)
    for i in range(3):
        hr = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(hr).save(root / "HR" / f"{i:04d}.png")
        Image.fromarray(hr[::2, ::2]).save(root / "LR" / "X2" / f"{i:04d}x2.png")
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(root / "HR" / "gray.png")
    return root


def test_arrays_hold_the_decoded_pixels_and_keep_the_layout(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    assert prepare_folder(src, tmp_path / "npy") == (7, 0)
    for image in sorted(src.rglob("*.png")):
        array = read_prepared((tmp_path / "npy" / image.relative_to(src)).with_suffix(".npy"))
        assert isinstance(array, np.memmap) and not array.flags.writeable
        np.testing.assert_array_equal(array, np.asarray(Image.open(image)))
    assert not list((tmp_path / "npy").rglob("*.tmp"))
    # an interrupted run continues: existing arrays are kept, missing ones written
    (tmp_path / "npy" / "HR" / "0001.npy").unlink()
    assert prepare_folder(src, tmp_path / "npy") == (1, 6)


def test_training_patches_from_arrays_equal_those_from_images(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    prepare_folder(src, tmp_path / "npy")
    keys = StepBatchSampler(3, 4, seed=7).keys_for_step(1)
    for lr_dir in (None, "LR"):  # LR made on the fly, and paired LR files in X2/
        sets = []
        for root in (src, tmp_path / "npy"):
            hr = [p for p in list_images(root / "HR") if p.stem != "gray"]
            lr = [p[1] for p in pair_images(hr, root / lr_dir, 2)] if lr_dir else None
            sets.append(RestorationPatches(hr, lr, scale=2, patch_size=8, cache=False))
        for key in keys:
            a, b = sets[0][key], sets[1][key]
            assert a["lr"].shape == (3, 8, 8) and a["hr"].shape == (3, 16, 16)
            assert all(bool((a[k] == b[k]).all()) for k in ("lr", "hr"))


def test_arrays_that_are_not_images_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "float.npy", np.zeros((8, 8, 3), np.float32))
    np.save(tmp_path / "four.npy", np.zeros((8, 8, 4), np.uint8))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for name in ("float", "four", "junk"):
        with pytest.raises(ImageError, match=name):
            read_prepared(tmp_path / f"{name}.npy")


def test_prepare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path / "src")
    assert cli_main(["prepare", str(src / "HR"), str(tmp_path / "out")]) == 0
    assert "4 arrays written" in capsys.readouterr().out
    assert cli_main(["prepare", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("agileir: error:") and "missing" in err and len(err.splitlines()) == 1
