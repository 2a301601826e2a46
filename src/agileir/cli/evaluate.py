"""``agileir test``: score a model (or the baseline alone) on a benchmark folder.

The command only parses, calls :mod:`agileir.evaluation` and prints; the protocol (docs/evaluation.md)
lives in the library, where training validation uses the same functions.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agileir.data.pairs import discover
from agileir.errors import ConfigError
from agileir.evaluation.protocol import Task, model_runner, task_for_model
from agileir.evaluation.classical import CLASSICAL_DENOISERS
from agileir.evaluation.runner import FolderResult, MethodResult, evaluate_folder
from agileir.inference.precision import prepare_precision
from agileir.inference.restorer import parse_tile
from agileir.runtime import INFERENCE_PRECISIONS, MiB, cuda_peak_bytes, peak_rss_bytes, reset_cuda_peak, resolve_device, \
    torch_threads

HEADERS = {"psnr": "PSNR", "ssim": "SSIM", "psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y",
           "psnrb": "PSNR-B", "psnrb_y": "PSNR-B-Y"}
DEVICE_HELP = "auto (CUDA if available), cpu or cuda (default: %(default)s)"


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
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="shipped weights (agileir-s with --scale, or agileir-s_x4; 'agileir models' lists them), "
                        "a weights file (.safetensors, or an official SwinIR .pth), or 'bicubic' for the "
                        "baseline alone")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="benchmark folder of one data set")
    task = p.add_mutually_exclusive_group()
    task.add_argument("--scale", type=int, metavar="S", help="super-resolution scale (default: the model's)")
    task.add_argument("--noise", type=float, metavar="SIGMA",
                      help="Gaussian denoising, sigma in 0-255 units (15, 25, 50)")
    task.add_argument("--jpeg", type=int, metavar="Q", help="JPEG artefact removal at quality Q (10-40)")
    p.add_argument("--random-weights", action="store_true",
                   help="score a preset name with random weights where no shipped weights exist (a smoke test, "
                        "not a result)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 flip/rotation self-ensemble")
    p.add_argument("--tile", default=None, metavar="T",
                   help="T x T input tiles (a multiple of the model window), 'auto' (from free memory) or 0 "
                        "(whole image, the default)")
    p.add_argument("--tile-overlap", type=int, metavar="O",
                   help="overlap of neighbouring tiles in input pixels (default min(32, T/4))")
    p.add_argument("--save-images", type=Path, metavar="DIR", help="write the restored images here (PNG)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write per-image and mean results as JSON")
    p.add_argument("--csv", type=Path, metavar="PATH", help="write per-image and mean results as CSV")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default=None,
                   help="fp32 (default; int8 for int8 weights files), bf16 (autocast), int8 (linear layers quantized, CPU) or "
                        "auto (bf16 where the device has bf16 units); measures what each costs in PSNR")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: torch's default, at most the CPUs this process may use)")
    p.add_argument("--lr-variant", default="auto", metavar="VARIANT",
                   help="'auto' (LR files if present, else generate), 'mirror' or 'replicate' "
                        "(generate from the ground truth with that border), or an LR folder name "
                        "such as LR_bicubic_edsr")
    p.add_argument("--pad", choices=("model", "swinir"), default="model",
                   help="padding to the window multiple: 'model' (the network's own: reflection, only "
                        "the missing rows) or 'swinir' (SwinIR's test script: symmetric, always at least "
                        "one extra row/column); changes the third decimal")
    p.add_argument("--seed", type=int, default=0, help="noise seed, applied per image (default 0)")
    p.add_argument("--classical", choices=CLASSICAL_DENOISERS, default=None,
                   help="with --noise: add a classical denoiser's row on the same noisy inputs, given the true "
                        "sigma (bm3d: pip install 'agileir[baselines]'; nlm: scikit-image's non-local means)")
    p.set_defaults(func=run)


def _requested_task(args: argparse.Namespace) -> Task | None:
    if args.scale is not None:
        return Task("sr", scale=args.scale)
    if args.noise is not None:
        return Task("denoise", noise=args.noise)
    if args.jpeg is not None:
        return Task("jpeg", quality=args.jpeg)
    return None


# ----------------------------------------------------------------------------- output


def _fmt(value: float, column: str) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if column.startswith("ssim") else f"{value:.2f}"


def _print_table(methods: list[MethodResult], columns: tuple[str, ...], mem_label: str) -> None:
    head = ["method"] + [HEADERS[c] for c in columns] + ["time/img", mem_label]
    lines = []
    for m in methods:
        means = m.mean(columns)
        cells = [m.label] + [_fmt(means[c], c) for c in columns]
        cells.append(f"{means['time_s'] * 1000:.0f} ms" if m.rows else "-")
        cells.append(f"{m.peak_mib:.0f} MiB" if m.peak_mib is not None else "-")
        lines.append(cells)
    widths = [max(len(str(r[i])) for r in [head] + lines) for i in range(len(head))]

    def fmt_row(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(fmt_row(head))
    print("  ".join("-" * w for w in widths))
    for cells in lines:
        print(fmt_row(cells))


def _write_csv(path: Path, methods: list[MethodResult], columns: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "image", *columns, "time_s"])
        for m in methods:
            for r in m.rows:
                writer.writerow([m.label, r["name"], *(f"{r[c]:.6f}" for c in columns), f"{r['time_s']:.6f}"])
            if m.rows:
                means = m.mean(columns)
                writer.writerow([m.label, "mean", *(f"{means[c]:.6f}" for c in columns), f"{means['time_s']:.6f}"])


def _write_json(path: Path, info: dict[str, Any], result: FolderResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = result.task.columns
    doc = dict(info)
    doc["methods"] = [{"name": m.label, "mean": m.mean(columns), "peak_memory_mib": m.peak_mib, "images": m.rows}
                      for m in result.methods]
    doc["failed"] = result.failed
    path.write_text(json.dumps(doc, indent=2) + "\n")


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; 0 if every image was scored, 1 if some failed."""
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    with torch_threads(args.threads):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from agileir.models.registry import resolve_model

    requested = _requested_task(args)
    device = resolve_device(args.device)
    tile = parse_tile(args.tile)
    model, precision = None, "fp32"
    if args.model.lower() == "bicubic":
        if requested is None:
            raise ConfigError("--model bicubic needs --scale S (or --noise / --jpeg for the degraded-input baseline)")
        task, label = requested, "bicubic"
        if tile is not None:
            print("agileir: warning: --tile has no effect on the bicubic baseline", file=sys.stderr)
    else:
        model = resolve_model(args.model, args.scale, task=requested.kind if requested else None,
                              random_weights=args.random_weights).to(device)
        task = task_for_model(model.config, scale=args.scale, noise=args.noise, quality=args.jpeg)
        source = model.weights_source
        label = (args.model if source == "random" or args.model == Path(source).stem else Path(source).stem)
        label += "+" if args.self_ensemble else ""
        model, precision = prepare_precision(model, args.precision, device)
        label += f" ({precision})" if precision != "fp32" else ""
        if model.weights_source == "random":
            print(f"agileir: warning: {args.model!r} has random weights: these scores are a smoke test",
                  file=sys.stderr)
    forward = model_runner(model, task, device, tile=tile, overlap=args.tile_overlap, pad=args.pad,
                           ensemble=args.self_ensemble, precision=precision) if model is not None else None

    folder = discover(args.data, task.scale if task.kind == "sr" else None, args.lr_variant)
    in_chans = int(model.config.in_chans) if model is not None else None
    print(f"{folder.name}: {task.describe()}, {len(folder.samples)} images "
          f"({folder.lr_source}), crop {task.crop}, device {device.type}", flush=True)
    if folder.extra_lr:
        print(f"agileir: warning: {len(folder.extra_lr)} LR files have no ground truth "
              f"(e.g. {folder.extra_lr[0]})", file=sys.stderr)

    bar = tqdm(total=len(folder.samples), desc=folder.name, unit="img", file=sys.stderr, disable=None,
               dynamic_ncols=True)
    if device.type == "cuda":
        reset_cuda_peak(device)
    try:
        result = evaluate_folder(folder, task, forward=forward, label=label, in_chans=in_chans, device=device,
                                 seed=args.seed, save_images=args.save_images, on_image=lambda _: bar.update(1),
                                 on_error=lambda msg: tqdm.write(f"agileir: error: {msg}", file=sys.stderr),
                                 classical=args.classical)
    finally:
        bar.close()

    measured = result.model or result.baseline
    if device.type == "cuda" and result.model is not None:
        measured.peak_mib, mem_label = cuda_peak_bytes(device) / MiB, "peak CUDA"
    else:
        measured.peak_mib, mem_label = peak_rss_bytes() / MiB, "peak RSS"
    _print_table(result.methods, task.columns, mem_label)
    n_ok = len(result.baseline.rows)
    if result.failed:
        print(f"agileir: {len(result.failed)} of {len(folder.samples)} images failed; scores are over the "
              f"other {n_ok}", file=sys.stderr)

    overlap = args.tile_overlap if args.tile_overlap is not None else (min(32, tile // 4) if isinstance(tile, int)
                                                                       else None)
    info = {
        "dataset": folder.name, "data": str(folder.root), "task": task.kind, "scale": task.scale,
        "noise_sigma": task.noise, "jpeg_quality": task.quality, "model": args.model,
        "lr_source": folder.lr_source, "crop_border": task.crop, "device": device.type,
        "self_ensemble": bool(args.self_ensemble), "precision": precision if model is not None else None,
        "tile": tile, "tile_overlap": overlap if tile else None,
        "seed": args.seed if task.kind == "denoise" else None,
        "padding": "swinir (symmetric, next window multiple + 1)" if args.pad == "swinir"
                   else "model (reflection to the window multiple)",
        "images": n_ok, "memory_kind": mem_label,
        "y_channel": "BT.601 16 + 65.481 R + 128.553 G + 24.966 B, float",
    }
    if args.csv is not None:
        _write_csv(args.csv, result.methods, task.columns)
    if args.json is not None:
        _write_json(args.json, info, result)
    return 1 if result.failed else 0


__all__ = ["register", "run"]
