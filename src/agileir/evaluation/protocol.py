"""One image of the published protocol: the degraded input, the baseline, the scores.

Super-resolution: MATLAB-bicubic LR (from the folder's LR files or made from the ground truth),
bicubic upscaling as the baseline, ``scale`` pixels cropped from every border. Denoising: noise
added to the float image with a per-image seed, no clipping before the model, the noisy input as
the baseline. JPEG: the compressed input as the baseline, PSNR-B reported too. Output clamped,
scaled and rounded to uint8; PSNR and SSIM on RGB and on BT.601 Y (docs/evaluation.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from agileir.data.degradations import add_gaussian_noise, bicubic_upscale, jpeg_compress
from agileir.data.io import float_to_tensor, read_image, rgb_to_gray, rgb_to_y_uint8, tensor_to_uint8, to_channels, \
    uint8_to_tensor
from agileir.data.pairs import BenchmarkFolder, Sample, load_sr_pair
from agileir.errors import AgileIRError, ConfigError
from agileir.inference.ensemble import self_ensemble
from agileir.inference.precision import precision_context
from agileir.inference.restorer import auto_tile
from agileir.inference.tiling import DEFAULT_OVERLAP, check_overlap, check_tile, run_model, swinir_test_pad
from agileir.metrics import evaluate_pair

METRIC_COLUMNS = ("psnr", "ssim", "psnr_y", "ssim_y")
PSNRB_COLUMNS = ("psnrb", "psnrb_y")
BASELINE_LABELS = {"sr": "bicubic", "denoise": "noisy input", "jpeg": "JPEG input"}


@dataclass(frozen=True)
class Task:
    """What is measured: ``kind`` in the package's task vocabulary (sr, denoise, jpeg)."""

    kind: str
    scale: int = 1
    noise: float | None = None
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "sr" and self.scale < 1:
            raise ConfigError(f"scale must be >= 1, got {self.scale}")
        if self.kind == "denoise" and not (self.noise is not None and self.noise >= 0 and math.isfinite(self.noise)):
            raise ConfigError(f"noise sigma must be >= 0, got {self.noise}")
        if self.kind == "jpeg" and not (self.quality is not None and 1 <= self.quality <= 100):
            raise ConfigError(f"JPEG quality must be in 1..100, got {self.quality}")
        if self.kind not in BASELINE_LABELS:
            raise ConfigError(f"task must be sr, denoise or jpeg, got {self.kind!r}")

    @property
    def crop(self) -> int:
        """Border pixels excluded from the scores (``scale`` for SR, none otherwise)."""
        return self.scale if self.kind == "sr" else 0

    @property
    def columns(self) -> tuple[str, ...]:
        return METRIC_COLUMNS + (PSNRB_COLUMNS if self.kind == "jpeg" else ())

    @property
    def baseline_label(self) -> str:
        return BASELINE_LABELS[self.kind]

    def describe(self) -> str:
        if self.kind == "sr":
            return f"x{self.scale} super-resolution"
        if self.kind == "denoise":
            return f"denoising sigma {self.noise:g}"
        return f"JPEG artefact removal q{self.quality}"


def task_for_model(config: Any, *, scale: int | None = None, noise: float | None = None,
                   quality: int | None = None) -> Task:
    """The task a model is measured on: its own, with the level the caller gives.

    A denoising model needs ``noise``, a JPEG model ``quality``; a level for another task, or an
    SR scale other than the model's, is a one-line error.
    """
    kind, model_scale = config.task, int(config.scale)
    asked = "sr" if scale is not None else "denoise" if noise is not None else "jpeg" if quality is not None else None
    if asked is not None and asked != kind:
        raise ConfigError(f"the model is a {kind!r} model but the options ask for {asked!r}")
    if kind == "sr":
        if scale is not None and scale != model_scale:
            raise ConfigError(f"the model upscales x{model_scale} but --scale {scale} was given")
        return Task("sr", scale=model_scale)
    if kind == "denoise":
        if noise is None:
            raise ConfigError("this is a denoising model: give --noise SIGMA")
        return Task("denoise", noise=float(noise))
    if quality is None:
        raise ConfigError("this is a JPEG model: give --jpeg QUALITY")
    return Task("jpeg", quality=int(quality))


@dataclass
class Prepared:
    """One image ready to score: ground truth, model input and the baseline's output."""

    name: str
    gt: np.ndarray  # uint8 ground truth as measured
    model_input: torch.Tensor | None  # (1, C, H, W) float, None without a model
    baseline: np.ndarray  # uint8 baseline output
    baseline_time: float
    noisy: np.ndarray | None = None  # denoising: the float noisy image (what a classical denoiser gets)


def prepare(folder: BenchmarkFolder, sample: Sample, task: Task, in_chans: int | None, seed: int = 0) -> Prepared:
    """Ground truth, model input (for a model with ``in_chans`` channels) and baseline of one image."""
    if task.kind == "sr":
        lr, gt = load_sr_pair(folder, sample)
        if in_chans == 1 and lr.ndim == 3:
            lr, gt = rgb_to_gray(lr), rgb_to_gray(gt)
        t0 = time.perf_counter()
        baseline = bicubic_upscale(lr, task.scale)
        t_base = time.perf_counter() - t0
        x = uint8_to_tensor(to_channels(lr, in_chans)) if in_chans else None
        return Prepared(sample.name, gt, x, baseline, t_base)
    gt = read_image(sample.hr_path)
    if in_chans == 1 and gt.ndim == 3:
        # gray models: studio-range Y for JPEG (SwinIR's jpeg_car), full-range luma for noise
        gt = rgb_to_y_uint8(gt) if task.kind == "jpeg" else rgb_to_gray(gt)
    if task.kind == "denoise":
        clean = to_channels(gt, in_chans) if in_chans else gt
        t0 = time.perf_counter()
        noisy = add_gaussian_noise(clean, float(task.noise or 0.0), seed)
        t_base = time.perf_counter() - t0
        x = float_to_tensor(noisy)
        return Prepared(sample.name, gt, x if in_chans else None, tensor_to_uint8(x), t_base, noisy)
    t0 = time.perf_counter()
    degraded = jpeg_compress(gt, int(task.quality or 0))
    t_base = time.perf_counter() - t0
    x = uint8_to_tensor(to_channels(degraded, in_chans)) if in_chans else None
    return Prepared(sample.name, gt, x, degraded, t_base)


def score(output: np.ndarray, prep: Prepared, task: Task, gray_is_y: bool) -> dict[str, float]:
    """The protocol's scores of a uint8 ``output`` against the prepared ground truth."""
    if output.ndim == 3 and prep.gt.ndim == 3 and output.shape[2] != prep.gt.shape[2]:
        raise AgileIRError(f"{prep.name}: model returned {output.shape[2]} channels")
    if output.shape[:2] != prep.gt.shape[:2]:
        raise AgileIRError(f"{prep.name}: model output {output.shape[1]}x{output.shape[0]} does not match "
                           f"the ground truth {prep.gt.shape[1]}x{prep.gt.shape[0]}")
    return evaluate_pair(output, prep.gt, task.crop, task.kind == "jpeg", gray_is_y)


def model_runner(model: torch.nn.Module, task: Task, device: torch.device, *, tile: int | str | None = None,
                 overlap: int | None = None, pad: str = "model", ensemble: bool = False,
                 precision: str = "fp32") -> Callable[[torch.Tensor], torch.Tensor]:
    """``(1, C, H, W)`` input -> ``(1, C, sH, sW)`` float output, as the protocol runs the model.

    ``tile``: None (whole image), a tile side or "auto" (from free memory, per image).
    ``pad``: "model" (the network's own reflection to the window multiple) or "swinir" (SwinIR's
    test script: symmetric, a full extra window when already a multiple).
    ``precision``: the resolved precision ``model`` was prepared for
    (:func:`agileir.inference.precision.prepare_precision`); bf16 runs under autocast.
    """
    window = int(model.config.window_size)
    if isinstance(tile, int):
        check_tile(tile, window)
        overlap = min(DEFAULT_OVERLAP, tile // 4) if overlap is None else overlap
        check_overlap(overlap, tile)
    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    if pad not in ("model", "swinir"):
        raise ConfigError(f"padding must be 'model' or 'swinir', got {pad!r}")

    def forward(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if pad == "swinir":
            x = swinir_test_pad(x, window)
        side = auto_tile(model.config, *x.shape[-2:], device) if tile == "auto" else tile
        ov = min(overlap, side // 2) if tile == "auto" and side else overlap
        with precision_context(device, precision):
            y = run_model(model, x, tile=side, overlap=ov, scale=task.scale, window_size=window, device=device)
        return y[..., : h * task.scale, : w * task.scale].float()

    return (lambda x: self_ensemble(forward, x)) if ensemble else forward


__all__ = ["METRIC_COLUMNS", "PSNRB_COLUMNS", "Task", "task_for_model", "Prepared", "prepare", "score",
           "model_runner"]
