"""Training-data throughput on a DIV2K-shaped folder: patches per second per loader worker.

Builds (once) a synthetic DIV2K layout from the images the package ships, 2040 pixels wide like
DIV2K's HR images, with the official bicubic LR folder beside it, then times the training data
set's per-sample work (what each DataLoader worker does) in four set-ups:

* ``png, LR files``: PNG decoded per patch, paired LR folder (``cache: false``, the default for a
  set larger than ``cache_max_gb``; DIV2K decoded is ~8 GB with its X2 LR)
* ``png, LR on the fly``: PNG decoded per patch, LR made by the MATLAB bicubic per patch
* ``cached``: every image decoded once into memory (``cache: true``)
* ``npy``: ``agileir prepare`` arrays, memory-mapped (no decoding, shared page cache)

    python scripts/loader_throughput.py                 # the table in docs/training.md
    python scripts/loader_throughput.py --images 16 --seconds 20 --patch 64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_div2k_like(root: Path, images: int, width: int = 2040, height: int = 1356, scale: int = 2) -> Path:
    """DIV2K_train_HR/0001.png ... and DIV2K_train_LR_bicubic/X<s>/0001x<s>.png from shipped images."""
    from PIL import Image

    from agileir.data.datasets import list_images
    from agileir.data.io import read_image, write_image
    from agileir.data.resize import imresize

    sources = list_images(REPO / "src" / "agileir" / "assets" / "train" / "B100-12")
    hr_dir, lr_dir = root / "DIV2K_train_HR", root / "DIV2K_train_LR_bicubic" / f"X{scale}"
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        hr_path, lr_path = hr_dir / f"{i + 1:04d}.png", lr_dir / f"{i + 1:04d}x{scale}.png"
        if hr_path.is_file() and lr_path.is_file():
            continue
        src = Image.fromarray(read_image(sources[i % len(sources)]))
        hr = np.asarray(src.resize((width, height), Image.BICUBIC))
        write_image(hr_path, hr)
        write_image(lr_path, imresize(hr, 1.0 / scale))
    return root


def samples_per_second(dataset, seconds: float, seed: int = 0) -> tuple[float, float]:
    """(patches per wall second, patches per CPU second of this process): the second is what a
    worker with a core of its own delivers, whatever else the machine is running."""
    from agileir.data.datasets import StepBatchSampler

    keys = StepBatchSampler(len(dataset), 1, seed=seed)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for step in range(1, 10 ** 9):
        dataset[keys.keys_for_step(step)[0]]
        n += 1
        if time.perf_counter() - t0 >= seconds:
            break
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "div2k-like")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64, help="LR patch (the GPU recipe's)")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)

    import torch

    from agileir.data.datasets import RestorationPatches, list_images, pair_images
    from agileir.data.prepared import prepare_folder

    torch.set_num_threads(1)
    root = make_div2k_like(args.root, args.images, scale=args.scale)
    for sub in ("DIV2K_train_HR", "DIV2K_train_LR_bicubic"):
        prepare_folder(root / sub, root / "npy" / sub)
    hr = list_images(root / "DIV2K_train_HR")
    pairs = pair_images(hr, root / "DIV2K_train_LR_bicubic", args.scale)
    npy_pairs = pair_images(list_images(root / "npy" / "DIV2K_train_HR"), root / "npy" / "DIV2K_train_LR_bicubic",
                            args.scale)
    common = dict(scale=args.scale, patch_size=args.patch)
    setups = {
        "png, LR files": lambda: RestorationPatches([p[0] for p in pairs], [p[1] for p in pairs], cache=False, **common),
        "png, LR on the fly": lambda: RestorationPatches(hr, None, cache=False, **common),
        "cached, LR files": lambda: RestorationPatches([p[0] for p in pairs], [p[1] for p in pairs], cache=True, **common),
        "npy, LR files": lambda: RestorationPatches([p[0] for p in npy_pairs], [p[1] for p in npy_pairs],
                                                    cache=False, **common),
    }
    print(f"{args.images} DIV2K-shaped images (2040x1356, x{args.scale}), LR patch {args.patch}, one process, "
          f"{args.seconds:.0f} s per set-up")
    print("| set-up | patches per CPU second (one worker on its own core) | patches per wall second here |")
    print("|---|---|---|")
    for name, make in setups.items():
        wall, cpu = samples_per_second(make(), args.seconds)
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
