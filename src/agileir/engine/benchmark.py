"""Side-by-side memory and speed measurements of presets (the ``agileir bench`` command).

Per model and batch size:
1. activation memory held for backward: the deterministic census of
   :mod:`agileir.engine.memory` (distinct storages saved by autograd, parameters excluded);
2. peak memory of a full training step (forward, L1 loss, backward, Adam step) in a fresh
   process: peak RSS on CPU, the CUDA allocator's peak on GPU;
3. training step time and inference time on each inference size (default 256x256): warm-up,
   then repetitions interleaved across models so drifting machine speed affects all alike; the
   median is reported;
4. the speed table (:mod:`agileir.engine.speed`): each figure's FLOPs, achieved GFLOPS and the
   fraction of the dense-GEMM ceiling of its precision, measured in the same run.

A model is ``preset[:attention_impl][@precision]``, e.g. ``swinir-s:sdpa@bf16`` or
``agileir-s@int8`` (inference only); without ``@`` the run's precision applies.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from agileir.engine.speed import SpeedRow, inference_gflop, median_times, timed_gemm_ceiling, training_step_gflop
from agileir.inference.precision import precision_context, prepare_precision
from agileir.models.presets import build_model
from agileir.runtime import PRECISIONS, autocast, check_inference_precision, peak_memory_bytes, reset_cuda_peak, \
    synchronize

MiB = 2 ** 20


@dataclass
class Variant:
    """One model setting to measure: a preset plus option overrides and a precision, e.g.
    ``swinir-s:recompute`` (``preset:attention_impl``) or ``agileir-s@bf16``."""

    spec: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None  # None: the run's

    @classmethod
    def parse(cls, spec: str, scale: int, checkpoint: bool) -> "Variant":
        name, _, precision = spec.partition("@")
        preset, _, impl = name.partition(":")
        overrides: dict[str, Any] = {"scale": scale, "grad_checkpoint": checkpoint}
        if impl:
            overrides["attention_impl"] = impl
        if precision:
            check_inference_precision(precision)
        return cls(spec, preset, overrides, precision or None)

    def build(self, device: torch.device) -> torch.nn.Module:
        return build_model(self.preset, **self.overrides).to(device)

    def precision_for(self, default: str) -> str:
        return self.precision or default

    def trains(self, default: str) -> bool:
        """False for inference-only precisions (int8)."""
        return self.precision_for(default) in PRECISIONS

    def build_for_inference(self, device: torch.device, default: str) -> tuple[torch.nn.Module, str]:
        """The eval-mode model prepared for its precision, and that precision resolved."""
        return prepare_precision(self.build(device).eval(), self.precision_for(default), device)


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


def parse_size(text: str | int) -> tuple[int, int]:
    """``256`` -> (256, 256); ``640x360`` -> (360, 640) as (height, width)."""
    t = str(text).lower()
    w, _, h = t.partition("x")
    try:
        width, height = int(w), int(h or w)
    except ValueError:
        raise ValueError(f"size must be N or WxH, got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return height, width


@dataclass
class BenchResult:
    """The memory/step table's rows and the speed table's."""

    rows: list[Row]
    speed: list[SpeedRow]
    ceilings: dict[str, float]
    ceiling_sizes: dict[str, int]


def run_benchmark(variants: list[Variant], batches: list[int], patch: int = 64, device: str = "cpu",
                  precision: str = "fp32", infer_sizes: list[tuple[int, int]] | None = None, repeats: int = 3,
                  warmup: int = 1, measure_peak: bool = True, threads: int | None = None,
                  progress=print) -> BenchResult:
    """Every figure of every variant, measured side by side (see the module docstring).

    ``batches`` may be empty: inference and the speed table only. ``infer_sizes`` are
    (height, width) inputs (default 256x256); the memory table's ``infer_ms`` is the first's.
    """
    dev = torch.device(device)
    sizes = infer_sizes or [(256, 256)]
    rows: dict[tuple[str, int], Row] = {}
    speed: list[SpeedRow] = []
    progress("[bench] dense-GEMM ceiling")
    measured = ["fp32", "bf16"] + (["int8"] if any(v.precision_for(precision) == "int8" for v in variants) else [])
    timed = {p: timed_gemm_ceiling(p, dev) for p in measured}
    ceilings, ceiling_sizes = {p: g for p, (g, _) in timed.items()}, {p: n for p, (_, n) in timed.items()}
    trained = [v for v in variants if v.trains(precision)]
    for batch in batches:
        for v in variants:
            row = rows[v.spec, batch] = Row(v.spec, batch)
            if v not in trained:
                continue
            p = v.precision_for(precision)
            progress(f"[bench] {v.spec} batch {batch}: activation census")
            row.activation_mib = activation_bytes(v, batch, patch, dev, p) / MiB
            gc.collect()
            if measure_peak:
                progress(f"[bench] {v.spec} batch {batch}: peak memory (fresh process)")
                peak = peak_step_bytes(v, batch, patch, device, p, threads)
                row.peak_mib = None if peak is None else peak / MiB
        progress(f"[bench] batch {batch}: training step time, interleaved")
        steps, flops = {}, {}
        for v in trained:
            p = v.precision_for(precision)
            torch.manual_seed(0)
            model = v.build(dev).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            lr, hr = make_batch(model, batch, patch, dev)
            flops[v.spec] = training_step_gflop(v.build(torch.device("cpu")), batch, patch, p)
            steps[v.spec] = (lambda m=model, o=opt, a=lr, b=hr, p=p: training_step(m, o, a, b, p))
        for spec, sec in median_times(steps, repeats, warmup, dev).items():
            rows[spec, batch].step_ms = sec * 1e3
            v = next(v for v in trained if v.spec == spec)
            p = v.precision_for(precision)
            speed.append(SpeedRow(spec, p, f"step b{batch} p{patch}", flops[spec], sec * 1e3, ceilings.get(p)))
        del steps
        gc.collect()
    for h, w in sizes:
        progress(f"[bench] inference on {w}x{h}, interleaved")
        infers, resolved, flops = {}, {}, {}
        for v in variants:
            model, p = v.build_for_inference(dev, precision)
            resolved[v.spec] = p
            flops[v.spec] = inference_gflop(v.build(torch.device("cpu")), h, w)
            x = torch.rand(1, model.config.in_chans, h, w, device=dev)

            def infer(m=model, x=x, p=p):
                with torch.inference_mode(), precision_context(dev, p):
                    m(x)
            infers[v.spec] = infer
        for spec, sec in median_times(infers, repeats, warmup, dev).items():
            if (h, w) == sizes[0]:
                for batch in batches:
                    rows[spec, batch].infer_ms = sec * 1e3
                if not batches:
                    rows.setdefault((spec, 0), Row(spec, 0)).infer_ms = sec * 1e3
            p = resolved[spec]
            speed.append(SpeedRow(spec, p, f"infer {w}x{h}", flops[spec], sec * 1e3, ceilings.get(p)))
        del infers
        gc.collect()
    return BenchResult(list(rows.values()), speed, ceilings, ceiling_sizes)


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
