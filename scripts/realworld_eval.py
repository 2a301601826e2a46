"""The real-world models' table: Set5 and Set14 degraded with held-out seeds, three methods.

    python scripts/realworld_eval.py [--scales 4 2] [--seed 0] [--out runs/realeval]

For each scale, ``agileir degrade`` writes Set5 and Set14 degraded by the real-world model
(seed 0 and each file's name: never among training's (seed, step, rank) draws), then
``agileir test --lr-variant LR_realworld`` scores bicubic, the bicubic-trained shipped model and
the real-world shipped model on the same inputs. Prints the markdown table of docs/weights.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = {"Set5": REPO / "src" / "agileir" / "assets" / "testdata" / "Set5",
        "Set14": REPO.parent / "shared" / "data" / "benchmarks" / "Set14"}


def agileir(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "agileir", *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[4, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "realeval")
    args = ap.parse_args()
    print("| scale | method | " + " | ".join(f"{s} PSNR-Y / SSIM-Y" for s in SETS) + " |")
    print("|---|---|" + "---|" * len(SETS))
    for scale in args.scales:
        cells: dict[str, dict[str, str]] = {}
        for name, src in SETS.items():
            folder = args.out / f"{name}-x{scale}"
            if not (folder / "degradation.json").is_file():
                agileir("degrade", str(src), str(folder), "--scale", str(scale), "--seed", str(args.seed))
            for model in (f"agileir-s_x{scale}", f"agileir-s-real_x{scale}"):
                result = folder / f"{model}.json"
                if not result.is_file():
                    agileir("test", "--model", model, "--data", str(folder), "--lr-variant", "LR_realworld",
                            "--threads", args.threads, "--device", "cpu", "--json", str(result))
                for method in json.loads(result.read_text())["methods"]:
                    label = "bicubic" if method["name"] == "bicubic" else model
                    cells.setdefault(label, {})[name] = f"{method['mean']['psnr_y']:.2f} / {method['mean']['ssim_y']:.4f}"
        for label, by_set in cells.items():
            print(f"| x{scale} | {label} | " + " | ".join(by_set[n] for n in SETS) + " |", flush=True)


if __name__ == "__main__":
    main()
