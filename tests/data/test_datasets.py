"""Training data: on-the-fly LR equals the whole-image MATLAB LR, augmentation keeps pairs
aligned, the sampler is deterministic, split across ranks and independent of workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agileir.data.datasets import (
    RestorationPatches,
    SampleKey,
    StepBatchSampler,
    collate,
    list_images,
    pair_images,
)
from agileir.data.degradations import bicubic_downscale, modcrop
from agileir.errors import AgileIRError


def _write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w]
        base = 128 + 60 * np.sin(x / (3.0 + i)) [..., None] + 50 * np.cos(y / (5.0 + i))[..., None]
        img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"img{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_on_the_fly_lr_patch_equals_whole_image_lr(tmp_path: Path, scale: int) -> None:
    files = _write_images(tmp_path, [(61, 75)])
    ds = RestorationPatches(files, scale=scale, patch_size=6, flip=False, rotate=False)
    hr = modcrop(np.asarray(Image.open(files[0])), scale)
    lr_full = bicubic_downscale(np.asarray(Image.open(files[0])), scale, border="mirror")
    h, w = lr_full.shape[:2]
    # every corner and an interior position: the margin is clamped at the image edge
    for y, x in [(0, 0), (0, w - 6), (h - 6, 0), (h - 6, w - 6), (h // 2 - 3, w // 2 - 2)]:
        np.testing.assert_array_equal(ds._lr_patch(hr, y, x), lr_full[y:y + 6, x:x + 6])


def test_patches_are_aligned_and_augmented_consistently(tmp_path: Path) -> None:
    files = _write_images(tmp_path, [(64, 80), (72, 72)])
    ds = RestorationPatches(files, scale=2, patch_size=8)
    plain = RestorationPatches(files, scale=2, patch_size=8, flip=False, rotate=False)
    seen_ops = set()
    for seed in range(40):
        item = ds[SampleKey(seed % 2, seed)]
        lr, hr = item["lr"], item["hr"]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
        assert lr.dtype == torch.float32 and 0.0 <= float(lr.min()) and float(lr.max()) <= 1.0
        # the LR is the bicubic downscale of the HR patch up to the patch border:
        # compare the interior with a box-filtered HR (loose: checks alignment and orientation)
        box = torch.nn.functional.avg_pool2d(hr[None], 2)[0]
        assert float((lr - box)[:, 2:-2, 2:-2].abs().mean()) < 0.05
        ref = plain[SampleKey(seed % 2, seed)]["hr"]
        # the augmented patch is one of the 8 dihedral transforms of the unaugmented one
        transforms = {}
        for t in range(2):
            for k in range(4):
                cand = torch.rot90(ref.transpose(1, 2) if t else ref, k, dims=(1, 2))
                transforms[(t, k)] = torch.equal(cand, hr)
        matches = [key for key, ok in transforms.items() if ok]
        assert matches, "augmented patch is not a flip/rotation of the plain patch"
        seen_ops.add(matches[0])
    assert len(seen_ops) >= 5  # flips and rotations do happen


def test_same_key_same_sample_and_cache_does_not_change_data(tmp_path: Path) -> None:
    files = _write_images(tmp_path, [(50, 60), (64, 64)])
    cached = RestorationPatches(files, scale=2, patch_size=8, cache=True)
    lazy = RestorationPatches(files, scale=2, patch_size=8, cache=False)
    for key in [SampleKey(0, 11), SampleKey(1, 12345)]:
        a, b = cached[key], lazy[key]
        assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["hr"], b["hr"])
    assert not torch.equal(cached[SampleKey(0, 1)]["hr"], cached[SampleKey(0, 2)]["hr"])


def test_sampler_splits_the_global_batch_across_ranks() -> None:
    single = StepBatchSampler(10, 8, seed=3, total_steps=5)
    ranks = [StepBatchSampler(10, 8, seed=3, rank=r, world_size=2, total_steps=5) for r in range(2)]
    for step, (whole, a, b) in enumerate(zip(single, *ranks), start=1):
        assert whole == a + b
        assert whole == single.keys_for_step(step)
    # every epoch is a permutation of the data set
    stream = [k.index for batch in StepBatchSampler(10, 5, seed=0, total_steps=4) for k in batch]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]


def test_sampler_resumes_mid_stream() -> None:
    full = list(StepBatchSampler(7, 3, seed=5, total_steps=9))
    tail = list(StepBatchSampler(7, 3, seed=5, start_step=4, total_steps=9))
    assert tail == full[4:]
    with pytest.raises(AgileIRError, match="not divisible"):
        StepBatchSampler(7, 3, world_size=2)


def test_loader_output_does_not_depend_on_workers(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    files = _write_images(tmp_path, [(48, 48), (56, 64), (64, 48)])
    ds = RestorationPatches(files, scale=2, patch_size=8)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = StepBatchSampler(len(ds), 4, seed=9, total_steps=4)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
        return [b["lr"] for b in loader]

    for x, y in zip(batches(0), batches(2)):
        assert torch.equal(x, y)


def test_no_usable_images_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(AgileIRError, match="no image files") as exc:
        list_images(empty)
    assert "\n" not in str(exc.value)
    with pytest.raises(AgileIRError, match="not found"):
        list_images(tmp_path / "missing")
    small = _write_images(tmp_path / "small", [(10, 10)])
    with pytest.raises(AgileIRError, match="no usable training images"):
        RestorationPatches(small, scale=2, patch_size=16)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(AgileIRError, match="no usable training images"):
        RestorationPatches(list_images(broken), scale=2, patch_size=4)


def test_paired_folders(tmp_path: Path) -> None:
    hr_files = _write_images(tmp_path / "HR", [(40, 48), (48, 40)])
    lr_dir = tmp_path / "LR" / "X2"
    lr_dir.mkdir(parents=True)
    for p in hr_files:
        lr = bicubic_downscale(np.asarray(Image.open(p)), 2)
        Image.fromarray(lr).save(lr_dir / f"{p.stem}x2.png")
    pairs = pair_images(hr_files, tmp_path / "LR", 2)
    assert [p[0] for p in pairs] == hr_files
    ds = RestorationPatches([p[0] for p in pairs], [p[1] for p in pairs], scale=2, patch_size=8,
                            flip=False, rotate=False)
    gen = RestorationPatches(hr_files, scale=2, patch_size=8, flip=False, rotate=False)
    for key in [SampleKey(0, 4), SampleKey(1, 8)]:
        assert torch.equal(ds[key]["lr"], gen[key]["lr"]) and torch.equal(ds[key]["hr"], gen[key]["hr"])
    other = tmp_path / "other"
    _write_images(other, [(20, 20)], seed=1)
    (other / "img0.png").rename(other / "unrelated.png")
    with pytest.raises(AgileIRError, match="no LR partner"):
        pair_images(hr_files, other, 2)


def test_denoise_and_jpeg_patches(tmp_path: Path) -> None:
    files = _write_images(tmp_path, [(40, 40)])
    noisy = RestorationPatches(files, scale=1, patch_size=16, task="denoise", noise_sigma=[5, 50])
    item = noisy[SampleKey(0, 3)]
    assert item["lr"].shape == item["hr"].shape == (3, 16, 16)
    assert 0.005 < float((item["lr"] - item["hr"]).std()) < 0.25
    jpeg = RestorationPatches(files, scale=1, patch_size=16, task="jpeg", jpeg_quality=10, in_chans=1)
    item = jpeg[SampleKey(0, 3)]
    assert item["lr"].shape == (1, 16, 16) and not torch.equal(item["lr"], item["hr"])
    with pytest.raises(AgileIRError, match="scale 1"):
        RestorationPatches(files, scale=2, patch_size=8, task="denoise")
