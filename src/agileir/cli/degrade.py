"""``agileir degrade SRC DST --scale S``: a benchmark folder degraded by the real-world model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "degrade", help="make a real-world-degraded copy of a benchmark folder (for scoring real-photo models)",
        description="Degrade every ground-truth image of SRC (a folder of images, or one with HR/) with the "
                    "real-world degradation model (blur, resize, noise, JPEG, twice) and write DST/HR/ and "
                    "DST/LR_realworld/X<scale>/. Each image's seed comes from --seed and its file name, so the "
                    "inputs are the same on every machine. Score with: agileir test --data DST "
                    "--lr-variant LR_realworld --model ...")
    p.add_argument("source", help="benchmark folder (e.g. Set14, or Set14/HR)")
    p.add_argument("destination", help="output folder (created)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True, help="downscaling factor")
    p.add_argument("--seed", type=int, default=0, help="degradation seed (default %(default)s)")
    p.add_argument("--config", default=None,
                   help="YAML file with a realworld section (the data.train.realworld options of a training "
                        "config, or the section itself); default: the built-in settings")
    p.set_defaults(func=run)


def _settings(path: str | None) -> dict | None:
    """The realworld section of a training config (data.train.realworld), or of a file with a
    ``realworld:`` section, or the file itself as that section."""
    if path is None:
        return None
    import yaml

    from agileir.errors import ConfigError

    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the degradation settings ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of degradation settings")
    if isinstance(doc.get("data"), dict):
        doc = (doc["data"].get("train") or {}).get("realworld") or {}
    return dict(doc.get("realworld", doc))


def run(args: argparse.Namespace) -> int:
    from agileir.evaluation.degraded import VARIANT, degrade_benchmark

    n = degrade_benchmark(args.source, args.destination, args.scale, args.seed, _settings(args.config))
    print(f"agileir: degrade: {n} images in {args.destination}/HR and {args.destination}/{VARIANT}/X{args.scale} "
          f"(seed {args.seed})")
    return 0
