"""The GPU training pipeline on a synthetic DIV2K / Flickr2K layout (2040-pixel-wide images made
from the shipped training images): folder pairing for DIV2K and DF2K, and scripts/train_gpu.sh
end to end on the CPU with a tiny model (prepare, train, resume)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agileir.engine.builders import build_train_dataset
from agileir.engine.config import assets_dir, load_config
from agileir.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _div2k_like(root: Path, names: list[str], hr_name: str, lr_name: str) -> None:
    """``hr_name/<n>.png`` (2040x1356) and ``lr_name/X2/<n>x2.png`` from the shipped photos."""
    sources = sorted((assets_dir() / "train" / "B100-12").glob("*.png"))
    (root / hr_name).mkdir(parents=True)
    (root / lr_name / "X2").mkdir(parents=True)
    for i, name in enumerate(names):
        hr = Image.open(sources[i]).convert("RGB").resize((2040, 1356), Image.BICUBIC)
        hr.save(root / hr_name / f"{name}.png", compress_level=1)
        hr.resize((1020, 678), Image.BICUBIC).save(root / lr_name / "X2" / f"{name}x2.png", compress_level=1)


@pytest.fixture(scope="module")
def df2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("df2k")
    _div2k_like(root / "DIV2K", ["0001", "0002"], "DIV2K_train_HR", "DIV2K_train_LR_bicubic")
    _div2k_like(root / "Flickr2K", ["000001"], "Flickr2K_HR", "Flickr2K_LR_bicubic")
    return root


def _data_config(**train: object) -> dict:
    overrides = [f"data.train.{k}={v}" for k, v in train.items()]
    return load_config(None, ["model.preset=agileir-s", "model.scale=2", "data.train.patch_size=32",
                              "data.train.cache=false", *overrides])


def test_df2k_pairs_each_hr_folder_with_its_lr_folder(df2k: Path) -> None:
    hr = [df2k / "DIV2K" / "DIV2K_train_HR", df2k / "Flickr2K" / "Flickr2K_HR"]
    lr = [df2k / "DIV2K" / "DIV2K_train_LR_bicubic", df2k / "Flickr2K" / "Flickr2K_LR_bicubic"]
    data = build_train_dataset(_data_config(hr_dir=f"[{hr[0]},{hr[1]}]", lr_dir=f"[{lr[0]},{lr[1]}]"), 3)
    assert [(h.name, l.name) for h, l in data.files] == [("0001.png", "0001x2.png"), ("0002.png", "0002x2.png"),
                                                        ("000001.png", "000001x2.png")]
    sample = data[(2, 5)]
    assert sample["lr"].shape == (3, 32, 32) and sample["hr"].shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="one LR folder per HR folder"):
        build_train_dataset(_data_config(hr_dir=f"[{hr[0]},{hr[1]}]", lr_dir=str(lr[0])), 3)


def test_gpu_script_runs_unchanged_on_a_cpu_with_a_tiny_model(df2k: Path, tmp_path: Path) -> None:
    tiny = ["device=cpu", "train.precision=fp32", "threads=1", f"output_dir={tmp_path / 'runs'}",
            "model.embed_dim=12", "model.depths=[2]", "model.num_heads=[2]", "model.window_size=4",
            "model.key_dim=4", "data.batch_size=2", "data.num_workers=0", "data.train.patch_size=16",
            "data.val.dir=null", "train.iterations=2", "train.checkpoint_every=1", "log.progress=false"]
    env = {**os.environ, "AGILEIR": f"{sys.executable} -m agileir"}
    cmd = ["bash", str(REPO / "scripts" / "train_gpu.sh"), str(df2k / "DIV2K"), *tiny]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    prepared = df2k / "DIV2K" / "prepared"
    hr = np.load(prepared / "DIV2K_train_HR" / "0001.npy", mmap_mode="r")
    np.testing.assert_array_equal(hr, np.asarray(Image.open(df2k / "DIV2K" / "DIV2K_train_HR" / "0001.png")))
    assert (prepared / "DIV2K_train_LR_bicubic" / "X2" / "0002x2.npy").is_file()
    run = tmp_path / "runs" / "agileir-s_x2"
    assert (run / "model.safetensors").is_file()
    config = (run / "config.yaml").read_text()
    assert "precision: fp32" in config and "attention_impl: recompute" in config and "prepared" in config
    # the same command again resumes the finished run instead of starting over
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming" in again.stderr and "0 arrays written" in again.stdout
