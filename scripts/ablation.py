"""Ablation of the GSWA options the AgileIR paper leaves open (docs/ablation.md).

Every variant trains the quickstart setting (configs/quickstart.yaml: agileir-s reduced to
2x2 blocks, here at agileir-s's full width of 60 channels so that key_dim 8 < C/G = 10; 12
shipped B100 images, x2) with the same seed, data order and short budget (600 iterations), and
is scored on Set5 x2 (PSNR-Y / SSIM-Y, the evaluation protocol). The default variant is also run
with extra seeds to show how large seed-to-seed noise is at this budget.

    python scripts/ablation.py                       # the table in docs/ablation.md
    python scripts/ablation.py --variants dwconv0 dwconv5 key_dim16 --seeds 1 2   # the repeats
    python scripts/ablation.py --iterations 300 --variants default dwconv0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# one option changed at a time from the preset defaults (dwconv 3, relu, key_dim 8, no zero init)
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "dwconv0": ["model.dwconv_kernel=0"],
    "dwconv5": ["model.dwconv_kernel=5"],
    "identity": ["model.gswa_activation=identity"],
    "key_dim4": ["model.key_dim=4"],
    "key_dim16": ["model.key_dim=16"],
    "zero_init_proj": ["model.zero_init_proj=true"],
}
BASE = ["model.embed_dim=60", "model.key_dim=8", "model.dwconv_kernel=3", "model.gswa_activation=relu",
        "model.zero_init_proj=false", "model.qkv_norm=false"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="seeds for every variant")
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=[1, 2],
                        help="additional seeds for the default variant (noise estimate)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "ablation")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    args = parser.parse_args(argv)

    from agileir.engine.train import load_config, train

    jobs = [(v, s) for s in args.seeds for v in args.variants]
    jobs += [("default", s) for s in args.extra_seeds if "default" in args.variants and s not in args.seeds]
    rows = []
    for variant, seed in jobs:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        name = f"{variant}_seed{seed}"
        overrides = BASE + VARIANTS[variant] + [
            f"name={name}", f"output_dir={args.output}", f"seed={seed}", "overwrite=true",
            f"train.iterations={args.iterations}", f"train.val_every={args.iterations}",
            f"train.checkpoint_every={args.iterations}", "log.progress=false", "log.tensorboard=false"]
        config = load_config(args.config, overrides)
        t0 = time.perf_counter()
        result = train(config)
        elapsed = time.perf_counter() - t0
        scores = result.final_scores or {}
        n_params = sum(p.numel() for p in __import__("agileir").load_model(result.weights).parameters())
        row = {"variant": variant, "seed": seed, "overrides": VARIANTS[variant], "psnr_y": scores.get("psnr_y"),
               "ssim_y": scores.get("ssim_y"), "final_loss": result.losses[-1] if result.losses else None,
               "params": n_params, "minutes": elapsed / 60}
        rows.append(row)
        print(json.dumps(row), flush=True)

    base = result.baseline_scores or {}
    print(f"\nSet5 x2, {args.iterations} iterations; bicubic PSNR-Y {base.get('psnr_y', float('nan')):.2f} dB")
    print("| variant | seed | params | PSNR-Y (dB) | SSIM-Y | minutes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['params']:,} | {r['psnr_y']:.3f} | {r['ssim_y']:.4f} | "
              f"{r['minutes']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"iterations": args.iterations, "bicubic": base, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
