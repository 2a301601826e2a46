"""The saved-activation census counts exactly the distinct storages autograd holds for backward."""

from __future__ import annotations

import torch
from torch import nn

from agileir.engine import memory as M
from agileir.models.attention import kernels as K

F32 = 4


def test_matmul_relu_sum_exact_bytes() -> None:
    x = torch.randn(8, 5)
    w = nn.Parameter(torch.randn(5, 3))
    y, rep = M.saved_activation_bytes(lambda: (x @ w).relu().sum(), exclude=[w])
    # mm keeps x (needed for dW); relu keeps its output (8, 3); sum keeps no tensor
    assert rep.total_bytes == 8 * 5 * F32 + 8 * 3 * F32
    assert rep.num_storages == 2 and rep.num_saved == 2 and rep.excluded_bytes == 0
    y.backward()  # the graph still works through the census's aliases
    torch.testing.assert_close(w.grad, x.t() @ (x @ w > 0).float())


def test_parameters_excluded_but_reported() -> None:
    x = torch.randn(8, 5, requires_grad=True)
    w = nn.Parameter(torch.randn(5, 3))
    _, rep = M.saved_activation_bytes(lambda: (x @ w).relu().sum(), exclude=[w])
    # now mm also keeps w (for dx): excluded from the total, but seen
    assert rep.total_bytes == 8 * 5 * F32 + 8 * 3 * F32
    assert rep.num_saved == 3 and rep.excluded_bytes == 5 * 3 * F32
    _, rep_all = M.saved_activation_bytes(lambda: (x @ w).relu().sum())
    assert rep_all.total_bytes == rep.total_bytes + 5 * 3 * F32


def test_module_exclusion_covers_parameters_and_buffers() -> None:
    lin = nn.Linear(6, 4)
    lin.register_buffer("table", torch.arange(4))
    x = torch.randn(10, 6, requires_grad=True)

    def fn():
        return (lin(x).relu() * 2).index_select(1, lin.table).sum()

    _, rep = M.saved_activation_bytes(fn, exclude=lin)
    # addmm: x (for dW) and W^T (for dx, excluded); relu: output; index_select: the index
    assert rep.total_bytes == 10 * 6 * F32 + 10 * 4 * F32
    assert rep.excluded_bytes == 6 * 4 * F32 + 4 * 8
    _, rep_buf = M.saved_activation_bytes(fn, exclude=lin, exclude_buffers=False)
    assert rep_buf.total_bytes == rep.total_bytes + 4 * 8


def test_storage_saved_twice_counted_once() -> None:
    x = torch.randn(4, 6, requires_grad=True)

    def fn():
        a = x.exp()  # exp keeps its output a
        return (a * a).sum()  # mul keeps a twice

    _, rep = M.saved_activation_bytes(fn)
    assert rep.num_saved == 3
    assert rep.num_storages == 1 and rep.total_bytes == 4 * 6 * F32
    assert rep.entries[0].saved_count == 3


def test_views_counted_once_at_storage_size() -> None:
    x = torch.randn(10, 8, requires_grad=True)

    def fn():
        y = x.exp()  # keeps y (10, 8)
        return y[:5].sin().sum() + y[5:, :3].cos().sum()  # keep two views of y's storage

    _, rep = M.saved_activation_bytes(fn)
    assert rep.num_storages == 1 and rep.total_bytes == 10 * 8 * F32

    big = torch.randn(100, 4)
    w = nn.Parameter(torch.randn(4, 3))
    _, rep = M.saved_activation_bytes(lambda: (big[:10] @ w).sum(), exclude=[w])
    assert rep.total_bytes == 100 * 4 * F32  # a small view pins the whole storage


def test_freed_branches_not_counted() -> None:
    x = torch.randn(5, 5, requires_grad=True)

    def fn():
        a = (x * 2).exp()  # mul by a scalar keeps nothing; exp keeps a
        a.sin()  # keeps a again, but this node dies with its discarded result
        return a.sum()

    _, rep = M.saved_activation_bytes(fn)
    assert rep.num_saved == 1 and rep.total_bytes == 5 * 5 * F32


class _Stash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x)
        ctx.hidden = y  # invisible to saved_tensors_hooks: kernels must not do this
        return x * y

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.hidden, g * x


def test_custom_function_save_for_backward_is_seen() -> None:
    x = torch.randn(7, 3, requires_grad=True)
    y = torch.randn(7, 3, requires_grad=True)
    out, rep = M.saved_activation_bytes(_Stash.apply, x, y)
    assert rep.num_saved == 1 and rep.total_bytes == 7 * 3 * F32  # x only; ctx.hidden unseen
    out.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())


def lean_formula(b_: int, h: int, n: int, dk: int, dv: int, nw: int, esize: int,
                 save_out: bool = True) -> int:
    """Bytes kept by the lean kernel for distinct contiguous q, k, v (see kernels docstring)."""
    per_row = esize * (2 * dk + dv) + 4 + (esize * dv if save_out else 0)  # q, k, v, lse, out
    return b_ * h * n * per_row + esize * h * n * n + esize * nw * n * n  # + bias + mask


def test_lean_window_attention_saved_bytes_follow_the_formula() -> None:
    b, nw, h, n, dk, dv = 2, 4, 3, 16, 5, 7
    b_ = b * nw
    q = torch.randn(b_, h, n, dk, requires_grad=True)
    k = torch.randn(b_, h, n, dk, requires_grad=True)
    v = torch.randn(b_, h, n, dv, requires_grad=True)
    bias = torch.randn(h, n, n, requires_grad=True)
    mask = torch.zeros(nw, n, n)
    _, lean = M.saved_activation_bytes(K.chunked_window_attention, q, k, v, bias, mask)
    assert lean.total_bytes == lean_formula(b_, h, n, dk, dv, nw, F32)
    _, lean_no_out = M.saved_activation_bytes(K.chunked_window_attention, q, k, v, bias, mask,
                                              save_out=False)
    assert lean_no_out.total_bytes == lean_formula(b_, h, n, dk, dv, nw, F32, save_out=False)
    # eager: q, k, v and the (B_, h, N, N) probabilities (bias and mask adds keep nothing)
    out, eager = M.saved_activation_bytes(K.eager_window_attention, q, k, v, bias, mask)
    assert eager.total_bytes == F32 * b_ * h * n * (2 * dk + dv + n)
    out.sum().backward()

    # bf16: 2-byte q, k, v, out, bias, mask; float32 log-sum-exp
    qb, kb, vb, bb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v, bias))
    _, rep = M.saved_activation_bytes(K.chunked_window_attention, qb, kb, vb, bb, mask.bfloat16())
    assert rep.total_bytes == lean_formula(b_, h, n, dk, dv, nw, 2)


def test_lean_far_below_eager_at_swinir_shapes() -> None:
    b, nw, h, n, d = 1, 64, 6, 64, 10  # SwinIR-S: 6 heads of 10 channels, 8x8 windows
    b_ = b * nw
    q, k, v = (torch.randn(b_, h, n, d, requires_grad=True) for _ in range(3))
    table = nn.Parameter(torch.randn(h, n, n))
    bias = table * 1.0  # a non-parameter (h, N, N) tensor, as the gathered table would be
    _, eager = M.saved_activation_bytes(K.eager_window_attention, q, k, v, bias, None)
    _, lean = M.saved_activation_bytes(K.chunked_window_attention, q, k, v, bias, None)
    probs = F32 * b_ * h * n * n
    assert eager.total_bytes >= probs
    assert lean.total_bytes == lean_formula(b_, h, n, d, d, 0, F32)
    assert lean.total_bytes < 0.5 * eager.total_bytes  # 164 vs 376 bytes per token per head
    assert eager.total_bytes - lean.total_bytes > 0.7 * probs


def test_report_breakdown_and_summary() -> None:
    x = torch.randn(8, 5, requires_grad=True)
    _, rep = M.saved_activation_bytes(lambda: (x.exp() @ x.double().t().float()).sum())
    assert rep.by_dtype() == {torch.float32: rep.total_bytes}
    assert sum(b for *_, b in rep.by_shape()) == rep.total_bytes
    assert [e.nbytes for e in rep.entries] == sorted((e.nbytes for e in rep.entries), reverse=True)
    text = rep.summary()
    assert "saved activations" in text and "float32" in text
    assert rep.total_mib == rep.total_bytes / 2**20


def test_census_context_manager_and_no_grad() -> None:
    x = torch.randn(4, 4, requires_grad=True)
    with M.SavedTensorCensus() as census:
        with torch.no_grad():
            x.exp()
        y = x.sin()
    assert census.report().total_bytes == 4 * 4 * F32  # sin keeps its input
    del y
    assert census.report().total_bytes == 0  # graph gone, nothing held
