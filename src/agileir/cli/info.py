"""``agileir info MODEL``: configuration, parameter counts and multiply-adds of a model."""

from __future__ import annotations

import argparse

from agileir.models.registry import resolve_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's configuration, parameters and multiply-adds",
                       description="Show a preset's or a weights file's configuration, parameter count "
                                   "(with and without relative-position bias tables) and multiply-adds "
                                   "for one 1280x720 output.")
    p.add_argument("model", help="preset name (e.g. agileir-s) or weights file (.safetensors / official .pth)")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor for a preset (default: the preset's)")
    p.add_argument("--task", choices=("sr", "denoise", "jpeg"), default=None, help="task for a preset")
    p.add_argument("--output-size", default="1280x720", metavar="WxH", help="output size for multiply-adds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agileir.models.complexity import count_parameters, multiply_adds

    # the architecture is what is shown: a preset without shipped weights is built untrained
    model = resolve_model(args.model, scale=args.scale, task=args.task, random_weights=True)
    width, height = (int(v) for v in args.output_size.lower().split("x"))
    cfg = model.config
    print(f"model            {cfg.name or args.model}")
    for key, value in cfg.to_dict().items():
        if key == "name" or (not cfg.is_gswa and key in ("key_dim", "dwconv_kernel", "gswa_activation",
                                                          "qkv_norm", "zero_init_proj")):
            continue
        print(f"{key:<16} {value}")
    print(f"parameters       {count_parameters(model):,} ({count_parameters(model, False):,} without bias tables)")
    macs = multiply_adds(model, height, width)
    print(f"multiply-adds    {macs['total'] / 1e9:.1f} G for a {width}x{height} output "
          f"({macs['layers'] / 1e9:.1f} G in conv/linear layers, {macs['attention'] / 1e9:.1f} G in attention)")
    return 0
