"""Window-attention kernels: ``softmax(q k^T + bias + mask) v`` for one set of heads.

Shapes (all kernels): ``q, k`` (B_, h, N, dk), ``v`` (B_, h, N, dv), ``bias`` (h, N, N) (the
relative-position bias, usually a learnable table gathered per call) or None, ``mask`` (nW, N, N)
or None, where ``B_ = batch * nW`` and window ``w`` of image ``b`` is row ``b * nW + w``. The
softmax scale is the caller's business: ``q`` arrives already scaled. Output (B_, h, N, dv).

Three implementations with identical maths:

* :func:`eager_window_attention` -- the plain reference (``kernel="eager"``). Autograd keeps the (B_, h, N, N)
  probabilities for backward, which is what dominates the training memory of SwinIR.
* :func:`chunked_window_attention` (``kernel="chunked"``) -- a custom autograd Function that keeps only q, k, v, bias,
  mask, the per-row log-sum-exp and (by default) the output, and recomputes the probabilities in
  backward. The B_ dimension is processed in chunks in forward *and* backward, so a full
  (B_, h, N, N) tensor never exists, not even transiently.
* :func:`sdpa_window_attention` (``kernel="sdpa"``) -- through
  :func:`torch.nn.functional.scaled_dot_product_attention` with one additive float mask.

A fourth, ``kernel="fused"``, is the C++ CPU kernel of :mod:`agileir.models.attention.fused`
(same maths, one window's scores in L1 at a time), reached through :func:`run_kernel`; GSWA
calls its whole-cascade entry point itself (:func:`~agileir.models.attention.fused.fused_gswa_cascade`).

:func:`run_kernel` calls one by name; which one a block uses is decided in
:mod:`agileir.models.attention.dispatch`.

Memory kept for backward by the chunked kernel (exactly what it passes to ``save_for_backward``,
which the census in :mod:`agileir.engine.memory` sees): the storages of q, k, v (shared with
whatever the caller also keeps), bias (h*N*N) and mask (nW*N*N) once per call, and per row of
(B_, h, N): the log-sum-exp (4 bytes; 8 for float64 inputs) plus, with ``save_out=True``, the
output (dv elements of the input dtype). For distinct contiguous fp32 q, k, v that is
``4 * (2*dk + 2*dv + 1)`` bytes per token per head, against ``4 * (2*dk + dv + N)`` for eager.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agileir.models.attention.core import add_bias_and_mask, add_mask_

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CHUNK_BYTES_CUDA",
    "eager_window_attention",
    "chunked_window_attention",
    "sdpa_window_attention",
    "run_kernel",
    "default_chunk_size",
]

#: Target size of one chunk's (rows, h, N, N) score block in the compute dtype on CPU (cache
#: sized: 1-2 MiB measured fastest for SwinIR shapes). Backward holds two such blocks at once
#: (probabilities and their gradient), forward one.
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024
#: The same on CUDA, where fewer, larger launches pay.
DEFAULT_CHUNK_BYTES_CUDA = 64 * 1024 * 1024


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                  mask: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B_, h, N, d); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b_, h, n, dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k shape {tuple(k.shape)} must equal q shape {tuple(q.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v shape {tuple(v.shape)} must match q's (B_, h, N) = {(b_, h, n)}")
    if bias is not None and bias.shape != (h, n, n):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be (h, N, N) = {(h, n, n)}")
    if mask is not None:
        if mask.dim() != 3 or mask.shape[1:] != (n, n):
            raise ValueError(f"mask shape {tuple(mask.shape)} must be (nW, N, N) with N = {n}")
        if mask.shape[0] == 0 or b_ % mask.shape[0] != 0:
            raise ValueError(f"B_ = {b_} is not a multiple of the mask's nW = {mask.shape[0]}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and products run in float32 for 16-bit inputs, else in the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def default_chunk_size(b_: int, h: int, n: int, nw: int = 1, element_size: int = 4,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows of B_ per chunk so that one (rows, h, N, N) block is about ``chunk_bytes``.

    Rounded down to a multiple of ``nw`` when a full period of windows fits, else to a divisor
    of ``nw``, so every chunk's slice of the shift mask is a view (never a gather).
    """
    per_row = max(1, h * n * n * element_size)
    rows = max(1, min(chunk_bytes // per_row, b_))
    if nw > 1:
        if rows >= nw:
            rows = (rows // nw) * nw
        else:
            rows = max(r for r in range(1, rows + 1) if nw % r == 0)
    return int(rows)


def _scores(qc: torch.Tensor, kc: torch.Tensor, bias_c: torch.Tensor | None,
            mask: torch.Tensor | None, start: int) -> torch.Tensor:
    """q k^T + bias + mask for one chunk, in the compute dtype (a fresh (c, h, N, N) tensor)."""
    s = torch.matmul(qc, kc.transpose(-2, -1))
    if bias_c is not None:
        s.add_(bias_c)
    if mask is not None:
        add_mask_(s, mask, start)
    return s


def eager_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           bias: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Reference ``softmax(q k^T + bias + mask) v``; autograd keeps the N x N probabilities."""
    _check_shapes(q, k, v, bias, mask)
    return add_bias_and_mask(q @ k.transpose(-2, -1), bias, mask).softmax(dim=-1) @ v


def _exp_floor(dtype: torch.dtype) -> float:
    """Lowest exponent kept by the chunked kernel (see :func:`chunked_window_attention`)."""
    return -600.0 if dtype == torch.float64 else -60.0


def _matmul_into(a: torch.Tensor, b: torch.Tensor, dest: torch.Tensor) -> None:
    """dest[...] = a @ b, writing in place when dtypes allow (saves a copy per chunk)."""
    if dest.dtype == a.dtype and dest.is_contiguous():
        torch.matmul(a, b, out=dest)
    else:
        dest.copy_(torch.matmul(a, b))


class _ChunkedWindowAttention(torch.autograd.Function):
    """Flash-style window attention: saves q, k, v, bias, mask, lse (and out); recomputes P."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None, mask: torch.Tensor | None, chunk_size: int | None,
                save_out: bool) -> torch.Tensor:
        b_, h, n, _ = q.shape
        dv = v.shape[-1]
        cdt = _compute_dtype(q.dtype)
        floor = _exp_floor(cdt)
        nw = 1 if mask is None else mask.shape[0]
        chunk = chunk_size or default_chunk_size(
            b_, h, n, nw, torch.finfo(cdt).bits // 8,
            DEFAULT_CHUNK_BYTES_CUDA if q.is_cuda else DEFAULT_CHUNK_BYTES)
        bias_c = None if bias is None else bias.to(cdt)
        out = torch.empty((b_, h, n, dv), dtype=q.dtype, device=q.device)
        lse = torch.empty((b_, h, n, 1), dtype=cdt, device=q.device)
        for s0 in range(0, b_, chunk):
            s1 = min(b_, s0 + chunk)
            p = _scores(q[s0:s1].to(cdt), k[s0:s1].to(cdt), bias_c, mask, s0)
            row_max = p.amax(dim=-1, keepdim=True)
            p.sub_(row_max).clamp_(min=floor).exp_()  # unnormalised probabilities
            row_sum = p.sum(dim=-1, keepdim=True)
            torch.add(row_max, row_sum.log(), out=lse[s0:s1])
            if out.dtype == cdt:
                torch.matmul(p, v[s0:s1].to(cdt), out=out[s0:s1])
                out[s0:s1].div_(row_sum)
            else:
                out[s0:s1] = torch.matmul(p, v[s0:s1].to(cdt)).div_(row_sum)
            del p
        lse = lse.squeeze(-1)
        ctx.chunk = chunk
        # Everything backward needs goes through save_for_backward (visible to the memory census
        # and to saved_tensors_hooks); no tensor is stashed on ctx attributes.
        ctx.save_for_backward(q, k, v, bias, mask, lse, out if save_out else None)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        q, k, v, bias, mask, lse, out = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty): differentiable gradients through the eager
            # reference, recomputed from the saved inputs (this backward only, not the whole net)
            inputs = (q, k, v, bias)
            with torch.enable_grad():
                ref = eager_window_attention(q, k, v, bias, mask)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(ref, wanted, grad_out, allow_unused=True, create_graph=True))
            dq, dk, dv, dbias = (next(grads) if t is not None and t.requires_grad else None for t in inputs)
            return dq, dk, dv, dbias, None, None, None
        return _ChunkedWindowAttention._backward(ctx, grad_out, q, k, v, bias, mask, lse, out)

    @staticmethod
    def _backward(ctx, grad_out, q, k, v, bias, mask, lse, out):
        need_q, need_k, need_v, need_bias = ctx.needs_input_grad[:4]
        b_, h, n, _ = q.shape
        cdt = lse.dtype
        floor = _exp_floor(cdt)
        chunk = ctx.chunk
        bias_c = None if bias is None else bias.to(cdt)
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_q else None
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if need_k else None
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
        dbias = torch.zeros((h, n, n), dtype=cdt, device=q.device) if need_bias else None
        for s0 in range(0, b_, chunk):
            s1 = min(b_, s0 + chunk)
            qc, kc, vc = q[s0:s1].to(cdt), k[s0:s1].to(cdt), v[s0:s1].to(cdt)
            go = grad_out[s0:s1].to(cdt)
            p = _scores(qc, kc, bias_c, mask, s0)
            # the forward probabilities, recomputed from the saved row log-sum-exp
            p.sub_(lse[s0:s1].unsqueeze(-1)).clamp_(min=floor).exp_()
            if need_v:
                _matmul_into(p.transpose(-2, -1), go, dv[s0:s1])
            if not (need_q or need_k or need_bias):
                continue
            oc = out[s0:s1].to(cdt) if out is not None else torch.matmul(p, vc)
            delta = (go * oc).sum(dim=-1, keepdim=True)  # rowsum(dO * O) = rowsum(P * dP)
            ds = torch.matmul(go, vc.transpose(-2, -1))  # dP
            ds.sub_(delta).mul_(p)  # dS = P * (dP - delta)
            del p
            if need_q:
                _matmul_into(ds, kc, dq[s0:s1])
            if need_k:
                _matmul_into(ds.transpose(-2, -1), qc, dk[s0:s1])
            if need_bias:
                dbias.add_(ds.sum(dim=0))
            del ds
        if dbias is not None:
            dbias = dbias.to(bias.dtype)
        return dq, dk, dv, dbias, None, None, None


def chunked_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          bias: torch.Tensor | None, mask: torch.Tensor | None,
                          chunk_size: int | None = None, save_out: bool = True) -> torch.Tensor:
    """Chunked ``softmax(q k^T + bias + mask) v`` that recomputes probabilities in backward.

    Saved for backward: q, k, v, bias, mask, the row log-sum-exp (B_, h, N) in the compute dtype
    (float32 for 16-bit inputs) and, if ``save_out``, the output (B_, h, N, dv) used for the row
    term ``delta = rowsum(dO * O)``; with ``save_out=False`` the output is recomputed per chunk in
    backward (one extra N x N x dv product) and not kept. ``chunk_size`` rows of B_ are processed
    at a time (default: about :data:`DEFAULT_CHUNK_BYTES` per score block, on CUDA
    :data:`DEFAULT_CHUNK_BYTES_CUDA`). Gradients flow to q, k, v and bias (summed over B_); the
    mask gets none. Twice differentiable through the eager reference (create_graph=True).

    Probabilities below ``exp(-60)`` of a row's total (``exp(-600)`` in float64) are floored at
    that value instead of underflowing into subnormal numbers: subnormal arithmetic is 50-100x
    slower on x86 CPUs, and the shift mask's -100 entries produce exactly such values. The change
    to the output is at most ``N * 8.7e-27`` times the largest value magnitude, far below
    float32 resolution.
    """
    _check_shapes(q, k, v, bias, mask)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if mask is not None:
        mask = mask.detach()
    return _ChunkedWindowAttention.apply(q, k, v, bias, mask, chunk_size, save_out)


def _pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    d = x.shape[-1]
    pad = (-d) % multiple
    return F.pad(x, (0, pad)) if pad else x


def _pad_to(x: torch.Tensor, d: int) -> torch.Tensor:
    return F.pad(x, (0, d - x.shape[-1])) if x.shape[-1] < d else x


def sdpa_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          bias: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """One ``scaled_dot_product_attention`` call with scale 1 (q is pre-scaled).

    bias and mask are folded into one additive float mask of shape (nW, h, N, N) (once per call,
    not per image: the batch of images is a broadcast dimension; with a single image it is as
    large as one score tensor). On CUDA, head dims are zero-padded to a multiple of 8 so the
    memory-efficient backend applies; on CPU, q/k and v are zero-padded to one head dim so the
    flash kernel applies (zero columns change neither q k^T nor, after slicing, the output).
    Differentiable through SDPA.
    """
    _check_shapes(q, k, v, bias, mask)
    if not torch.is_grad_enabled():
        # Under no_grad a view of a leaf that requires grad still reports requires_grad=True,
        # which sends SDPA to its slow math fallback (measured 6x slower on CPU).
        q, k, v = q.detach(), k.detach(), v.detach()
        bias = None if bias is None else bias.detach()
    b_, h, n, _ = q.shape
    dv = v.shape[-1]
    dtype = q.dtype
    attn_mask: torch.Tensor | None = None
    if bias is not None:
        attn_mask = bias.to(dtype).unsqueeze(0)  # (1, h, N, N)
    if mask is not None:
        m = mask.to(dtype).unsqueeze(1)  # (nW, 1, N, N)
        attn_mask = m if attn_mask is None else attn_mask + m  # (nW, h or 1, N, N)
    if q.is_cuda:
        q, k, v = _pad_last(q, 8), _pad_last(k, 8), _pad_last(v, 8)
    elif q.shape[-1] != dv:
        # PyTorch's CPU flash kernel needs one head dim for q, k and v; otherwise SDPA falls back
        # to its unfused math path (GSWA's 8-wide q/k against 10-wide v: 4x slower, measured)
        d = max(q.shape[-1], dv)
        q, k, v = _pad_to(q, d), _pad_to(k, d), _pad_to(v, d)
    nw = 1 if attn_mask is None else attn_mask.shape[0]
    if nw > 1:
        # Fold windows into the head dimension: (B, nW*h, N, d) against a (1, nW*h', N, N) mask
        # broadcast over images. reshape copies q/k/v only when their strides demand it.
        hm = attn_mask.shape[1]
        attn_mask = attn_mask.expand(nw, h, n, n) if hm != h else attn_mask
        attn_mask = attn_mask.reshape(1, nw * h, n, n)
        b = b_ // nw
        qq = q.reshape(b, nw * h, n, q.shape[-1])
        kk = k.reshape(b, nw * h, n, k.shape[-1])
        vv = v.reshape(b, nw * h, n, v.shape[-1])
        out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=attn_mask, scale=1.0)
        out = out.reshape(b_, h, n, out.shape[-1])
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)
    if out.shape[-1] != dv:
        out = out[..., :dv]
    return out


def _fused(q, k, v, bias, mask):
    from agileir.models.attention.fused import fused_window_attention

    return fused_window_attention(q, k, v, bias, mask)


_KERNELS = {"eager": eager_window_attention, "chunked": chunked_window_attention, "sdpa": sdpa_window_attention,
            "fused": _fused}


def run_kernel(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q k^T + bias + mask) v`` with the named kernel ("eager", "chunked" or "sdpa")."""
    try:
        fn = _KERNELS[kernel]
    except KeyError:
        raise ValueError(f"kernel must be one of {tuple(_KERNELS)}, got {kernel!r}") from None
    return fn(q, k, v, bias, mask)
