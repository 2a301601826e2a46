"""``agileir bench``: SwinIR and AgileIR side by side: activation memory, peak memory, step and inference time."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from agileir.errors import AgileIRError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure training memory and speed of presets side by side",
        description="Measure, per model and batch size: activation memory held for backward (deterministic "
                    "census), peak memory of a training step (fresh process), training step time and inference "
                    "time on a 256x256 input (interleaved repetitions, median), the ratios of the second model "
                    "to the first, and a speed table: the machine's dense-GEMM ceiling per precision, each "
                    "figure's FLOPs, achieved GFLOPS and fraction of that ceiling. A model is a preset, optionally "
                    "with ':IMPL' (recompute, eager, chunked, sdpa) and '@PRECISION' (fp32, bf16, int8, auto; int8 "
                    "is inference only), e.g. swinir-s:recompute or agileir-s@bf16.")
    p.add_argument("models", nargs="*", default=["swinir-s", "agileir-s"],
                   help="presets to compare; ratios are second / first (default: swinir-s agileir-s)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="batch sizes (default: 1 4 16)")
    p.add_argument("--patch", type=int, default=64, help="LR training patch size (default %(default)s)")
    p.add_argument("--scale", type=int, default=2, help="upscaling factor of the models (default %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="auto (CUDA if available), cpu or cuda (default %(default)s)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 or bf16 autocast for models without '@PRECISION' (default %(default)s)")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="gradient checkpointing per block (model.grad_checkpoint), for every model")
    p.add_argument("--infer-size", nargs="+", default=["256"], metavar="N|WxH",
                   help="inference inputs: a side (256) or WxH (640x360: a 1280x720 output at x2); several "
                        "allowed (default 256)")
    p.add_argument("--no-train", action="store_true",
                   help="inference and the speed table only (no memory census, peak or training step)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repetitions per figure, the median is reported (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 gives steadier ratios on a busy machine")
    p.add_argument("--no-peak", action="store_true", help="skip the fresh-process peak-memory measurement")
    p.add_argument("--out", type=Path, default=None, help="folder for bench.csv, bench.json and bench.png (default: none, the table is only printed)")
    p.set_defaults(func=run)


# Peak RAM of the default `agileir bench` (swinir-s and agileir-s, LR patch 64, batches 1 4 16,
# CPU fp32) as measured on the project's machine: about 11.8 GB, set by the batch-16 SwinIR
# training step (10,725 MiB for that step alone in a fresh process, docs/performance.md).
# The note below scales it by batch x patch area; it is a warning, not a measurement.
_DEFAULT_BATCH16_GB = 11.8


def memory_note(batches: list[int], patch: int, device: str, models: list[str]) -> str | None:
    """One line about the memory the training census will need, when it runs batch 16 or more.

    Cheap on purpose (no model is built): the measured peak of the default run, scaled by batch
    and patch area; larger presets than the S ones need more.
    """
    batch = max(batches)
    estimate = _DEFAULT_BATCH16_GB * (batch / 16) * (patch / 64) ** 2
    if batch < 16 or estimate < 1:
        return None
    where = "GPU memory" if device.startswith("cuda") else "RAM"
    small = all(m.split(":")[0].split("@")[0].lower() in ("swinir-s", "agileir-s") for m in models)
    size = f"about {estimate:.0f} GB" if small else f"more than {estimate:.0f} GB (larger than the S presets)"
    return (f"agileir: note: the batch-{batch} training steps need {size} of {where} at LR patch {patch}; "
            f"use --batch 1 4 (or a smaller --patch) for a lighter run")


def fused_kernel_state(device: str) -> str | None:
    """"on", or "off (why)", for a CPU run: whether the auto plans ran it (models/attention/fused.py);
    where on, which units GSWA's bf16 cascade uses ("bf16 cascade on amx / avx512_bf16", or "off":
    bf16 keeps the float32 cascade), since bf16 timings differ by that."""
    if device != "cpu":
        return None
    from agileir.models.attention import fused

    state = fused.state()
    if state != "on":
        return state
    engine = fused.cascade_bf16_engine()
    return f"on (bf16 cascade {'on ' + engine if engine else 'off'})"


def run(args: argparse.Namespace) -> int:
    from agileir.engine.benchmark import Variant, format_table, parse_size, ratio_rows, rows_as_dicts, run_benchmark
    from agileir.engine.speed import format_speed_table
    from agileir.fileio import atomic_path, atomic_write_text

    from agileir.runtime import cpu_capabilities, resolve_device

    if len(args.models) < 1:
        raise AgileIRError("name at least one model")
    args.device = str(resolve_device(args.device))  # auto -> cpu/cuda; cuda without CUDA is an error
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [Variant.parse(m, args.scale, args.grad_checkpoint) for m in args.models]
    for v in variants:
        v.build(torch.device("meta"))  # fail fast on unknown presets / options
    try:
        sizes = [parse_size(s) for s in args.infer_size]
    except ValueError as exc:
        raise AgileIRError(f"--infer-size: {exc}") from None
    batches = [] if args.no_train else sorted(set(args.batch))
    note = memory_note(batches, args.patch, args.device, args.models) if batches else None
    if note:
        print(note, file=sys.stderr, flush=True)
    # progress lines go to stderr, so stdout holds only the results (pipe- and file-friendly)
    result = run_benchmark(variants, batches, patch=args.patch, device=args.device,
                           precision=args.precision, infer_sizes=sizes, repeats=args.repeats,
                           warmup=args.warmup, measure_peak=not args.no_peak, threads=args.threads,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
    rows = result.rows
    base, other = args.models[0], args.models[-1]
    kernel = fused_kernel_state(args.device)
    print(f"{args.device} {args.precision}, x{args.scale}, LR patch {args.patch}, checkpointing "
          f"{'on' if args.grad_checkpoint else 'off'}, {torch.get_num_threads()} threads, torch {torch.__version__}"
          + (f", fused CPU attention kernel {kernel}" if kernel else ""))
    if batches:
        print(format_table(rows, base, other))
        print()
    print(format_speed_table(result.speed, result.ceilings, torch.get_num_threads(), result.ceiling_sizes))
    if args.out:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
        speed = [{**asdict(r), "gflops": r.gflops, "fraction": r.fraction} for r in result.speed]
        payload = {"settings": settings, "rows": rows_as_dicts(rows), "ratios": ratio_rows(rows, base, other),
                   "ceilings_gflops": result.ceilings, "ceiling_sizes": result.ceiling_sizes, "speed": speed,
                   "cpu": cpu_capabilities(), "fused_kernel": kernel}
        atomic_write_text(args.out / "bench.json", json.dumps(payload, indent=2))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows_as_dicts(rows)[0]))
        writer.writeheader()
        writer.writerows(rows_as_dicts(rows))
        atomic_write_text(args.out / "bench.csv", buf.getvalue())
        try:
            if batches:  # an inference-only run has no memory or step curves to plot
                with atomic_path(args.out / "bench.png") as tmp:
                    plot(rows, tmp, title=f"{args.device} {args.precision}, LR patch {args.patch}")
        except ImportError:
            print("agileir: note: matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        print(f"wrote {args.out}/bench.json, bench.csv" + (", bench.png" if (args.out / "bench.png").exists() else ""))
    return 0


def plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    models = list(dict.fromkeys(r.model for r in rows))
    for model in models:
        rs = sorted((r for r in rows if r.model == model), key=lambda r: r.batch)
        b = [r.batch for r in rs]
        if all(r.peak_mib is not None for r in rs):
            axes[0].plot(b, [r.peak_mib for r in rs], "o-", label=f"{model} peak")
        axes[0].plot(b, [r.activation_mib for r in rs], "s--", label=f"{model} activations")
        axes[1].plot(b, [r.step_ms for r in rs], "o-", label=model)
    axes[0].set(xlabel="batch size", ylabel="MiB", title="training memory", xscale="log", yscale="log")
    axes[1].set(xlabel="batch size", ylabel="ms", title="training step time", xscale="log", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
