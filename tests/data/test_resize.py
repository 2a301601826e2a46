"""MATLAB-compatible bicubic resize: bit-exact against the benchmark LR files, numpy == torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agileir.data import resize as R
from agileir.data.resize import contributions, imresize, imresize_torch

# (set, LR folder, border) for every LR variant of the benchmark folders
VARIANTS = (("LR_bicubic", "replicate"), ("LR_bicubic_edsr", "mirror"))


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _lr_cases(root: Path) -> list[tuple[Path, Path, int, str]]:
    """(hr, lr, scale, border) for every LR file under root/<set>/<variant>/X{s}."""
    cases = []
    for set_dir in sorted(p for p in root.iterdir() if (p / "HR").is_dir()):
        for variant, border in VARIANTS:
            for s in (2, 3, 4):
                lr_dir = set_dir / variant / f"X{s}"
                if not lr_dir.is_dir():
                    continue
                for lr in sorted(lr_dir.glob("*.png")):
                    hr = set_dir / "HR" / (lr.stem[: -len(f"x{s}")] + ".png")
                    cases.append((hr, lr, s, border))
    return cases


def _reproduce_all(cases: list[tuple[Path, Path, int, str]]) -> dict[str, int]:
    bad = {}
    hr_cache: dict[Path, np.ndarray] = {}
    for hr_path, lr_path, s, border in cases:
        hr = hr_cache.setdefault(hr_path, _load(hr_path))
        lr = _load(lr_path)
        h, w = lr.shape[:2]
        out = imresize(hr[: s * h, : s * w], 1 / s, border)
        if out.shape != lr.shape or out.dtype != np.uint8:
            bad[str(lr_path)] = -1
            continue
        diff = int(np.abs(out.astype(np.int16) - lr.astype(np.int16)).max())
        if diff:
            bad[str(lr_path)] = diff
    return bad


def test_reproduces_every_benchmark_lr_file(any_benchmarks_dir: Path, testdata_dir: Path) -> None:
    """All 372 LR files of ../shared/data/benchmarks (357 legacy replicate-border files, 15
    EDSR mirror-border files) bit for bit; without the shared folder, the 15 files of the
    project's own copy."""
    cases = _lr_cases(any_benchmarks_dir)
    if any_benchmarks_dir == testdata_dir:
        assert len(cases) == 15
    else:
        assert len(cases) == 372
        assert sum(1 for c in cases if c[3] == "mirror") == 15
    bad = _reproduce_all(cases)
    assert not bad, f"{len(bad)} files differ, e.g. {list(bad.items())[:3]}"


def test_reproduces_packaged_copy(testdata_dir: Path) -> None:
    cases = _lr_cases(testdata_dir)
    assert len(cases) == 15
    assert not _reproduce_all(cases)


def test_border_mode_matters_only_near_the_border(testdata_dir: Path) -> None:
    """The two variants differ (so the test above can tell them apart) but only within a few
    LR pixels of the border."""
    hr = _load(testdata_dir / "Set5" / "HR" / "baby.png")
    legacy = _load(testdata_dir / "Set5" / "LR_bicubic" / "X4" / "babyx4.png")
    edsr = _load(testdata_dir / "Set5" / "LR_bicubic_edsr" / "X4" / "babyx4.png")
    assert np.any(legacy != edsr)
    assert np.array_equal(legacy[3:-3, 3:-3], edsr[3:-3, 3:-3])
    assert not np.array_equal(imresize(hr, 0.25, "mirror"), legacy)
    assert not np.array_equal(imresize(hr, 0.25, "replicate"), edsr)


def test_pass_order_and_per_pass_rounding_are_needed(testdata_dir: Path, monkeypatch) -> None:
    """Width first, or rounding only at the end, does not reproduce the files: the documented
    behaviour (height first, uint8 after each pass) is what makes them bit-exact."""
    hr = _load(testdata_dir / "Set5" / "HR" / "bird.png")
    lr = _load(testdata_dir / "Set5" / "LR_bicubic" / "X4" / "birdx4.png")
    assert np.array_equal(imresize(hr, 0.25, "replicate"), lr)
    once = R._round_uint8(imresize(hr.astype(np.float64), 0.25, "replicate"))
    assert not np.array_equal(once, lr)
    plan = R._plan
    monkeypatch.setattr(R, "_plan", lambda *a: list(reversed(plan(*a))))
    assert not np.array_equal(imresize(hr, 0.25, "replicate"), lr)


def test_kernel_weights_match_matlab_definition() -> None:
    # x2 downscale: kernel stretched to width 8; output k (1-based) samples u = 2k - 0.5,
    # so output 2 sits at u = 3.5 with non-zero taps at distances 3.5, 2.5, ..., -3.5
    w, idx = contributions(16, 8, 0.5, "replicate")
    assert w.shape == (8, 8)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-15)
    expected = 0.5 * R.cubic(0.5 * (3.5 - np.arange(8)))
    np.testing.assert_allclose(w[1], expected / expected.sum(), atol=1e-15)
    assert idx[0].min() == 0 and idx[-1].max() == 15
    # x2 upscale: unstretched kernel, u = k/2 + 0.25, four non-zero taps per output
    w, idx = contributions(8, 16, 2.0, "mirror")
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-15)
    row = w[5][w[5] != 0]  # u = 3.25: distances 1.25, 0.25, -0.75, -1.75
    expected = R.cubic(np.array([1.25, 0.25, -0.75, -1.75]))
    np.testing.assert_allclose(row, expected / expected.sum(), atol=1e-15)
    assert R.cubic(np.array([0.0, 1.0, 2.0, 0.5])).tolist() == [1.0, 0.0, 0.0, 0.5625]


def test_mirror_indices_are_symmetric() -> None:
    _, idx = contributions(5, 2, 0.4, "mirror")
    # symmetric (edge-repeating) reflection: ... 1 0 | 0 1 2 3 4 | 4 3 ...
    assert set(idx.ravel().tolist()) <= set(range(5))
    _, idx_rep = contributions(5, 2, 0.4, "replicate")
    assert not np.array_equal(idx, idx_rep)


@pytest.mark.parametrize("shape", [(23, 31), (23, 31, 3), (40, 17, 1)])
@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.37, 1.0, 1.7, 2.0, 3.0])
@pytest.mark.parametrize("border", ["mirror", "replicate"])
def test_torch_matches_numpy_float(shape, scale, border) -> None:
    rng = np.random.default_rng(0)
    img = rng.random(shape)
    ref = imresize(img, scale, border)
    assert ref.dtype == np.float64
    chw = img if img.ndim == 3 else img[:, :, None]
    x = torch.from_numpy(chw.transpose(2, 0, 1).copy())[None]
    out = imresize_torch(x, scale, border)[0].numpy().transpose(1, 2, 0)
    out = out if img.ndim == 3 else out[:, :, 0]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-12)


def test_output_sizes_and_constants() -> None:
    img = np.full((510, 341, 3), 77, dtype=np.uint8)
    assert imresize(img, 1 / 3).shape == (170, 114, 3)
    assert imresize(img, 0.5).shape == (255, 171, 3)
    assert imresize(img, 3).shape == (1530, 1023, 3)
    assert (imresize(img, 1 / 3) == 77).all() and (imresize(img, 2.5, "replicate") == 77).all()
    out = imresize(img[:, :, 0].astype(np.float32), 0.5)
    assert out.dtype == np.float32 and np.allclose(out, 77)
    assert imresize(img, None, output_shape=(100, 50)).shape == (100, 50, 3)


def test_upscale_interpolates_and_keeps_dtype() -> None:
    lr = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    up = imresize(lr, 2)
    assert up.dtype == np.uint8 and up.shape == (4, 4)
    # symmetric input -> symmetric output
    assert np.array_equal(up, up[::-1, ::-1])


def test_gradients_flow_through_torch_resize() -> None:
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    imresize_torch(x, 0.5).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_arguments() -> None:
    img = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(ValueError):
        imresize(img, 0.5, "wrap")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        imresize(img, -2)
    with pytest.raises(TypeError):
        imresize(img.astype(np.int32), 2)
    with pytest.raises(TypeError):
        imresize_torch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)


def test_top_level_reexport() -> None:
    import agileir

    assert agileir.imresize is imresize
