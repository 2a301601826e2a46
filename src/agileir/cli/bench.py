"""``agileir bench``: SwinIR and AgileIR side by side: activation memory, peak memory, step and inference time."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import torch

from agileir.errors import AgileIRError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure training memory and speed of presets side by side",
        description="Measure, per model and batch size: activation memory held for backward (deterministic "
                    "census), peak memory of a training step (fresh process), training step time and inference "
                    "time on a 256x256 input (interleaved repetitions, median), and the ratios of the second model "
                    "to the first. A model is a preset, optionally with ':IMPL' (eager, lean, fast), e.g. "
                    "swinir-s:lean.")
    p.add_argument("models", nargs="*", default=["swinir-s", "agileir-s"],
                   help="presets to compare; ratios are second / first (default: swinir-s agileir-s)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="batch sizes (default: 1 4 16)")
    p.add_argument("--patch", type=int, default=64, help="LR training patch size (default 64)")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--checkpoint", action="store_true", help="gradient checkpointing per block, for every model")
    p.add_argument("--infer-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 gives steadier ratios on a busy machine")
    p.add_argument("--no-peak", action="store_true", help="skip the fresh-process peak-memory measurement")
    p.add_argument("--out", type=Path, default=None, help="folder for bench.csv, bench.json and bench.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agileir.engine.benchmark import Variant, format_table, ratio_rows, rows_as_dicts, run_benchmark
    from agileir.fileio import atomic_path, atomic_write_text

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise AgileIRError("--device cuda was asked for but torch sees no CUDA device")
    if len(args.models) < 1:
        raise AgileIRError("name at least one model")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [Variant.parse(m, args.scale, args.checkpoint) for m in args.models]
    for v in variants:
        v.build(torch.device("meta"))  # fail fast on unknown presets / options
    rows = run_benchmark(variants, sorted(set(args.batch)), patch=args.patch, device=args.device,
                         precision=args.precision, infer_size=args.infer_size, repeats=args.repeats,
                         warmup=args.warmup, measure_peak=not args.no_peak, threads=args.threads)
    base, other = args.models[0], args.models[-1]
    print()
    print(f"{args.device} {args.precision}, x{args.scale}, LR patch {args.patch}, checkpointing "
          f"{'on' if args.checkpoint else 'off'}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(format_table(rows, base, other))
    if args.out:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
        payload = {"settings": settings, "rows": rows_as_dicts(rows), "ratios": ratio_rows(rows, base, other)}
        atomic_write_text(args.out / "bench.json", json.dumps(payload, indent=2))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows_as_dicts(rows)[0]))
        writer.writeheader()
        writer.writerows(rows_as_dicts(rows))
        atomic_write_text(args.out / "bench.csv", buf.getvalue())
        try:
            with atomic_path(args.out / "bench.png") as tmp:
                plot(rows, tmp, title=f"{args.device} {args.precision}, LR patch {args.patch}")
        except ImportError:
            print("(matplotlib is not installed: no plot; pip install 'agileir[bench]')")
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
