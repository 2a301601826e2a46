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


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_seed{seed}"


def train_runs(args: argparse.Namespace, jobs: list[tuple[str, str, int, int]]) -> None:
    """Train (or resume) ``jobs`` of (arm, run name, seed, iterations), two side by side when
    ``args.parallel``, one compute thread each; a cut run resumes from its last checkpoint."""
    width = 2 if args.parallel else 1
    for start in range(0, len(jobs), width):
        procs = []
        for arm, name, seed, iterations in jobs[start:start + width]:
            cmd = [sys.executable, "-m", "agileir", "train", "--config", str(ARMS[arm]), "--resume",
                   f"name={name}", f"output_dir={args.output}", f"seed={seed}", f"train.iterations={iterations}"]
            log = open(args.output / f"{name}.log", "a")
            procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)))
        for name, proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"study: {name} failed (see {args.output}/{name}.log)")


def train_phase(args: argparse.Namespace) -> None:
    """The equal-iteration runs: both arms of a seed side by side."""
    train_runs(args, [(arm, run_name(arm, seed), seed, args.iterations) for seed in args.seeds for arm in args.arms])


def time_run_name(arm: str, seed: int) -> str:
    return f"{arm}_seed{seed}_time"


def equal_time_plan(args: argparse.Namespace, seed: int) -> tuple[str, str, int]:
    """(faster arm, slower arm, the faster arm's iterations in the slower arm's training time),
    from the logged clocks of the seed's side-by-side equal-iteration runs."""
    clocks = {arm: read_csv(args.output / run_name(arm, seed) / "train_log.csv")[-1]["train_s"] for arm in args.arms}
    fast, slow = sorted(clocks, key=clocks.get)
    return fast, slow, round(args.iterations * clocks[slow] / clocks[fast])


def equal_time_phase(args: argparse.Namespace) -> None:
    """Train each seed's faster arm for its equal-time iterations (own schedule, from scratch)."""
    jobs = []
    for seed in args.seeds:
        fast, _, iterations = equal_time_plan(args, seed)
        jobs.append((fast, time_run_name(fast, seed), seed, iterations))
    train_runs(args, jobs)


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



def score_phase(args: argparse.Namespace) -> None:
    """Score every final model (equal-iteration and equal-time runs) on every set, two at a time
    (one compute thread each)."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [args.output / run_name(arm, seed) for seed in args.seeds for arm in args.arms]
    if len(args.arms) == 2:
        runs += [args.output / time_run_name(equal_time_plan(args, seed)[0], seed) for seed in args.seeds]
    missing = [run.name for run in runs if not (run / "model.safetensors").is_file()]
    if missing:
        print(f"study: not trained yet, not scored: {', '.join(missing)} (run the train and equal-time phases)")
    runs = [run for run in runs if run.name not in missing]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda run: score(run / "model.safetensors", run / "scores_final.json"), runs))


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
            fast, slow, iterations = equal_time_plan(args, s)
            fast_run = args.output / time_run_name(fast, s)
            timed[s] = {"budget_s": doc["runs"][run_name(slow, s)]["train_s"], "iterations": {slow: args.iterations,
                        fast: iterations}, "fast_train_s": read_csv(fast_run / "train_log.csv")[-1]["train_s"],
                        "scores": {slow: final[(slow, s)],
                                   fast: json.loads((fast_run / "scores_final.json").read_text())}}
        doc["equal_time_points"] = {str(s): {k: v for k, v in t.items() if k != "scores"} for s, t in timed.items()}
    for label, table in (("equal_iterations", {s: final_by_arm(final, arms, s) for s in seeds}),
                         ("equal_time", {s: t["scores"] for s, t in timed.items()})):
        if not table:
            continue
        names = [n for n in SETS if all(n in table[s][arm] for s in table for arm in arms)]
        what = f"{args.iterations} iterations" if label == "equal_iterations" else "the slower arm's training time"
        print(f"\n{label.replace('_', ' ')} ({what}; mean ± sd over seeds {seeds})")
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
    for s, t in timed.items():
        print(f"equal time, seed {s}: {t['iterations']} iterations; slower arm {t['budget_s']:.0f} s, faster arm's "
              f"equal-time run {t['fast_train_s']:.0f} s (trained without its partner: its own clock is not T)")
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
        timed_runs = {(arm, s): args.output / time_run_name(arm, s) for s, t in timed.items()
                      for arm, it in t["iterations"].items() if it != args.iterations}
        plot(runs, timed_runs, arms, seeds, args.report / "study.png")


def final_by_arm(final: dict, arms: list[str], seed: int) -> dict:
    return {arm: final[(arm, seed)] for arm in arms}


def plot(runs: dict, timed_runs: dict, arms: list[str], seeds: list[int], path: Path) -> None:
    """Set5 PSNR-Y (validation curve) against iterations and against training seconds of the
    side-by-side runs; the equal-time runs dashed, against iterations only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colours = dict(zip(arms, ("tab:red", "tab:blue")))
    curves = [(key, run, "-") for key, run in runs.items()] + [(key, run, "--") for key, run in timed_runs.items()]
    for (arm, s), run, style in curves:
        rows = read_csv(run / "val_log.csv")
        label = (arm if style == "-" else f"{arm}, equal-time run") if s == seeds[0] else None
        panels = [(axes[0], [r["iteration"] for r in rows])]
        if style == "-":  # the equal-time runs trained under other load: their clocks do not compare
            panels.append((axes[1], [r["train_s"] / 60 for r in rows]))
        for ax, x in panels:
            ax.plot(x, [r["psnr_y"] for r in rows], color=colours[arm], ls=style, label=label, marker="o", ms=3, lw=1)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("training time (min, one CPU thread, both arms side by side)")
    axes[0].set_ylabel("Set5 x2 PSNR-Y (dB), EMA weights")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    lo = min(r["psnr_y"] for _, run, _ in curves for r in read_csv(run / "val_log.csv")[1:])
    axes[0].set_ylim(bottom=lo - 0.3)
    fig.suptitle(f"AgileIR-S vs SwinIR-S, x2 from scratch, seeds {seeds}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["all", "train", "equal-time", "score", "report"], default="all")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--sequential", dest="parallel", action="store_false",
                        help="train the arms of a seed one after the other (default: side by side)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "study")
    parser.add_argument("--report", type=Path, default=None, help="write the results JSON and plot here")
    args = parser.parse_args(argv)
    args.output = args.output.resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    if args.phase in ("all", "train"):
        train_phase(args)
    if args.phase in ("all", "equal-time") and len(args.arms) == 2:
        equal_time_phase(args)
    if args.phase in ("all", "score"):
        score_phase(args)
    if args.phase in ("all", "report"):
        report_phase(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
