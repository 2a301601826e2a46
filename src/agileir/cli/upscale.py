"""``agileir upscale`` and ``agileir restore``: restore users' image files with shipped or own weights.

Both run the same pipeline (:class:`~agileir.inference.restorer.Restorer`); ``upscale`` expects a
super-resolution model, ``restore`` a denoising or JPEG model. Outputs are written atomically,
inputs are never overwritten, existing outputs are skipped unless ``--overwrite``; a file that
cannot be read or written is reported in one line and the others still run (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agileir.errors import AgileIRError, ConfigError, ImageError

DEFAULT_MODEL = "agileir-s"


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("upscale", help="upscale image files (super-resolution)",
                        description="Upscale images with shipped AgileIR weights (default) or a weights file. "
                                    "Writes NAME_x<scale>.<ext> beside each input unless -o is given.")
    _common(up, default_model=DEFAULT_MODEL)
    up.add_argument("--scale", type=int, choices=(2, 3, 4, 8), default=None,
                    help="upscaling factor (default: the weights' own, or 2 for a shipped model name)")
    up.set_defaults(func=run, command_kind="sr")
    re = sub.add_parser("restore", help="denoise or remove JPEG artefacts from image files",
                        description="Restore images with a denoising or JPEG-artefact model (weights file).")
    _common(re, default_model=None)
    re.set_defaults(func=run, command_kind="restore", scale=None)


def _common(p: argparse.ArgumentParser, default_model: str | None) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output", default=None,
                   help="output folder (or a file name for a single input); default: beside each input")
    p.add_argument("--model", default=default_model, required=default_model is None,
                   help="shipped weights (agileir-s, agileir-s_x4) or a weights file (.safetensors, SwinIR .pth)"
                   + (f"; default {default_model}" if default_model else ""))
    p.add_argument("--tile", default="auto",
                   help="tile side in input pixels (a window multiple), 'auto' (from free memory, default) or 0 "
                        "(whole image)")
    p.add_argument("--tile-overlap", type=int, default=32, help="tile overlap in input pixels (default 32)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="fp32 (default) or bf16 autocast; fp16 is refused for these models")
    p.add_argument("--self-ensemble", action="store_true", help="average 8 flips/rotations (8x slower)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--format", choices=("auto", "png", "jpg", "webp", "tif", "bmp"), default="auto",
                   help="output format (default: the input's)")
    p.add_argument("--suffix", default=None, help="appended to output names (default _x<scale> or _restored)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def collect_inputs(items: list[str]) -> list[Path]:
    """Image files named directly or found (non-recursively) in folders, in order, without repeats."""
    from agileir.data.formats import FORMATS, image_format, is_supported

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and is_supported(f))
            if not found:
                raise ImageError(f"{p}: no images found (looked for {', '.join(sorted(FORMATS))})")
            files.extend(found)
        elif p.is_file():
            image_format(p)  # unsupported extension: one-line error before any work
            files.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def output_paths(inputs: list[Path], output: str | None, suffix: str, fmt: str) -> list[Path]:
    """Where each result goes; refuses any plan that would overwrite an input or collide."""
    from agileir.data.formats import FORMATS

    def name(src: Path) -> str:
        ext = src.suffix if fmt == "auto" else "." + fmt
        return f"{src.stem}{suffix}{ext}"

    out_arg = Path(output) if output else None
    single_file = (out_arg is not None and len(inputs) == 1 and out_arg.suffix.lower() in FORMATS
                   and not out_arg.is_dir())
    if single_file:
        targets = [out_arg]
    elif out_arg is not None:
        if out_arg.exists() and not out_arg.is_dir():
            raise ConfigError(f"-o {out_arg}: exists and is not a folder (give a folder for several inputs)")
        targets = [out_arg / name(src) for src in inputs]
    else:
        targets = [src.parent / name(src) for src in inputs]
    sources = {src.resolve() for src in inputs}
    seen: set[Path] = set()
    for src, dst in zip(inputs, targets):
        key = dst.resolve()
        if key in sources:
            raise ConfigError(f"{dst} would overwrite an input; choose another -o folder or a --suffix")
        if key in seen:
            raise ConfigError(f"two inputs would both be written to {dst}; use -o with a --suffix or separate runs")
        seen.add(key)
    return targets


def _load(args: argparse.Namespace):
    from agileir.inference.restorer import Restorer
    from agileir.models.registry import resolve_model

    # upscale: shipped SR weights by name, or a file; restore: weights of any other task
    model = resolve_model(args.model, args.scale) if args.command_kind == "sr" else resolve_model(args.model)
    task = model.config.task
    if args.command_kind == "sr" and task != "sr":
        raise ConfigError(f"{args.model} is a {task} model, not super-resolution; use 'agileir restore'")
    if args.command_kind == "restore" and task == "sr":
        raise ConfigError(f"{args.model} is a super-resolution model; use 'agileir upscale'")
    return Restorer(model, device=args.device, precision=args.precision, tile=args.tile,
                    tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agileir.data.formats import FORMATS, read_picture, write_picture

    inputs = collect_inputs(args.inputs)
    restorer = _load(args)
    s = restorer.scale
    suffix = args.suffix if args.suffix is not None else (f"_x{s}" if args.command_kind == "sr" else "_restored")
    targets = output_paths(inputs, args.output, suffix, args.format)
    quiet = args.quiet or not sys.stderr.isatty()
    cfg = restorer.config
    print(f"agileir: {Path(args.model).stem if Path(args.model).suffix else args.model} "
          f"({cfg.attention}, {cfg.task} x{cfg.scale}) on {restorer.device}, {len(inputs)} image(s)",
          file=sys.stderr)
    failures = written = skipped = 0
    bar = tqdm(total=len(inputs), unit="img", disable=quiet, dynamic_ncols=True)
    tiles = tqdm(total=0, unit="tile", leave=False, disable=quiet, dynamic_ncols=True, position=1)

    def tile_progress(done: int, total: int) -> None:
        if tiles.total != total:
            tiles.reset(total=total)
        tiles.n = done
        tiles.refresh()

    for src, dst in zip(inputs, targets):
        bar.set_postfix_str(src.name)
        if dst.exists() and not args.overwrite:
            tqdm.write(f"agileir: {dst} exists, skipped (use --overwrite)", file=sys.stderr)
            skipped += 1
            bar.update(1)
            continue
        try:
            picture = read_picture(src)
            fmt = picture.format if args.format == "auto" else FORMATS["." + args.format]
            result = restorer.restore_array(picture.pixels, progress=tile_progress)
            write_picture(dst, result, fmt)
            written += 1
        except AgileIRError as exc:
            tqdm.write(f"agileir: error: {exc}", file=sys.stderr)
            failures += 1
        bar.update(1)
    tiles.close()
    bar.close()
    summary = f"agileir: {written} written, {skipped} skipped, {failures} failed"
    if len(inputs) == 1 and written == 1:
        summary = f"agileir: wrote {targets[0]}"
    print(summary, file=sys.stderr)
    return 1 if failures else 0


__all__ = ["register", "run", "collect_inputs", "output_paths"]
