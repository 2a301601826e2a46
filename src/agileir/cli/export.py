"""``agileir export MODEL --onnx out.onnx [--dynamic] --torchscript out.pt``: model export."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from agileir.errors import ConfigError

TOLERANCE = 1e-3  # max abs difference (images in [0, 1]) above which the check fails
# int8 files against the float model: weights rounded to 1/254 of their range and activations
# quantized per call move pixels by up to a few grey levels (measured 0.003-0.01 on the shipped
# weights); 0.05 (13 of 255 levels) would be a broken quantization, not rounding
INT8_TOLERANCE = 5e-2


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 96x64, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX, TorchScript or safetensors (float or int8)",
        description="Export a preset (random weights) or a weights file to ONNX (for onnxruntime), "
                    "TorchScript and/or the project's safetensors, then check each file against PyTorch on one "
                    "random input and print the max abs difference. The model runs with eager attention in "
                    "float32 on the CPU. --int8 quantizes the linear layers (dynamic int8) in the ONNX file "
                    "(onnxruntime's quantizer) and in the safetensors file (PyTorch's).")
    p.add_argument("model", help="preset name (e.g. agileir-s) or weights file (.safetensors / official .pth)")
    p.add_argument("--onnx", metavar="PATH", default=None, help="write an ONNX model here")
    p.add_argument("--torchscript", metavar="PATH", default=None,
                   help="write a traced TorchScript model here (takes any input size)")
    p.add_argument("--safetensors", metavar="PATH", default=None,
                   help="write the weights and configuration as agileir safetensors (e.g. from an official .pth)")
    p.add_argument("--int8", action="store_true",
                   help="int8 linear layers in the --onnx and --safetensors outputs (CPU inference; not TorchScript)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default 17 with the legacy exporter, 18 with dynamo; legacy: 11-20)")
    p.add_argument("--dynamic", action="store_true",
                   help="ONNX with free batch, height and width (default: fixed to --size, batch 1)")
    p.add_argument("--size", type=_size, default=None, metavar="WxH",
                   help="example input traced at export; the fixed ONNX input size without --dynamic "
                        "(default: 6x4 windows, e.g. 48x32 for 8x8 windows)")
    p.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy",
                   help="torch's TorchScript-based ONNX exporter (default; needs only onnx) or the "
                        "torch.export-based one (also needs onnxscript; slower, opset >= 18)")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor for a preset (default: the preset's)")
    p.add_argument("--task", choices=("sr", "denoise", "jpeg"), default=None, help="task for a preset")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch after export")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agileir.inference import export as ex
    from agileir.models.registry import resolve_model

    if not args.onnx and not args.torchscript and not args.safetensors:
        raise ConfigError("nothing to export: give --onnx PATH, --torchscript PATH and/or --safetensors PATH")
    if args.int8 and args.torchscript:
        raise ConfigError("--int8 applies to --onnx and --safetensors, not to TorchScript")
    model = ex.prepare_for_export(resolve_model(args.model, scale=args.scale, task=args.task))
    m = model.config.window_size
    sample = ex.check_size(args.size or ex.default_sample_size(m), m)
    # checked on another size than the traced one (and not a window multiple when the sample is)
    other = (sample[0] + 1, sample[1] + 1)
    name = model.config.name or args.model
    failed = False

    if args.onnx:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "float.onnx" if args.int8 else args.onnx
            path = ex.export_onnx(model, target, opset=args.opset, dynamic=args.dynamic, sample_size=sample,
                                  exporter=args.exporter)
            if args.int8:
                path = ex.quantize_onnx_int8(path, args.onnx)
        shape = "dynamic batch, height and width" if args.dynamic else \
            f"fixed input 1x{model.config.in_chans}x{sample[0]}x{sample[1]}"
        kind = ", int8 linear layers" if args.int8 else ""
        print(f"wrote {path} ({name}, ONNX opset {ex.onnx_opset(path)}, {args.exporter} exporter, {shape}{kind})")
        if not args.no_check:
            try:
                size = other if args.dynamic else sample
                diff = ex.verify_onnx(model, path, size=size)
            except ConfigError as exc:
                if "onnxruntime is not installed" not in str(exc):
                    raise
                print(f"  check skipped: {exc}")
            else:
                failed |= _report("onnxruntime", model.config.in_chans, size, diff,
                                  INT8_TOLERANCE if args.int8 else TOLERANCE)

    if args.torchscript:
        path = ex.export_torchscript(model, args.torchscript, sample_size=sample)
        print(f"wrote {path} ({name}, TorchScript trace, any batch and size; load with torch.jit.load)")
        if not args.no_check:
            diff = ex.verify_torchscript(model, path, size=other)
            failed |= _report("torch.jit.load", model.config.in_chans, other, diff)

    if args.safetensors:
        from agileir.models.loading import save_model
        from agileir.models.quantize import quantize_int8

        weights = quantize_int8(model) if args.int8 else model
        path = save_model(weights, args.safetensors)
        print(f"wrote {path} ({name}, agileir safetensors{', int8 linear layers' if args.int8 else ''})")
        if not args.no_check:
            diff = ex.verify_weights_file(weights, path, size=other)
            failed |= _report("agileir load_model", model.config.in_chans, other, diff, 0.0)
    return 1 if failed else 0


def _report(runtime: str, channels: int, size: tuple[int, int], diff: float, tolerance: float = TOLERANCE) -> bool:
    """Print the check; True when it failed."""
    print(f"  {runtime} vs PyTorch on a 1x{channels}x{size[0]}x{size[1]} input: max abs difference {diff:.2e}")
    if diff > tolerance or diff != diff:
        print(f"agileir: error: the exported model differs from PyTorch by {diff:.2e} (> {tolerance:g}); "
              "please report this with the model and options", file=sys.stderr)
        return True
    return False
