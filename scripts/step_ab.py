"""Training-step time of agileir-s before and after a change to the CPU extension, in one process.

The official SwinIR-S, agileir-s on an earlier build of the extension (its ``.so``, loaded beside
today's) and agileir-s on today's build are three models with the same weights and batch; their
steps are rotated round by round and timed (the machine's drift then moves all three alike).
Where the earlier build lacks a kernel (GELU's gradient, the training LayerNorm), today's Python
falls back to ATen for it, as the earlier tree did; ``--old-drop-path`` also restores the
two-pass stochastic-depth residual. Prints medians of the times and of the per-round ratios.

    # build the earlier tree's extension once, e.g. from a worktree:
    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src python -c "from agileir.models.attention import fused; print(fused.extension().__file__)"
    python scripts/step_ab.py --before <that .so> --batch 16 --threads 1 --rounds 5 --old-drop-path
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the earlier build's extension (.so)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--old-drop-path", action="store_true", help="'before' uses x + drop_path(y) in two passes")
    args = p.parse_args()

    from agileir.engine.benchmark import make_batch, training_step
    from agileir.models import network
    from agileir.models.attention import fused
    from agileir.models.presets import build_model
    from agileir.runtime import keep_freed_memory

    keep_freed_memory()  # as the agileir program does
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location(args.before.rsplit("/", 1)[-1].removesuffix(".so"), args.before)
    old_ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_ext)
    fused.extension()  # today's build, loaded (and built if needed) before any timing
    real_load, real_residual = fused._load, network.DropPath.residual

    def old_residual(self, x, y):
        return x + self(y)

    def use(which: str) -> None:
        fused._load = (lambda: old_ext) if which == "before" else real_load
        old = which == "before" and args.old_drop_path
        network.DropPath.residual = old_residual if old else real_residual

    models = {}
    for name, preset in (("official", "swinir-s"), ("before", "agileir-s"), ("now", "agileir-s")):
        torch.manual_seed(0)
        model = build_model(preset, scale=2).train()
        models[name] = (model, torch.optim.SGD(model.parameters(), 0.0), *make_batch(model, args.batch, args.patch,
                                                                                      torch.device("cpu")))

    def step(name: str) -> float:
        use(name)
        model, opt, lr, hr = models[name]
        t = time.perf_counter()
        training_step(model, opt, lr, hr, "fp32")
        return time.perf_counter() - t

    times: dict[str, list[float]] = {k: [] for k in models}
    for name in models:  # warm-up
        step(name)
    names = list(models)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            times[name].append(step(name))
    use("now")
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = lambda a, b: statistics.median([y / x for x, y in zip(times[a], times[b])])  # noqa: E731
    print(f"batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds: official {med['official']:.2f} s, "
          f"before {med['before']:.2f} s, now {med['now']:.2f} s")
    print(f"medians of the times: now/before {med['now'] / med['before']:.3f}, now/official "
          f"{med['now'] / med['official']:.3f}, before/official {med['before'] / med['official']:.3f}")
    print(f"medians of the per-round ratios: now/before {paired('before', 'now'):.3f}, now/official "
          f"{paired('official', 'now'):.3f}, before/official {paired('official', 'before'):.3f}")


if __name__ == "__main__":
    main()
