"""Pure helpers for window attention: partitioning, relative positions and shift masks.

Feature maps are channel-last, ``(B, H, W, C)``; a window of ``M x M`` tokens is ``N = M*M``
tokens in row-major order.
"""

from __future__ import annotations

import functools

import torch

MASK_VALUE = -100.0  # SwinIR's value for "different pre-shift region"; exp(-100) ~ 4e-44


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, N, C), windows of image b are rows b*nW .. b*nW + nW - 1."""
    b, h, w, c = x.shape
    m = window_size
    x = x.view(b, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, m * m, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, N, C) -> (B, H, W, C), the inverse of window_partition."""
    m = window_size
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // m) * (w // m))
    x = windows.view(b, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


@functools.lru_cache(maxsize=32)
def window_token_order(h: int, w: int, window_size: int, shift: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices (row-major in the image) in the order of the shifted windows, and the inverse:
    ``x.view(B, H*W, C)[:, order]`` is ``shifted_window_partition(x, window_size, shift)``
    flattened (shift 0: the plain partition), and ``inverse`` undoes it.

    Built outside inference mode whatever the caller's mode: the cache outlives the call, and an
    inference tensor first cached by ``agileir upscale`` could not be saved for a later backward.
    """
    with torch.inference_mode(False):
        rows = (torch.arange(h, device=device) + shift) % h
        cols = (torch.arange(w, device=device) + shift) % w
        m = window_size
        order = (rows[:, None] * w + cols[None, :]).view(h // m, m, w // m, m).permute(0, 2, 1, 3).reshape(-1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=device)
    return order, inverse


class _TokenPermutation(torch.autograd.Function):
    """``x.index_select(1, order)`` for a permutation, whose gradient is the inverse permutation
    (a gather too, not index_select's scatter; twice differentiable)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order, inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        order, inverse = ctx.saved_tensors
        return _TokenPermutation.apply(grad, inverse, order), None, None


def shifted_window_partition(x: torch.Tensor, window_size: int, shift: int) -> torch.Tensor:
    """``window_partition(torch.roll(x, (-shift, -shift), (1, 2)), window_size)`` in one gather.

    Why: on the CPU ``torch.roll`` of two dimensions is several copies, and the partition one
    more; one gather with a cached index took 1.2 ms against 14.8 (a 256x256x60 float32 feature
    map, one thread), forward and backward of a batch-16 training patch 6.6 ms against 15.8.
    While exporting, the roll and the partition themselves (the index would be a constant of one
    feature size).
    """
    if shift == 0:
        return window_partition(x, window_size)
    b, h, w, c = x.shape
    if is_exporting():
        return window_partition(torch.roll(x, shifts=(-shift, -shift), dims=(1, 2)), window_size)
    order, inverse = window_token_order(h, w, window_size, shift, x.device)
    return _TokenPermutation.apply(x.reshape(b, h * w, c), order, inverse).view(-1, window_size * window_size, c)


def shifted_window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int, shift: int) -> torch.Tensor:
    """The inverse of :func:`shifted_window_partition`: (B * nW, N, C) -> (B, H, W, C)."""
    if shift == 0:
        return window_reverse(windows, window_size, h, w)
    if is_exporting():
        return torch.roll(window_reverse(windows, window_size, h, w), shifts=(shift, shift), dims=(1, 2))
    c = windows.shape[-1]
    order, inverse = window_token_order(h, w, window_size, shift, windows.device)
    return _TokenPermutation.apply(windows.reshape(-1, h * w, c), inverse, order).view(-1, h, w, c)


def too_small_for_window(height: int, width: int, window_size: int) -> bool:
    """True when reflection padding to the window multiple needs more pixels than a side has
    (``F.pad(mode="reflect")`` pads by less than the size): the smallest side is ``M // 2 + 1``."""
    return (-height) % window_size >= height or (-width) % window_size >= width


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) int64: index into a ((2M-1)^2, heads) bias table for each (query, key) pair."""
    m = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (m - 1)  # (N, N, 2)
    return rel[..., 0] * (2 * m - 1) + rel[..., 1]


def shift_mask(height: int, width: int, window_size: int, shift: int,
               device: torch.device | str | None = None, value: float = MASK_VALUE) -> torch.Tensor:
    """(nW, N, N) float32 additive mask for cyclically shifted windows.

    0 for token pairs from the same pre-shift region, ``value`` across regions. ``height`` and
    ``width`` are the padded feature size (multiples of the window). SwinIR uses -100; -inf gives
    exact zeros instead of exp(-100), a float32 subnormal that slows CPU matmuls about tenfold.
    """
    m = window_size
    region = torch.zeros(1, height, width, 1)
    slices = (slice(0, -m), slice(-m, -shift), slice(-shift, None))
    label = 0
    for hs in slices:
        for ws in slices:
            region[:, hs, ws, :] = label
            label += 1
    labels = window_partition(region, m).squeeze(-1)  # (nW, N)
    diff = labels[:, None, :] - labels[:, :, None]
    mask = torch.zeros_like(diff).masked_fill(diff != 0, value)
    return mask.to(device) if device is not None else mask


def is_exporting() -> bool:
    """True while the model is traced or exported (torch.jit.trace, torch.onnx.export, torch.export).

    Feature sizes may then be symbolic, so the shift mask and the padding are computed with tensor
    ops (:func:`traceable_shift_mask`) instead of Python-int caches and branches.
    """
    exporting = getattr(torch.compiler, "is_exporting", None)
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or (exporting is not None and exporting()))


def traceable_shift_mask(height: int | torch.Tensor, width: int | torch.Tensor, window_size: int, shift: int,
                         device: torch.device | str | None = None, value: float = MASK_VALUE) -> torch.Tensor:
    """:func:`shift_mask` from tensor ops only, for symbolic ``height`` / ``width`` when exporting.

    A row's region is 0 above ``height - window``, 1 up to ``height - shift`` and 2 below (the
    same for columns), so the labels follow from ``arange`` comparisons without slicing by size.
    """
    m = window_size

    def band(n: int | torch.Tensor) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - m).to(torch.int64) + (idx >= n - shift).to(torch.int64)

    region = band(height)[:, None] * 3 + band(width)[None, :]  # (H, W)
    labels = window_partition(region[None, :, :, None], m).squeeze(-1)  # (nW, N)
    diff = labels[:, None, :] - labels[:, :, None]
    return torch.zeros_like(diff, dtype=torch.float32).masked_fill(diff != 0, value)


class ShiftMaskCache:
    """Shift masks computed once per (feature size, device, dtype) and reused by every block.

    The dtype is the one the attention scores are computed in (bf16 under autocast), so no block
    converts the mask again: for one image the mask is as large as one group's scores.
    """

    def __init__(self, window_size: int, shift: int, max_entries: int = 8) -> None:
        self.window_size, self.shift, self.max_entries = window_size, shift, max_entries
        self.value = MASK_VALUE
        self._masks: dict[tuple, torch.Tensor] = {}

    def get(self, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (height, width, str(device), self.value, dtype)
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) >= self.max_entries:
                self._masks.pop(next(iter(self._masks)))
            mask = shift_mask(height, width, self.window_size, self.shift, device, self.value).to(dtype)
            self._masks[key] = mask
        return mask
