"""Score the shipped denoising and JPEG models with their baselines, and print the docs/tasks.md tables.

    python scripts/task_tables.py            # runs what is missing (agileir test, one thread each), then prints
    python scripts/task_tables.py --print    # only prints, from the JSON files already there
    python scripts/task_tables.py --rescore denoise   # new weights: reruns only the model rows

One ``agileir test --json`` per set and level under ``runs/tasks/``: colour denoising at sigma
15/25/50 beside CBM3D (``--classical bm3d``, given the true sigma) and the noisy input; colour JPEG
at quality 10/20/30/40 beside the compressed input. Set5 and Set14 are disjoint from the training
pool (SunHays80, McMaster, B100).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

OUT = Path("runs/tasks")
SETS = ("Set14", "Set5")
DATA = "../shared/data/benchmarks"
LEVELS = {"denoise": (15, 25, 50), "jpeg": (10, 20, 30, 40)}
BASELINES = ("noisy input", "bm3d", "JPEG input")  # rows that do not depend on the weights


def result_path(task: str, bench: str, level: int) -> Path:
    return OUT / f"{task}-{bench}-{level}.json"


def run_missing() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for task, levels in LEVELS.items():
        for bench in SETS:
            for level in levels:
                path = result_path(task, bench, level)
                if path.exists():
                    continue
                extra = ["--noise", str(level), "--classical", "bm3d"] if task == "denoise" else ["--jpeg", str(level)]
                subprocess.run(["agileir", "test", "--model", f"agileir-s_{task}", "--data", f"{DATA}/{bench}",
                                *extra, "--threads", "1", "--json", str(path)], check=True)


def _is_baseline(name: str) -> bool:
    """Baseline rows may carry a note after their name: "bm3d (true sigma)"."""
    return name.split(" (")[0] in BASELINES


def rescore(task: str, jobs: int = 2) -> None:
    """Rerun only the model of ``task`` in every existing cell and splice its row in, keeping the
    baseline rows (the noisy or compressed input and CBM3D do not depend on the weights, and CBM3D
    is most of the time). ``jobs`` cells run at once, one thread each."""
    cells = [(bench, level) for bench in SETS for level in LEVELS[task] if result_path(task, bench, level).exists()]
    flag = "--noise" if task == "denoise" else "--jpeg"
    fresh = {cell: OUT / f"rescore-{task}-{cell[0]}-{cell[1]}.json" for cell in cells}
    running: list[subprocess.Popen] = []
    failed = 0
    for (bench, level), path in fresh.items():
        while len(running) >= jobs:
            failed += running.pop(0).wait() != 0
        running.append(subprocess.Popen(["agileir", "test", "--model", f"agileir-s_{task}", "--data",
                                         f"{DATA}/{bench}", flag, str(level), "--threads", "1", "--json", str(path)],
                                        stdout=subprocess.DEVNULL))
    failed += sum(p.wait() != 0 for p in running)
    if failed:
        raise SystemExit(f"{failed} rescore run(s) failed; runs/tasks is unchanged")
    for cell, path in fresh.items():
        new = json.loads(path.read_text())
        model = next(m for m in new["methods"] if not _is_baseline(m["name"]))
        target = result_path(task, *cell)
        doc = json.loads(target.read_text())
        doc["methods"] = [m for m in doc["methods"] if _is_baseline(m["name"])] + [model]
        target.write_text(json.dumps(doc, indent=2) + "\n")
        path.unlink()


def _means(task: str, bench: str, level: int, baselines: tuple[str, ...]) -> tuple[list[dict], dict]:
    """The baselines' mean scores (in order) and the model's, from one ``agileir test --json``."""
    doc = json.loads(result_path(task, bench, level).read_text())
    means = {m["name"]: m["mean"] for m in doc["methods"]}
    base = [next(v for k, v in means.items() if k.split(" (")[0] == b) for b in baselines]
    model = next(v for k, v in means.items() if not _is_baseline(k))
    return base, model


def print_tables() -> None:
    print("Colour denoising, PSNR (RGB) / SSIM (RGB), the published protocol (seed 0 per image, no clipping):\n")
    print("| set | sigma | noisy input | CBM3D | agileir-s_denoise | gain over CBM3D |")
    print("|---|---|---|---|---|---|")
    for bench in SETS:
        for level in LEVELS["denoise"]:
            (noisy, bm3d), model = _means("denoise", bench, level, ("noisy input", "bm3d"))
            print(f"| {bench} | {level} | {noisy['psnr']:.2f} / {noisy['ssim']:.4f} | {bm3d['psnr']:.2f} / "
                  f"{bm3d['ssim']:.4f} | {model['psnr']:.2f} / {model['ssim']:.4f} | {model['psnr'] - bm3d['psnr']:+.2f} dB |")
    print("\nColour JPEG artefact removal, on Y (as SwinIR reports): PSNR-Y / SSIM-Y / PSNR-B-Y:\n")
    print("| set | quality | JPEG input | agileir-s_jpeg | PSNR-B gain |")
    print("|---|---|---|---|---|")
    for bench in SETS:
        for level in LEVELS["jpeg"]:
            (base,), model = _means("jpeg", bench, level, ("JPEG input",))
            cell = lambda v: f"{v['psnr_y']:.2f} / {v['ssim_y']:.4f} / {v['psnrb_y']:.2f}"  # noqa: E731
            print(f"| {bench} | {level} | {cell(base)} | {cell(model)} | {model['psnrb_y'] - base['psnrb_y']:+.2f} dB |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="only print the tables from runs/tasks/*.json")
    ap.add_argument("--rescore", choices=tuple(LEVELS), help="rerun only this task's model rows (new weights)")
    ap.add_argument("--jobs", type=int, default=2, help="--rescore: cells run at once, one thread each")
    args = ap.parse_args()
    if args.rescore:
        rescore(args.rescore, args.jobs)
    elif not args.print:
        run_missing()
    print_tables()


if __name__ == "__main__":
    main()
