"""``agileir test``: score a model (or the bicubic baseline) on a benchmark folder.

The protocol is SPEC section 4 (see docs/evaluation.md): MATLAB-bicubic LR, output clamped /
scaled / rounded to uint8, ``scale`` pixels cropped from every border for SR, PSNR and SSIM on
RGB and on BT.601 Y, data-set score = mean of the per-image scores.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from agileir.data.degradations import add_gaussian_noise, bicubic_upscale, jpeg_compress
from agileir.data.io import (
    float_to_tensor,
    read_image,
    rgb_to_gray,
    rgb_to_y_uint8,
    tensor_to_uint8,
    to_channels,
    uint8_to_tensor,
    write_image,
)
from agileir.data.pairs import BenchmarkFolder, Sample, discover, load_sr_pair
from agileir.engine.distributed import resolve_device
from agileir.errors import AgileIRError, ConfigError, ModelLoadError
from agileir.inference.ensemble import self_ensemble
from agileir.inference.tiling import check_tile, run_model, swinir_test_pad
from agileir.metrics import evaluate_pair, mean_metrics

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")
METRIC_COLUMNS = ("psnr", "ssim", "psnr_y", "ssim_y")
PSNRB_COLUMNS = ("psnrb", "psnrb_y")
HEADERS = {"psnr": "PSNR", "ssim": "SSIM", "psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y",
           "psnrb": "PSNR-B", "psnrb_y": "PSNR-B-Y"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``test`` sub-command."""
    p = subparsers.add_parser(
        "test",
        help="evaluate a model or the bicubic baseline on a benchmark folder (PSNR/SSIM, RGB and Y)",
        description=(
            "Evaluate a model on one data set. DIR is a folder with HR/ + LR_bicubic/X{s}/ "
            "(EDSR layout), GTmod12/ + LRbicx{s}/ (BasicSR layout), or ground-truth images only "
            "(the degraded input is then made on the fly). Prints PSNR/SSIM on RGB and on Y "
            "with a baseline row (bicubic for SR, the degraded input otherwise)."
        ),
    )
    p.add_argument("--model", required=True, metavar="PRESET_OR_WEIGHTS",
                   help="shipped weights (agileir-s with --scale, or agileir-s_x4), a preset name without "
                        "shipped weights at that scale (random weights), a weights file (.pth official SwinIR "
                        "or .safetensors), or 'bicubic' for the baseline only")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="benchmark folder of one data set")
    task = p.add_mutually_exclusive_group()
    task.add_argument("--scale", type=int, metavar="S", help="super-resolution scale (2, 3, 4, 8)")
    task.add_argument("--noise", type=float, metavar="SIGMA",
                      help="Gaussian denoising, sigma in 0-255 units (15, 25, 50)")
    task.add_argument("--jpeg", type=int, metavar="Q", help="JPEG artefact removal at quality Q (10-40)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 flip/rotation self-ensemble")
    p.add_argument("--tile", type=int, metavar="T",
                   help="run in T x T input tiles (a multiple of the model window)")
    p.add_argument("--tile-overlap", type=int, metavar="O",
                   help="overlap of neighbouring tiles in input pixels (default min(32, T/4))")
    p.add_argument("--save-images", type=Path, metavar="DIR", help="write the restored images here (PNG)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write per-image and mean results as JSON")
    p.add_argument("--csv", type=Path, metavar="PATH", help="write per-image and mean results as CSV")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default: cuda if available)")
    p.add_argument("--lr-variant", default="auto", metavar="VARIANT",
                   help="'auto' (LR files if present, else generate), 'mirror' or 'replicate' "
                        "(generate from the ground truth with that border), or an LR folder name "
                        "such as LR_bicubic_edsr")
    p.add_argument("--pad", choices=("model", "swinir"), default="model",
                   help="padding to the window multiple: 'model' (the network's own: reflection, only "
                        "the missing rows) or 'swinir' (SwinIR's test script: symmetric, always at least "
                        "one extra row/column); changes the third decimal")
    p.add_argument("--seed", type=int, default=0, help="noise seed, applied per image (default 0)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- set-up


@dataclass
class Task:
    kind: str  # "sr", "denoise", "jpeg"
    scale: int = 1
    noise: float | None = None
    quality: int | None = None

    @property
    def crop(self) -> int:
        return self.scale if self.kind == "sr" else 0

    def describe(self) -> str:
        if self.kind == "sr":
            return f"x{self.scale} super-resolution"
        if self.kind == "denoise":
            return f"denoising sigma {self.noise:g}"
        return f"JPEG artefact removal q{self.quality}"


def _task_from_flags(args: argparse.Namespace) -> Task | None:
    if args.scale is not None:
        if args.scale < 1:
            raise ConfigError(f"--scale must be >= 1, got {args.scale}")
        return Task("sr", scale=args.scale)
    if args.noise is not None:
        if not (args.noise >= 0 and math.isfinite(args.noise)):
            raise ConfigError(f"--noise must be >= 0, got {args.noise}")
        return Task("denoise", noise=args.noise)
    if args.jpeg is not None:
        if not 1 <= args.jpeg <= 100:
            raise ConfigError(f"--jpeg quality must be in 1..100, got {args.jpeg}")
        return Task("jpeg", quality=args.jpeg)
    return None


def _is_weights_path(model: str) -> bool:
    return model.lower().endswith(WEIGHT_SUFFIXES) or Path(model).is_file()


def _load_model(args: argparse.Namespace, flags: Task | None) -> tuple[torch.nn.Module, str, Task]:
    """Load or build the model and reconcile its configuration with the task flags."""
    import agileir  # lazy: the model code is not needed for the bicubic baseline

    from agileir.models import zoo

    spec = args.model
    shipped = zoo.find_weights(spec, flags.scale if flags is not None and flags.kind == "sr" else None)
    if shipped is not None or _is_weights_path(spec):
        path = shipped or Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such weights file")
        model = agileir.load_model(path)
        label = path.stem
    else:
        overrides: dict[str, Any] = {}
        if flags is not None:
            overrides["task"] = flags.kind
            if flags.kind == "sr":
                overrides["scale"] = flags.scale
        try:
            model = agileir.build_model(spec, **overrides)
        except TypeError as exc:
            raise ConfigError(f"cannot build {spec!r}: {exc}") from None
        label = spec
        print(f"agileir: warning: {spec!r} is a preset with random weights; "
              "pass a weights file for meaningful scores", file=sys.stderr)
    cfg = model.config
    kind = getattr(cfg, "task", "sr") or "sr"
    scale = int(getattr(cfg, "scale", 1) or 1)
    if flags is None:
        if kind == "sr":
            task = Task("sr", scale=scale)
        elif kind == "denoise":
            raise ConfigError("this is a denoising model: give --noise SIGMA")
        else:
            raise ConfigError("this is a JPEG model: give --jpeg QUALITY")
    else:
        task = flags
        if kind != task.kind:
            raise ConfigError(f"the model is a {kind!r} model but the options ask for {task.kind!r}")
        if kind == "sr" and scale != task.scale:
            raise ConfigError(f"the model upscales x{scale} but --scale {task.scale} was given")
    return model, label, task


# ----------------------------------------------------------------------------- per image


@dataclass
class Method:
    label: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    peak_mib: float | None = None

    def mean(self, columns: tuple[str, ...]) -> dict[str, float]:
        scores = mean_metrics([{k: r[k] for k in columns} for r in self.rows])
        if self.rows:
            scores["time_s"] = float(np.mean([r["time_s"] for r in self.rows]))
        return scores


@dataclass
class Prepared:
    gt: np.ndarray  # uint8 ground truth as measured
    model_input: torch.Tensor | None  # (1, C, H, W) float
    baseline: np.ndarray  # uint8 baseline output
    baseline_time: float


def _prepare(folder: BenchmarkFolder, sample: Sample, task: Task, in_chans: int | None,
             seed: int) -> Prepared:
    """Ground truth, model input and baseline output for one image."""
    if task.kind == "sr":
        lr, gt = load_sr_pair(folder, sample)
        if in_chans == 1 and lr.ndim == 3:
            lr, gt = rgb_to_gray(lr), rgb_to_gray(gt)
        t0 = time.perf_counter()
        baseline = bicubic_upscale(lr, task.scale)
        t_base = time.perf_counter() - t0
        x = uint8_to_tensor(to_channels(lr, in_chans)) if in_chans else None
        return Prepared(gt, x, baseline, t_base)
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
        return Prepared(gt, x if in_chans else None, tensor_to_uint8(x), t_base)
    t0 = time.perf_counter()
    degraded = jpeg_compress(gt, int(task.quality or 0))
    t_base = time.perf_counter() - t0
    x = uint8_to_tensor(to_channels(degraded, in_chans)) if in_chans else None
    return Prepared(gt, x, degraded, t_base)


def _make_runner(model: torch.nn.Module, args: argparse.Namespace, task: Task,
                 device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    cfg = model.config
    window = int(getattr(cfg, "window_size", 1) or 1)
    tile = args.tile
    overlap = args.tile_overlap
    if tile is not None:
        check_tile(tile, window)
        if overlap is None:
            overlap = min(32, tile // 4)
        if not 0 <= overlap < tile:
            raise ConfigError(f"--tile-overlap must be in [0, {tile}), got {overlap}")
    else:
        overlap = 32 if overlap is None else overlap

    def forward(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if getattr(args, "pad", "model") == "swinir":
            x = swinir_test_pad(x, window)
        y = run_model(model, x, tile=tile, overlap=overlap, scale=task.scale,
                      window_size=window, device=device)
        return y[..., : h * task.scale, : w * task.scale]

    if args.self_ensemble:
        return lambda x: self_ensemble(forward, x)
    return forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mib() -> float | None:
    """Peak resident memory of this process (None where the platform does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


# ----------------------------------------------------------------------------- output


def _fmt(value: float, column: str) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if column.startswith("ssim") else f"{value:.2f}"


def _print_table(methods: list[Method], columns: tuple[str, ...], mem_label: str) -> None:
    head = ["method"] + [HEADERS[c] for c in columns] + ["time/img", mem_label]
    lines = []
    for m in methods:
        means = m.mean(columns)
        cells = [m.label] + [_fmt(means[c], c) for c in columns]
        cells.append(f"{means['time_s'] * 1000:.0f} ms" if m.rows else "-")
        cells.append(f"{m.peak_mib:.0f} MiB" if m.peak_mib is not None else "-")
        lines.append(cells)
    widths = [max(len(str(r[i])) for r in [head] + lines) for i in range(len(head))]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(fmt_row(head))
    print("  ".join("-" * w for w in widths))
    for cells in lines:
        print(fmt_row(cells))


def _write_csv(path: Path, methods: list[Method], columns: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "image", *columns, "time_s"])
        for m in methods:
            for r in m.rows:
                writer.writerow([m.label, r["name"], *(f"{r[c]:.6f}" for c in columns), f"{r['time_s']:.6f}"])
            if m.rows:
                means = m.mean(columns)
                writer.writerow([m.label, "mean", *(f"{means[c]:.6f}" for c in columns),
                                 f"{means['time_s']:.6f}"])


def _write_json(path: Path, info: dict[str, Any], methods: list[Method], columns: tuple[str, ...],
                failed: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(info)
    doc["methods"] = [
        {"name": m.label, "mean": m.mean(columns), "peak_memory_mib": m.peak_mib, "images": m.rows}
        for m in methods
    ]
    doc["failed"] = failed
    path.write_text(json.dumps(doc, indent=2) + "\n")


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; 0 if every image was scored, 1 if some failed."""
    flags = _task_from_flags(args)
    device = resolve_device(args.device)
    model: torch.nn.Module | None = None
    if args.model.lower() == "bicubic":
        if flags is None:
            raise ConfigError("--model bicubic needs --scale S (or --noise / --jpeg for the degraded-input baseline)")
        task, label = flags, "bicubic"
    else:
        model, label, task = _load_model(args, flags)
        model.eval().to(device)
        if args.self_ensemble:
            label += "+"
    if args.tile is not None and model is None:
        print("agileir: warning: --tile has no effect on the bicubic baseline", file=sys.stderr)

    folder = discover(args.data, task.scale if task.kind == "sr" else None, args.lr_variant)
    in_chans = int(getattr(model.config, "in_chans", 3)) if model is not None else None
    runner = _make_runner(model, args, task, device) if model is not None else None

    baseline = Method({"sr": "bicubic", "denoise": "noisy input", "jpeg": "JPEG input"}[task.kind])
    result = Method(label) if model is not None else None
    columns = METRIC_COLUMNS + (PSNRB_COLUMNS if task.kind == "jpeg" else ())
    gray_is_y = in_chans == 1
    failed: list[dict[str, str]] = []
    peak_cuda = 0.0

    print(f"{folder.name}: {task.describe()}, {len(folder.samples)} images "
          f"({folder.lr_source}), crop {task.crop}, device {device.type}", flush=True)
    if folder.extra_lr:
        print(f"agileir: warning: {len(folder.extra_lr)} LR files have no ground truth "
              f"(e.g. {folder.extra_lr[0]})", file=sys.stderr)

    progress = tqdm(folder.samples, desc=folder.name, unit="img", file=sys.stderr, disable=None,
                    dynamic_ncols=True)
    with torch.inference_mode():
        for sample in progress:
            try:
                prep = _prepare(folder, sample, task, in_chans, args.seed)
                base_scores = evaluate_pair(prep.baseline, prep.gt, task.crop, task.kind == "jpeg", gray_is_y)
                out = prep.baseline
                model_row = None
                if runner is not None and prep.model_input is not None:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    _sync(device)
                    t0 = time.perf_counter()
                    y = runner(prep.model_input)
                    _sync(device)
                    elapsed = time.perf_counter() - t0
                    if device.type == "cuda":
                        peak_cuda = max(peak_cuda, torch.cuda.max_memory_allocated(device) / 2**20)
                    out = tensor_to_uint8(y)
                    if out.ndim == 3 and prep.gt.ndim == 3 and out.shape[2] != prep.gt.shape[2]:
                        raise AgileIRError(f"{sample.name}: model returned {out.shape[2]} channels")
                    if out.shape[:2] != prep.gt.shape[:2]:
                        raise AgileIRError(
                            f"{sample.name}: model output {out.shape[1]}x{out.shape[0]} does not match "
                            f"the ground truth {prep.gt.shape[1]}x{prep.gt.shape[0]}")
                    scores = evaluate_pair(out, prep.gt, task.crop, task.kind == "jpeg", gray_is_y)
                    model_row = {"name": sample.name, **scores, "time_s": elapsed}
                if args.save_images is not None:
                    write_image(args.save_images / f"{sample.name}.png", out)
            except (AgileIRError, ValueError) as exc:
                failed.append({"name": sample.name, "error": str(exc)})
                tqdm.write(f"agileir: error: {exc}", file=sys.stderr)
                continue
            baseline.rows.append({"name": sample.name, **base_scores, "time_s": prep.baseline_time})
            if model_row is not None and result is not None:
                result.rows.append(model_row)

    if not baseline.rows:
        raise AgileIRError(f"{folder.root}: none of the {len(folder.samples)} images could be evaluated")

    methods = [baseline] + ([result] if result is not None else [])
    mem_label = "peak mem"
    if result is not None:
        if device.type == "cuda":
            result.peak_mib, mem_label = peak_cuda, "peak CUDA"
        else:
            result.peak_mib, mem_label = _peak_rss_mib(), "peak RSS"
    else:
        baseline.peak_mib, mem_label = _peak_rss_mib(), "peak RSS"
    _print_table(methods, columns, mem_label)
    n_ok = len(baseline.rows)
    if failed:
        print(f"agileir: {len(failed)} of {len(folder.samples)} images failed; scores are over the "
              f"other {n_ok}", file=sys.stderr)

    info = {
        "dataset": folder.name,
        "data": str(folder.root),
        "task": task.kind,
        "scale": task.scale,
        "noise_sigma": task.noise,
        "jpeg_quality": task.quality,
        "model": args.model,
        "lr_source": folder.lr_source,
        "crop_border": task.crop,
        "device": device.type,
        "self_ensemble": bool(args.self_ensemble),
        "tile": args.tile,
        "tile_overlap": (args.tile_overlap if args.tile_overlap is not None else min(32, args.tile // 4))
                        if args.tile is not None else None,
        "seed": args.seed if task.kind == "denoise" else None,
        "padding": "swinir (symmetric, next window multiple + 1)" if getattr(args, "pad", "model") == "swinir"
                   else "model (reflection to the window multiple)",
        "images": n_ok,
        "memory_kind": mem_label,
        "y_channel": "BT.601 16 + 65.481 R + 128.553 G + 24.966 B, float",
    }
    if args.csv is not None:
        _write_csv(args.csv, methods, columns)
    if args.json is not None:
        _write_json(args.json, info, methods, columns, failed)
    return 1 if failed else 0


__all__ = ["register", "run"]
