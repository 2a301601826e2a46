"""``agileir compare``: build SwinIR and AgileIR side by side and print how they compare."""

from __future__ import annotations

import argparse

import torch

from agileir.engine.speed import median_times
from agileir.models.presets import build_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="build two presets side by side and compare size, compute and memory",
                       description="Build models (random weights) and print parameters, multiply-adds for a "
                                   "1280x720 output, activation memory held for backward on one training patch "
                                   "(each preset's default training path: lean recompute for AgileIR), and CPU "
                                   "inference time. Runs on the CPU.")
    p.add_argument("models", nargs="*", default=["swinir-s", "agileir-s"],
                   help="presets; ratios are second / first (default: swinir-s agileir-s)")
    p.add_argument("--scale", type=int, default=2, help="upscaling factor of the models (default %(default)s)")
    p.add_argument("--patch", type=int, default=64,
                   help="LR training patch for the memory census (default %(default)s)")
    p.add_argument("--infer-size", type=int, default=96,
                   help="side of the square input for the CPU inference timing (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repetitions after one warm-up, the median is printed (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agileir.engine.memory import saved_activation_bytes
    from agileir.models.complexity import count_parameters, multiply_adds

    torch.manual_seed(0)
    rows = []
    for name in args.models:
        model = build_model(name, scale=args.scale)
        macs = multiply_adds(model)
        model.train()
        x = torch.rand(1, model.config.in_chans, args.patch, args.patch)
        out, report = saved_activation_bytes(model, x, exclude=model)
        out.mean().backward()  # the graph is real: it trains
        model.eval()
        xi = torch.rand(1, model.config.in_chans, args.infer_size, args.infer_size)
        with torch.no_grad():
            seconds = median_times({name: lambda: model(xi)}, args.repeats, 1, torch.device("cpu"))[name]
        rows.append((name, model.config.attention, count_parameters(model), macs["total"] / 1e9,
                     report.total_bytes / 2 ** 20, seconds * 1e3))
    header = ("model", "attention", "params", "GMACs@1280x720", f"act. MiB/{args.patch}px patch",
              f"infer ms@{args.infer_size}px")
    widths = [max(len(header[i]), 12) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        cells = (r[0], r[1], f"{r[2]:,}", f"{r[3]:.1f}", f"{r[4]:.1f}", f"{r[5]:.0f}")
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    if len(rows) >= 2:
        a, b = rows[0], rows[1]
        print(f"\n{b[0]} / {a[0]}: params {b[2] / a[2]:.2f}x, MACs {b[3] / a[3]:.2f}x, "
              f"activation memory {b[4] / a[4]:.2f}x, inference time {b[5] / a[5]:.2f}x")
    print(f"(x{args.scale}, random weights, CPU fp32, {torch.get_num_threads()} threads; activation memory is the "
          "deterministic census of tensors autograd keeps for backward, parameters excluded)")
    return 0
