"""Checkpoints are atomic: a process SIGKILLed in the middle of writing one (weights, training
state or the latest.json pointer) leaves the previous checkpoint complete and loadable, and the
run resumes from it to the same result as an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import agileir
from agileir.engine import checkpoint as ckpt
from agileir.engine.config import load_config
from agileir.engine.train import train
from agileir.errors import AgileIRError


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def _config_doc(root: Path, name: str) -> dict:
    return {
        "name": name, "output_dir": str(root / "runs"), "seed": 3, "threads": 1,
        "model": {"preset": "agileir-s", "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4,
                  "key_dim": 4},
        "data": {"train": {"hr_dir": str(root / "imgs"), "patch_size": 8}, "batch_size": 2, "num_workers": 0},
        "train": {"iterations": 6, "checkpoint_every": 2, "log_every": 1, "ema_decay": 0.9,
                  "optimizer": {"lr": 1e-3}},
        "log": {"progress": False, "tensorboard": False},
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    _images(root / "imgs")
    return root


@pytest.fixture(scope="module")
def reference(workspace: Path) -> dict:
    """Final training state of an uninterrupted run."""
    result = train(load_config(None, _overrides(_config_doc(workspace, "reference"))))
    return ckpt.load_training_state(ckpt.find_latest(result.run_dir / "checkpoints"))


def _overrides(doc: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in doc.items():
        if isinstance(v, dict):
            out += _overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v)}")
    return out


# The child trains and SIGKILLs itself in the middle of the second checkpoint write (iteration 4):
# it writes part of the file first, as a crash would, then dies without any clean-up.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    import agileir.engine.checkpoint as c
    from agileir.engine.config import load_config
    from agileir.engine.train import train

    stage, config_path = sys.argv[1], sys.argv[2]
    calls = {"n": 0}

    def die_while_writing(path, payload):
        with open(path, "wb") as fh:
            fh.write(payload[: len(payload) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "weights":
        import safetensors.torch as st
        real = st.save_file
        def save_file(tensors, filename, metadata=None):
            calls["n"] += 1
            if calls["n"] == 2:
                die_while_writing(filename, b"\\x00" * 4096)
            return real(tensors, filename, metadata=metadata)
        st.save_file = save_file
    elif stage == "state":
        real = torch.save
        def save(obj, f, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                die_while_writing(f, b"PK" * 4096)
            return real(obj, f, *args, **kwargs)
        torch.save = save
    elif stage == "pointer":
        real = c.atomic_write_text
        def atomic_write_text(path, text):
            calls["n"] += 1
            if calls["n"] == 2:
                with c.atomic_path(path) as tmp:
                    die_while_writing(tmp, text.encode())
            return real(path, text)
        c.atomic_write_text = atomic_write_text
    train(load_config(config_path))
    print("child finished without being killed")
""")


@pytest.mark.parametrize("stage", ["weights", "state", "pointer"])
def test_kill_during_checkpoint_write_leaves_previous_checkpoint(workspace: Path, reference: dict,
                                                                 stage: str) -> None:
    name = f"killed_{stage}"
    config_path = workspace / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(_config_doc(workspace, name)))
    proc = subprocess.run([sys.executable, "-c", CHILD, stage, str(config_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    ckpt_dir = workspace / "runs" / name / "checkpoints"
    info = ckpt.find_latest(ckpt_dir)
    assert info is not None and info.iteration == 2
    # the previous checkpoint is complete: deployable weights and the training state load
    model = agileir.load_model(info.weights)
    assert isinstance(model, agileir.RestorationTransformer)
    state = ckpt.load_training_state(info)
    assert state["iteration"] == 2
    assert any(p.name.endswith(".tmp") for p in ckpt_dir.iterdir())  # the half-written file
    # resuming finishes the run exactly as if nothing had happened, and tidies the temporaries
    result = train(load_config(config_path), resume="auto")
    assert result.iteration == 6
    assert not any(p.name.endswith(".tmp") for p in ckpt_dir.iterdir())
    final = ckpt.load_training_state(ckpt.find_latest(ckpt_dir))
    for key in ("params", "params_ema"):
        for k, v in reference[key].items():
            assert torch.equal(v, final[key][k]), f"{key}.{k}"


def test_pointer_prune_and_resolve(tmp_path: Path) -> None:
    model = agileir.build_model("agileir-s", embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, key_dim=4)
    for it in (10, 20, 30):
        info = ckpt.save_checkpoint(tmp_path, it, model, {"note": it}, keep=2)
    assert info.iteration == 30
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == [
        "iter_0000020.safetensors", "iter_0000020.state.pth", "iter_0000030.safetensors", "iter_0000030.state.pth"]
    assert ckpt.find_latest(tmp_path) == info
    assert ckpt.resolve_checkpoint(tmp_path) == info
    assert ckpt.resolve_checkpoint(tmp_path / "iter_0000020.state.pth").iteration == 20
    assert ckpt.load_training_state(info)["note"] == 30
    # the deployable weights carry the configuration and the iteration
    from safetensors import safe_open

    with safe_open(str(info.weights), framework="pt") as f:
        assert f.metadata()["agileir.iteration"] == "30"
    # a damaged state file is one clear error, not a traceback from the unpickler
    info.state.write_bytes(b"garbage")
    with pytest.raises(AgileIRError, match="cannot read the training state"):
        ckpt.load_training_state(info)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AgileIRError, match="no checkpoint"):
        ckpt.resolve_checkpoint(empty)


def test_rng_states_round_trip() -> None:
    state = ckpt.capture_rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.restore_rng_state(state)
    b = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert a == b
    # the state survives torch.save / weights_only load
    import io

    buf = io.BytesIO()
    torch.save({"rng": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["rng"]
    ckpt.restore_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a
