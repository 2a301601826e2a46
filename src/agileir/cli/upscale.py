"""``agileir upscale`` and ``agileir restore``: restore users' image files with shipped or own weights.

Both run the same pipeline (:class:`~agileir.inference.restorer.Restorer`); ``upscale`` expects a
super-resolution model, ``restore`` a denoising or JPEG model. Outputs are written atomically,
inputs are never overwritten, existing outputs are skipped unless ``--overwrite``.

Everything that can be checked before the model runs is checked first, from the options and
the files' headers: option values, the weights, where each output goes and that the folder is
writable, and that each output format can hold its image (alpha, 16 bits). Option mistakes stop
the run there (exit 2); an input that cannot be read or is too small for the model is reported
in one line and the others still run (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agileir.errors import AgileIRError, ConfigError, ImageError
from agileir.inference.tiling import DEFAULT_OVERLAP
from agileir.runtime import INFERENCE_PRECISIONS

DEFAULT_MODEL = "agileir-s"
DEVICE_HELP = "auto (CUDA if available), cpu or cuda"
SR_TASKS, RESTORE_TASKS = ("sr",), ("denoise", "jpeg")


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [low, high], else a one-line usage error (exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    return parse


def _shipped_names(tasks: tuple[str, ...]) -> list[str]:
    """Shipped weights for these tasks, for help texts; never fails (help must always print)."""
    from agileir.models import zoo

    try:
        return [i.name for i in zoo.shipped_info(tasks)]
    except AgileIRError:
        return list(zoo.shipped_weights()) if "sr" in tasks else []


def _scales_help() -> str:
    from agileir.models import zoo

    try:
        shipped = zoo.shipped_scales(SR_TASKS)
    except AgileIRError:
        shipped = {}
    listed = "; ".join(f"{preset} x{', x'.join(map(str, scales))}" for preset, scales in shipped.items())
    return ("upscaling factor: any the weights support (default: the weights' own, or 2 with a preset name); "
            f"shipped: {listed or 'none'}")


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("upscale", help="upscale image files (super-resolution)",
                        description="Upscale images with shipped AgileIR weights (default) or a weights file. "
                                    "Writes NAME_x<scale>.<ext> beside each input unless -o is given. "
                                    "'agileir models' lists the shipped weights.")
    sr_names = _shipped_names(SR_TASKS)
    presets = sorted({name.rsplit("_x", 1)[0] for name in sr_names})
    _common(up, default_model=DEFAULT_MODEL,
            model_help=f"shipped weights ({', '.join(sr_names) or 'none'}; see 'agileir models'), a preset name "
                       f"with --scale ({', '.join(presets) or 'none shipped'}), or a super-resolution weights file "
                       f"(.safetensors, official SwinIR .pth); default {DEFAULT_MODEL}",
            suffix_help="appended to output names (default _x<scale>, e.g. _x2)")
    up.add_argument("--scale", type=_int_in(1), default=None, help=_scales_help())
    up.set_defaults(func=run, command_kind="sr")
    re_names = _shipped_names(RESTORE_TASKS)
    shipped = (f"shipped: {', '.join(re_names)}" if re_names else
               "none ship with agileir ('agileir models' lists what does)")
    re = sub.add_parser("restore", help="denoise or remove JPEG artefacts from image files",
                        description="Remove noise (--task denoise) or JPEG artefacts (--task jpeg) with the shipped "
                                    "blind colour models, or restore with a weights file (--model). "
                                    "Writes NAME_restored.<ext> beside each input unless -o is given.")
    _common(re, default_model=None,
            model_help="shipped weights or a denoising / JPEG-artefact weights file (.safetensors, official "
                       f"SwinIR .pth); default: the shipped model of --task ({shipped})",
            suffix_help="appended to output names (default _restored)")
    re.add_argument("--task", choices=RESTORE_TASKS, default=None,
                    help="denoise (Gaussian-like noise, sigma up to 50 on the 0-255 scale) or jpeg (JPEG qualities "
                         "10-50); picks the shipped model, or checks that --model was trained for it")
    re.add_argument("--strength", type=float, default=1.0, metavar="S",
                    help="how much of the model's correction to keep, 0 (none) to 1 (all, the default): lower keeps "
                         "more grain or texture")
    re.set_defaults(func=run, command_kind="restore", scale=None)


def _common(p: argparse.ArgumentParser, default_model: str | None, model_help: str, suffix_help: str) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output", default=None,
                   help="output folder (or a file name for a single input); default: beside each input")
    p.add_argument("--model", default=default_model, help=model_help)
    p.add_argument("--tile", default="auto",
                   help="tile side in input pixels (a multiple of the model's window), 'auto' (from free memory, "
                        "default) or 0 (whole image)")
    p.add_argument("--tile-overlap", type=_int_in(0), default=DEFAULT_OVERLAP,
                   help="tile overlap in input pixels, smaller than the tile (default %(default)s)")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default=None,
                   help="fp32 (default; int8 for int8 weights files), bf16 (autocast on the CPU's AMX/AVX-512 BF16 units or a "
                        "GPU), int8 (linear layers quantized, CPU), or auto (bf16 where the device has bf16 units, "
                        "else fp32); bf16 and int8 change PSNR-Y by at most 0.01 dB on the shipped models")
    p.add_argument("--self-ensemble", action="store_true", help="average 8 flips/rotations (8x slower)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default %(default)s)")
    p.add_argument("--threads", type=_int_in(1), default=None, metavar="N",
                   help="CPU threads for torch (default: torch's default, at most the CPUs this process may use); "
                        "fewer than the cores when another job shares the machine")
    p.add_argument("--format", choices=("auto", "png", "jpg", "webp", "tif", "bmp"), default="auto",
                   help="output format (default: the input's, or the -o file's extension)")
    p.add_argument("--jpeg-quality", type=_int_in(1, 100), default=95, metavar="Q",
                   help="quality of JPEG and WebP outputs, 1-100 (default %(default)s)")
    p.add_argument("--suffix", default=None, help=suffix_help)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max-pixels", type=_int_in(0), default=None, metavar="N",
                   help="largest input image in pixels (default: Pillow's decompression-bomb limit, about 89 "
                        "million; 0: no limit); for trusted files larger than that")


def _warn(message: str) -> None:
    print(f"agileir: warning: {message}", file=sys.stderr)


def _looks_like_image(path: Path) -> bool:
    import mimetypes

    kind = mimetypes.guess_type(path.name)[0] or ""
    return kind.startswith("image/") or path.suffix.lower() in (".heic", ".heif", ".avif", ".jxl", ".dng")


def collect_inputs(items: list[str], warn: Callable[[str], None] | None = _warn) -> list[Path]:
    """Image files named directly or found (non-recursively) in folders, in order, without repeats.

    Image-like files in a folder that agileir cannot read (``.gif``, ``.heic``, ...) are passed
    over with one ``warn`` line each; other files (text, sidecars) silently.
    """
    from agileir.data.formats import FORMATS, image_format, is_supported

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            entries = sorted(f for f in p.iterdir() if f.is_file())
            found = [f for f in entries if is_supported(f)]
            if warn is not None:
                for f in entries:
                    if not is_supported(f) and _looks_like_image(f):
                        warn(f"{f}: skipped, unsupported image format {f.suffix.lower()!r} "
                             f"(supported: {', '.join(sorted(FORMATS))})")
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
    """Where each result goes; refuses any plan that would overwrite an input or collide.

    ``-o NAME.png`` is one output file for one input; with several inputs it is refused rather
    than taken as a folder called ``NAME.png``.
    """
    from agileir.data.formats import FORMATS

    def name(src: Path) -> str:
        ext = src.suffix if fmt == "auto" else "." + fmt
        return f"{src.stem}{suffix}{ext}"

    out_arg = Path(output) if output else None
    names_a_file = out_arg is not None and out_arg.suffix.lower() in FORMATS and not out_arg.is_dir()
    if names_a_file and len(inputs) > 1:
        raise ConfigError(f"-o {out_arg} names one image file but there are {len(inputs)} inputs; "
                          f"give a folder (e.g. -o {out_arg.with_suffix('')}/)")
    if names_a_file:
        if fmt != "auto" and FORMATS[out_arg.suffix.lower()] != FORMATS["." + fmt]:
            raise ConfigError(f"-o {out_arg} and --format {fmt} disagree; change one of them")
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


def check_folder_writable(folder: Path) -> None:
    """:class:`ConfigError` unless files can be created in ``folder`` (or where it would be made).

    Why a real probe (a temporary file, removed at once) rather than ``os.access``: root passes
    every permission check, and a read-only file system or a full disk only shows on a write.
    """
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"cannot write to {folder}: {base} is a file, not a folder; choose another -o")
    try:
        fd, probe = tempfile.mkstemp(prefix=".agileir-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write to {folder} ({exc.strerror or exc}); choose another -o folder") from None


def _load(args: argparse.Namespace, tile: int | str | None):
    from agileir.inference.restorer import Restorer
    from agileir.models.registry import resolve_model

    # upscale: shipped SR weights by name, or a file; restore: weights of any other task
    if args.command_kind == "restore" and args.model is None:
        args.model = shipped_for_task(args.task)
    model = resolve_model(args.model, args.scale) if args.command_kind == "sr" else \
        resolve_model(args.model, task=args.task)
    task = model.config.task
    if args.command_kind == "sr" and task != "sr":
        raise ConfigError(f"{args.model} is a {task} model, not super-resolution; use 'agileir restore'")
    if args.command_kind == "restore" and task == "sr":
        raise ConfigError(f"{args.model} is a super-resolution model; use 'agileir upscale'")
    return Restorer(model, device=args.device, precision=args.precision, tile=tile,
                    tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
                    strength=getattr(args, "strength", 1.0))


def shipped_for_task(task: str | None) -> str:
    """The shipped weights ``agileir restore --task TASK`` uses: AgileIR's first."""
    from agileir.models import zoo

    if task is None:
        raise ConfigError("say what to remove: --task denoise or --task jpeg (or --model WEIGHTS)")
    infos = zoo.shipped_info((task,))
    if not infos:
        raise ConfigError(f"no shipped weights for --task {task}; pass a weights file with --model")
    return min(infos, key=lambda i: (i.attention != "gswa", i.name)).name


@dataclass
class Job:
    """One image to restore, after every check that needs no model run."""

    src: Path
    dst: Path
    fmt: str  # Pillow format name of the output
    width: int
    height: int


def file_error(src: Path, exc: Exception, dst: Path | None = None) -> str:
    """One line for a file that failed: the package's own message, or the cause of anything
    unexpected (out of memory, a decoder bug), with the file named once."""
    if isinstance(exc, AgileIRError):
        message = str(exc)
    elif isinstance(exc, MemoryError):
        message = "out of memory; try a smaller --tile"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")
    if str(src) not in message and (dst is None or str(dst) not in message):
        message = f"{src}: {message}"
    return message


def plan_jobs(restorer, inputs: list[Path], targets: list[Path], overwrite: bool,
              report: Callable[[str], None]) -> tuple[list[Job], int, int]:
    """Check every input against the options before any model runs.

    Returns the jobs to run, how many inputs were skipped (output exists) and how many failed
    (unreadable, too small: reported through ``report``). Raises :class:`ConfigError` for what
    no input could get past: an output format that cannot hold the image, a tile overlap as
    large as the automatic tile, an output folder that cannot be written.
    """
    from agileir.data.formats import check_writable, image_format, probe_picture
    from agileir.models.windows import too_small_for_window

    window = restorer.config.window_size
    jobs: list[Job] = []
    skipped = failed = 0
    for src, dst in zip(inputs, targets):
        if dst.exists() and not overwrite:
            report(f"agileir: {dst} exists, skipped (use --overwrite)")
            skipped += 1
            continue
        try:
            info = probe_picture(src)
        except Exception as exc:  # whatever one file does, the others are still processed
            report(f"agileir: error: {file_error(src, exc)}")
            failed += 1
            continue
        fmt = image_format(dst)
        if restorer.config.task != "sr" and restorer.config.in_chans == 1 and info.channels >= 3:
            report(f"agileir: error: {src}: colour image, but the model restores gray images only "
                   "(one channel); use a colour model, or convert the image to gray first")
            failed += 1
            continue
        try:
            check_writable(src, fmt, info.channels, info.bits)
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
        if too_small_for_window(info.height, info.width, window):
            report(f"agileir: error: {src}: image {info.width}x{info.height} is too small for this model's "
                   f"{window}x{window} windows; use images at least {window // 2 + 1} pixels on each side")
            failed += 1
            continue
        try:
            restorer.progress_total(info.height, info.width)  # the automatic tile against the overlap
        except ConfigError as exc:
            raise ConfigError(f"{src}: {exc}; lower --tile-overlap or give --tile") from None
        jobs.append(Job(src, dst, fmt, info.width, info.height))
    for folder in dict.fromkeys(job.dst.parent for job in jobs):
        check_folder_writable(folder)
    return jobs, skipped, failed


def _bar_callback(bar, passes: int) -> Callable[[int, int], None]:
    """A progress callback that moves ``bar`` to ``done`` of ``total`` (and names the pass)."""
    def update(done: int, total: int) -> None:
        if bar.total != total:  # e.g. a whole-image pass that fell back to tiles
            bar.total = total
        if passes > 1:
            current = min((done - 1) * passes // total + 1, passes)
            bar.set_postfix_str(f"pass {current}/{passes}", refresh=False)
        if done >= bar.n:
            bar.update(done - bar.n)
        else:
            bar.n = done
            bar.refresh()
    return update


def run(args: argparse.Namespace) -> int:
    from agileir.inference.restorer import parse_tile
    from agileir.inference.tiling import check_overlap
    from agileir.runtime import torch_threads

    tile = parse_tile(str(args.tile))
    if isinstance(tile, int):
        try:
            check_overlap(args.tile_overlap, tile)
        except ConfigError:
            raise ConfigError(f"--tile-overlap {args.tile_overlap} must be smaller than --tile {tile}") from None
    from agileir.data.io import pixel_limit, set_pixel_limit

    limit = pixel_limit()
    if args.max_pixels is not None:
        set_pixel_limit(args.max_pixels)
    try:
        inputs = collect_inputs(args.inputs)
        with torch_threads(args.threads) as threads:
            return _run(args, tile, inputs, threads)
    finally:
        set_pixel_limit(limit)  # the option applies to this command, not to the caller's process


def _run(args: argparse.Namespace, tile: int | str | None, inputs: list[Path], threads: int) -> int:
    from tqdm import tqdm

    from agileir.data.formats import read_picture, write_picture
    from agileir.inference.ensemble import TRANSFORMS
    from agileir.runtime import precision_note

    restorer = _load(args, tile)
    s = restorer.scale
    suffix = args.suffix if args.suffix is not None else (f"_x{s}" if args.command_kind == "sr" else "_restored")
    targets = output_paths(inputs, args.output, suffix, args.format)
    cfg = restorer.config
    where = f"{restorer.device}" + (f", {threads} thread{'s' if threads > 1 else ''}" if restorer.device.type == "cpu" else "")
    print(f"agileir: {Path(args.model).stem if Path(args.model).suffix else args.model} "
          f"({cfg.attention}, {cfg.task} x{cfg.scale}) on {where}, {restorer.precision}, {len(inputs)} image(s)",
          file=sys.stderr)
    note = precision_note(restorer.precision, restorer.device)
    if note:
        print(note, file=sys.stderr)
    report = lambda line: print(line, file=sys.stderr)  # noqa: E731
    jobs, skipped, failures = plan_jobs(restorer, inputs, targets, args.overwrite, report)
    quiet = args.quiet or not sys.stderr.isatty()
    passes = len(TRANSFORMS) if args.self_ensemble else 1
    written = 0
    for i, job in enumerate(jobs, start=1):
        try:
            picture = read_picture(job.src)
            total = restorer.progress_total(*picture.pixels.shape[:2])
            tiled = restorer.tile_for(*picture.pixels.shape[:2]) is not None
            bar = tqdm(total=total, desc=f"{i}/{len(jobs)} {job.src.name}", unit="tile" if tiled else "block",
                       disable=quiet, dynamic_ncols=True, smoothing=0, leave=True)
            try:
                result = restorer.restore_array(picture.pixels, progress=_bar_callback(bar, passes))
            finally:
                bar.close()
            write_picture(job.dst, result, job.fmt, quality=args.jpeg_quality,
                          icc_profile=picture.icc_profile, exif=picture.exif)
            written += 1
        except Exception as exc:  # one file's failure, whatever its cause, does not stop the batch
            report(f"agileir: error: {file_error(job.src, exc, job.dst)}")
            failures += 1
    summary = f"agileir: {written} written, {skipped} skipped, {failures} failed"
    if len(inputs) == 1 and written == 1:
        summary = f"agileir: wrote {jobs[0].dst}"
    print(summary, file=sys.stderr)
    return 1 if failures else 0


__all__ = ["register", "run", "shipped_for_task", "collect_inputs", "output_paths", "check_folder_writable", "plan_jobs", "Job"]
