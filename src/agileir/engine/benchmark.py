"""Side-by-side memory and speed measurements of presets (the ``agileir bench`` command).

Per model and batch size:
1. activation memory held for backward: the deterministic census of
   :mod:`agileir.engine.memory` (distinct storages saved by autograd, parameters excluded);
2. peak memory of a full training step (forward, L1 loss, backward, Adam step) in a fresh
   process: peak RSS on CPU, the CUDA allocator's peak on GPU;
3. training step time and inference time on a 256x256 input: warm-up, then repetitions
   interleaved across models so drifting machine speed affects all alike; the median is reported.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from agileir.models.presets import build_model
from agileir.runtime import autocast, peak_memory_bytes, reset_cuda_peak, synchronize

MiB = 2 ** 20


@dataclass
class Variant:
    """One model setting to measure: a preset plus option overrides, e.g. ``swinir-s:recompute``
    (``preset:attention_impl``)."""

    spec: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str, scale: int, checkpoint: bool) -> "Variant":
        preset, _, impl = spec.partition(":")
        overrides: dict[str, Any] = {"scale": scale, "grad_checkpoint": checkpoint}
        if impl:
            overrides["attention_impl"] = impl
        return cls(spec, preset, overrides)

    def build(self, device: torch.device) -> torch.nn.Module:
        return build_model(self.preset, **self.overrides).to(device)


@dataclass
class Row:
    model: str
    batch: int
    activation_mib: float | None = None
    peak_mib: float | None = None
    step_ms: float | None = None
    infer_ms: float | None = None


def make_batch(model: torch.nn.Module, batch: int, patch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(batch, cfg.in_chans, patch, patch, generator=g).to(device)
    hr = torch.rand(batch, cfg.in_chans, patch * cfg.scale, patch * cfg.scale, generator=g).to(device)
    return lr, hr


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: torch.Tensor, hr: torch.Tensor,
                  precision: str) -> None:
    with autocast(lr.device, precision):
        loss = torch.nn.functional.l1_loss(model(lr).float(), hr)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def activation_bytes(variant: Variant, batch: int, patch: int, device: torch.device, precision: str) -> int:
    """Bytes autograd holds for backward after one training forward pass (deterministic)."""
    from agileir.engine.memory import saved_activation_bytes

    torch.manual_seed(0)
    model = variant.build(device).train()
    lr, hr = make_batch(model, batch, patch, device)
    with autocast(device, precision):
        out, report = saved_activation_bytes(model, lr, exclude=model)
    del out
    return report.total_bytes


def peak_step_bytes(variant: Variant, batch: int, patch: int, device: str, precision: str,
                    threads: int | None = None, timeout: float = 1800) -> int | None:
    """Peak memory of a training step, measured in a fresh Python process."""
    args = json.dumps(dict(spec=variant.spec, preset=variant.preset, overrides=variant.overrides, batch=batch,
                           patch=patch, device=device, precision=precision, threads=threads))
    proc = subprocess.run([sys.executable, "-m", "agileir.engine.benchmark", args], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        if "out of memory" in tail.lower() or proc.returncode in (-9, 137):
            return None
        raise RuntimeError(f"peak-memory worker failed for {variant.spec} batch {batch}: {tail}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def _peak_worker(args: dict[str, Any]) -> dict[str, int]:
    device = torch.device(args["device"])
    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    variant = Variant(args["spec"], args["preset"], args["overrides"])
    model = variant.build(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr, hr = make_batch(model, args["batch"], args["patch"], device)
    if device.type == "cuda":
        reset_cuda_peak(device)
    for _ in range(2):  # the second step has Adam's state allocated, as in a real run
        training_step(model, optimizer, lr, hr, args["precision"])
    synchronize(device)
    peak = peak_memory_bytes(device)
    return {"peak_bytes": peak}


def median_times(fns: dict[str, Any], repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each callable, repetitions interleaved across callables."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            synchronize(device)
            t = time.perf_counter()
            fn()
            synchronize(device)
            samples[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def run_benchmark(variants: list[Variant], batches: list[int], patch: int = 64, device: str = "cpu",
                  precision: str = "fp32", infer_size: int = 256, repeats: int = 3, warmup: int = 1,
                  measure_peak: bool = True, threads: int | None = None, progress=print) -> list[Row]:
    dev = torch.device(device)
    rows: dict[tuple[str, int], Row] = {}
    for batch in batches:
        for v in variants:
            row = rows[v.spec, batch] = Row(v.spec, batch)
            progress(f"[bench] {v.spec} batch {batch}: activation census")
            row.activation_mib = activation_bytes(v, batch, patch, dev, precision) / MiB
            gc.collect()
            if measure_peak:
                progress(f"[bench] {v.spec} batch {batch}: peak memory (fresh process)")
                peak = peak_step_bytes(v, batch, patch, device, precision, threads)
                row.peak_mib = None if peak is None else peak / MiB
        progress(f"[bench] batch {batch}: training step time, interleaved")
        steps = {}
        for v in variants:
            torch.manual_seed(0)
            model = v.build(dev).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            lr, hr = make_batch(model, batch, patch, dev)
            steps[v.spec] = (lambda m=model, o=opt, a=lr, b=hr: training_step(m, o, a, b, precision))
        for spec, sec in median_times(steps, repeats, warmup, dev).items():
            rows[spec, batch].step_ms = sec * 1e3
        del steps
        gc.collect()
    progress(f"[bench] inference on {infer_size}x{infer_size}, interleaved")
    infers = {}
    for v in variants:
        model = v.build(dev).eval()
        x = torch.rand(1, model.config.in_chans, infer_size, infer_size, device=dev)

        def infer(m=model, x=x):
            with torch.inference_mode(), autocast(dev, precision):
                m(x)
        infers[v.spec] = infer
    for spec, sec in median_times(infers, repeats, warmup, dev).items():
        for batch in batches:
            rows[spec, batch].infer_ms = sec * 1e3
    return list(rows.values())


def ratio_rows(rows: list[Row], base: str, other: str) -> list[dict[str, Any]]:
    """other / base for each batch size and figure."""
    by = {(r.model, r.batch): r for r in rows}
    out = []
    for (model, batch), r in by.items():
        if model != other or (base, batch) not in by:
            continue
        b = by[base, batch]
        ratio = {}
        for key in ("activation_mib", "peak_mib", "step_ms", "infer_ms"):
            x, y = getattr(r, key), getattr(b, key)
            ratio[key] = None if x is None or y is None or y == 0 else x / y
        out.append({"batch": batch, **ratio})
    return out


def format_table(rows: list[Row], base: str, other: str) -> str:
    head = f"{'model':<18} {'batch':>5} {'act. MiB':>10} {'peak MiB':>10} {'step ms':>10} {'infer ms':>10}"
    lines = [head, "-" * len(head)]
    fmt = lambda v, p=1: "n/a" if v is None else f"{v:.{p}f}"
    for r in sorted(rows, key=lambda r: (r.batch, r.model != base, r.model)):
        lines.append(f"{r.model:<18} {r.batch:>5} {fmt(r.activation_mib):>10} {fmt(r.peak_mib, 0):>10} "
                     f"{fmt(r.step_ms, 0):>10} {fmt(r.infer_ms, 0):>10}")
    lines.append("")
    lines.append(f"ratios {other} / {base}")
    lines.append(f"{'batch':>5} {'activation':>11} {'peak':>8} {'step':>8} {'infer':>8}")
    for q in ratio_rows(rows, base, other):
        lines.append(f"{q['batch']:>5} {fmt(q['activation_mib'], 3):>11} {fmt(q['peak_mib'], 3):>8} "
                     f"{fmt(q['step_ms'], 3):>8} {fmt(q['infer_ms'], 3):>8}")
    return "\n".join(lines)


def rows_as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


if __name__ == "__main__":  # the fresh-process peak-memory worker
    print(json.dumps(_peak_worker(json.loads(sys.argv[1]))))
