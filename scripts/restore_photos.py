"""Side by side for the shipped denoising and JPEG models on photos nobody here prepared.

    python scripts/restore_photos.py [--out docs/images/restore_photos.png]

The photos are scikit-image's bundled ones (astronaut, coffee, chelsea, rocket: in no training set
of this project). JPEG rows: each photo re-encoded once with Pillow at quality 10 or 20, the kind
of file a user downloads. Denoising rows: the same photos with Gaussian noise of sigma 15 or 25
added (the bundled photos are clean; a camera's noise is not Gaussian, so these rows show what the
model was trained for, not a phone's low-light grain). Each row: the input crop, the model's full
output and the output at --strength 0.5 (as ``agileir restore --task ... --strength 0.5``).
"""

from __future__ import annotations

import argparse

import numpy as np
from real_photos import jpeg  # scripts/real_photos.py
from side_by_side import busiest_crop, save_grid  # scripts/side_by_side.py

from agileir.data.degradations import add_gaussian_noise
from agileir.inference.restorer import Restorer

ROWS = (("jpeg", "astronaut", 10), ("jpeg", "rocket", 20), ("denoise", "coffee", 25), ("denoise", "chelsea", 15))


def degrade(task: str, image: np.ndarray, level: int) -> np.ndarray:
    if task == "jpeg":
        return jpeg(image, level)
    return np.rint(np.clip(add_gaussian_noise(image, level, 0), 0, 1) * 255).astype(np.uint8)  # a saved file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=128, help="crop side in pixels")
    ap.add_argument("--zoom", type=int, default=2, help="nearest-neighbour enlargement of the crops")
    ap.add_argument("--out", default="docs/images/restore_photos.png")
    args = ap.parse_args()
    from skimage import data

    c, z, margin = args.crop, args.zoom, 16
    models = {task: {s: Restorer.from_name(f"agileir-s_{task}", device="cpu", strength=s) for s in (1.0, 0.5)}
              for task in ("jpeg", "denoise")}
    rows = []
    for task, photo, level in ROWS:
        src = degrade(task, getattr(data, photo)(), level)
        y, x = busiest_crop(src, c + 2 * margin)
        region = src[y: y + c + 2 * margin, x: x + c + 2 * margin]
        outputs = [region, models[task][1.0].restore(region), models[task][0.5].restore(region)]
        what = f"JPEG q{level}" if task == "jpeg" else f"noise sigma {level}"
        texts = [f"{photo}, {what}", f"agileir-s_{task}", "strength 0.5"]
        crops = [image[margin: margin + c, margin: margin + c] for image in outputs]
        rows.append([(np.repeat(np.repeat(crop, z, 0), z, 1), text) for crop, text in zip(crops, texts)])
    save_grid(rows, args.out)


if __name__ == "__main__":
    main()
