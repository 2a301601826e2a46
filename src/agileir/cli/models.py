"""``agileir models``: the weights shipped inside the package, what each restores and how well.

Why: ``--model`` takes a shipped name, and a user needs to see which names exist, at which
scale, and what they score, without opening docs/weights.md.
"""

from __future__ import annotations

import argparse
import json

BENCHMARKS = ("Set5", "Set14")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped weights (task, scale, Set5/Set14 scores)",
                       description="List the weights shipped with agileir: name (for --model), task, scale, "
                                   "architecture and Set5 / Set14 PSNR-Y / SSIM-Y measured with 'agileir test'.")
    p.add_argument("--json", action="store_true", help="print the listing as JSON instead of a table")
    p.set_defaults(func=run)


def _score(info, bench: str) -> str:
    if bench not in info.scores:
        return "n/a"
    psnr, ssim = info.scores[bench]
    return f"{psnr:.2f} / {ssim:.4f}"


def run(args: argparse.Namespace) -> int:
    from agileir.models.zoo import shipped_info

    infos = shipped_info()
    if args.json:
        print(json.dumps([{"name": i.name, "task": i.task, "scale": i.scale, "preset": i.preset,
                           "attention": i.attention, "training": i.training, "level": i.level or None,
                           "scores": {b: {"psnr_y": s[0], "ssim_y": s[1]} for b, s in i.scores.items()}}
                          for i in infos], indent=2))
        return 0
    if not infos:
        print("no weights are shipped with this installation")
        return 0
    header = ("name", "task", "scale", "architecture", *(f"{b} PSNR-Y / SSIM-Y" for b in BENCHMARKS))
    rows = [(i.name, i.task, f"x{i.scale}", f"{i.preset} ({i.attention})", *(_score(i, b) for b in BENCHMARKS))
            for i in infos]
    widths = [max(len(r[k]) for r in (header, *rows)) for k in range(len(header))]
    for r in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\nuse: agileir upscale IMAGE --model NAME, or a preset name with --scale (--model agileir-s --scale 4); "
          "agileir restore IMAGE --task denoise|jpeg")
    print("scores: PSNR-Y (dB) / SSIM-Y with the 'agileir test' protocol (border = scale); see docs/weights.md")
    for i in infos:
        if i.level:
            if i.task == "sr":  # a real-world model, scored on degraded inputs
                print(f"  {i.name}: on {i.level} (docs/weights.md)")
            else:
                print(f"  {i.name}: at {i.level} (every level: docs/tasks.md)")
    return 0


__all__ = ["register", "run"]
