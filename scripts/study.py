"""Equal-budget study: AgileIR-S against SwinIR-S, same seeds, data order and recipe (docs/study.md).

Each seed trains both arms (configs/study/*.yaml, x2, full width and depth, from scratch). The
two runs of a seed go side by side, one compute thread each, so that both see the same machine
load and their logged training clocks compare. Then every final model is scored on Set5, Set14
and B100 (none is in the training pool) with the evaluation protocol of `agileir test`, and so is
the slower arm's checkpoint at the faster arm's training time (the equal-time comparison).

    python scripts/study.py                          # train (or resume) all, score, report
    python scripts/study.py --phase report           # only rebuild the table and plot from the runs
    python scripts/study.py --seeds 0 --iterations 300 --output runs/study-repeat   # a repeat

The data order depends on the seed alone (agileir.data.datasets: per-sample seeds), so seed s of
both arms sees the same patches in the same order; model initialisation differs by construction.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = {"agileir-s": REPO / "configs" / "study" / "agileir-s_x2.yaml",
        "swinir-s": REPO / "configs" / "study" / "swinir-s_x2.yaml"}
SETS = {"Set5": REPO / "src" / "agileir" / "assets" / "testdata" / "Set5",
        "Set14": REPO.parent / "shared" / "data" / "benchmarks" / "Set14",
        "B100": REPO.parent / "shared" / "data" / "benchmarks" / "B100"}
EQUAL_TIME_SETS = ("Set5", "Set14")  # for the equal-time checkpoints: B100 (100 images) is the costly set on a CPU


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_seed{seed}"


def train_phase(args: argparse.Namespace) -> None:
    """Train the two arms of each seed side by side; a cut run resumes from its last checkpoint."""
    for seed in args.seeds:
        procs = []
        for arm in args.arms:
            cmd = [sys.executable, "-m", "agileir", "train", "--config", str(ARMS[arm]), "--resume",
                   f"name={run_name(arm, seed)}", f"output_dir={args.output}", f"seed={seed}",
                   f"train.iterations={args.iterations}"]
            log = open(args.output / f"{run_name(arm, seed)}.log", "a")
            procs.append((arm, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)))
            if not args.parallel:
                procs[-1][1].wait()
        for arm, proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"study: {run_name(arm, seed)} failed (see {args.output}/{run_name(arm, seed)}.log)")


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def score(weights: Path, out: Path, sets: tuple[str, ...] = tuple(SETS)) -> dict[str, dict[str, float]]:
    """PSNR-Y / SSIM-Y of one weights file on ``sets`` (cached in ``out``)."""
    if out.is_file():
        return json.loads(out.read_text())
    result = {}
    for name in sets:
        folder = SETS[name]
        tmp = out.with_suffix(f".{name}.json")
        subprocess.run([sys.executable, "-m", "agileir", "test", "--model", str(weights), "--data", str(folder),
                        "--threads", "1", "--device", "cpu", "--json", str(tmp)], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
        doc = json.loads(tmp.read_text())
        result[name] = doc_means(doc)
        tmp.unlink()
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def doc_means(doc: dict) -> dict[str, float]:
    """The model's mean PSNR-Y / SSIM-Y in an ``agileir test --json`` document."""
    for method in doc["methods"]:
        if method["name"] != "bicubic":
            return {"psnr_y": method["mean"]["psnr_y"], "ssim_y": method["mean"]["ssim_y"]}
    raise ValueError("no model row in the test output")



def logged_clock(run: Path, iteration: int) -> float:
    """Training seconds the run's train log records at ``iteration``."""
    for row in read_csv(run / "train_log.csv"):
        if int(row["iteration"]) == iteration:
            return row["train_s"]
    raise ValueError(f"{run}: iteration {iteration} is not in train_log.csv")


def equal_time_point(runs: dict[str, Path]) -> tuple[float, dict[str, int]]:
    """The faster arm's total training time T, and for each arm the last checkpoint at or before T."""
    finals = {arm: read_csv(run / "train_log.csv")[-1] for arm, run in runs.items()}
    budget = min(row["train_s"] for row in finals.values())
    points = {}
    for arm, run in runs.items():
        iters = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("iter_*.safetensors"))
        within = [i for i in iters if logged_clock(run, i) <= budget + 1e-6]
        if not within:
            raise SystemExit(f"study: {run.name} has no checkpoint within {budget:.0f} s of training")
        points[arm] = max(within)
    return budget, points


def score_phase(args: argparse.Namespace) -> None:
    """Score every final model on every set, and each arm's checkpoint at the seed's equal-time
    point on EQUAL_TIME_SETS (two at a time: one compute thread each)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for seed in args.seeds:
        runs = {arm: args.output / run_name(arm, seed) for arm in args.arms}
        jobs += [(run / "model.safetensors", run / "scores_final.json") for run in runs.values()]
        if len(runs) > 1:
            _, points = equal_time_point(runs)
            jobs += [(runs[arm] / "checkpoints" / f"iter_{it:07d}.safetensors", runs[arm] / f"scores_iter{it}.json",
                      EQUAL_TIME_SETS) for arm, it in points.items() if it != args.iterations]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda job: score(*job), jobs))


def scores_at(run: Path, iteration: int, final_iteration: int) -> dict:
    name = "scores_final.json" if iteration == final_iteration else f"scores_iter{iteration}.json"
    return json.loads((run / name).read_text())


def mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
    return m, sd


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_difference(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean and 95% t interval of the per-seed difference a - b (seeds pair the data order)."""
    d = [x - y for x, y in zip(a, b)]
    m, sd = mean_sd(d)
    half = T975.get(len(d) - 1, 1.96) * sd / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": m, "sd": sd, "ci95_low": m - half, "ci95_high": m + half, "n": len(d)}


def report_phase(args: argparse.Namespace) -> None:
    """Print the tables (equal iterations, equal time) and write the results JSON and plot."""
    arms, seeds = args.arms, args.seeds
    runs = {(arm, s): args.output / run_name(arm, s) for arm in arms for s in seeds}
    final = {k: json.loads((r / "scores_final.json").read_text()) for k, r in runs.items()}
    doc: dict = {"iterations": args.iterations, "seeds": seeds, "arms": arms, "sets": list(SETS),
                 "equal_iterations": {}, "equal_time": {}, "runs": {}}
    for key, run in runs.items():
        log = read_csv(run / "train_log.csv")
        doc["runs"][run_name(*key)] = {"train_s": log[-1]["train_s"], "train_cpu_s": log[-1]["train_cpu_s"],
                                       "it_per_s": args.iterations / log[-1]["train_s"], "final": final[key]}
    timed: dict = {}
    if len(arms) == 2:
        for s in seeds:
            budget, points = equal_time_point({arm: runs[(arm, s)] for arm in arms})
            timed[s] = {"budget_s": budget, "iterations": points,
                        "scores": {arm: scores_at(runs[(arm, s)], it, args.iterations)
                                   for arm, it in points.items()}}
        doc["equal_time_points"] = {str(s): {"budget_s": t["budget_s"], "iterations": t["iterations"]}
                                    for s, t in timed.items()}
    for label, table in (("equal_iterations", {s: final_by_arm(final, arms, s) for s in seeds}),
                         ("equal_time", {s: t["scores"] for s, t in timed.items()})):
        if not table:
            continue
        names = [n for n in SETS if all(n in table[s][arm] for s in table for arm in arms)]
        print(f"\n{label.replace('_', ' ')} ({args.iterations} iterations; mean ± sd over seeds {seeds})")
        print("| arm | " + " | ".join(f"{n} PSNR-Y | {n} SSIM-Y" for n in names) + " |")
        print("|---|" + "---|---|" * len(names))
        for arm in arms:
            cells, entry = [], {}
            for n in names:
                for metric, digits in (("psnr_y", 3), ("ssim_y", 4)):
                    m, sd = mean_sd([table[s][arm][n][metric] for s in table])
                    entry[f"{n}_{metric}"] = {"mean": m, "sd": sd}
                    cells.append(f"{m:.{digits}f} ± {sd:.{digits}f}")
            doc[label][arm] = entry
            print(f"| {arm} | " + " | ".join(cells) + " |")
        if len(arms) == 2:
            a, b = arms
            diffs = {n: paired_difference([table[s][a][n]["psnr_y"] for s in table],
                                          [table[s][b][n]["psnr_y"] for s in table]) for n in names}
            doc[label]["difference_psnr_y"] = diffs
            print(f"| {a} - {b} (PSNR-Y, 95% CI) | " + " | ".join(
                f"{d['mean']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}] | " for d in diffs.values()) + " |")
    for key, r in doc["runs"].items():
        print(f"{key}: {r['train_s']:.0f} s training ({r['it_per_s']:.3f} it/s), {r['train_cpu_s']:.0f} CPU s")
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
        plot(runs, arms, seeds, args.report / "study.png")


def final_by_arm(final: dict, arms: list[str], seed: int) -> dict:
    return {arm: final[(arm, seed)] for arm in arms}


def plot(runs: dict, arms: list[str], seeds: list[int], path: Path) -> None:
    """Set5 PSNR-Y (validation curve) against iterations and against training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colours = dict(zip(arms, ("tab:red", "tab:blue")))
    for (arm, s), run in runs.items():
        rows = read_csv(run / "val_log.csv")
        label = arm if s == seeds[0] else None
        axes[0].plot([r["iteration"] for r in rows], [r["psnr_y"] for r in rows], color=colours[arm], label=label,
                     marker="o", ms=3, lw=1)
        axes[1].plot([r["train_s"] / 60 for r in rows], [r["psnr_y"] for r in rows], color=colours[arm],
                     label=label, marker="o", ms=3, lw=1)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("training time (min, one CPU thread, both arms side by side)")
    axes[0].set_ylabel("Set5 x2 PSNR-Y (dB), EMA weights")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    lo = min(r["psnr_y"] for run in runs.values() for r in read_csv(run / "val_log.csv")[1:])
    axes[0].set_ylim(bottom=lo - 0.3)
    fig.suptitle(f"AgileIR-S vs SwinIR-S, x2 from scratch, seeds {seeds}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["all", "train", "score", "report"], default="all")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--sequential", dest="parallel", action="store_false",
                        help="train the arms of a seed one after the other (default: side by side)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "study")
    parser.add_argument("--report", type=Path, default=None, help="write the results JSON and plot here")
    args = parser.parse_args(argv)
    args.output = args.output.resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    if args.phase in ("all", "train"):
        train_phase(args)
    if args.phase in ("all", "score"):
        score_phase(args)
    if args.phase in ("all", "report"):
        report_phase(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
