"""``torchrun --nproc_per_node 2`` (gloo on CPU) trains the same model as one process with the
same global batch: the batch is split across ranks without changing its samples, and the
averaged gradients equal the single-process gradient."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from agileir.engine import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp_path: Path) -> Path:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(2)
    for i in range(4):
        y, x = np.mgrid[0:32, 0:40]
        base = 120 + 80 * np.sin(x / (2.0 + i))[..., None] * np.cos(y / 3.0)[..., None]
        Image.fromarray(np.clip(base + rng.normal(0, 10, (32, 40, 3)), 0, 255).astype(np.uint8)).save(imgs / f"{i}.png")
    doc = {
        "output_dir": str(tmp_path / "runs"), "seed": 5, "threads": 1, "device": "cpu",
        # drop_path draws per-sample randomness from each process's own generator, so it is off here
        "model": {"preset": "agileir-s", "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4,
                  "key_dim": 4, "drop_path_rate": 0.0},
        "data": {"train": {"hr_dir": str(imgs), "patch_size": 8}, "batch_size": 4, "num_workers": 0},
        "train": {"iterations": 4, "checkpoint_every": 4, "log_every": 1, "ema_decay": 0.9,
                  "optimizer": {"lr": 1e-3}},
        "log": {"progress": False, "tensorboard": False},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _losses(run_dir: Path) -> list[float]:
    rows = (run_dir / "train_log.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


def test_two_gloo_processes_train_the_same_model_as_one(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    single = subprocess.run([sys.executable, "-m", "agileir", "train", "--config", str(config), "name=single"],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    port = _free_port()
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "agileir", "train", "--config", str(config), "name=ddp"],
        capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    # rank 0 alone logs and writes checkpoints; DDP's false stride alarm (wrap_ddp) is not shown
    assert multi.stdout.count("weights:") == 1
    assert "Grad strides do not match" not in multi.stderr
    a = ckpt.load_training_state(ckpt.find_latest(tmp_path / "runs" / "single" / "checkpoints"))
    b = ckpt.load_training_state(ckpt.find_latest(tmp_path / "runs" / "ddp" / "checkpoints"))
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    worst = 0.0
    for key in ("params", "params_ema"):
        for k, v in a[key].items():
            if v.is_floating_point():
                worst = max(worst, float((v - b[key][k]).abs().max()))
    assert worst < 1e-5, f"DDP weights differ from single-process weights by {worst:.3g}"
    # the model did move, so the comparison means something
    init_gap = max(float((a["params"][k] - a["params_ema"][k]).abs().max()) for k in a["params"]
                   if a["params"][k].is_floating_point())
    assert init_gap > 1e-4
    np.testing.assert_allclose(_losses(tmp_path / "runs" / "ddp"), _losses(tmp_path / "runs" / "single"),
                               rtol=1e-5, atol=1e-6)
