"""Exact resume: a run stopped at iteration k and resumed gives the same losses and bit-identical
weights (raw and EMA) as an uninterrupted run, on CPU in fp32, with DataLoader workers and
drop_path active."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agileir.engine import checkpoint as ckpt
from agileir.engine.config import load_config
from agileir.engine.train import Trainer, train


def _images(folder: Path) -> Path:
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(5):
            y, x = np.mgrid[0:36, 0:44]
            base = 128 + 70 * np.sin(x / (2.5 + i))[..., None] * np.cos(y / (3.5 + i))[..., None]
            img = np.clip(base + rng.normal(0, 15, (36, 44, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def _config(tmp_path: Path, name: str, *extra: str) -> dict:
    return load_config(None, [
        f"name={name}", f"output_dir={tmp_path / 'runs'}", "seed=7", "threads=1",
        "model.preset=agileir-s", "model.embed_dim=12", "model.depths=[2, 2]", "model.num_heads=[2, 2]",
        "model.window_size=4", "model.key_dim=4", "model.drop_path_rate=0.2",
        f"data.train.hr_dir={_images(tmp_path / 'imgs')}", "data.train.patch_size=8",
        "data.batch_size=3", "data.num_workers=2",
        "train.iterations=7", "train.checkpoint_every=100", "train.log_every=1", "train.ema_decay=0.9",
        "train.optimizer.lr=2e-3", "train.scheduler.name=cosine", "train.scheduler.warmup_iterations=2",
        "train.grad_clip=0.5", "log.progress=false", "log.tensorboard=false", *extra])


def _final_state(run_dir: Path) -> dict:
    info = ckpt.find_latest(run_dir / "checkpoints")
    assert info is not None
    return ckpt.load_training_state(info)


def test_stop_and_resume_is_bitwise_identical(tmp_path: Path) -> None:
    whole = train(_config(tmp_path, "whole"))
    assert whole.iteration == 7 and len(whole.losses) == 7

    first = train(_config(tmp_path, "split"), stop_at=3)
    assert first.iteration == 3 and first.weights is None
    resumed_clock = Trainer(_config(tmp_path, "split"), resume="auto").train_seconds
    second = train(_config(tmp_path, "split"), resume="auto")
    assert second.iteration == 7

    assert first.losses + second.losses == whole.losses  # exact float equality
    a, b = _final_state(whole.run_dir), _final_state(second.run_dir)
    for key in ("params", "params_ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])
    # the exported (EMA) weights are the same file content
    from agileir.models.loading import read_checkpoint

    wa, _ = read_checkpoint(whole.weights)
    wb, _ = read_checkpoint(second.weights)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the train log reads like one uninterrupted run
    log_a = (whole.run_dir / "train_log.csv").read_text().splitlines()
    log_b = (second.run_dir / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in log_a] == [r.split(",")[:3] for r in log_b]
    # the training clock is carried across the resume (equal-time comparisons read it)
    import csv

    rows = list(csv.DictReader(log_b))
    clock = [float(r["train_s"]) for r in rows]
    assert all(b > a for a, b in zip(clock, clock[1:])) and float(rows[-1]["train_cpu_s"]) > 0
    assert resumed_clock == pytest.approx(clock[2], rel=1e-6)  # what iteration 3 logged


def test_resume_after_a_crash_replays_the_lost_iterations(tmp_path: Path) -> None:
    """Killed after iteration 5 with the last checkpoint at 4: the log rows 5.. are dropped and
    the resumed run redoes them identically."""
    whole = train(_config(tmp_path, "whole2", "train.iterations=6", "data.num_workers=0"))
    run = _config(tmp_path, "crashy", "train.iterations=6", "train.checkpoint_every=2", "data.num_workers=0")
    part = train(run, stop_at=5)  # checkpoints at 2, 4 and 5
    ckpt_dir = part.run_dir / "checkpoints"
    # simulate a crash right after iteration 5: the pointer still names iteration 4
    four = ckpt.resolve_checkpoint(ckpt_dir / "iter_0000004.state.pth")
    import json

    (ckpt_dir / "latest.json").write_text(json.dumps(
        {"iteration": 4, "weights": four.weights.name, "state": four.state.name}))
    rest = train(_config(tmp_path, "crashy", "train.iterations=6", "train.checkpoint_every=2",
                         "data.num_workers=0"), resume="auto")
    assert part.losses[:4] + rest.losses == whole.losses
    rows = (part.run_dir / "train_log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_starting_over_an_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    from agileir.errors import ConfigError

    train(_config(tmp_path, "again", "train.iterations=2", "data.num_workers=0"))
    with pytest.raises(ConfigError, match="--resume"):
        train(_config(tmp_path, "again", "train.iterations=2", "data.num_workers=0"))
    fresh = train(_config(tmp_path, "again", "train.iterations=2", "data.num_workers=0", "overwrite=true"))
    assert fresh.iteration == 2
    with pytest.raises(ConfigError, match="model differs"):
        train(_config(tmp_path, "again", "train.iterations=3", "data.num_workers=0", "model.key_dim=2"),
              resume="auto")


def test_resume_applies_changed_optimizer_settings_and_records_them(tmp_path: Path, capsys) -> None:
    """A changed learning rate (and betas, eps, weight decay) is in force after resume, and the
    run's config.yaml says so; before, the checkpoint's initial_lr silently won."""
    import yaml

    train(_config(tmp_path, "lr", "train.iterations=4", "data.num_workers=0"), stop_at=2)
    changed = ("train.optimizer.lr=1e-2", "train.optimizer.betas=[0.8, 0.95]", "train.optimizer.eps=1e-6",
               "train.optimizer.weight_decay=0.01")
    from agileir.engine.train import Trainer

    trainer = Trainer(_config(tmp_path, "lr", "train.iterations=4", "data.num_workers=0", *changed), resume="auto")
    group = trainer.optimizer.param_groups[0]
    assert group["initial_lr"] == 1e-2 and group["betas"] == (0.8, 0.95)
    assert group["eps"] == 1e-6 and group["weight_decay"] == 0.01
    trainer.run()
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 1e-2
    written = yaml.safe_load((tmp_path / "runs" / "lr" / "config.yaml").read_text())
    assert written["train"]["optimizer"]["lr"] == 1e-2
    assert "train.optimizer.lr 0.002 -> 0.01 (applied)" in capsys.readouterr().err


@pytest.mark.parametrize("change,why", [
    ("seed=8", "data stream"), ("data.train.patch_size=4", "training data"), ("train.loss.name=charbonnier",
                                                                               "objective"),
    ("data.batch_size=2", "data stream"), ("train.optimizer.name=adamw", "another optimizer"),
    ("data.train.realworld_context=2", "training data"),
])
def test_resume_refuses_changes_that_alter_the_run(tmp_path: Path, change: str, why: str) -> None:
    from agileir.errors import ConfigError

    train(_config(tmp_path, "r", "train.iterations=4", "data.num_workers=0"), stop_at=1)
    with pytest.raises(ConfigError, match=f"{why}.*model.init_from"):
        train(_config(tmp_path, "r", "train.iterations=4", "data.num_workers=0", change), resume="auto")


def test_realworld_inputs_are_made_per_step_and_resume_exactly(tmp_path: Path) -> None:
    extra = ("data.train.realworld.enabled=true", "train.iterations=4", "data.num_workers=0")
    whole = train(_config(tmp_path, "rw-whole", *extra))
    first = train(_config(tmp_path, "rw-split", *extra), stop_at=2)
    second = train(_config(tmp_path, "rw-split", *extra), resume="auto")
    assert first.losses + second.losses == whole.losses  # same degraded inputs after the resume
    bicubic = train(_config(tmp_path, "bicubic", "train.iterations=4", "data.num_workers=0"))
    assert bicubic.losses != whole.losses  # the LR really is the degraded one


def test_realworld_context_is_degraded_and_cut_away(tmp_path: Path, monkeypatch) -> None:
    """With context, the loader's HR crops are (patch + 2 context) x scale, the model still gets
    patch-sized LR and the loss patch-x-scale HR, and the inputs differ from context 0."""
    from agileir.engine import train as train_module

    seen = []
    real_cut = train_module.cut_context

    def spy(lr, hr, context):
        out = real_cut(lr, hr, context)
        seen.append((tuple(lr.shape[-2:]), tuple(hr.shape[-2:]), tuple(out[0].shape[-2:]), tuple(out[1].shape[-2:])))
        return out

    monkeypatch.setattr(train_module, "cut_context", spy)
    extra = ("data.train.realworld.enabled=true", "train.iterations=2", "data.num_workers=0")
    wide = train(_config(tmp_path, "ctx", *extra, "data.train.realworld_context=2"))
    assert seen[0] == ((12, 12), (24, 24), (8, 8), (16, 16))  # patch 8, context 2, x2
    plain = train(_config(tmp_path, "noctx", *extra))
    assert seen[-1] == ((8, 8), (16, 16), (8, 8), (16, 16))
    assert wide.losses != plain.losses


def test_realworld_needs_sr_without_lr_files(tmp_path: Path) -> None:
    from agileir.engine.builders import build_train_dataset
    from agileir.errors import ConfigError

    for extra in (f"data.train.lr_dir={tmp_path}", "model.task=denoise"):
        config = _config(tmp_path, "bad", "data.train.realworld.enabled=true", extra)
        with pytest.raises(ConfigError, match="realworld"):
            build_train_dataset(config, 3)
