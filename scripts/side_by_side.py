"""Side-by-side comparison of bicubic and a restoration model on a photo outside the project.

    python scripts/side_by_side.py [PHOTO] [--model agileir-s] [--scales 2 4] [--out docs/images/side_by_side.png]

The photo (default: scikit-image's bundled ``coffee`` photo, which is not in this repository and
not in the training data) is reduced with MATLAB bicubic by each scale, then enlarged back by
bicubic and by the model. The figure shows the same crop of bicubic, model and original for each
scale, and the script prints PSNR-Y against the original (border = scale), so "sharper" is
also measured, not only seen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from agileir.data.resize import imresize
from agileir.inference.restorer import Restorer
from agileir.metrics import psnr


def load_photo(path: str | None) -> tuple[np.ndarray, str]:
    if path:
        from agileir.data.formats import read_picture

        pixels = read_picture(path).pixels
        if pixels.dtype != np.uint8 or pixels.ndim != 3:
            raise SystemExit("use an 8-bit RGB photo")
        return pixels[:, :, :3], Path(path).name
    from skimage import data

    return data.coffee(), "scikit-image coffee.png"


def busiest_crop(image: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` crop with the most detail (largest gradient energy)."""
    g = image.astype(np.float64).mean(axis=2)
    energy = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1, :]
    best, where = -1.0, (0, 0)
    step = max(size // 4, 1)
    for y in range(0, energy.shape[0] - size, step):
        for x in range(0, energy.shape[1] - size, step):
            e = energy[y:y + size, x:x + size].sum()
            if e > best:
                best, where = e, (y, x)
    return where


def label(tile: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(tile)
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, 8 * len(text) + 8, 16], fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def labelled_grid(rows: list[list[tuple[np.ndarray, str]]], gap: int = 4) -> np.ndarray:
    """Rows of (equal-height image, label) tiles joined with white gaps into one picture."""
    strips = []
    for row in rows:
        height = row[0][0].shape[0]
        tiles = []
        for image, text in row:
            tiles += [label(np.ascontiguousarray(image), text), np.full((height, gap, 3), 255, np.uint8)]
        strips += [np.concatenate(tiles[:-1], axis=1), None]
    width = strips[0].shape[1]
    return np.concatenate([s if s is not None else np.full((gap, width, 3), 255, np.uint8) for s in strips[:-1]],
                          axis=0)


def save_grid(rows: list[list[tuple[np.ndarray, str]]], out: str | Path) -> None:
    """Write :func:`labelled_grid` of ``rows`` to ``out`` (its folder made) and say so."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled_grid(rows)).save(out)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", nargs="?", default=None)
    ap.add_argument("--model", default="agileir-s")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--crop", type=int, default=128, help="crop side in output pixels (shown at 2x)")
    ap.add_argument("--out", default="docs/images/side_by_side.png")
    args = ap.parse_args()
    photo, name = load_photo(args.photo)
    rows = []
    for s in args.scales:
        h, w = (photo.shape[0] // s) * s, (photo.shape[1] // s) * s
        hr = photo[:h, :w]
        lr = imresize(hr, 1 / s)
        bic = imresize(lr, s)
        restorer = Restorer.from_name(args.model, s, device="cpu", tile="auto")
        sr = restorer.restore(lr)
        p_bic, p_sr = psnr(bic, hr, crop_border=s, y_channel=True), psnr(sr, hr, crop_border=s, y_channel=True)
        print(f"{name} x{s}: input {lr.shape[1]}x{lr.shape[0]} -> {sr.shape[1]}x{sr.shape[0]}; "
              f"PSNR-Y bicubic {p_bic:.2f} dB, {args.model} {p_sr:.2f} dB ({p_sr - p_bic:+.2f})")
        y, x = busiest_crop(hr, args.crop)
        tiles = []
        for img, text in ((bic, f"bicubic x{s}  {p_bic:.2f} dB"), (sr, f"{args.model} x{s}  {p_sr:.2f} dB"),
                          (hr, "original")):
            crop = img[y:y + args.crop, x:x + args.crop]
            big = np.asarray(Image.fromarray(crop).resize((2 * args.crop, 2 * args.crop), Image.NEAREST))
            tiles.append(label(big, text))
            tiles.append(np.full((2 * args.crop, 4, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles[:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
