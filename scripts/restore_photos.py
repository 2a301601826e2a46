"""Side by side for the shipped denoising and JPEG models on photos nobody here prepared.

    python scripts/restore_photos.py [--out docs/images/restore_photos.png]

The first rows are real files as distributed, degraded by nobody here: matplotlib's sample
``grace_hopper.jpg`` (a scanned portrait saved as JPEG at about quality 80: film grain and
compression) and scikit-image's ``hubble_deep_field.jpg`` (a telescope image with its own sensor
noise in the dark sky). The other rows are scikit-image's clean bundled photos (astronaut, coffee,
chelsea, rocket: in no training set of this project): JPEG rows re-encoded once with Pillow at
quality 10 or 20, the kind of file a user downloads; denoising rows with Gaussian noise of sigma
15 or 25 added (what the model was trained for, not a phone's low-light grain). Each row: the
input crop, the model's full output and the output at --strength 0.5 (as ``agileir restore
--task ... --strength 0.5``).
"""

from __future__ import annotations

import argparse

import numpy as np
from real_photos import jpeg  # scripts/real_photos.py
from side_by_side import busiest_crop, save_grid  # scripts/side_by_side.py

from agileir.data.degradations import add_gaussian_noise
from agileir.inference.restorer import Restorer

# (task, photo, level): level None is the real file as distributed, not degraded here
ROWS = (("jpeg", "grace_hopper", None), ("denoise", "grace_hopper", None), ("denoise", "hubble_deep_field", None),
        ("jpeg", "astronaut", 10), ("jpeg", "rocket", 20), ("denoise", "coffee", 25), ("denoise", "chelsea", 15))


def photo_file(name: str) -> np.ndarray:
    """A bundled photo: scikit-image's, or matplotlib's sample data for grace_hopper."""
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    from skimage import data

    return getattr(data, name)()


def degrade(task: str, image: np.ndarray, level: int | None) -> np.ndarray:
    if level is None:
        return image
    if task == "jpeg":
        return jpeg(image, level)
    return np.rint(np.clip(add_gaussian_noise(image, level, 0), 0, 1) * 255).astype(np.uint8)  # a saved file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=128, help="crop side in pixels")
    ap.add_argument("--zoom", type=int, default=2, help="nearest-neighbour enlargement of the crops")
    ap.add_argument("--out", default="docs/images/restore_photos.png")
    args = ap.parse_args()
    c, z, margin = args.crop, args.zoom, 16
    models = {task: {s: Restorer.from_name(f"agileir-s_{task}", device="cpu", strength=s) for s in (1.0, 0.5)}
              for task in ("jpeg", "denoise")}
    rows = []
    for task, photo, level in ROWS:
        src = degrade(task, photo_file(photo), level)
        y, x = busiest_crop(src, c + 2 * margin)
        region = src[y: y + c + 2 * margin, x: x + c + 2 * margin]
        outputs = [region, models[task][1.0].restore(region), models[task][0.5].restore(region)]
        what = ("as distributed" if level is None else f"JPEG q{level}" if task == "jpeg" else f"noise sigma {level}")
        texts = [f"{photo}, {what}", f"agileir-s_{task}", "strength 0.5"]
        crops = [image[margin: margin + c, margin: margin + c] for image in outputs]
        rows.append([(np.repeat(np.repeat(crop, z, 0), z, 1), text) for crop, text in zip(crops, texts)])
    save_grid(rows, args.out)


if __name__ == "__main__":
    main()
