"""A data set through the protocol: per-image rows for the baseline and the model, and means.

``agileir test`` prints what :func:`evaluate_folder` returns; training validation prepares the
images once (:func:`prepare_folder`) and scores each new model with :func:`score_model`, so the
two agree by construction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agileir.data.io import tensor_to_uint8, write_image
from agileir.data.pairs import BenchmarkFolder
from agileir.errors import AgileIRError, ConfigError
from agileir.evaluation.classical import classical_denoise
from agileir.evaluation.protocol import Prepared, Task, prepare, score
from agileir.metrics import mean_metrics
from agileir.runtime import synchronize

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MethodResult:
    """Per-image rows (``name``, the task's columns, ``time_s``) of one method."""

    label: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    peak_mib: float | None = None

    def mean(self, columns: Sequence[str]) -> dict[str, float]:
        scores = mean_metrics([{k: r[k] for k in columns} for r in self.rows])
        if self.rows:
            scores["time_s"] = float(np.mean([r["time_s"] for r in self.rows]))
        return scores


@dataclass
class FolderResult:
    """The baseline's and (when a model ran) the model's rows, and the images that failed."""

    task: Task
    baseline: MethodResult
    model: MethodResult | None
    failed: list[dict[str, str]] = field(default_factory=list)
    classical: MethodResult | None = None  # denoising: a classical denoiser's row

    @property
    def methods(self) -> list[MethodResult]:
        return [self.baseline] + [m for m in (self.classical, self.model) if m is not None]


def prepare_folder(folder: BenchmarkFolder, task: Task, in_chans: int | None, seed: int = 0,
                   max_images: int | None = None) -> list[Prepared]:
    """Every image of ``folder`` prepared (inputs and baseline made once, for repeated scoring)."""
    samples = list(folder.samples)[: max_images or None]
    return [prepare(folder, s, task, in_chans, seed) for s in samples]


@torch.no_grad()
def score_model(forward: Forward, items: Iterable[Prepared], task: Task, gray_is_y: bool) -> dict[str, float]:
    """Mean scores of ``forward`` over prepared images (the validation path)."""
    rows = [score(tensor_to_uint8(forward(p.model_input)), p, task, gray_is_y) for p in items]
    return mean_metrics(rows)


def baseline_scores(items: Iterable[Prepared], task: Task, gray_is_y: bool) -> dict[str, float]:
    """Mean scores of the baseline (bicubic for SR, the degraded input otherwise)."""
    return mean_metrics([score(p.baseline, p, task, gray_is_y) for p in items])


def evaluate_folder(folder: BenchmarkFolder, task: Task, *, forward: Forward | None, label: str,
                    in_chans: int | None, device: torch.device, seed: int = 0,
                    save_images: Path | None = None,
                    on_image: Callable[[str], None] | None = None,
                    on_error: Callable[[str], None] | None = None,
                    classical: str | None = None) -> FolderResult:
    """Score the baseline and (with ``forward``) a model on every image of ``folder``; for
    denoising, ``classical`` (``bm3d`` or ``nlm``) adds that denoiser's row on the same inputs.

    An image that cannot be read or scored is recorded in ``failed`` (and passed to
    ``on_error``) and the others go on; ``on_image`` is called after each image.
    """
    if classical is not None and task.kind != "denoise":
        raise ConfigError(f"a classical denoiser ({classical}) is a baseline for denoising (--noise) only")
    result = FolderResult(task, MethodResult(task.baseline_label),
                          MethodResult(label) if forward is not None else None,
                          classical=MethodResult(f"{classical} (true sigma)") if classical else None)
    gray_is_y = in_chans == 1
    with torch.inference_mode():
        for sample in folder.samples:
            try:
                prep = prepare(folder, sample, task, in_chans, seed)
                base_row = {"name": sample.name, **score(prep.baseline, prep, task, gray_is_y),
                            "time_s": prep.baseline_time}
                out, model_row, classical_row = prep.baseline, None, None
                if classical is not None and prep.noisy is not None:
                    t0 = time.perf_counter()
                    denoised = classical_denoise(prep.noisy, float(task.noise or 0.0), classical)
                    classical_row = {"name": sample.name, **score(denoised, prep, task, gray_is_y),
                                     "time_s": time.perf_counter() - t0}
                if forward is not None and prep.model_input is not None:
                    synchronize(device)
                    t0 = time.perf_counter()
                    y = forward(prep.model_input)
                    synchronize(device)
                    elapsed = time.perf_counter() - t0
                    out = tensor_to_uint8(y)
                    model_row = {"name": sample.name, **score(out, prep, task, gray_is_y), "time_s": elapsed}
                if save_images is not None:
                    write_image(save_images / f"{sample.name}.png", out)
            except (AgileIRError, ValueError) as exc:
                result.failed.append({"name": sample.name, "error": str(exc)})
                if on_error is not None:
                    on_error(str(exc))
                continue
            finally:
                if on_image is not None:
                    on_image(sample.name)
            result.baseline.rows.append(base_row)
            if classical_row is not None and result.classical is not None:
                result.classical.rows.append(classical_row)
            if model_row is not None and result.model is not None:
                result.model.rows.append(model_row)
    if not result.baseline.rows:
        raise AgileIRError(f"{folder.root}: none of the {len(folder.samples)} images could be evaluated")
    return result


__all__ = ["MethodResult", "FolderResult", "prepare_folder", "score_model", "baseline_scores", "evaluate_folder"]
