"""The trainer behind ``agileir train``: configuration, data, optimisation, validation, checkpoints.

One function, :func:`train`, runs a configuration (a nested dict, see :data:`DEFAULTS`, usually
read from YAML by :func:`load_config`) in a single process or under ``torchrun`` (DDP: NCCL on
GPUs, gloo on CPUs). Why it is built this way:

* **Exact resume.** Everything random is either saved (python / numpy / torch RNG states of
  every rank, optimizer, EMA) or a pure function of the iteration (data order and per-sample
  augmentation, :class:`agileir.data.datasets.StepBatchSampler`; learning rate,
  :class:`agileir.engine.schedule.LRSchedule`). A run stopped at iteration ``k`` and resumed
  gives bit-identical losses and weights on CPU in fp32.
* **Crash safety.** Checkpoints are written atomically (:mod:`agileir.engine.checkpoint`).
* **Same model for any number of processes.** The global batch is split across ranks and the
  gradients are averaged, so ``torchrun --nproc_per_node N`` trains what one process would.
* **Validation with the evaluation protocol** of ``agileir test`` (its own functions), on the EMA
  weights, with best-checkpoint tracking.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agileir.engine import checkpoint as ckpt
from agileir.engine import distributed as ddp
from agileir.engine.ema import ModelEMA
from agileir.engine.losses import build_loss
from agileir.engine.schedule import LRSchedule
from agileir.errors import AgileIRError, ConfigError
from agileir.fileio import atomic_write_text

ASSETS_TOKEN = "${agileir_assets}"

# The full set of options with their defaults. ``model`` also takes any NetworkConfig field
# (scale, depths, drop_path_rate, key_dim, ...) as an override of the preset.
DEFAULTS: dict[str, Any] = {
    "name": None,  # default: the config file's stem
    "output_dir": "runs",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "threads": None,  # torch intra-op threads per process (None: torch's default)
    "resume": None,  # None | auto | path to a run folder / latest.json / iter_*.state.pth
    "overwrite": False,  # start afresh even though the run folder has checkpoints
    "model": {
        "preset": "agileir-s",
        "init_from": None,  # weights to start from (x3/x4 from x2): tensors with equal names and shapes
    },
    "data": {
        "train": {
            "hr_dir": None,  # folder (or list of folders) of ground-truth images
            "lr_dir": None,  # paired LR folder (or its parent with X<s>/); None: LR made on the fly
            "degradation": "auto",  # auto (from model.task) | bicubic | noise | jpeg
            "noise_sigma": 25,  # denoising: sigma (0-255) or [low, high]
            "jpeg_quality": 40,  # JPEG: quality or [low, high]
            "patch_size": 64,  # LR (input) patch side
            "flip": True,
            "rotate": True,
            "cache": True,  # keep decoded images in memory
            "cache_max_gb": 8.0,  # ... unless they would take more than this
            "lr_border": "mirror",  # MATLAB resize border for on-the-fly LR (EDSR/SwinIR files)
        },
        "val": {
            "dir": None,  # benchmark folder (layouts of ``agileir test``); None: no validation
            "lr_variant": "auto",
            "noise_sigma": None,  # denoising validation sigma (default: the training sigma)
            "jpeg_quality": None,  # JPEG validation quality (default: the training quality)
            "tile": None,
            "tile_overlap": None,
            "max_images": None,
            "seed": 0,
        },
        "batch_size": 16,  # global batch, split across processes
        "num_workers": 4,  # DataLoader workers per process
    },
    "train": {
        "iterations": 500000,
        "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.9, 0.99], "weight_decay": 0.0, "eps": 1e-8},
        "scheduler": {"name": "multistep", "milestones": [250000, 400000, 450000, 475000], "gamma": 0.5,
                      "warmup_iterations": 0, "min_lr_ratio": 0.0},
        "loss": {"name": "l1", "eps": 1e-3},
        "grad_clip": None,  # max global gradient norm; None: no clipping
        "ema_decay": 0.999,  # None or 0: no EMA
        "bf16": False,  # bf16 autocast for forward and loss
        "grad_checkpoint": False,  # per-block gradient checkpointing (model.use_checkpoint)
        "max_nonfinite": 5,  # stop after this many non-finite losses in a row
        "val_every": 5000,
        "checkpoint_every": 5000,
        "keep_checkpoints": 2,
        "log_every": 100,
    },
    "log": {
        "tensorboard": "auto",  # auto (if installed) | true | false
        "progress": "auto",  # tqdm bar: auto (when stderr is a terminal) | true | false
    },
}

_OPEN_SECTIONS = ("model",)  # sections that accept keys not listed in DEFAULTS


# ============================================================================= configuration


def assets_dir() -> Path:
    """The folder of files shipped inside the package (``agileir/assets``)."""
    return Path(__file__).resolve().parents[1] / "assets"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``2e-4`` as a float (PyYAML would give a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _parse_value(text: str) -> Any:
    try:
        return _yaml_load(text)
    except yaml.YAMLError:
        return text


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in out and prefix.rstrip(".").split(".")[0] not in _OPEN_SECTIONS:
            raise ConfigError(f"unknown option {dotted!r}")
        if isinstance(out.get(key), dict) and isinstance(value, Mapping):
            out[key] = _merge(out[key], value, dotted + ".")
        elif isinstance(out.get(key), dict) and value is not None:
            raise ConfigError(f"option {dotted!r} is a section; give its keys ({dotted}.KEY=VALUE)")
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings (values parsed as YAML: numbers, lists, null, ...)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.iterations=200)")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        nested: Any = _parse_value(text)
        for part in reversed(parts):
            nested = {part: nested}
        config = _merge(config, nested)
    return config


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The run configuration: :data:`DEFAULTS`, then the YAML file, then the overrides.

    Unknown keys are errors (``model`` accepts any network option). ``name`` defaults to the
    file's stem.
    """
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"configuration file not found: {p}")
        try:
            doc = _yaml_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{p}: the top level must be a mapping of options")
        config = _merge(config, doc)
        if config.get("name") is None:
            config["name"] = p.stem
    config = apply_overrides(config, overrides)
    if not config.get("name"):
        config["name"] = "run"
    validate_config(config)
    return config


def resolve_path(value: str | os.PathLike | None) -> Path | None:
    """A path from the configuration: ``${agileir_assets}`` expands to the package's assets."""
    if value is None:
        return None
    text = str(value)
    if ASSETS_TOKEN in text:
        text = text.replace(ASSETS_TOKEN, str(assets_dir()))
    return Path(os.path.expandvars(os.path.expanduser(text)))


def validate_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for values the trainer cannot use (before any work is done)."""
    t, d = config["train"], config["data"]

    def positive(value: Any, name: str, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, got {value!r}")

    positive(t["iterations"], "train.iterations")
    positive(d["batch_size"], "data.batch_size")
    positive(d["train"]["patch_size"], "data.train.patch_size")
    for key in ("val_every", "checkpoint_every", "log_every", "max_nonfinite"):
        positive(t[key], f"train.{key}")
    positive(t["grad_clip"], "train.grad_clip", allow_none=True)
    if not isinstance(d["num_workers"], int) or d["num_workers"] < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {d['num_workers']!r}")
    decay = t["ema_decay"]
    if decay not in (None, 0, 0.0) and not (isinstance(decay, (int, float)) and 0 < decay < 1):
        raise ConfigError(f"train.ema_decay must be in (0, 1) or null, got {decay!r}")
    if str(t["optimizer"]["name"]).lower() not in ("adam", "adamw"):
        raise ConfigError(f"train.optimizer.name must be adam or adamw, got {t['optimizer']['name']!r}")
    positive(t["optimizer"]["lr"], "train.optimizer.lr")
    if not config["model"].get("preset"):
        raise ConfigError("model.preset is required (e.g. agileir-s)")
    if config["resume"] not in (None, False) and not isinstance(config["resume"], (str, os.PathLike)):
        raise ConfigError(f"resume must be null, 'auto' or a path, got {config['resume']!r}")
    for key in ("tensorboard", "progress"):
        if config["log"][key] not in ("auto", True, False):
            raise ConfigError(f"log.{key} must be auto, true or false, got {config['log'][key]!r}")
    LRSchedule.from_config(t["scheduler"], int(t["iterations"]))  # validates the schedule
    build_loss(t["loss"]["name"], float(t["loss"].get("eps", 1e-3)))


def dump_config(config: Mapping[str, Any]) -> str:
    """The configuration as YAML (what ``runs/<name>/config.yaml`` holds)."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ============================================================================= building blocks


def model_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """NetworkConfig overrides of the ``model`` section (everything but ``preset``/``init_from``)."""
    out = {k: v for k, v in config["model"].items() if k not in ("preset", "init_from")}
    for key in ("depths", "num_heads"):
        if key in out and isinstance(out[key], list):
            out[key] = tuple(out[key])
    if config["train"].get("grad_checkpoint"):
        out["use_checkpoint"] = True
    return out


def build_network(config: Mapping[str, Any]) -> torch.nn.Module:
    """The network the configuration describes (random initialisation)."""
    from agileir.models import build_model

    try:
        return build_model(str(config["model"]["preset"]), **model_overrides(config))
    except TypeError as exc:
        raise ConfigError(f"cannot build the model: {exc}") from None


def init_from_weights(model: torch.nn.Module, path: str | os.PathLike) -> tuple[int, list[str]]:
    """Copy every tensor of ``path`` whose name and shape match ``model`` (x3/x4 from x2: all but
    the upsampler). Returns (tensors copied, names of model tensors left as initialised)."""
    from agileir.models.loading import DERIVED_SUFFIXES, read_checkpoint

    p = resolve_path(path)
    assert p is not None
    if not p.is_file():
        raise ConfigError(f"model.init_from: weights file not found: {p}")
    sd, _ = read_checkpoint(p)
    own = model.state_dict()
    matched = {k: v for k, v in sd.items()
               if k in own and not k.endswith(DERIVED_SUFFIXES) and tuple(v.shape) == tuple(own[k].shape)}
    if not matched:
        raise ConfigError(f"model.init_from: no tensor of {p} fits this model")
    model.load_state_dict(matched, strict=False)
    left = sorted(k for k in own if k not in matched and not k.endswith(DERIVED_SUFFIXES))
    return len(matched), left


def build_optimizer(params: Sequence[torch.nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam or AdamW from ``train.optimizer``."""
    name = str(cfg["name"]).lower()
    kwargs = dict(lr=float(cfg["lr"]), betas=tuple(float(b) for b in cfg.get("betas", (0.9, 0.99))),
                  weight_decay=float(cfg.get("weight_decay", 0.0) or 0.0), eps=float(cfg.get("eps", 1e-8)))
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    return torch.optim.Adam(params, **kwargs)


def task_of(config: Mapping[str, Any]) -> tuple[str, int]:
    """(task, scale) of the model the configuration builds."""
    from agileir.models import preset_config

    cfg = preset_config(str(config["model"]["preset"]),
                        **{k: v for k, v in model_overrides(config).items() if k != "use_checkpoint"})
    return cfg.task, int(cfg.scale)


def build_train_dataset(config: Mapping[str, Any], in_chans: int, progress: bool = False):
    """The training patches of ``data.train`` for the model's task."""
    from agileir.data.datasets import RestorationPatches, list_images, pair_images

    d = config["data"]["train"]
    task, scale = task_of(config)
    if d["hr_dir"] in (None, ""):
        raise ConfigError("data.train.hr_dir is required (a folder of ground-truth images)")
    folders = d["hr_dir"] if isinstance(d["hr_dir"], (list, tuple)) else [d["hr_dir"]]
    hr_files = list_images([resolve_path(f) for f in folders])
    lr_files = None
    if d.get("lr_dir"):
        pairs = pair_images(hr_files, resolve_path(d["lr_dir"]), scale)
        hr_files, lr_files = [p[0] for p in pairs], [p[1] for p in pairs]
    degradation = d.get("degradation", "auto")
    if degradation in (None, "auto"):
        degradation = {"sr": "bicubic", "denoise": "noise", "jpeg": "jpeg"}[task]
    cache = bool(d.get("cache", True))
    if cache:
        limit = float(d.get("cache_max_gb", 8.0) or 0.0) * 2 ** 30
        needed = RestorationPatches.estimate_bytes(hr_files + (lr_files or []))
        if needed > limit:
            warnings.warn(f"decoded training images need {needed / 2**30:.1f} GiB, above "
                          f"data.train.cache_max_gb={d.get('cache_max_gb')}; decoding on the fly instead",
                          RuntimeWarning, stacklevel=2)
            cache = False
    return RestorationPatches(
        hr_files, lr_files, scale=scale, patch_size=int(d["patch_size"]), degradation=degradation,
        noise_sigma=d.get("noise_sigma", 25), jpeg_quality=d.get("jpeg_quality", 40), in_chans=in_chans,
        flip=bool(d.get("flip", True)), rotate=bool(d.get("rotate", True)), cache=cache,
        lr_border=str(d.get("lr_border", "mirror")), progress=progress)


# ============================================================================= validation


class Validator:
    """Scores a model on a benchmark folder with ``agileir test``'s protocol (PSNR/SSIM on RGB
    and BT.601 Y, uint8 output, ``scale`` pixels cropped). Inputs and the baseline are made once."""

    def __init__(self, config: Mapping[str, Any], model_config: Any, device: torch.device) -> None:
        from agileir.cli.evaluate import Task, _prepare
        from agileir.data.pairs import discover
        from agileir.metrics import evaluate_pair

        v = config["data"]["val"]
        root = resolve_path(v["dir"])
        task_kind, scale = model_config.task, int(model_config.scale)
        if task_kind == "sr":
            self.task = Task("sr", scale=scale)
        elif task_kind == "denoise":
            sigma = v.get("noise_sigma")
            if sigma is None:
                train_sigma = config["data"]["train"]["noise_sigma"]
                sigma = train_sigma[1] if isinstance(train_sigma, (list, tuple)) else train_sigma
            self.task = Task("denoise", noise=float(sigma))
        else:
            q = v.get("jpeg_quality")
            if q is None:
                train_q = config["data"]["train"]["jpeg_quality"]
                q = train_q[0] if isinstance(train_q, (list, tuple)) else train_q
            self.task = Task("jpeg", quality=int(q))
        self.folder = discover(root, scale if task_kind == "sr" else None, str(v.get("lr_variant", "auto")))
        samples = list(self.folder.samples)
        if v.get("max_images"):
            samples = samples[: int(v["max_images"])]
        self.in_chans = int(model_config.in_chans)
        self.window = int(model_config.window_size)
        self.device = device
        self.tile = v.get("tile")
        self.overlap = v.get("tile_overlap") if v.get("tile_overlap") is not None else \
            (min(32, int(self.tile) // 4) if self.tile else 32)
        self.items: list[tuple[str, Any]] = []
        for sample in samples:
            prep = _prepare(self.folder, sample, self.task, self.in_chans, int(v.get("seed", 0)))
            self.items.append((sample.name, prep))
        if not self.items:
            raise AgileIRError(f"{root}: no validation images")
        self._evaluate_pair = evaluate_pair
        self._baseline: dict[str, float] | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    def describe(self) -> str:
        return f"{self.folder.name} {self.task.describe()} ({len(self.items)} images, {self.folder.lr_source})"

    def baseline(self) -> dict[str, float]:
        """Mean scores of the baseline (bicubic for SR, the degraded input otherwise)."""
        from agileir.metrics import mean_metrics

        if self._baseline is None:
            rows = [self._evaluate_pair(p.baseline, p.gt, self.task.crop, self.task.kind == "jpeg", self.in_chans == 1)
                    for _, p in self.items]
            self._baseline = mean_metrics(rows)
        return self._baseline

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean PSNR / SSIM (RGB and Y) of ``model`` (put in eval mode for the call)."""
        from agileir.data.io import tensor_to_uint8
        from agileir.inference.tiling import run_model
        from agileir.metrics import mean_metrics

        was_training = model.training
        model.eval()
        rows = []
        try:
            for _, prep in self.items:
                x = prep.model_input
                h, w = x.shape[-2:]
                y = run_model(model, x, tile=int(self.tile) if self.tile else None, overlap=int(self.overlap),
                              scale=self.task.scale, window_size=self.window, device=self.device)
                out = tensor_to_uint8(y[..., : h * self.task.scale, : w * self.task.scale])
                rows.append(self._evaluate_pair(out, prep.gt, self.task.crop, self.task.kind == "jpeg",
                                                self.in_chans == 1))
        finally:
            model.train(was_training)
        return mean_metrics(rows)


# ============================================================================= logging


class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows after the resumed iteration are
    dropped so that the log reads as one uninterrupted run."""

    def __init__(self, path: Path, columns: Sequence[str], resume_iteration: int | None = None) -> None:
        self.path, self.columns = path, list(columns)
        rows: list[dict[str, str]] = []
        if resume_iteration is not None and path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r.get("iteration") or 0)) <= resume_iteration]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())

    def write(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})


def _tensorboard(setting: Any, log_dir: Path):
    if setting is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if setting is True:
            raise ConfigError("log.tensorboard=true needs the tensorboard package: pip install 'agileir[tensorboard]'")
        return None
    return SummaryWriter(str(log_dir))


def peak_memory_mib(device: torch.device) -> float:
    """CUDA allocator peak on GPU, peak resident set of the process on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024.0


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


# ============================================================================= the run


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    iteration: int
    weights: Path | None = None  # exported model (EMA weights when enabled)
    last_checkpoint: Path | None = None
    best: dict[str, Any] = field(default_factory=dict)
    final_scores: dict[str, float] | None = None
    baseline_scores: dict[str, float] | None = None
    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    is_main: bool = True  # False on the other ranks of a DDP job (they print nothing)


class NonFiniteLossError(AgileIRError):
    """Too many non-finite losses in a row; the message names the last good checkpoint."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Trainer:
    """One training run; see :func:`train`. Attributes are public for tests and extensions
    (e.g. ``loss_fn`` can be replaced before :meth:`run`)."""

    def __init__(self, config: dict[str, Any], *, resume: str | os.PathLike | None = None) -> None:
        self.config = config
        if resume is not None:
            config["resume"] = str(resume)
        self.dist = ddp.init_distributed(str(config.get("device", "auto")))
        if config.get("threads"):
            torch.set_num_threads(int(config["threads"]))
        self.device = self.dist.device
        self.main = self.dist.is_main
        self.run_dir = (resolve_path(config["output_dir"]) or Path("runs")) / str(config["name"])
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.total = int(config["train"]["iterations"])
        t = config["train"]
        seed = int(config["seed"])
        _seed_everything(seed + self.dist.rank)

        # --- where to start
        self.resume_info = self._find_resume()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.ckpt_dir)
            ckpt.remove_stale_temporaries(self.run_dir)
            if self.resume_info is None and config.get("overwrite") and self.ckpt_dir.is_dir():
                ckpt.clear_checkpoints(self.ckpt_dir)
        ddp.barrier()

        # --- model, EMA, optimisation
        self.model = build_network(config).to(self.device)
        self.net_config = self.model.config
        init_from = config["model"].get("init_from")
        if init_from and self.resume_info is None:
            n, left = init_from_weights(self.model, init_from)
            if self.main:
                _say(f"agileir: initialised {n} tensors from {init_from}"
                     + (f"; {len(left)} left as initialised (e.g. {left[0]})" if left else ""))
        decay = t.get("ema_decay")
        self.ema = ModelEMA(self.model, float(decay)) if decay else None
        self.optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], t["optimizer"])
        self.schedule = LRSchedule.from_config(t["scheduler"], self.total)
        self.loss_fn = build_loss(t["loss"]["name"], float(t["loss"].get("eps", 1e-3)))
        self.bf16 = bool(t.get("bf16", False))
        self.grad_clip = float(t["grad_clip"]) if t.get("grad_clip") else None
        self.max_nonfinite = int(t.get("max_nonfinite", 5))

        self.iteration = 0
        self.best: dict[str, Any] = {}
        self.last_checkpoint: ckpt.CheckpointInfo | None = None
        self.last_good_checkpoint: ckpt.CheckpointInfo | None = None  # written outside a non-finite streak
        self.nonfinite = 0
        rng_states = None
        if self.resume_info is not None:
            rng_states = self._load_state(self.resume_info)
        self.ddp_model = ddp.wrap_ddp(self.model, self.dist)

        # --- data
        self.dataset = build_train_dataset(config, int(self.net_config.in_chans), progress=self.main and self._bar_on())
        self.validator = None
        if self.main and config["data"]["val"].get("dir"):
            self.validator = Validator(config, self.net_config, self.device)

        # RNG last: building the pieces above must not shift the random streams of a resumed run
        if rng_states is not None:
            if len(rng_states) == self.dist.world_size:
                ckpt.restore_rng_state(rng_states[self.dist.rank])
            else:
                warnings.warn(f"the checkpoint was written by {len(rng_states)} processes, this run has "
                              f"{self.dist.world_size}: random streams are re-seeded (data order is kept)",
                              RuntimeWarning, stacklevel=2)
                _seed_everything(seed + self.dist.rank + 1000003 * self.iteration)

    # ------------------------------------------------------------------ set-up helpers

    def _bar_on(self) -> bool:
        setting = self.config["log"].get("progress", "auto")
        if setting == "auto":
            return sys.stderr.isatty()
        return bool(setting)

    def _find_resume(self) -> ckpt.CheckpointInfo | None:
        resume = self.config.get("resume")
        existing = ckpt.find_latest(self.ckpt_dir) if self.ckpt_dir.is_dir() else None
        if resume in (None, False, "", "none", "null"):
            if existing is not None and not self.config.get("overwrite"):
                raise ConfigError(
                    f"{self.run_dir} already has a checkpoint at iteration {existing.iteration}; "
                    "continue it with --resume, or start afresh with overwrite=true or another name=...")
            return None
        if str(resume) == "auto":
            return existing
        return ckpt.resolve_checkpoint(resolve_path(resume) or Path(str(resume)))

    def _load_state(self, info: ckpt.CheckpointInfo) -> list[dict[str, Any]] | None:
        state = ckpt.load_training_state(info)
        saved_net = state.get("network_config")
        mine = {k: v for k, v in self.net_config.to_dict().items() if k not in ("use_checkpoint", "attention_impl")}
        if saved_net is not None:
            theirs = {k: v for k, v in saved_net.items() if k not in ("use_checkpoint", "attention_impl")}
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if diff:
                raise ConfigError(f"cannot resume from {info.state}: the model differs in {', '.join(diff)} "
                                  f"(checkpoint {diff[0]}={theirs.get(diff[0])!r}, now {mine.get(diff[0])!r})")
        self.model.load_state_dict(state["params"], strict=True)
        if self.ema is not None:
            if state.get("params_ema") is not None:
                self.ema.load_state_dict(state["params_ema"])
                self.ema.updates = int(state.get("ema_updates", 0))
            else:
                self.ema = ModelEMA(self.model, self.ema.decay)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.best = dict(state.get("best") or {})
        self.last_checkpoint = self.last_good_checkpoint = info
        sampler = state.get("sampler") or {}
        if sampler and int(sampler.get("global_batch", self.config["data"]["batch_size"])) != \
                int(self.config["data"]["batch_size"]):
            warnings.warn("the global batch size differs from the checkpoint's: the data order changes",
                          RuntimeWarning, stacklevel=3)
        if self.main:
            _say(f"agileir: resuming {self.run_dir.name} from {info.describe()}")
        return state.get("rng")

    # ------------------------------------------------------------------ checkpoints

    def _export_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save(self) -> ckpt.CheckpointInfo | None:
        """Write a checkpoint of the current iteration (collective: every rank calls it)."""
        rng = ddp.all_gather_object(ckpt.capture_rng_state())
        if not self.main:
            ddp.barrier()
            return None
        state = {
            "params": _state_dict_cpu(self.model),
            "params_ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": rng,
            "sampler": {"seed": int(self.config["seed"]), "global_batch": int(self.config["data"]["batch_size"]),
                        "num_items": len(self.dataset), "samples_consumed":
                            self.iteration * int(self.config["data"]["batch_size"])},
            "best": dict(self.best),
            "network_config": self.net_config.to_dict(),
            "config_yaml": dump_config(self.config),
            "world_size": self.dist.world_size,
        }
        info = ckpt.save_checkpoint(
            self.ckpt_dir, self.iteration, self._export_model(), state,
            keep=int(self.config["train"].get("keep_checkpoints", 2)),
            metadata={"agileir.weights": "params_ema" if self.ema is not None else "params"})
        self.last_checkpoint = info
        if self.nonfinite == 0:
            self.last_good_checkpoint = info
        ddp.barrier()
        return info

    # ------------------------------------------------------------------ the loop

    def _loader(self):
        from torch.utils.data import DataLoader

        from agileir.data.datasets import StepBatchSampler, collate

        sampler = StepBatchSampler(len(self.dataset), int(self.config["data"]["batch_size"]),
                                   seed=int(self.config["seed"]), rank=self.dist.rank,
                                   world_size=self.dist.world_size, start_step=self.iteration,
                                   total_steps=self.total)
        workers = int(self.config["data"]["num_workers"])
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                          persistent_workers=False, prefetch_factor=2 if workers else None)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float | None]:
        """One optimisation step; returns (global mean loss, grad norm or None when skipped)."""
        lr_img = batch["lr"].to(self.device, non_blocking=True)
        hr_img = batch["hr"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.ddp_model(lr_img)
        loss = self.loss_fn(out.float(), hr_img)
        global_loss = float(ddp.all_reduce_mean(loss.detach()).item())
        loss.backward()  # always: DDP's gradient all-reduce must run on every rank
        if not math.isfinite(global_loss):
            self.optimizer.zero_grad(set_to_none=True)
            return global_loss, None
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan"), None
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return global_loss, norm

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train up to ``train.iterations`` (or ``stop_at``, writing a checkpoint there)."""
        from tqdm import tqdm

        t = self.config["train"]
        start = self.iteration
        end = min(self.total, int(stop_at)) if stop_at else self.total
        result = TrainResult(self.run_dir, self.iteration, is_main=self.main)
        if self.main:
            atomic_write_text(self.run_dir / "config.yaml", dump_config(self.config))
            self.train_log = CsvLog(self.run_dir / "train_log.csv",
                                    ["iteration", "loss", "lr", "grad_norm", "it_per_s", "elapsed_s", "peak_mem_mib",
                                     "skipped"], start if self.resume_info else None)
            self.val_log = CsvLog(self.run_dir / "val_log.csv",
                                  ["iteration", "psnr", "ssim", "psnr_y", "ssim_y", "best_psnr_y"],
                                  start if self.resume_info else None)
            self.tb = _tensorboard(self.config["log"].get("tensorboard", "auto"), self.run_dir / "tensorboard")
            n_params = sum(p.numel() for p in self.model.parameters())
            _say(f"agileir: {self.run_dir.name}: {self.config['model']['preset']} x{self.net_config.scale} "
                 f"({n_params:,} parameters), {len(self.dataset)} training images, global batch "
                 f"{self.config['data']['batch_size']} on {self.dist.world_size} process(es) ({self.device.type}), "
                 f"iterations {start + 1}-{end} of {self.total}")
            if self.validator is not None:
                _say(f"agileir: validation on {self.validator.describe()} every {t['val_every']} iterations")
        if start >= end:
            result.iteration = self.iteration
            return self._finish(result, end)

        loader = self._loader()
        bar = tqdm(total=end, initial=start, desc=self.run_dir.name, unit="it", file=sys.stderr,
                   disable=not (self.main and self._bar_on()), dynamic_ncols=True, smoothing=0.05)
        self.nonfinite = 0
        window_losses: list[float] = []
        t_start = time.perf_counter()
        t_window = t_start
        it_window = start
        skipped_window = 0
        log_every = int(t["log_every"])
        try:
            for batch in loader:
                self.iteration += 1
                lr = self.schedule.apply(self.optimizer, self.iteration)
                loss, norm = self._step(batch)
                if norm is None:
                    self.nonfinite += 1
                    skipped_window += 1
                    if self.main:
                        _say(f"agileir: warning: non-finite loss at iteration {self.iteration} "
                             f"({self.nonfinite} in a row); step skipped")
                    if self.nonfinite >= self.max_nonfinite:
                        good = self.last_good_checkpoint
                        raise NonFiniteLossError(
                            f"stopped at iteration {self.iteration} after {self.nonfinite} non-finite losses in a "
                            f"row; last good checkpoint: {good.describe() if good else 'none was written'}")
                else:
                    self.nonfinite = 0
                    window_losses.append(loss)
                    result.losses.append(loss)
                bar.update(1)
                if self.iteration % log_every == 0 or self.iteration == end:
                    now = time.perf_counter()
                    rate = (self.iteration - it_window) / max(now - t_window, 1e-9)
                    mean_loss = float(np.mean(window_losses)) if window_losses else float("nan")
                    mem = peak_memory_mib(self.device)
                    if self.main:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", mem=f"{mem:.0f}MiB", refresh=False)
                        row = {"iteration": self.iteration, "loss": mean_loss, "lr": lr,
                               "grad_norm": norm if norm is not None else float("nan"), "it_per_s": rate,
                               "elapsed_s": now - t_start, "peak_mem_mib": mem, "skipped": skipped_window}
                        self.train_log.write(row)
                        if self.tb is not None:
                            self.tb.add_scalar("train/loss", mean_loss, self.iteration)
                            self.tb.add_scalar("train/lr", lr, self.iteration)
                            self.tb.add_scalar("train/it_per_s", rate, self.iteration)
                        if bar.disable:
                            eta = (end - self.iteration) / max(rate, 1e-9)
                            _say(f"iter {self.iteration}/{end}  loss {mean_loss:.4f}  lr {lr:.2e}  {rate:.2f} it/s  "
                                 f"ETA {eta / 60:.1f} min  peak {mem:.0f} MiB")
                    window_losses, t_window, it_window, skipped_window = [], now, self.iteration, 0
                t_pause = time.perf_counter()
                if self.iteration % int(t["val_every"]) == 0 or self.iteration == self.total:
                    self._validate(bar)
                if self.iteration % int(t["checkpoint_every"]) == 0 or self.iteration == end:
                    self.save()
                t_window += time.perf_counter() - t_pause  # it/s counts training steps only
                if self.iteration >= end:
                    break
        finally:
            bar.close()
        result.elapsed_s = time.perf_counter() - t_start
        return self._finish(result, end)

    def _validate(self, bar: Any) -> dict[str, float] | None:
        scores = None
        if self.main and self.validator is not None:
            scores = self.validator(self._export_model())
            improved = scores["psnr_y"] > self.best.get("psnr_y", -math.inf)
            if improved:
                self.best = {"iteration": self.iteration, **{k: float(v) for k, v in scores.items()}}
                from agileir.models import save_model

                save_model(self._export_model(), self.run_dir / "best.safetensors",
                           extra_metadata={"agileir.iteration": str(self.iteration),
                                           "agileir.val": json.dumps(self.best)})
            self.val_log.write({"iteration": self.iteration, **scores, "best_psnr_y": self.best.get("psnr_y")})
            if self.tb is not None:
                for k, v in scores.items():
                    self.tb.add_scalar(f"val/{k}", v, self.iteration)
            note = "  (best)" if improved else f"  (best {self.best['psnr_y']:.2f} at {self.best['iteration']})"
            _say(f"agileir: iteration {self.iteration}: {self.validator.name} PSNR-Y {scores['psnr_y']:.2f} dB, "
                 f"SSIM-Y {scores['ssim_y']:.4f}{note}")
            self._last_scores = (self.iteration, scores)
        ddp.barrier()
        return scores

    def _finish(self, result: TrainResult, end: int) -> TrainResult:
        result.iteration = self.iteration
        result.best = dict(self.best)
        result.last_checkpoint = self.last_checkpoint.weights if self.last_checkpoint else None
        if self.iteration >= self.total and self.main:
            from agileir.models import save_model

            result.weights = save_model(self._export_model(), self.run_dir / "model.safetensors",
                                        extra_metadata={"agileir.iteration": str(self.iteration)})
            if self.validator is not None:
                last = getattr(self, "_last_scores", None)
                scores = last[1] if last and last[0] == self.iteration else self.validator(self._export_model())
                result.final_scores = scores
                result.baseline_scores = self.validator.baseline()
                doc = {"iteration": self.iteration, "dataset": self.validator.name,
                       "task": self.validator.task.describe(), "model": scores,
                       "baseline": result.baseline_scores, "best": self.best, "weights": str(result.weights)}
                atomic_write_text(self.run_dir / "results.json", json.dumps(doc, indent=2) + "\n")
        if self.main and getattr(self, "tb", None) is not None:
            self.tb.close()
        ddp.barrier()
        return result


def train(config: dict[str, Any], *, resume: str | os.PathLike | None = None,
          stop_at: int | None = None) -> TrainResult:
    """Run (or continue) the training the configuration describes.

    ``resume``: ``"auto"`` (the run's latest checkpoint if there is one) or a checkpoint path;
    ``stop_at``: end this session after that iteration with a checkpoint (continue later with
    ``resume``). Under ``torchrun`` every process calls this; rank 0 logs and writes files.
    """
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, resume=resume)
        return trainer.run(stop_at=stop_at)
    finally:
        ddp.cleanup()
        torch.set_num_threads(threads)  # ``threads`` applies to the run, not to the caller


__all__ = ["DEFAULTS", "load_config", "apply_overrides", "validate_config", "dump_config", "resolve_path",
           "assets_dir", "build_network", "model_overrides", "init_from_weights", "build_train_dataset",
           "Validator", "Trainer", "TrainResult", "NonFiniteLossError", "train", "peak_memory_mib", "task_of"]
