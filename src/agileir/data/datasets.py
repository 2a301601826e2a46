"""Training data: random patches from a folder of HR images (LR made on the fly) or from paired
HR/LR folders, with flips and 90-degree rotations, and a resumable, rank-aware sampler.

Why these choices:

* **LR on the fly** uses the evaluation's MATLAB bicubic (:func:`agileir.data.resize.imresize`)
  on the HR crop plus a margin of ``LR_MARGIN`` LR pixels (clamped at the image edge), then
  cuts the margin away; the patch is then bit-identical to the same window of the whole-image
  LR, so training sees exactly the degradation the benchmarks use, at the cost of a small resize
  per sample. Denoising adds ``N(0, sigma/255)`` (not clipped), JPEG encodes with Pillow; both
  as in :mod:`agileir.data.degradations`.
* **Decoded images are cached in memory** (before DataLoader workers fork, so workers share
  them), so a small data set is not decoded every step; large sets can switch it off.
* **Randomness is per sample, not per worker**: the sampler hands each sample a seed derived
  from ``(seed, position in the sample stream)``. Crops, flips and noise therefore do not
  depend on the number of DataLoader workers or processes, and resuming at iteration ``k``
  (``start_step=k``) replays exactly the samples an uninterrupted run would have drawn.
* **The global batch is split across ranks**: step ``t`` uses stream positions
  ``[t*B, (t+1)*B)``; rank ``r`` of ``R`` takes the ``r``-th slice of ``B/R``. One process with
  batch ``B`` and ``R`` processes with ``B/R`` each see the same samples.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from agileir.data.degradations import add_gaussian_noise, jpeg_compress, modcrop
from agileir.data.io import is_image_file, read_image, rgb_to_gray, rgb_to_y_uint8, to_channels
from agileir.data.pairs import match_lr
from agileir.data.prepared import is_prepared_file, read_prepared
from agileir.data.resize import imresize
from agileir.errors import AgileIRError, ConfigError, ImageError

LR_MARGIN = 3  # LR pixels around a patch: the antialiased bicubic kernel reaches 2 of them
TASKS = ("sr", "denoise", "jpeg")  # the package's task vocabulary (models/config.py)


# ----------------------------------------------------------------------------- discovery


def is_training_file(name: str) -> bool:
    """An image file, or a decoded array written by ``agileir prepare``."""
    return is_image_file(name) or is_prepared_file(name)


def read_training_image(path: Path) -> np.ndarray:
    """A training image: decoded from its file, or memory-mapped from a prepared ``.npy``."""
    return read_prepared(path) if is_prepared_file(path) else read_image(path)


def list_images(folders: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files directly inside one or several folders, sorted by name per folder.

    Raises :class:`AgileIRError` for a missing folder or when no image file is found.
    """
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    files: list[Path] = []
    for folder in folders:
        p = Path(folder).expanduser()
        if not p.is_dir():
            raise AgileIRError(f"training folder not found: {p}")
        found = sorted(f for f in p.iterdir() if f.is_file() and is_training_file(f.name))
        files.extend(found)
    if not files:
        names = ", ".join(str(Path(f)) for f in folders)
        raise AgileIRError(f"no image files (png, jpg, bmp, tif, webp, ...) in {names}")
    return files


def _lr_index(lr_dir: Path, scale: int) -> dict[str, Path]:
    folders = [lr_dir]
    for sub in (f"X{scale}", f"x{scale}"):
        if (lr_dir / sub).is_dir():
            folders.insert(0, lr_dir / sub)
    index: dict[str, Path] = {}
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.is_file() and is_training_file(f.name):
                index.setdefault(f.stem.lower(), f)
    return index


def pair_images(hr_files: Sequence[Path], lr_dir: str | os.PathLike, scale: int) -> list[tuple[Path, Path]]:
    """Match each HR file with its LR partner in ``lr_dir`` (or its ``X<s>`` sub-folder) by the
    package's one naming rule (:func:`agileir.data.pairs.lr_names`). HR files without a partner
    are skipped with a warning."""
    lr_dir = Path(lr_dir).expanduser()
    if not lr_dir.is_dir():
        raise AgileIRError(f"LR folder not found: {lr_dir}")
    index = _lr_index(lr_dir, scale)
    pairs: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for hr in hr_files:
        stem = hr.stem.lower()
        lr = match_lr(stem, scale, index)
        if lr is None:
            missing.append(hr.name)
        else:
            pairs.append((hr, lr))
    if not pairs:
        raise AgileIRError(f"no LR partner in {lr_dir} for any of the {len(hr_files)} HR images "
                           f"(expected names like {hr_files[0].stem}x{scale}{hr_files[0].suffix})")
    if missing:
        warnings.warn(f"{len(missing)} HR images have no LR partner in {lr_dir} and are skipped "
                      f"(e.g. {missing[0]})", RuntimeWarning, stacklevel=2)
    return pairs


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SampleKey:
    """What a data set item needs: the image index and the seed of this draw's randomness."""

    index: int
    seed: int


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Batches of :class:`SampleKey` for iterations ``start_step + 1, start_step + 2, ...``.

    The sample stream is a sequence of epochs, each a permutation of the data set drawn from
    ``(seed, epoch)``; position ``p`` of the stream also fixes the sample's own seed. Iteration
    ``t`` (1-based) uses positions ``[(t-1)*B, t*B)`` of which this rank takes its slice.
    Being a pure function of the iteration, the sampler's state is the iteration itself.
    """

    def __init__(self, num_items: int, global_batch: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, total_steps: int | None = None, shuffle: bool = True) -> None:
        if num_items < 1:
            raise ConfigError("the training set is empty")
        if global_batch < 1:
            raise ConfigError(f"batch size must be >= 1, got {global_batch}")
        if global_batch % world_size:
            raise ConfigError(f"the global batch size {global_batch} is not divisible by the {world_size} "
                              "processes; choose a multiple")
        self.num_items = int(num_items)
        self.global_batch = int(global_batch)
        self.local_batch = self.global_batch // world_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.start_step = int(start_step)
        self.total_steps = total_steps
        self.shuffle = shuffle
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, 0x5A3D, epoch]).permutation(self.num_items)
            else:
                self._perm = np.arange(self.num_items)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def keys_for_step(self, step: int) -> list[SampleKey]:
        """This rank's samples for iteration ``step`` (1-based)."""
        first = (step - 1) * self.global_batch + self.rank * self.local_batch
        keys = []
        for pos in range(first, first + self.local_batch):
            epoch, offset = divmod(pos, self.num_items)
            index = int(self._permutation(epoch)[offset])
            seed = int(np.random.SeedSequence([self.seed, 0x7E11, pos]).generate_state(1, np.uint64)[0] >> 1)
            keys.append(SampleKey(index, seed))
        return keys

    def __iter__(self) -> Iterator[list[SampleKey]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            step += 1
            yield self.keys_for_step(step)

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an open-ended sampler has no length")
        return max(self.total_steps - self.start_step, 0)

    def state_dict(self) -> dict[str, Any]:
        """What determines the order: seed, sizes and the number of iterations consumed."""
        return {"seed": self.seed, "num_items": self.num_items, "global_batch": self.global_batch,
                "start_step": self.start_step}


# ----------------------------------------------------------------------------- the data set


def _image_size(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) from the file's header; raises for an unreadable file."""
    if is_prepared_file(path):
        shape = read_prepared(path).shape
        return shape[1], shape[0], shape[2] if len(shape) == 3 else 1
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0], im.size[1], 1 if im.mode in ("L", "1", "LA") else 3


def _image_bytes(path: Path) -> int:
    """Private memory a cached decoded copy takes (0 for a memory-mapped array: the page cache
    holds it, shared by every process)."""
    if is_prepared_file(path):
        return 0
    try:
        w, h, c = _image_size(path)
    except Exception:  # unreadable files are reported when they are decoded
        return 0
    return w * h * c


def _as_range(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"{name} must be a number or a [low, high] pair, got {value!r}")
        lo, hi = float(value[0]), float(value[1])
    else:
        lo = hi = float(value)
    if hi < lo:
        raise ConfigError(f"{name}: low {lo} is above high {hi}")
    return lo, hi


class RestorationPatches(Dataset):
    """Random training patches ``{"lr": (C, p, p), "hr": (C, s*p, s*p)}`` float32 tensors.

    Args:
        hr_files: ground-truth images.
        lr_files: LR partners (paired folders), or ``None`` to degrade the HR on the fly.
        scale: SR factor (1 for denoising / JPEG).
        patch_size: LR (input) patch side; the HR patch is ``scale`` times larger.
        task: ``"sr"`` (bicubic LR), ``"denoise"`` (Gaussian noise) or ``"jpeg"``.
        noise_sigma: sigma in 0-255 units, or a ``[low, high]`` range drawn per sample.
        jpeg_quality: quality, or a ``[low, high]`` range (integers) drawn per sample.
        in_chans: 3, or 1 for gray models (colour files reduced as the evaluation does).
        flip / rotate: random horizontal+vertical flips / 90-degree rotations (transpose).
        make_lr: False to return HR patches alone (``{"hr": ...}``), for LR made from the batch.
        cache: decode every image once, up front, and keep it in memory.
        lr_border: MATLAB resize border of the on-the-fly LR (``mirror`` = EDSR/SwinIR files).
    """

    def __init__(self, hr_files: Sequence[Path], lr_files: Sequence[Path] | None = None, *, scale: int = 2,
                 patch_size: int = 64, task: str = "sr", noise_sigma: Any = 25.0,
                 jpeg_quality: Any = 40, in_chans: int = 3, flip: bool = True, rotate: bool = True,
                 make_lr: bool = True,
                 cache: bool = True, lr_border: str = "mirror", progress: bool = False) -> None:
        if task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
        if task != "sr" and scale != 1:
            raise ConfigError(f"task {task!r} is for scale 1 (denoising / JPEG), got scale {scale}")
        if patch_size < 1:
            raise ConfigError(f"patch size must be >= 1, got {patch_size}")
        if lr_files is not None and len(lr_files) != len(hr_files):
            raise ConfigError("hr_files and lr_files differ in length")
        self.scale, self.patch_size = int(scale), int(patch_size)
        self.task, self.in_chans, self.make_lr = task, int(in_chans), bool(make_lr)
        self.noise_range = _as_range(noise_sigma, "noise_sigma")
        q = _as_range(jpeg_quality, "jpeg_quality")
        self.quality_range = (int(q[0]), int(q[1]))
        self.flip, self.rotate, self.lr_border = bool(flip), bool(rotate), lr_border
        self.files: list[tuple[Path, Path | None]] = list(zip(hr_files, lr_files or [None] * len(hr_files)))
        self._cache: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        if cache:
            self._fill_cache(progress)
        else:
            self._check_sizes()

    # -- loading

    def _convert(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 with the model's channel count (gray models as in the evaluation)."""
        if self.in_chans == 1 and image.ndim == 3:
            image = rgb_to_y_uint8(image) if self.task == "jpeg" else rgb_to_gray(image)
        return to_channels(image, self.in_chans)

    def _load(self, hr_path: Path, lr_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
        hr = self._convert(read_training_image(hr_path))
        if lr_path is None:
            return modcrop(hr, self.scale), None
        lr = self._convert(read_training_image(lr_path))
        s = self.scale
        (h, w), (hh, ww) = lr.shape[:2], hr.shape[:2]
        if not (0 <= hh - s * h < s and 0 <= ww - s * w < s):
            raise ImageError(f"{lr_path}: LR {w}x{h} does not match HR {ww}x{hh} at x{s}")
        return hr[: s * h, : s * w], lr

    def _usable(self, hr: np.ndarray) -> bool:
        p = self.patch_size * self.scale
        return hr.shape[0] >= p and hr.shape[1] >= p

    def _fill_cache(self, progress: bool) -> None:
        kept: list[tuple[Path, Path | None]] = []
        cache: list[tuple[np.ndarray, np.ndarray | None]] = []
        skipped: list[str] = []
        items = self.files
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="decoding training images", unit="img", file=sys.stderr, leave=False)
        for hr_path, lr_path in items:
            try:
                hr, lr = self._load(hr_path, lr_path)
            except ImageError as exc:
                skipped.append(str(exc))
                continue
            if not self._usable(hr):
                skipped.append(f"{hr_path}: {hr.shape[1]}x{hr.shape[0]} is smaller than the "
                               f"{self.patch_size * self.scale}-pixel HR patch")
                continue
            kept.append((hr_path, lr_path))
            cache.append((hr, lr))
        self._report(kept, skipped)
        self.files, self._cache = kept, cache

    def _check_sizes(self) -> None:
        kept, skipped = [], []
        p = self.patch_size * self.scale
        for hr_path, lr_path in self.files:
            try:
                w, h, _ = _image_size(hr_path)
            except Exception:
                skipped.append(f"{hr_path}: cannot read image")
                continue
            if h < p or w < p:
                skipped.append(f"{hr_path}: {w}x{h} is smaller than the {p}-pixel HR patch")
                continue
            kept.append((hr_path, lr_path))
        self._report(kept, skipped)
        self.files = kept

    def _report(self, kept: list, skipped: list[str]) -> None:
        if not kept:
            first = skipped[0] if skipped else "no files"
            raise AgileIRError(f"no usable training images ({len(skipped)} skipped; first: {first})")
        if skipped:
            warnings.warn(f"{len(skipped)} training images skipped (e.g. {skipped[0]})", RuntimeWarning, stacklevel=3)

    @staticmethod
    def estimate_bytes(files: Sequence[Path]) -> int:
        """Decoded size of ``files`` from their headers (to decide whether to cache)."""
        return sum(_image_bytes(Path(f)) for f in files)

    # -- sampling

    def __len__(self) -> int:
        return len(self.files)

    def _images(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cache is not None:
            return self._cache[index]
        hr_path, lr_path = self.files[index]
        return self._load(hr_path, lr_path)

    def _lr_patch(self, hr: np.ndarray, y: int, x: int) -> np.ndarray:
        """The LR patch at LR position (y, x), equal to the same window of the whole-image LR."""
        s, p, m = self.scale, self.patch_size, LR_MARGIN
        h_lr, w_lr = hr.shape[0] // s, hr.shape[1] // s
        y0, y1 = max(y - m, 0), min(y + p + m, h_lr)
        x0, x1 = max(x - m, 0), min(x + p + m, w_lr)
        region = hr[s * y0: s * y1, s * x0: s * x1]
        lr = imresize(region, 1.0 / s, self.lr_border, output_shape=(y1 - y0, x1 - x0))
        return lr[y - y0: y - y0 + p, x - x0: x - x0 + p]

    def __getitem__(self, key: SampleKey | tuple[int, int] | int) -> dict[str, torch.Tensor]:
        if isinstance(key, SampleKey):
            index, seed = key.index, key.seed
        elif isinstance(key, tuple):
            index, seed = int(key[0]), int(key[1])
        else:
            index, seed = int(key), int(key)
        rng = np.random.default_rng(seed)
        hr, lr_full = self._images(index)
        s, p = self.scale, self.patch_size
        h_lr, w_lr = hr.shape[0] // s, hr.shape[1] // s
        y = int(rng.integers(0, h_lr - p + 1))
        x = int(rng.integers(0, w_lr - p + 1))
        hr_patch = hr[s * y: s * (y + p), s * x: s * (x + p)]
        lr_float: np.ndarray | None = None
        if not self.make_lr:  # the LR is made later, from the batch (data.realworld)
            lr_patch = None
        elif lr_full is not None:
            lr_patch = lr_full[y: y + p, x: x + p]
        elif self.task == "sr":
            lr_patch = self._lr_patch(hr, y, x)
        elif self.task == "jpeg":
            q = int(rng.integers(self.quality_range[0], self.quality_range[1] + 1))
            lr_patch = jpeg_compress(np.ascontiguousarray(hr_patch), q)
            lr_patch = lr_patch.reshape(hr_patch.shape)
        else:  # noise: float, not clipped (as the evaluation makes noisy inputs)
            sigma = float(rng.uniform(*self.noise_range)) if self.noise_range[0] != self.noise_range[1] \
                else self.noise_range[0]
            lr_patch = hr_patch
            lr_float = add_gaussian_noise(hr_patch, sigma, rng)
        # augmentation: the same flips / transpose for both
        ops = (self.flip and rng.random() < 0.5, self.flip and rng.random() < 0.5,
               self.rotate and rng.random() < 0.5)
        hr_out = _to_tensor(hr_patch, ops)
        if lr_patch is None:
            return {"hr": hr_out}
        return {"lr": _to_tensor(lr_float if lr_float is not None else lr_patch, ops), "hr": hr_out}


def _to_tensor(image: np.ndarray, ops: tuple[bool, bool, bool]) -> torch.Tensor:
    """(H, W, C) array -> float32 (C, H, W) in [0, 1] after (hflip, vflip, transpose)."""
    arr = image if image.ndim == 3 else image[:, :, None]
    hflip, vflip, transpose = ops
    if hflip:
        arr = arr[:, ::-1]
    if vflip:
        arr = arr[::-1]
    if transpose:
        arr = arr.transpose(1, 0, 2)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of samples into ``{"lr": (B, C, p, p), "hr": (B, C, sp, sp)}``."""
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


__all__ = ["RestorationPatches", "StepBatchSampler", "SampleKey", "list_images", "pair_images", "collate",
           "TASKS", "LR_MARGIN"]
