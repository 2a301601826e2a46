"""Window-attention kernels: lean and fast agree with the eager reference, in values and grads."""

from __future__ import annotations

import pytest
import torch

from agileir.models.attention import kernels as K


def shift_mask(h: int, w: int, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Swin's shifted-window mask (nW, N, N) and the per-token region labels (nW, N)."""
    img = torch.zeros(h, w)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    lab = img.view(h // window, window, w // window, window).permute(0, 2, 1, 3)
    lab = lab.reshape(-1, window * window)
    mask = (lab.unsqueeze(1) - lab.unsqueeze(2)) != 0
    return mask.float() * -100.0, lab


def make_inputs(b: int = 2, nw: int = 4, h: int = 3, n: int = 16, dk: int = 5, dv: int = 7,
                dtype: torch.dtype = torch.float64, with_mask: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b * nw, h, n, dk, generator=g, dtype=dtype) * dk ** -0.5).requires_grad_()
    k = torch.randn(b * nw, h, n, dk, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(b * nw, h, n, dv, generator=g, dtype=dtype).requires_grad_()
    bias = (torch.randn(h, n, n, generator=g, dtype=dtype) * 0.5).requires_grad_()
    mask = None
    if with_mask:
        mask = torch.where(torch.rand(nw, n, n, generator=g) > 0.6, -100.0, 0.0).to(dtype)
    return q, k, v, bias, mask


def grads(out: torch.Tensor, inputs, seed: int = 1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("with_mask", [True, False])
def test_lean_and_fast_equal_eager_float64(with_mask: bool) -> None:
    q, k, v, bias, mask = make_inputs(with_mask=with_mask)
    ref = K.eager_window_attention(q, k, v, bias, mask)
    for out in (K.chunked_window_attention(q, k, v, bias, mask),
                K.chunked_window_attention(q, k, v, bias, mask, save_out=False),
                K.sdpa_window_attention(q, k, v, bias, mask)):
        assert out.shape == ref.shape == (8, 3, 16, 7)
        assert (out - ref).abs().max().item() < 1e-10


def test_fast_matches_eager_float32() -> None:
    q, k, v, bias, mask = make_inputs(b=2, nw=4, h=3, n=64, dk=10, dv=10, dtype=torch.float32)
    with torch.no_grad():
        ref = K.eager_window_attention(q, k, v, bias, mask)
        out = K.sdpa_window_attention(q, k, v, bias, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("save_out", [True, False])
def test_lean_gradients_match_eager_float32(save_out: bool) -> None:
    q, k, v, bias, mask = make_inputs(b=2, nw=4, h=6, n=64, dk=10, dv=12, dtype=torch.float32)
    inputs = (q, k, v, bias)
    ref = grads(K.eager_window_attention(q, k, v, bias, mask), inputs)
    got = grads(K.chunked_window_attention(q, k, v, bias, mask, save_out=save_out), inputs)
    for name, a, b in zip("q k v bias".split(), got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert rel_err(a, b) < 1e-5, name


def test_lean_gradcheck_float64_with_mask() -> None:
    q, k, v, bias, mask = make_inputs(b=2, nw=2, h=2, n=4, dk=3, dv=2)
    mask[0, 0, 1] = mask[1, 2, 3] = -100.0  # make sure something is masked

    def f(q, k, v, bias):
        return K.chunked_window_attention(q, k, v, bias, mask, chunk_size=3)

    assert torch.autograd.gradcheck(f, (q, k, v, bias), eps=1e-6, atol=1e-8)


def test_lean_partial_requires_grad() -> None:
    q, k, v, bias, mask = make_inputs()
    q.requires_grad_(False)
    v.requires_grad_(False)
    ref = grads(K.eager_window_attention(q, k, v, bias, mask), (k, bias))
    got = grads(K.chunked_window_attention(q, k, v, bias, mask), (k, bias))
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() < 1e-10


@pytest.mark.parametrize("chunk", [1, 3, 5, 8, 1000])
def test_chunking_gives_identical_results(chunk: int) -> None:
    q, k, v, bias, mask = make_inputs(b=6, nw=4)  # B_ = 24
    inputs = (q, k, v, bias)
    ref_out = K.chunked_window_attention(q, k, v, bias, mask, chunk_size=24)
    ref = grads(ref_out, inputs)
    out = K.chunked_window_attention(q, k, v, bias, mask, chunk_size=chunk)
    got = grads(out, inputs)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-13)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_default_chunk_size_keeps_mask_slices_views() -> None:
    # one (rows, h, N, N) float32 block of ~2 MiB; multiples or divisors of nW
    assert K.default_chunk_size(1024, 6, 64, nw=64) == 16
    assert K.default_chunk_size(1024, 1, 64, nw=64) == 128
    assert K.default_chunk_size(1024, 6, 64, nw=48) == 16
    assert K.default_chunk_size(1024, 6, 64, nw=36) == 18  # 21 fit; 18 divides 36
    assert K.default_chunk_size(5, 6, 64, nw=1) == 5
    assert K.default_chunk_size(8, 64, 256, nw=4) == 1


def test_full_score_tensor_never_materialised() -> None:
    """No tensor with B_*h*N*N elements (or more) is created in lean forward or backward."""
    dispatch = pytest.importorskip("torch.utils._python_dispatch")
    q, k, v, bias, mask = make_inputs(b=4, nw=4, h=2, n=16, dtype=torch.float32)
    full = q.shape[0] * q.shape[1] * 16 * 16
    sizes: list[int] = []

    class Record(dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-2:] == (16, 16):
                    sizes.append(t.numel())  # every N x N score-like tensor
            return out

    with Record():
        out = K.chunked_window_attention(q, k, v, bias, mask, chunk_size=3)
        out.backward(torch.ones_like(out))
    assert sizes and max(sizes) <= 3 * 2 * 16 * 16 < full
    sizes.clear()
    with Record():
        K.eager_window_attention(q, k, v, bias, mask)
    assert max(sizes) >= full  # the recorder does see the eager path's probabilities


def test_bf16_close_to_fp32() -> None:
    q, k, v, bias, mask = make_inputs(b=2, nw=4, h=6, n=64, dk=10, dv=10, dtype=torch.float32)
    ref = K.eager_window_attention(q, k, v, bias, mask)
    ref_g = grads(ref, (q, k, v, bias))
    qb, kb, vb, bb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v, bias))
    out = K.chunked_window_attention(qb, kb, vb, bb, mask)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max().item() < 3e-2
    assert rel_err(out, ref) < 1e-2
    got = grads(out, (qb, kb, vb, bb))
    for a, b in zip(got, ref_g):
        assert a.dtype == torch.bfloat16
        assert rel_err(a, b) < 3e-2
    with torch.no_grad():
        fast = K.sdpa_window_attention(qb, kb, vb, bb, mask.bfloat16())
    assert rel_err(fast, ref) < 1e-2


@pytest.mark.parametrize("impl", ["eager", "chunked", "sdpa"])
def test_mask_blocks_cross_region_attention_with_batch(impl: str) -> None:
    mask, labels = shift_mask(8, 8, window=4, shift=2)  # nW = 4, N = 16
    nw, n = labels.shape
    b, h = 3, 2
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b * nw, h, n, 4, generator=g) * 2
    k = torch.randn(b * nw, h, n, 4, generator=g) * 2
    bias = torch.randn(h, n, n, generator=g)
    v = torch.eye(n).expand(b * nw, h, n, n)  # the output is the attention matrix itself
    with torch.no_grad():
        p = K.run_kernel(impl, q, k, v, bias, mask)
    torch.testing.assert_close(p.sum(-1), torch.ones(b * nw, h, n), rtol=0, atol=1e-5)
    cross = (labels.unsqueeze(2) != labels.unsqueeze(1))  # (nW, N, N)
    assert cross[0].sum() == 0 and cross[1:].any()  # window 0 is one region, the others not
    for row in range(b * nw):
        w = row % nw  # window w of image b is row b*nW + w
        if cross[w].any():
            assert p[row][:, cross[w]].max().item() < 1e-6
        # and the same as attending window w alone with its own mask
        alone = K.eager_window_attention(q[row:row + 1], k[row:row + 1], v[row:row + 1], bias,
                                         mask[w:w + 1])
        torch.testing.assert_close(p[row:row + 1], alone, rtol=1e-5, atol=1e-6)


def test_run_kernel_calls_the_named_kernel_and_refuses_others() -> None:
    q, k, v, bias, mask = make_inputs()
    ref = K.eager_window_attention(q, k, v, bias, mask)
    for kernel in ("eager", "chunked", "sdpa"):
        torch.testing.assert_close(K.run_kernel(kernel, q, k, v, bias, mask), ref, rtol=1e-5, atol=1e-6)
    assert "Chunked" in type(K.run_kernel("chunked", q, k, v, bias, mask).grad_fn).__name__
    with pytest.raises(ValueError):
        K.run_kernel("flash", q, k, v, bias, mask)


def test_shape_errors() -> None:
    q, k, v, bias, mask = make_inputs(b=2, nw=4)
    with pytest.raises(ValueError, match="multiple"):
        K.chunked_window_attention(q[:6], k[:6], v[:6], bias, mask)
    with pytest.raises(ValueError, match="bias"):
        K.sdpa_window_attention(q, k, v, bias[:1], mask)
    with pytest.raises(ValueError, match="chunk_size"):
        K.chunked_window_attention(q, k, v, bias, mask, chunk_size=0)


def test_lean_without_bias_or_mask() -> None:
    q, k, v, _, _ = make_inputs()
    ref = K.eager_window_attention(q, k, v, None, None)
    out = K.chunked_window_attention(q, k, v, None, None)
    assert (out - ref).abs().max().item() < 1e-10
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert (a - b).abs().max().item() < 1e-10
    assert (K.sdpa_window_attention(q, k, v, None, None) - ref).abs().max().item() < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernels_match_eager() -> None:
    q, k, v, bias, mask = make_inputs(b=2, nw=4, h=6, n=64, dk=10, dv=12, dtype=torch.float32)
    dev = [t.detach().cuda().requires_grad_() for t in (q, k, v, bias)]
    mask_c = mask.cuda()
    ref = K.eager_window_attention(*dev, mask_c)
    g = torch.randn_like(ref)
    ref_g = torch.autograd.grad(ref, dev, g)
    out = K.chunked_window_attention(*dev, mask_c)
    got = torch.autograd.grad(out, dev, g)
    assert rel_err(out, ref) < 1e-5
    for a, b in zip(got, ref_g):
        assert rel_err(a, b) < 1e-4
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            args = [t.detach().to(dtype) for t in dev]
            fast = K.sdpa_window_attention(*args, mask_c)
            assert fast.shape == ref.shape
            assert rel_err(fast, ref) < (1e-4 if dtype == torch.float32 else 2e-2)



def test_cpu_sdpa_takes_the_flash_kernel_for_unequal_head_dims() -> None:
    """GSWA's groups have 8-wide q/k and 10-wide v; unpadded, SDPA drops to its unfused math path."""
    from torch.profiler import profile

    q, k, v, bias, mask = make_inputs(b=1, nw=4, h=1, n=16, dk=8, dv=10, dtype=torch.float32)
    with torch.no_grad():
        ref = K.eager_window_attention(q, k, v, bias, mask)
        with profile() as prof:
            out = K.sdpa_window_attention(q, k, v, bias, mask)
    names = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in n for n in names), sorted(names)
    assert out.shape == ref.shape and (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("start, rows", [(4, 8), (0, 24), (6, 8)], ids=["slice", "whole-periods", "ragged"])
def test_mask_rows_in_and_out_of_place_match_an_explicit_loop(start: int, rows: int) -> None:
    """Rows ``start ..`` of B_ get ``mask[row % nW]``: inside one period (a slice), whole periods
    (a broadcast view) and across a period boundary (a gather); out of place leaves the input."""
    from agileir.models.attention.core import add_mask, add_mask_

    g = torch.Generator().manual_seed(0)
    nw, h, n = 12, 2, 4
    mask = torch.randn(nw, n, n, generator=g, dtype=torch.float64)
    scores = torch.randn(rows, h, n, n, generator=g, dtype=torch.float64)
    want = scores.clone()
    for r in range(rows):
        want[r] += mask[(start + r) % nw]
    before = scores.clone()
    out = add_mask(scores, mask, start)
    assert torch.equal(scores, before) and torch.equal(out, want)
    assert add_mask_(scores, mask, start) is scores and torch.equal(scores, want)
