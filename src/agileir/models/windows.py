"""Pure helpers for window attention: partitioning, relative positions and shift masks.

Feature maps are channel-last, ``(B, H, W, C)``; a window of ``M x M`` tokens is ``N = M*M``
tokens in row-major order.
"""

from __future__ import annotations

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


class ShiftMaskCache:
    """Shift masks computed once per (feature size, device) and reused by every block."""

    def __init__(self, window_size: int, shift: int, max_entries: int = 8) -> None:
        self.window_size, self.shift, self.max_entries = window_size, shift, max_entries
        self.value = MASK_VALUE
        self._masks: dict[tuple, torch.Tensor] = {}

    def get(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width, str(device), self.value)
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) >= self.max_entries:
                self._masks.pop(next(iter(self._masks)))
            mask = shift_mask(height, width, self.window_size, self.shift, device, self.value)
            self._masks[key] = mask
        return mask
