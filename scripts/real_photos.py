"""Side by side on real photos: the bicubic-trained and the real-world model on JPEG-compressed inputs.

    python scripts/real_photos.py [--scale 4] [--out docs/images/real_photos.png]

The photos are scikit-image's bundled ones (astronaut, coffee, chelsea, rocket: in no training
set of this project and prepared by nobody here), each re-encoded once as JPEG at quality 30, 40
or 50 with Pillow: the input a user downloads from the web. There is no ground truth, so this is
the visual half of the evaluation (the measured half is docs/weights.md's degraded-benchmark
table). Each row shows one input crop enlarged by nearest neighbour, bicubic, the bicubic-trained
model and the real-world model.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image
from side_by_side import busiest_crop, save_grid  # scripts/side_by_side.py

from agileir.data.resize import imresize
from agileir.inference.restorer import Restorer

PHOTOS = (("astronaut", 30), ("coffee", 40), ("chelsea", 50), ("rocket", 40))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64, help="input crop side (shown enlarged by the scale)")
    ap.add_argument("--models", nargs=2, default=None, help="bicubic-trained and real-world weights")
    ap.add_argument("--out", default="docs/images/real_photos.png")
    args = ap.parse_args()
    from skimage import data

    s, c = args.scale, args.crop
    names = args.models or [f"agileir-s_x{s}", f"agileir-s-real_x{s}"]
    restorers = [Restorer.from_name(n, s, device="cpu") for n in names]
    margin = 16  # model context around the crop, cut away after
    rows = []
    for photo, quality in PHOTOS:
        src = jpeg(getattr(data, photo)(), quality)
        y, x = busiest_crop(src, c + 2 * margin)
        region = src[y: y + c + 2 * margin, x: x + c + 2 * margin]
        inner = slice(margin * s, (margin + c) * s)
        outputs = [np.repeat(np.repeat(region, s, 0), s, 1), imresize(region, s)]
        outputs += [r.restore(region) for r in restorers]
        texts = [f"{photo}, JPEG q{quality}", f"bicubic x{s}"] + [Path(n).stem for n in names]
        rows.append([(image[inner, inner], text) for image, text in zip(outputs, texts)])
    save_grid(rows, args.out)


if __name__ == "__main__":
    main()
