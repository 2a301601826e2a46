"""The fused CPU window-attention kernel (``kernel="fused"``): C++ built on first use.

``softmax(q k^T + bias + mask) v`` one window and head at a time, scores kept in a few rows of
L1 instead of (windows, N, N) tensors in memory; backward recomputes the probabilities from the
row log-sum-exp, so it saves what :func:`~agileir.models.attention.kernels.chunked_window_attention`
saves (q, k, v, bias, mask, output, log-sum-exp). Source: ``csrc/window_attention.cpp``.

The same extension fuses GSWA's whole group cascade (:func:`fused_gswa_cascade`: per window,
each group's projection, depthwise convolution on q, attention and the next group's input, so
none of the per-group small tensors reaches memory); GSWA takes it for float32 wherever it runs
on kernel "fused" (:meth:`~agileir.models.attention.gswa.GroupShiftedWindowAttention.cascade_parameters`).
On a CPU with AVX-512 BF16 (AMX tiles where present), bf16 autocast inference runs the cascade's
group projections and two N x N products on the bf16 units (:func:`fused_gswa_cascade_bf16`);
elsewhere bf16 keeps the float32 cascade.

The extension is compiled once per machine with PyTorch's own JIT builder
(:func:`torch.utils.cpp_extension.load`, a C++ compiler and ninja needed, ``-march=native``)
into PyTorch's extension cache (``TORCH_EXTENSIONS_DIR``), in a folder named after a hash of the
source, flags, CPU, PyTorch and Python, so an edit, an upgrade or a cache shared with another
CPU builds afresh and a built one is imported directly. Where building fails, :func:`available`
is False with the reason in :func:`unavailable_reason`, and ``auto`` plans keep the eager
kernel; ``AGILEIR_FUSED=0`` turns the kernel off without trying.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

from agileir.models.attention.core import add_bias_and_mask

__all__ = ["available", "extension", "vectorized", "state", "unavailable_reason", "fused_window_attention", "cascade_available",
           "fused_gswa_cascade", "gswa_cascade_projection_gradients", "cascade_bf16_engine", "cascade_bf16_available", "cascade_bf16_applies",
           "fused_gswa_cascade_bf16", "FUSED_ENV"]

#: ``0`` turns the fused kernel off (auto plans keep the eager kernel); ``1`` (default) tries it
FUSED_ENV = "AGILEIR_FUSED"
_SOURCE = Path(__file__).with_name("csrc") / "window_attention.cpp"
#: every source of the extension: the attention kernels, the token-row LayerNorm kernels
#: (:mod:`agileir.models.token_norm`) and GELU's (:mod:`agileir.models.gelu`), one module so one
#: build serves all; the shared header is part of the build key
_SOURCES = (_SOURCE, _SOURCE.with_name("token_norm.cpp"), _SOURCE.with_name("gelu.cpp"))
_HEADERS = (_SOURCE.with_name("simd_math.h"),)
_NAME = "agileir_window_attention"
#: -fopenmp: at::parallel_for's OpenMP backend is a header template, serial without it
_FLAGS = ("-O3", "-march=native", "-fopenmp")


def _cpu_signature() -> str:
    """The instruction sets ``-march=native`` compiles for: the CPU's flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _build_key() -> str:
    """What the compiled file depends on: the source, the flags, the CPU, PyTorch and Python."""
    digest = hashlib.sha256()
    for source in _SOURCES + _HEADERS:
        digest.update(source.read_bytes())
    digest.update(repr((_FLAGS, _cpu_signature(), torch.__version__, sys.version, platform.machine())).encode())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def _load():
    """The compiled extension module, or the reason it could not be had (a string)."""
    if os.environ.get(FUSED_ENV, "1") == "0":
        return f"{FUSED_ENV}=0"
    missing = [str(source) for source in _SOURCES + _HEADERS if not source.is_file()]
    if missing:
        return f"its source {missing[0]} is missing"
    try:
        from torch.utils import cpp_extension

        name = f"{_NAME}_{_build_key()}"
        build = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
        library = build / f"{name}.so"
        if library.is_file() and not (build / "lock").exists():  # built (and no build running): imported
            # directly, the builder's own checks cost a second per process
            spec = importlib.util.spec_from_file_location(name, library)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        print("agileir: building the fused CPU attention kernel (once per machine, about a minute)",
              file=sys.stderr, flush=True)
        build.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load(name=name, sources=[str(source) for source in _SOURCES],
                                      extra_cflags=list(_FLAGS), extra_ldflags=["-fopenmp"],
                                      build_directory=str(build), verbose=False)
    except Exception as err:  # no compiler, no ninja, a build error: the eager kernel stays
        text = str(err).strip()
        return f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"[:300]


def available() -> bool:
    """Whether the fused kernel is built (building it now if it was not)."""
    return not isinstance(_load(), str)


def extension():
    """The built extension module (its functions are the kernels), or None where it is not available."""
    ext = _load()
    return None if isinstance(ext, str) else ext


def vectorized() -> bool:
    """Whether float32 runs the kernel's AVX2 path (built with AVX2 and FMA); elsewhere it runs
    plain loops, correct but not measured faster than the eager kernel, so auto plans skip it."""
    ext = _load()
    return not isinstance(ext, str) and bool(ext.vectorized())


def state() -> str:
    """One line for reports: "on" (auto plans use it), or "off (why)"."""
    if not available():
        return f"off ({unavailable_reason()})"
    return "on" if vectorized() else "off (built without its AVX2 path: auto plans keep the eager kernel)"


def unavailable_reason() -> str | None:
    """Why the fused kernel is not available, or None when it is."""
    ext = _load()
    return ext if isinstance(ext, str) else None


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
             mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # bf16 runs in float32

    def last_contiguous(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dtype)
        return t if t.stride(-1) == 1 else t.contiguous()

    h, n = q.shape[1], q.shape[2]
    bias = q.new_zeros((h, n, n), dtype=dtype) if bias is None else bias.to(dtype).contiguous()
    mask = q.new_empty((0,), dtype=dtype) if mask is None else mask.detach().to(dtype).contiguous()
    return last_contiguous(q), last_contiguous(k), last_contiguous(v), bias, mask


class _FusedWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, mask, has_bias: bool):  # type: ignore[override]
        ext = _load()
        out, lse = ext.forward(q, k, v, bias, mask, True)
        ctx.has_bias = has_bias
        ctx.save_for_backward(q, k, v, bias, mask, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias, mask, out, lse = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty): differentiable gradients through the eager
            # reference, recomputed from the saved inputs (this call only)
            inputs = (q, k, v, bias)
            with torch.enable_grad():
                scores = add_bias_and_mask(q @ k.transpose(-2, -1), bias, mask if mask.numel() else None)
                ref = scores.softmax(dim=-1) @ v
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(ref, wanted, grad_out, allow_unused=True, create_graph=True))
            dq, dk, dv, dbias = (next(grads) if t.requires_grad else None for t in inputs)
            return dq, dk, dv, dbias if ctx.has_bias else None, None, None
        dq, dk, dv, dbias = _load().backward(q, k, v, bias, mask, out, lse, grad_out.contiguous())
        return dq, dk, dv, dbias if ctx.has_bias else None, None, None


def fused_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                           mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q k^T + bias + mask) v`` on the fused CPU kernel; shapes as in
    :mod:`~agileir.models.attention.kernels`. Output in q's dtype; bf16 inputs compute in float32.

    Probabilities below ``exp(-60)`` of a row's maximum (``exp(-600)`` in float64) are exactly
    zero (the chunked kernel floors them likewise): masked pairs and underflow never produce
    subnormal numbers. Gradients to q, k, v and bias (twice differentiable through the eager
    reference, as the chunked kernel); raises RuntimeError if the kernel is not
    :func:`available` or the tensors are not on the CPU.
    """
    ext = _load()
    if isinstance(ext, str):
        raise RuntimeError(f"the fused window-attention kernel is not available: {ext}")
    if q.device.type != "cpu":
        raise RuntimeError("the fused window-attention kernel runs on the CPU only")
    in_dtype = q.dtype
    qq, kk, vv, bb, mm = _prepare(q, k, v, bias, mask)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    if needs_grad:
        out = _FusedWindowAttention.apply(qq, kk, vv, bb, mm, bias is not None)
    else:
        out, _ = ext.forward(qq, kk, vv, bb, mm, False)
    return out if out.dtype == in_dtype else out.to(in_dtype)


def cascade_available() -> bool:
    """Whether GSWA's whole group cascade runs fused (the AVX2 float32 path of the extension)."""
    ext = _load()
    return not isinstance(ext, str) and hasattr(ext, "cascade_forward")


def gswa_cascade_reference(x: torch.Tensor, weight: torch.Tensor, qkv_bias: torch.Tensor,
                           dw_weight: torch.Tensor | None, dw_bias: torch.Tensor | None, bias: torch.Tensor,
                           mask: torch.Tensor | None, window: int, scale: float, relu: bool = False) -> torch.Tensor:
    """What :func:`fused_gswa_cascade` computes, in plain PyTorch (its double backward runs here)."""
    groups, e, dv = weight.shape
    dk = (e - dv) // 2
    b_, n, _ = x.shape
    outputs, y = [], None
    for j, x_j in enumerate(x.split(dv, dim=-1)):
        z = x_j if y is None else x_j + y
        q, k, v = torch.nn.functional.linear(z, weight[j], qkv_bias[j]).split([dk, dk, dv], dim=-1)
        if dw_weight is None:
            q = q * scale
        else:
            grid = q.transpose(1, 2).reshape(b_, dk, window, window)
            q = torch.nn.functional.conv2d(grid, dw_weight[j].unsqueeze(1), dw_bias[j], padding=dw_weight.shape[-1] // 2,
                                           groups=dk).reshape(b_, dk, n).transpose(1, 2)
        scores = add_bias_and_mask((q @ k.transpose(1, 2)).unsqueeze(1), bias[j:j + 1], mask).squeeze(1)
        y = scores.softmax(dim=-1) @ v
        outputs.append(y)
    out = torch.cat(outputs, dim=-1)
    return torch.relu(out) if relu else out


class _FusedCascade(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, qkv_bias, dw_weight, dw_bias, bias, mask, window, scale, relu):  # type: ignore[override]
        ctx.window, ctx.scale, ctx.relu = window, scale, relu
        ctx.save_for_backward(x, weight, qkv_bias, dw_weight, dw_bias, bias, mask)
        return _load().cascade_forward(x, weight, qkv_bias, *_taps(dw_weight, dw_bias), bias, mask, window, scale,
                                       relu)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, qkv_bias, dw_weight, dw_bias, bias, mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients through the reference
            inputs = (x, weight, qkv_bias, dw_weight, dw_bias, bias)
            wanted = [t for t in inputs if t.numel() and t.requires_grad]
            with torch.enable_grad():
                ref = gswa_cascade_reference(x, weight, qkv_bias, dw_weight if dw_weight.numel() else None,
                                             dw_bias if dw_bias.numel() else None, bias,
                                             mask if mask.numel() else None, ctx.window, ctx.scale, ctx.relu)
            grads = iter(torch.autograd.grad(ref, wanted, grad_out, allow_unused=True, create_graph=True))
            return (*(next(grads) if t.numel() and t.requires_grad else None for t in inputs), None, None, None, None)
        dx, dweight, dqkv_bias, ddw, ddwb, dbias = _load().cascade_backward(
            x, weight, qkv_bias, *_taps(dw_weight, dw_bias), bias, mask, ctx.window, ctx.scale, ctx.relu,
            grad_out.contiguous(), x.new_empty((0,)))
        if dw_weight.numel():  # the kernel's (G, ks*ks, dk) back to the conv's (G, dk, ks, ks)
            ddw = ddw.transpose(1, 2).reshape(dw_weight.shape)
        else:
            ddw = ddwb = None
        return dx, dweight, dqkv_bias, ddw, ddwb, dbias, None, None, None, None


def _taps(dw_weight: torch.Tensor, dw_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The depthwise weights as the kernel reads them: (G, ks*ks, dk), one tap's channels together."""
    if not dw_weight.numel():
        return dw_weight, dw_bias
    g, dk = dw_weight.shape[:2]
    return dw_weight.detach().reshape(g, dk, -1).transpose(1, 2).contiguous(), dw_bias.detach().contiguous()


def _cascade_args(x: torch.Tensor, weight: torch.Tensor, qkv_bias: torch.Tensor, dw_weight: torch.Tensor | None,
                  dw_bias: torch.Tensor | None, bias: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The cascade's tensors as the extension takes them: float32, contiguous, empty for None."""
    if not cascade_available():
        raise RuntimeError(f"the fused GSWA cascade is not available: {state()}")
    if x.device.type != "cpu":
        raise RuntimeError("the fused GSWA cascade runs on the CPU only")
    if dw_weight is not None and dw_bias is None:
        dw_bias = dw_weight.new_zeros(dw_weight.shape[:2])
    f32 = lambda t: t.float().contiguous()  # noqa: E731
    empty = x.new_empty((0,), dtype=torch.float32)
    return (f32(x), f32(weight), f32(qkv_bias), empty if dw_weight is None else f32(dw_weight),
            empty if dw_bias is None else f32(dw_bias), f32(bias),
            empty if mask is None else mask.detach().float().contiguous())


class _CascadeProjectionGradients(torch.autograd.Function):
    """``proj(cascade(x))`` in a forward pass whose values nobody reads: the forward computes nothing,
    the backward takes the cascade's output from ``cascade_backward``, which rebuilds every window
    anyway."""

    @staticmethod
    def forward(ctx, x, weight, qkv_bias, dw_weight, dw_bias, bias, mask, proj_weight, proj_bias,  # type: ignore[override]
                window, scale, relu, out_dtype):
        ctx.window, ctx.scale, ctx.relu = window, scale, relu
        ctx.save_for_backward(x, weight, qkv_bias, dw_weight, dw_bias, bias, mask, proj_weight, proj_bias)
        return x.new_empty((*x.shape[:-1], proj_weight.shape[0]), dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, qkv_bias, dw_weight, dw_bias, bias, mask, proj_weight, proj_bias = ctx.saved_tensors
        if torch.is_grad_enabled():
            raise RuntimeError("the cascade's gradients-only pass is not differentiable twice (create_graph=True "
                               "recomputes on the differentiable path instead)")
        g = grad_out.reshape(-1, grad_out.shape[-1])
        dtype = g.dtype  # bf16 under autocast: the projection's products in bf16, as autocast ran them
        # the kernel reads grad_y and writes y in that dtype (no cast pass either side)
        grad_y = (g @ proj_weight.to(dtype)).view(x.shape).contiguous()
        y = torch.empty_like(x, dtype=dtype)
        dx, dweight, dqkv_bias, ddw, ddwb, dbias = _load().cascade_backward(
            x, weight, qkv_bias, *_taps(dw_weight, dw_bias), bias, mask, ctx.window, ctx.scale, ctx.relu, grad_y, y)
        if dw_weight.numel():
            ddw = ddw.transpose(1, 2).reshape(dw_weight.shape)
        else:
            ddw = ddwb = None
        dproj_weight = (g.t() @ y.view(-1, y.shape[-1])).to(proj_weight.dtype)
        dproj_bias = None if proj_bias is None else g.sum(0).to(proj_bias.dtype)
        return (dx, dweight, dqkv_bias, ddw, ddwb, dbias, None, dproj_weight, dproj_bias, None, None, None, None)


def gswa_cascade_projection_gradients(x: torch.Tensor, weight: torch.Tensor, qkv_bias: torch.Tensor,
                                      dw_weight: torch.Tensor | None, dw_bias: torch.Tensor | None,
                                      bias: torch.Tensor, mask: torch.Tensor | None, window: int, scale: float,
                                      relu: bool, proj_weight: torch.Tensor,
                                      proj_bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(fused_gswa_cascade(...), proj_weight, proj_bias)`` for the recompute of a training
    step's backward, where only the graph is used (:func:`agileir.models.recompute.values_unused`):
    the returned tensor is **not filled**; its gradients are exact.

    Why: a GSWA block's cascade otherwise runs three times per step (forward, the recompute, and
    inside its backward); this drops the recompute's. The output is in autocast's dtype where
    autocast is on (as the projection's would be). Once differentiable only.
    """
    args = _cascade_args(x, weight, qkv_bias, dw_weight, dw_bias, bias, mask)
    out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return _CascadeProjectionGradients.apply(*args, proj_weight, proj_bias, window, float(scale), bool(relu), out_dtype)


def fused_gswa_cascade(x: torch.Tensor, weight: torch.Tensor, qkv_bias: torch.Tensor,
                       dw_weight: torch.Tensor | None, dw_bias: torch.Tensor | None, bias: torch.Tensor,
                       mask: torch.Tensor | None, window: int, scale: float, relu: bool = False) -> torch.Tensor:
    """GSWA's group cascade, every group of one window at a time in cache: (B_, N, G*dv) -> the
    groups' attention outputs side by side (before the output projection; through a ReLU, GSWA's
    activation, if ``relu``: fused, so neither the output nor its gradient takes a pass of its own).

    ``weight`` (G, 2 dk + dv, dv) and ``qkv_bias`` (G, 2 dk + dv): the groups' q/k/v projections;
    ``dw_weight`` (G, dk, ks, ks) and ``dw_bias`` (G, dk): the depthwise convolution on q with the
    query scale already folded in (None: q is multiplied by ``scale``); ``bias`` (G, N, N);
    ``mask`` (nW, N, N) or None. Runs in float32 (other dtypes are converted); backward
    recomputes each window's cascade, so nothing but the inputs is saved. Gradients to every
    tensor but the mask, twice differentiable through :func:`gswa_cascade_reference`.
    """
    in_dtype = x.dtype
    args = _cascade_args(x, weight, qkv_bias, dw_weight, dw_bias, bias, mask)
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        out = _FusedCascade.apply(*args, window, float(scale), bool(relu))
    else:
        out = _load().cascade_forward(args[0], args[1], args[2], *_taps(args[3], args[4]), args[5], args[6],
                                      window, float(scale), bool(relu))
    return out if out.dtype == in_dtype else out.to(in_dtype)


def cascade_bf16_engine() -> str | None:
    """Which units the cascade's bf16 kernel runs its products on here: ``"amx"`` (the tiles, where
    the CPU has them and Linux permits their use), ``"avx512_bf16"`` (dot products, e.g. AMD Zen 4),
    or None where the extension was built without AVX-512 BF16."""
    ext = _load()
    return None if isinstance(ext, str) or not hasattr(ext, "cascade_forward_bf16") else ext.cascade_bf16_engine()


def cascade_bf16_available() -> bool:
    """Whether the cascade's bf16 kernel runs here (:func:`cascade_bf16_engine` is not None)."""
    return cascade_bf16_engine() is not None


def cascade_bf16_applies(x: torch.Tensor, key_dim: int, group_dim: int) -> bool:
    """Whether GSWA's cascade over windows ``x`` takes :func:`fused_gswa_cascade_bf16`: inference
    (no autograd) under CPU bf16 autocast, the kernel available, windows of a multiple of 32
    tokens, ``key_dim`` <= 16 and ``group_dim`` <= 64."""
    return (x.device.type == "cpu" and not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and cascade_bf16_available()
            and bool(_load().cascade_bf16_supported(x.shape[1], key_dim, group_dim)))


def fused_gswa_cascade_bf16(x: torch.Tensor, weight: torch.Tensor, qkv_bias: torch.Tensor,
                            dw_weight: torch.Tensor | None, dw_bias: torch.Tensor | None, bias: torch.Tensor,
                            mask: torch.Tensor | None, window: int, scale: float, relu: bool = False,
                            engine: str | None = None) -> torch.Tensor:
    """:func:`fused_gswa_cascade` with its products on the bf16 units, for inference: each group's
    input and projection weights rounded to bf16 (as autocast's linear layers round them), and q,
    k, the probabilities and v for the two N x N products; products accumulated and the softmax
    computed in float32, the depthwise conv in float32; the output in bf16 (what autocast's output
    projection reads). No autograd (:func:`cascade_bf16_applies`). ``engine`` (the N x N products'
    units): ``"amx"`` or ``"avx512_bf16"`` (an AMX CPU runs either), default :func:`cascade_bf16_engine`."""
    here = cascade_bf16_engine()
    if here is None:
        raise RuntimeError("the bf16 cascade needs the extension built for AVX-512 BF16 (or AMX)")
    engine = engine or here
    if engine not in ("amx", "avx512_bf16") or (engine == "amx" and here != "amx"):
        raise ValueError(f"bf16 cascade engine {engine!r} does not run here (this CPU: {here})")
    args = _cascade_args(x, weight, qkv_bias, dw_weight, dw_bias, bias, mask)
    with torch.no_grad():
        return _load().cascade_forward_bf16(args[0], args[1], args[2], *_taps(args[3], args[4]), args[5], args[6],
                                            window, float(scale), bool(relu), engine == "amx")
