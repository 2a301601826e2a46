"""How close a model runs to the machine: the dense-GEMM ceiling and achieved GFLOPS.

The ceiling is what this machine's matrix kernels reach on one large square product in the
same process and thread count as the models (fp32 and bf16: the faster of ``torch.matmul`` and
``F.linear``; int8 through the same quantized linear kernel the int8 models use). A model's
work is the FLOPs PyTorch's FlopCounterMode counts for its forward pass (inference) or for a
whole training step, forward and backward with every recomputation (training); achieved GFLOPS
is that over the median time, and the fraction is against the ceiling of the precision it ran in.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from agileir.models.complexity import model_widths, multiply_adds
from agileir.runtime import synchronize


@dataclass
class SpeedRow:
    """One measured figure of the speed table."""

    model: str
    precision: str
    what: str  # "infer 256x256" or "step b16 p64"
    gflop: float | None
    ms: float | None
    ceiling_gflops: float | None

    @property
    def gflops(self) -> float | None:
        return None if not self.gflop or not self.ms else self.gflop / (self.ms / 1e3)

    @property
    def fraction(self) -> float | None:
        g = self.gflops
        return None if g is None or not self.ceiling_gflops else g / self.ceiling_gflops


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


def gemm_ceiling(precision: str, device: torch.device, size: int = 2048, repeats: int = 5,
                 kernel: str = "matmul") -> float:
    """GFLOPS (int8: GOPS) of one ``size`` x ``size`` x ``size`` product in ``precision`` here.

    ``kernel`` is ``"matmul"`` (``a @ b``) or ``"linear"`` (``F.linear``, the models' projection
    kernel) for fp32 and bf16; int8 always runs the quantized linear kernel the int8 models use.
    """
    if kernel not in ("matmul", "linear"):
        raise ValueError(f"kernel must be matmul or linear, got {kernel!r}")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError("int8 runs on the CPU only")
        from agileir.models.quantize import quantize_int8

        layer = quantize_int8(torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)))
        with torch.no_grad():
            seconds = median_times({"int8": lambda: layer(a)}, repeats, 1, device)["int8"]
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = a.to(device, dtype), b.to(device, dtype)
        fn = (lambda: a @ b) if kernel == "matmul" else (lambda: torch.nn.functional.linear(a, b))
        seconds = median_times({precision: fn}, repeats, 1, device)[precision]
    return 2 * size ** 3 / seconds / 1e9


def timed_gemm_ceiling(precision: str, device: torch.device, max_size: int = 2048, repeats: int = 5,
                       budget_s: float = 0.1) -> tuple[float, int]:
    """(GFLOPS, size): the faster of ``a @ b`` and ``F.linear`` (int8: its quantized linear), at
    the largest power-of-two size up to ``max_size`` whose single product fits ``budget_s``, or
    the first that does not.

    Where a precision runs on vector or matrix units a 2048^3 product takes well under a second
    and the size reaches ``max_size``. Where it does not, the two kernels differ and the size
    stops early: bf16 on a CPU without AVX-512 BF16 or AMX runs ``a @ b`` in software at about
    1 GFLOPS (40 s per 2048^3 product) and ``F.linear`` through oneDNN at about 9, so the ceiling
    costs seconds instead of minutes and is the rate the models' projections can reach.
    """
    best, best_size = 0.0, 0
    for kernel in ("linear",) if precision == "int8" else ("linear", "matmul"):
        size = 256
        while True:
            gflops = gemm_ceiling(precision, device, size, repeats=1, kernel=kernel)
            if 2 * size ** 3 / gflops / 1e9 >= budget_s:
                break  # one product is already long: that measurement is the figure
            if size >= max_size:
                gflops = gemm_ceiling(precision, device, size, repeats, kernel=kernel)
                break
            size *= 2
        if gflops > best:
            best, best_size = gflops, size
    return best, best_size


def inference_gflop(model: torch.nn.Module, height: int, width: int) -> float:
    """GFLOP (2 x multiply-adds) of one forward pass on a ``height`` x ``width`` input."""
    s = int(model.config.scale)  # 1 for denoising and JPEG models
    return 2 * multiply_adds(model, height * s, width * s)["total"] / 1e9


def training_step_gflop(model: torch.nn.Module, batch: int, patch: int, precision: str) -> float:
    """GFLOP of one training step (forward, L1 loss, backward) at ``batch`` x ``patch``^2, counted on
    one sample in train mode (the recompute paths included) and scaled by the batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from agileir.runtime import autocast

    cfg = model.config
    s = int(cfg.scale)
    x = torch.rand(1, cfg.in_chans, patch, patch)
    y = torch.rand(1, cfg.in_chans, patch * s, patch * s)
    model = model.train()
    counter = FlopCounterMode(display=False)
    with warnings.catch_warnings(), model_widths(model), counter:
        warnings.simplefilter("ignore")
        with autocast(torch.device("cpu"), precision):
            loss = torch.nn.functional.l1_loss(model(x).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() * batch / 1e9


def format_speed_table(rows: list[SpeedRow], ceilings: dict[str, float], threads: int,
                       sizes: dict[str, int] | None = None) -> str:
    """The ceiling line (with each precision's product size) and one line per figure."""
    unit = {"int8": "GOPS"}
    sizes = sizes or {}
    ceil = ", ".join(f"{p} {v:.1f} {unit.get(p, 'GFLOPS')}" + (f" at {sizes[p]}^3" if p in sizes else "")
                     for p, v in ceilings.items())
    lines = [f"ceiling (one square matrix product, {threads} thread{'s' if threads > 1 else ''}): {ceil}"]
    head = f"{'model':<22} {'prec.':<5} {'figure':<18} {'GFLOP':>8} {'ms':>9} {'GFLOPS':>8} {'of ceiling':>10}"
    lines += [head, "-" * len(head)]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        frac = "n/a" if r.fraction is None else f"{100 * r.fraction:.1f}%"
        lines.append(f"{r.model:<22} {r.precision:<5} {r.what:<18} {fmt(r.gflop, '.1f'):>8} {fmt(r.ms, '.0f'):>9} "
                     f"{fmt(r.gflops, '.1f'):>8} {frac:>10}")
    return "\n".join(lines)


__all__ = ["SpeedRow", "median_times", "gemm_ceiling", "timed_gemm_ceiling", "inference_gflop", "training_step_gflop",
           "format_speed_table"]
