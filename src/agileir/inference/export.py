"""Model export: ONNX (for onnxruntime and other runtimes) and TorchScript.

Both families (SwinIR and AgileIR) export through the same path. The model is copied to an
eval-mode, CPU float32 network with the plain "eager" attention (the only kernel that traces);
while tracing or exporting, the network computes its shift mask and window padding with tensor
ops from the (symbolic) input size (``agileir.models.windows.is_exporting``), so one exported
model serves any image size.

ONNX exporters of torch 2.13:

* ``"legacy"`` (default) -- the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. Needs
  only the ``onnx`` package, takes well under a second for small models and supports opsets
  11-20 (reflection padding with a dynamic amount needs 11). Deprecated upstream but present.
* ``"dynamo"`` -- the ``torch.export``-based exporter (``dynamo=True``). Needs ``onnxscript`` as
  well, is 10-30x slower to export and supports opsets 18 and newer.

Every write is atomic: a failed export leaves no file (or the previous one) behind.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from agileir.errors import ConfigError, ImageError
from agileir.fileio import atomic_path
from agileir.models.config import NetworkConfig
from agileir.models.network import RestorationTransformer

EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
OPSET_RANGE = {"legacy": (11, 20), "dynamo": (18, 23)}
INPUT_NAME, OUTPUT_NAME = "input", "output"
METADATA_KEY = "agileir.config"
ONNX_HINT = "install the onnx extra: pip install 'agileir[onnx]'"


def _require(module: str, hint: str = ONNX_HINT):
    """Import an optional dependency, or raise a one-line ConfigError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed; {hint}") from None


def default_sample_size(window_size: int) -> tuple[int, int]:
    """(H, W) of the example input traced at export: a few windows, not square."""
    return 4 * window_size, 6 * window_size


def check_size(size: tuple[int, int], window_size: int) -> tuple[int, int]:
    """``size`` as (H, W) ints, or ImageError when the model cannot take it (reflection padding
    to the window multiple needs each side larger than the padding)."""
    h, w = (int(v) for v in size)
    if (-h) % window_size >= h or (-w) % window_size >= w:
        raise ImageError(f"input size {w}x{h} is too small for {window_size}x{window_size} windows; "
                         f"use at least {window_size // 2 + 1} pixels on each side")
    return h, w


def prepare_for_export(model: RestorationTransformer) -> RestorationTransformer:
    """An eval-mode CPU float32 copy of ``model`` with eager attention and no checkpointing.

    The model passed in is not changed. SwinIR keeps its official -100 shift mask under eager
    attention; the other kernels use -inf, which differs by about exp(-100).
    """
    if not isinstance(model, RestorationTransformer):
        raise ConfigError(f"can only export agileir models (RestorationTransformer), got {type(model).__name__}")
    config = model.config.runtime(attention_impl="eager", grad_checkpoint=False)
    copy = RestorationTransformer(config)
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()})
    return copy.eval().requires_grad_(False)


def sample_input(config: NetworkConfig, size: tuple[int, int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A reproducible random (batch, C, H, W) image in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.in_chans, *size, generator=g)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence what torch says on every export: deprecation notices of the TorchScript paths,
    the tracer's notes on the models' shape checks (static widths and channels, constant in the
    graph by design), the dynamo exporter's log."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"agileir\.models\.")
        warnings.filterwarnings("ignore", message=r".*dynamic_axes.*not recommended.*")
        log.setLevel(logging.ERROR)
        try:
            with torch.enable_grad():  # the bias table is gathered in the graph, not read from a cache
                yield
        finally:
            log.setLevel(level)


def export_onnx(model: RestorationTransformer, path: str | os.PathLike, *, opset: int | None = None,
                dynamic: bool = True, sample_size: tuple[int, int] | None = None,
                exporter: str = "legacy") -> Path:
    """Write ``model`` as an ONNX file with input ``"input"`` (B, C, H, W) and output ``"output"``.

    ``dynamic``: batch, height and width are free (any size of at least half a window plus one);
    otherwise the file takes exactly (1, C, *sample_size*). ``sample_size`` (H, W) is the example
    traced (default :func:`default_sample_size`). ``opset`` defaults to 17 (legacy) / 18 (dynamo).
    The file carries the model's configuration as JSON in its metadata (key ``agileir.config``).
    """
    onnx = _require("onnx")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo":
        _require("onnxscript", "the dynamo exporter needs onnxscript: pip install onnxscript")
    opset = DEFAULT_OPSET[exporter] if opset is None else int(opset)
    low, high = OPSET_RANGE[exporter]
    if not low <= opset <= high:
        raise ConfigError(f"the {exporter} ONNX exporter supports opsets {low} to {high}, got {opset}")
    net = prepare_for_export(model)
    size = check_size(sample_size or default_sample_size(net.config.window_size), net.config.window_size)
    x = sample_input(net.config, size)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}} if dynamic else None
    path = Path(path)
    with atomic_path(path) as tmp:
        with _quiet_export():
            if exporter == "legacy":
                torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes)
            else:
                torch.onnx.export(net, (x,), str(tmp), dynamo=True, opset_version=opset, verbose=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                                  external_data=False)
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, net.config.to_json()
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """onnxruntime's dynamic int8 quantization of an exported file's weight matrix products.

    The same scheme as ``--precision int8`` in PyTorch (:mod:`agileir.models.quantize`): the
    MatMuls with a weight operand (the linear layers) get int8 weights and per-call int8
    activations; convolutions and the attention products between activations stay float32.
    The configuration metadata is kept.
    """
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice to pre-process (its shape inference fails on this graph)
    try:
        with atomic_path(dst) as tmp, contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    return dst


def onnx_opset(path: str | os.PathLike) -> int:
    """The default-domain opset an ONNX file was written for."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def export_torchscript(model: RestorationTransformer, path: str | os.PathLike, *,
                       sample_size: tuple[int, int] | None = None) -> Path:
    """Write ``model`` traced to TorchScript; load it with ``torch.jit.load(path)``.

    The trace records the shape arithmetic, so the file takes any batch and image size (of at
    least half a window plus one per side). The configuration JSON is stored as the extra file
    ``agileir.config``.
    """
    net = prepare_for_export(model)
    size = check_size(sample_size or default_sample_size(net.config.window_size), net.config.window_size)
    x = sample_input(net.config, size)
    path = Path(path)
    with atomic_path(path) as tmp:
        with _quiet_export():
            traced = torch.jit.trace(net, (x,), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={METADATA_KEY: net.config.to_json()})
    return path


def _reference(model: RestorationTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return prepare_for_export(model)(x)


def verify_onnx(model: RestorationTransformer, path: str | os.PathLike, *, size: tuple[int, int] | None = None,
                batch: int = 1, seed: int = 0) -> float:
    """Max abs difference between onnxruntime on the file and PyTorch (eager, float32) on one
    random input of ``size`` (H, W; default the export sample size plus one pixel per side, so
    the padding is exercised and the size differs from the traced one)."""
    ort = _require("onnxruntime")
    m = model.config.window_size
    if size is None:
        h, w = default_sample_size(m)
        size = (h + 1, w + 1)
    x = sample_input(model.config, check_size(size, m), batch, seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    if any(isinstance(d, int) and d != n for d, n in zip(spec.shape, x.shape)):
        fixed = "x".join(str(d) for d in spec.shape)
        raise ConfigError(f"{Path(path).name} takes a fixed {fixed} input, not {'x'.join(map(str, x.shape))}; "
                          "export with --dynamic for other sizes")
    out = session.run(None, {spec.name: x.numpy()})[0]
    ref = _reference(model, x)
    if tuple(out.shape) != tuple(ref.shape):
        raise ConfigError(f"{Path(path).name} gave a {tuple(out.shape)} output for a {tuple(x.shape)} input, "
                          f"PyTorch {tuple(ref.shape)}")
    return float((torch.from_numpy(out) - ref).abs().max())


def verify_torchscript(model: RestorationTransformer, path: str | os.PathLike, *,
                       size: tuple[int, int] | None = None, batch: int = 1, seed: int = 0) -> float:
    """Max abs difference between the TorchScript file (``torch.jit.load``) and PyTorch."""
    m = model.config.window_size
    if size is None:
        h, w = default_sample_size(m)
        size = (h + 1, w + 1)
    x = sample_input(model.config, check_size(size, m), batch, seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        out = loaded(x)
    return float((out - _reference(model, x)).abs().max())


def verify_weights_file(model: torch.nn.Module, path: str | os.PathLike, *, size: tuple[int, int] | None = None,
                        seed: int = 0) -> float:
    """Max abs difference between ``model`` and the safetensors file loaded back (0 when it round-trips)."""
    from agileir.models.loading import load_model

    m = model.config.window_size
    h, w = size or default_sample_size(m)
    x = sample_input(model.config, check_size((h, w), m), 1, seed)
    with torch.no_grad():
        return float((load_model(path)(x) - model(x)).abs().max())


def read_config_json(path: str | os.PathLike) -> dict:
    """The model configuration stored in an exported ONNX or TorchScript file."""
    path = Path(path)
    if path.suffix == ".onnx":
        onnx = _require("onnx")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(METADATA_KEY)
    else:
        extra = {METADATA_KEY: ""}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        text = extra[METADATA_KEY] or None
    if not text:
        raise ConfigError(f"{path.name} carries no agileir configuration")
    return json.loads(text)
