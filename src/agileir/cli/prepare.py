"""``agileir prepare SRC DST``: decode a training folder once into memory-mapped ``.npy`` arrays."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="decode a training image folder once into .npy arrays (fast data loading)",
        description="Write every image under SRC (sub-folders such as X2/ included) as a decoded .npy "
                    "array at the same relative path under DST. Training reads .npy files memory-mapped: "
                    "no decoding per patch, and one copy in the page cache shared by every data-loading "
                    "worker and DDP process. Point data.train.hr_dir / lr_dir at DST. Interrupted runs "
                    "continue where they stopped.")
    p.add_argument("source", help="folder of training images (e.g. DIV2K_train_HR or DIV2K_train_LR_bicubic)")
    p.add_argument("destination", help="output folder (created)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agileir.data.prepared import prepare_folder

    written, kept = prepare_folder(args.source, args.destination, progress=True)
    print(f"agileir: prepare: {written} arrays written, {kept} already there, in {args.destination}")
    return 0
