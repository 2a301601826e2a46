"""``agileir train``: train SwinIR / AgileIR from a YAML configuration (see docs/training.md).

``agileir train --config configs/agileir-s_x2.yaml train.iterations=200 model.key_dim=4``
applies dotted ``key=value`` overrides, writes the resolved configuration to
``runs/<name>/config.yaml`` and trains; ``torchrun --nproc_per_node N -m agileir train ...``
runs the same on N processes (DDP).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML configuration (single process, or DDP under torchrun)",
        description=(
            "Train SwinIR / AgileIR. CONFIG is a YAML file (see configs/); KEY=VALUE arguments "
            "override its options with dotted keys, e.g. train.iterations=200 model.preset=agileir-s "
            "data.batch_size=8. The resolved configuration is written to <output_dir>/<name>/config.yaml. "
            "Multi-GPU / multi-node: torchrun --nproc_per_node N -m agileir train --config CONFIG."
        ),
    )
    p.add_argument("--config", type=Path, metavar="CONFIG", help="YAML configuration file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.iterations=200")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its latest checkpoint (a fresh start when it has none)")
    p.add_argument("--resume-from", metavar="CHECKPOINT", default=None,
                   help="continue from CHECKPOINT: a run folder, its latest.json or an iter_*.state.pth file")
    p.add_argument("--stop-at", type=int, default=None, metavar="ITER",
                   help="end this session after iteration ITER with a checkpoint (continue later with --resume)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the configuration, train, and print the final validation against the baseline."""
    from agileir.engine.builders import task_of
    from agileir.engine.config import dump_config, load_config
    from agileir.engine.train import train
    from agileir.errors import ConfigError

    if args.config is None and not args.print_config and not any(o.startswith("data.") for o in args.overrides):
        raise ConfigError("give --config FILE (e.g. configs/quickstart.yaml), or the data with "
                          "data.train.hr_dir=FOLDER overrides")
    config = load_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(dump_config(config))
        return 0
    resume = args.resume_from or ("auto" if args.resume else None)
    result = train(config, resume=resume, stop_at=args.stop_at)
    if not result.is_main:
        return 0
    if result.final_scores is not None and result.baseline_scores is not None:
        m, b = result.final_scores, result.baseline_scores
        base_name = "bicubic" if task_of(config)[0] == "sr" else "degraded input"
        print(f"{result.run_dir.name}: iteration {result.iteration}, {result.elapsed_s / 60:.1f} min of training")
        print(f"final PSNR-Y {m['psnr_y']:.2f} dB / SSIM-Y {m['ssim_y']:.4f}  vs {base_name} "
              f"{b['psnr_y']:.2f} dB / {b['ssim_y']:.4f}  ({m['psnr_y'] - b['psnr_y']:+.2f} dB)")
    elif result.iteration < int(config["train"]["iterations"]):
        print(f"{result.run_dir.name}: stopped at iteration {result.iteration}; "
              f"continue with --resume ({result.last_checkpoint})")
    if result.weights is not None:
        print(f"weights: {result.weights}")
    return 0


__all__ = ["register", "run"]
