"""Benchmark folder discovery: which ground-truth and LR files make an evaluation pair.

Why: benchmark copies come in a few layouts, and pairing them wrongly (wrong scale folder, GT
not cropped the way the LR was made) silently changes the scores. Supported layouts, for a
folder ``DIR`` holding one data set:

* EDSR / SwinIR: ``DIR/HR/<name>.png`` and ``DIR/LR_bicubic/X{s}/<name>x{s}.png``
  (also ``DIR/LR_bicubic_edsr/...`` and any other ``DIR/<variant>/X{s}`` folder);
* BasicSR: ``DIR/GTmod12/<name>.png`` and ``DIR/LRbicx{s}/<name>.png``;
* ground truth only: images directly in ``DIR`` (or only an ``HR`` / ``GTmod12`` folder); the LR
  is then made on the fly with MATLAB bicubic (mirror border unless told otherwise).

The ground truth for scale ``s`` and an ``h x w`` LR is ``HR[:s*h, :s*w]`` (MATLAB modcrop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agileir.data.degradations import bicubic_downscale, modcrop
from agileir.data.io import is_image_file, read_image
from agileir.errors import AgileIRError, ImageError

HR_DIR_NAMES = ("HR", "GTmod12", "GT", "gt", "hr")
GENERATED_VARIANTS = ("mirror", "replicate")


@dataclass(frozen=True)
class Sample:
    """One ground-truth image and, for SR from files, its LR partner (``None`` if missing)."""

    name: str
    hr_path: Path
    lr_path: Path | None = None


@dataclass
class BenchmarkFolder:
    """The pairs of one data set, how they were found, and how the LR is obtained."""

    root: Path
    name: str
    layout: str  # "edsr", "basicsr" or "hr-only"
    hr_dir: Path
    samples: list[Sample]
    scale: int | None = None
    lr_dir: Path | None = None  # None: LR generated from the HR
    lr_border: str = "mirror"  # border used when the LR is generated
    extra_lr: list[str] = field(default_factory=list)  # LR files without a GT partner

    @property
    def lr_source(self) -> str:
        """Human-readable origin of the LR images."""
        if self.scale is None:
            return "ground truth only"
        if self.lr_dir is not None:
            try:
                return f"files {self.lr_dir.relative_to(self.root)}"
            except ValueError:
                return f"files {self.lr_dir}"
        return f"generated (MATLAB bicubic, {self.lr_border} border)"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))


def _find_hr_dir(root: Path) -> tuple[Path, str]:
    for name in HR_DIR_NAMES:
        cand = root / name
        if cand.is_dir():
            return cand, ("basicsr" if name == "GTmod12" else "edsr")
    return root, "hr-only"


def _scale_folder(root: Path, variant: str, scale: int) -> Path | None:
    """The LR folder of ``variant`` for ``scale``: ``variant/X{s}``, ``variant/x{s}``,
    ``{variant}{s}`` (BasicSR ``LRbicx{s}``) or ``{variant}x{s}``."""
    for cand in (root / variant / f"X{scale}", root / variant / f"x{scale}",
                 root / f"{variant}{scale}", root / f"{variant}x{scale}"):
        if cand.is_dir():
            return cand
    return None


def _auto_lr_dir(root: Path, scale: int) -> Path | None:
    """LR folder in the usual layouts, ``None`` when the folder has no LR at all.

    Raises :class:`AgileIRError` when LR folders exist but not the one for ``scale``.
    """
    candidates = ["LR_bicubic", "LRbicx", "LR_bicubic_edsr", "LR"]
    for variant in candidates:
        found = _scale_folder(root, variant, scale)
        if found is not None:
            return found
    present = sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and (p.name.startswith("LR") or re.fullmatch(r"LRbicx\d+", p.name))
    ) if root.is_dir() else []
    if present:
        have = []
        for p in present:
            sub = root / p
            have += [f"{p}/{q.name}" for q in sorted(sub.iterdir()) if q.is_dir()] or [p]
        raise AgileIRError(
            f"{root}: no LR folder for scale x{scale} (found {', '.join(have)}); "
            "use --lr-variant mirror to generate the LR from the ground truth"
        )
    return None


def lr_names(name: str, scale: int) -> tuple[str, ...]:
    """The LR file stems that pair with ground truth ``name`` at ``scale``, in order of preference
    (the one rule of the package, for benchmark folders and training folders alike)."""
    return (f"{name}x{scale}", f"{name}_x{scale}", f"{name}X{scale}", name, f"{name}_LR")


def match_lr(name: str, scale: int, lr_index: dict[str, Path]) -> Path | None:
    """The LR partner of ``name`` in ``lr_index`` (stem -> file), or None."""
    return next((lr_index[s] for s in lr_names(name, scale) if s in lr_index), None)


def discover(root: str | Path, scale: int | None = None, lr_variant: str = "auto") -> BenchmarkFolder:
    """Find the evaluation pairs under ``root``.

    Args:
        root: folder of one data set (see the module docstring for the layouts).
        scale: SR scale; ``None`` for denoising / JPEG (ground truth only).
        lr_variant: ``"auto"`` (LR files if the folder has them, else generate with a mirror
            border), ``"mirror"`` / ``"replicate"`` (always generate with that border), or the
            name of an LR folder under ``root`` (``LR_bicubic_edsr``, ``LRbicx``, ...).

    Raises :class:`AgileIRError` for a missing folder, no images, or a missing scale folder.
    Per-image problems (missing LR partner) surface when the pair is loaded.
    """
    root = Path(root)
    if not root.is_dir():
        raise AgileIRError(f"{root}: no such data folder")
    hr_dir, layout = _find_hr_dir(root)
    hr_files = _images(hr_dir)
    if not hr_files:
        where = hr_dir if hr_dir != root else root
        raise AgileIRError(f"{where}: no images found (expected HR/, GTmod12/ or image files)")
    names = [p.stem for p in hr_files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise AgileIRError(f"{hr_dir}: several files share the name {dup[0]!r}")
    folder = BenchmarkFolder(root=root, name=root.name, layout=layout, hr_dir=hr_dir,
                             samples=[Sample(p.stem, p) for p in hr_files], scale=scale)
    if scale is None:
        return folder
    if scale < 1:
        raise AgileIRError(f"scale must be >= 1, got {scale}")
    if lr_variant in GENERATED_VARIANTS:
        folder.lr_border = lr_variant
        return folder
    if lr_variant == "auto":
        lr_dir = _auto_lr_dir(root, scale)
        if lr_dir is None:
            return folder
    else:
        lr_dir = _scale_folder(root, lr_variant, scale)
        if lr_dir is None:
            if (root / lr_variant).is_dir() and _images(root / lr_variant):
                lr_dir = root / lr_variant
            else:
                raise AgileIRError(
                    f"{root}: no LR folder {lr_variant}/X{scale} (nor {lr_variant}{scale}) for scale x{scale}"
                )
    if lr_dir == hr_dir:
        raise AgileIRError(f"{root}: the LR folder is the ground-truth folder")
    lr_files = _images(lr_dir)
    index = {p.stem: p for p in lr_files}
    samples = [Sample(s.name, s.hr_path, match_lr(s.name, scale, index)) for s in folder.samples]
    used = {s.lr_path for s in samples if s.lr_path is not None}
    folder.samples = samples
    folder.lr_dir = lr_dir
    folder.layout = "basicsr" if lr_dir.name.startswith("LRbicx") else folder.layout
    folder.extra_lr = [p.name for p in lr_files if p not in used]
    return folder


def load_sr_pair(
    folder: BenchmarkFolder, sample: Sample
) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, gt)`` uint8 arrays for one SR sample.

    With LR files, ``gt = HR[:s*h, :s*w]`` and the sizes must agree with a modcrop; without,
    ``lr = bicubic_downscale(HR)`` and ``gt = modcrop(HR)``. Raises :class:`ImageError`.
    """
    s = folder.scale
    if s is None:
        raise AgileIRError("load_sr_pair needs a folder discovered with a scale")
    hr = read_image(sample.hr_path)
    if folder.lr_dir is None:
        if hr.shape[0] < s or hr.shape[1] < s:
            raise ImageError(f"{sample.hr_path}: {hr.shape[1]}x{hr.shape[0]} is smaller than the scale x{s}")
        return bicubic_downscale(hr, s, folder.lr_border), modcrop(hr, s)
    if sample.lr_path is None:
        raise ImageError(f"{sample.name}: no LR image in {folder.lr_dir} (expected {sample.name}x{s}.png)")
    lr = read_image(sample.lr_path)
    h, w = lr.shape[:2]
    H, W = hr.shape[:2]
    if not (0 <= H - s * h < s and 0 <= W - s * w < s):
        raise ImageError(
            f"{sample.lr_path}: LR {w}x{h} does not match HR {W}x{H} at x{s} "
            f"(expected LR {W // s}x{H // s})"
        )
    return lr, hr[: s * h, : s * w]


__all__ = ["Sample", "BenchmarkFolder", "discover", "load_sr_pair", "lr_names", "match_lr", "HR_DIR_NAMES", "GENERATED_VARIANTS"]
