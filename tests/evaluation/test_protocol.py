"""The evaluation protocol's inputs against float64 references (SwinIR's published protocols)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from agileir.data.pairs import discover
from agileir.evaluation.protocol import Task, prepare


def _sample(folder, name: str):
    return next(s for s in folder.samples if s.name.startswith(name))


def test_denoise_input_is_the_unclipped_noisy_float_image(testdata_dir: Path) -> None:
    """sigma 25, seed 0: gt/255 + RandomState(0).normal(0, 25/255), not clipped; the baseline is that
    image clipped and rounded. (Scoring the baseline once scaled the model's input in place.)"""
    folder = discover(testdata_dir / "Set5", None, "auto")
    sample = _sample(folder, "butterfly")
    prep = prepare(folder, sample, Task("denoise", noise=25.0), in_chans=3, seed=0)
    with Image.open(sample.hr_path) as im:
        gt = np.asarray(im.convert("RGB"), dtype=np.float64)
    reference = gt / 255.0 + np.random.RandomState(0).normal(0.0, 25.0 / 255.0, size=gt.shape)
    x = prep.model_input[0].permute(1, 2, 0).double().numpy()
    assert np.abs(x - reference).max() < 1e-6  # float32 rounding of the reference
    assert x.min() < 0.0 and x.max() > 1.0  # not clipped
    expected_baseline = np.rint(np.clip(reference, 0, 1) * 255.0)
    assert np.mean(prep.baseline != expected_baseline) < 1e-3  # float32 ties at .5 may round apart
