"""The trainer: configuration and overrides, schedules, losses, EMA, non-finite losses, bf16 and
gradient checkpointing, fine-tuning from other weights, the command line, and a few iterations
of the shipped quickstart configuration end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import agileir
from agileir.cli import main as cli_main
from agileir.engine.ema import ModelEMA
from agileir.engine.losses import CharbonnierLoss, build_loss
from agileir.engine.schedule import LRSchedule
from agileir.engine.builders import init_from_weights
from agileir.engine.config import DEFAULTS, assets_dir, load_config, resolve_path
from agileir.engine.train import NonFiniteLossError, Trainer, train
from agileir.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def _images(folder: Path, n: int = 3) -> Path:
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(4)
        for i in range(n):
            y, x = np.mgrid[0:32, 0:40]
            base = 128 + 70 * np.sin(x / (2.0 + i))[..., None]
            img = np.clip(base + rng.normal(0, 12, (32, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def _tiny(tmp_path: Path, name: str, *extra: str) -> dict:
    return load_config(None, [
        f"name={name}", f"output_dir={tmp_path / 'runs'}", "seed=0", "threads=1",
        "model.embed_dim=12", "model.depths=[2]", "model.num_heads=[2]", "model.window_size=4", "model.key_dim=4",
        f"data.train.hr_dir={_images(tmp_path / 'imgs')}", "data.train.patch_size=8", "data.batch_size=2",
        "data.num_workers=0", "train.iterations=4", "train.checkpoint_every=100", "train.log_every=1",
        "log.progress=false", "log.tensorboard=false", *extra])


# ----------------------------------------------------------------------------- configuration


def test_config_file_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: swinir-s\ntrain:\n  optimizer:\n    lr: 2e-4\n")
    cfg = load_config(path, ["train.iterations=200", "model.preset=agileir-s", "model.key_dim=4",
                             "train.scheduler.milestones=[10, 20]", "data.val.dir=null"])
    assert cfg["name"] == "c"  # from the file name
    assert cfg["train"]["optimizer"]["lr"] == 2e-4  # '2e-4' is a float, not a string
    assert cfg["train"]["iterations"] == 200 and cfg["model"]["preset"] == "agileir-s"
    assert cfg["model"]["key_dim"] == 4 and cfg["train"]["scheduler"]["milestones"] == [10, 20]
    assert cfg["train"]["ema_decay"] == DEFAULTS["train"]["ema_decay"]
    with pytest.raises(ConfigError, match="unknown option 'train.iteratons'"):
        load_config(path, ["train.iteratons=5"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(path, ["train=5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["train.iterations"])
    with pytest.raises(ConfigError, match="positive"):
        load_config(path, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    assert resolve_path("${agileir_assets}/train") == assets_dir() / "train"


def test_every_shipped_config_loads_and_builds() -> None:
    from agileir.engine.builders import model_overrides, task_of
    from agileir.models import preset_config

    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for model in ("swinir-s", "agileir-s", "swinir-m", "agileir-m"):
        for s in (2, 3, 4):
            assert f"{model}_x{s}" in names
    for path in CONFIGS.glob("*.yaml"):
        cfg = load_config(path)
        net = preset_config(cfg["model"]["preset"], **model_overrides(cfg))  # validates the network options
        task, scale = task_of(cfg)
        assert net.scale == scale == int(path.stem[-1] if path.stem != "quickstart" else 2) and task == "sr"
        if path.stem != "quickstart":
            assert net.name == path.stem.split("_")[0]
        if path.stem != "quickstart":
            t = cfg["train"]
            assert t["optimizer"]["name"] == "adam" and t["loss"]["name"] == "l1"
            assert t["ema_decay"] == 0.999 and cfg["data"]["train"]["flip"] and cfg["data"]["train"]["rotate"]
            small = path.stem.split("-")[1].startswith("s")
            assert cfg["data"]["train"]["patch_size"] == (64 if small else 48)
            assert cfg["data"]["batch_size"] == (64 if small else 32)
            if scale == 2:
                assert t["iterations"] == 500000 and cfg["model"]["init_from"] is None
                assert t["scheduler"]["milestones"] == [250000, 400000, 450000, 475000]
                assert t["optimizer"]["lr"] == 2e-4
            else:
                assert "_x2" in cfg["model"]["init_from"]


@pytest.mark.parametrize("task", ["denoise", "jpeg"])
def test_denoise_and_jpeg_configs_follow_the_published_recipe(task: str) -> None:
    """Every preset x colour/gray, blind by default; SwinIR's recipe (Charbonnier, patch 128 / 126
    on 7x7 JPEG windows, batch 8, 1.6M iterations); and the CPU release recipe of the shipped model."""
    from agileir.engine.builders import model_overrides, task_of
    from agileir.models import preset_config

    paths = sorted((CONFIGS / task).glob("*.yaml"))
    assert [p.stem for p in paths] == sorted(f"{m}_{task}-{c}" for m in ("swinir-s", "agileir-s", "swinir-m",
                                                                        "agileir-m") for c in ("color", "gray"))
    for path in paths + [CONFIGS / "release" / f"agileir-s_{task}.yaml"]:
        cfg = load_config(path)
        net = preset_config(cfg["model"]["preset"], **model_overrides(cfg))
        assert task_of(cfg) == (task, 1) and net.task == task and net.upsampler == "none"
        assert net.in_chans == (1 if path.stem.endswith("gray") else 3)
        assert cfg["train"]["loss"]["name"] == "charbonnier"
        level = cfg["data"]["train"]["noise_sigma" if task == "denoise" else "jpeg_quality"]
        assert level == ([0, 50] if task == "denoise" else [10, 50])
        assert cfg["data"]["train"]["patch_size"] % net.window_size == 0
        if path.parent.name != "release":
            assert net.window_size == (7 if task == "jpeg" else 8)
            assert cfg["data"]["train"]["patch_size"] == (126 if task == "jpeg" else 128)
            assert cfg["data"]["batch_size"] == 8 and cfg["train"]["iterations"] == 1_600_000


# ----------------------------------------------------------------------------- pieces


def test_schedules() -> None:
    ms = LRSchedule("multistep", 500, milestones=[250, 400], gamma=0.5)
    assert [ms.factor(i) for i in (1, 250, 251, 400, 401, 500)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    cos = LRSchedule("cosine", 110, warmup=10, min_factor=0.1)
    assert cos.factor(5) == pytest.approx(0.5)  # warm-up: 5/10 of the full rate
    assert cos.factor(11) == pytest.approx(1.0)
    assert cos.factor(61) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert cos.factor(111) == pytest.approx(0.1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    assert LRSchedule("multistep", 10, milestones=[2]).apply(opt, 3) == pytest.approx(0.1)
    assert LRSchedule("multistep", 10, milestones=[2]).apply(opt, 1) == pytest.approx(0.2)  # from initial_lr
    with pytest.raises(ConfigError):
        LRSchedule("step", 10)


def test_losses_and_ema() -> None:
    x, y = torch.zeros(4), torch.tensor([0.0, 1.0, -2.0, 0.0])
    assert float(build_loss("l1")(x, y)) == pytest.approx(0.75)
    eps = 1e-3
    expected = float(np.mean(np.sqrt(np.array([0, 1, 4, 0]) + eps ** 2)))
    assert float(CharbonnierLoss(eps)(x, y)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError):
        build_loss("l3")
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, 0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * start + 0.1 * (start + 1.0))
    assert not ema.module.weight.requires_grad


# ----------------------------------------------------------------------------- the loop


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path, "nan", "train.iterations=10", "train.checkpoint_every=3", "train.max_nonfinite=3")
    trainer = Trainer(cfg)
    real = trainer.loss_fn
    calls = {"n": 0}

    def flaky(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real(pred, target)
        return loss * float("nan") if calls["n"] == 2 or calls["n"] >= 5 else loss

    trainer.loss_fn = flaky
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError) as exc:
        trainer.run()
    msg = str(exc.value)
    assert "iteration 7" in msg and "3 non-finite losses in a row" in msg
    assert "iter_0000003.safetensors (iteration 3)" in msg and "\n" not in msg
    # a single bad step was skipped and training went on (losses 1, 3, 4 recorded)
    rows = (trainer.run_dir / "train_log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[-1] for r in rows][:4] == ["0", "1", "0", "0"]
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(math.isfinite(float(v.float().abs().sum())) for v in trainer.model.state_dict().values())


def test_bf16_and_gradient_checkpointing(tmp_path: Path) -> None:
    plain = train(_tiny(tmp_path, "plain", "model.drop_path_rate=0.1"))
    ckpt = train(_tiny(tmp_path, "ckpt", "model.drop_path_rate=0.1", "train.grad_checkpoint=true"))
    # checkpointing recomputes the same forward (drop_path RNG preserved): same losses
    np.testing.assert_allclose(ckpt.losses, plain.losses, rtol=1e-5)
    assert agileir.load_model(ckpt.weights).config.grad_checkpoint  # the option travels with the config
    bf16 = train(_tiny(tmp_path, "bf16", "train.precision=bf16"))
    assert len(bf16.losses) == 4 and all(math.isfinite(v) for v in bf16.losses)


def test_init_from_x2_weights_for_x4(tmp_path: Path) -> None:
    x2 = agileir.build_model("agileir-s", scale=2, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4)
    agileir.save_model(x2, tmp_path / "x2.safetensors")
    x4 = agileir.build_model("agileir-s", scale=4, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4)
    n, left = init_from_weights(x4, tmp_path / "x2.safetensors")
    assert left and all(k.startswith("upsample") for k in left)
    assert torch.equal(x4.conv_first.weight, x2.conv_first.weight)
    with pytest.raises(ConfigError, match="not found"):
        init_from_weights(x4, tmp_path / "none.safetensors")
    # through the configuration
    cfg = _tiny(tmp_path, "x4", "model.scale=4", "data.train.patch_size=4",
                f"model.init_from={tmp_path / 'x2.safetensors'}", "train.iterations=1")
    trainer = Trainer(cfg)
    assert torch.equal(trainer.model.conv_first.weight, x2.conv_first.weight)


def test_tensorboard_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    result = train(_tiny(tmp_path, "tb", "log.tensorboard=true", "train.iterations=2"))
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


# ----------------------------------------------------------------------------- command line


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code = cli_main(["train", "--config", str(CONFIGS / "quickstart.yaml"), f"data.train.hr_dir={empty}",
                     f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("agileir: error: no image files")
    code = cli_main(["train", "--config", str(CONFIGS / "quickstart.yaml"), "train.bogus=1"])
    assert code == 2 and "unknown option 'train.bogus'" in capsys.readouterr().err
    code = cli_main(["train", "--config", str(CONFIGS / "agileir-s_x2.yaml"), f"output_dir={tmp_path}",
                     "data.num_workers=0"])
    assert code == 2 and "training folder not found: datasets/DIV2K/DIV2K_train_HR" in capsys.readouterr().err
    assert cli_main(["train", "--config", str(CONFIGS / "agileir-s_x4.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["scale"] == 4


def test_quickstart_config_end_to_end_for_a_few_iterations(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped quickstart, cut to 4 iterations and one validation image (CI-sized)."""
    code = cli_main(["train", "--config", str(CONFIGS / "quickstart.yaml"), f"output_dir={tmp_path}",
                     "train.iterations=4", "train.val_every=2", "train.checkpoint_every=2",
                     "data.val.max_images=1", "data.num_workers=0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "final PSNR-Y" in out and "vs bicubic" in out and "weights:" in out
    run = tmp_path / "quickstart"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["iterations"] == 4 and saved["data"]["val"]["max_images"] == 1
    for name in ("model.safetensors", "best.safetensors", "train_log.csv", "val_log.csv", "results.json",
                 "checkpoints/latest.json"):
        assert (run / name).is_file(), name
    model = agileir.load_model(run / "model.safetensors")
    assert model.config.depths == (2, 2) and model.config.scale == 2
    assert len((run / "val_log.csv").read_text().splitlines()) == 3  # header + iterations 2 and 4
    # a second session resumes from the checkpoint at iteration 4 and has nothing left to do
    code = cli_main(["train", "--config", str(CONFIGS / "quickstart.yaml"), "--resume", f"output_dir={tmp_path}",
                     "train.iterations=4", "data.val.max_images=1", "data.num_workers=0"])
    assert code == 0
    assert "resuming quickstart from" in capsys.readouterr().err
