"""Classical denoiser baselines: they denoise (against the noisy input and each other, as the
literature orders them) and appear as a row of `agileir test --noise`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agileir.data.degradations import add_gaussian_noise
from agileir.data.io import read_image
from agileir.errors import ConfigError
from agileir.evaluation.classical import classical_denoise
from agileir.metrics import psnr


def _crop(testdata_dir: Path) -> np.ndarray:
    return read_image(testdata_dir / "Set5" / "HR" / "butterfly.png")[:96, :96]


def _noisy_psnr(clean: np.ndarray, noisy: np.ndarray) -> float:
    return psnr(np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8), clean)


def test_nlm_removes_noise(testdata_dir: Path) -> None:
    clean = _crop(testdata_dir)
    noisy = add_gaussian_noise(clean, 25, seed=0)
    out = classical_denoise(noisy, 25, "nlm")
    assert out.dtype == np.uint8 and out.shape == clean.shape
    assert psnr(out, clean) > _noisy_psnr(clean, noisy) + 3.0
    gray = clean[:, :, 1]
    assert psnr(classical_denoise(add_gaussian_noise(gray, 25, seed=0), 25, "nlm"), gray) > \
        _noisy_psnr(gray, add_gaussian_noise(gray, 25, seed=0)) + 3.0


def test_bm3d_beats_nlm(testdata_dir: Path) -> None:
    pytest.importorskip("bm3d")
    clean = _crop(testdata_dir)
    noisy = add_gaussian_noise(clean, 25, seed=0)
    assert psnr(classical_denoise(noisy, 25, "bm3d"), clean) > psnr(classical_denoise(noisy, 25, "nlm"), clean)


def test_unknown_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown classical denoiser"):
        classical_denoise(np.zeros((8, 8)), 25, "wiener")


def test_classical_row_in_agileir_test(testdata_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("bird.png", "head.png"):
        (folder / name).write_bytes((testdata_dir / "Set5" / "HR" / name).read_bytes())
    cmd = [sys.executable, "-m", "agileir", "test", "--model", "bicubic", "--noise", "25", "--data", str(folder),
           "--classical", "nlm", "--json", str(tmp_path / "r.json")]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    methods = {m["name"]: m for m in json.loads((tmp_path / "r.json").read_text())["methods"]}
    nlm = methods["nlm (true sigma)"]
    noisy = next(m for name, m in methods.items() if name != "nlm (true sigma)")
    assert len(nlm["images"]) == 2 and nlm["mean"]["psnr"] > noisy["mean"]["psnr"] + 3.0
    bad = subprocess.run(cmd[:6] + ["--jpeg", "20", "--data", str(folder), "--classical", "nlm"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "denoising (--noise) only" in bad.stderr and "Traceback" not in bad.stderr
