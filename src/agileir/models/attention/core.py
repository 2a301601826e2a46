"""The pieces both attentions share: the relative-position bias, adding bias and mask, the value width.

Shapes: scores ``(B_, h, N, N)`` with ``B_ = batch * nW`` (window ``w`` of image ``b`` is row
``b * nW + w``), bias ``(h, N, N)``, shift mask ``(nW, N, N)``.
"""

from __future__ import annotations

import torch
from torch import nn

from agileir.models.windows import is_exporting, relative_position_index

#: The eager paths compute values at the head width rounded up to a multiple of this, the extra
#: columns zero. CPU batched products (scores times values) with 10 output columns, the head width
#: of the -S models, ran 2-3x slower than with 16 (docs/performance.md); the zeros change nothing.
VALUE_ALIGN = 16


def aligned_width(width: int, align: int = VALUE_ALIGN) -> int:
    """``width`` rounded up to a multiple of ``align``."""
    return -(-width // align) * align


def _mask_rows(scores: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A view of ``scores`` (c, h, N, N) and the mask rows of B_ ``start ..`` broadcast against it."""
    c = scores.shape[0]
    nw = mask.shape[0]
    m = mask.to(scores.dtype)
    s0 = start % nw
    if s0 + c <= nw:  # the chunk sits inside one period of windows: a slice
        return scores, m[s0:s0 + c].unsqueeze(1)
    if s0 == 0 and c % nw == 0:  # whole periods: broadcast over images as a view
        return scores.view(c // nw, nw, *scores.shape[1:]), m.unsqueeze(1).unsqueeze(0)
    # ragged: gather the chunk's rows of the mask (c * N * N, a fraction of the scores)
    idx = torch.arange(start, start + c, device=mask.device) % nw
    return scores, m.index_select(0, idx).unsqueeze(1)


def add_mask_(scores: torch.Tensor, mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """``scores`` (c, h, N, N), rows ``start .. start+c-1`` of B_, plus ``mask[row % nW]``.

    In place (returns ``scores``), except while exporting: the legacy ONNX exporter silently
    drops in-place adds through a view, so a new tensor is returned then. Not for scores that
    autograd records: see :func:`add_mask`.
    """
    if is_exporting():  # one shape-free broadcast: a traced slice would freeze the image size
        nw = mask.shape[0]
        return (scores.view(-1, nw, *scores.shape[1:]) + mask.to(scores.dtype).unsqueeze(1)).flatten(0, 1)
    view, m = _mask_rows(scores, mask, start)
    view.add_(m)
    return scores


def add_mask(scores: torch.Tensor, mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """:func:`add_mask_` out of place, for scores autograd records: an in-place add through a view
    makes backward copy and zero-fill whole score tensors (18% of a GSWA training step, measured)."""
    view, m = _mask_rows(scores, mask, start)
    return (view + m).view(scores.shape)


def add_bias_and_mask(scores: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``scores + bias + mask`` out of place (autograd keeps what it needs), broadcast as above."""
    if bias is not None:
        scores = scores + bias.unsqueeze(0).to(scores.dtype)
    if mask is None:
        return scores
    b_, h, n, _ = scores.shape
    nw = mask.shape[0]
    return (scores.view(b_ // nw, nw, h, n, n) + mask.unsqueeze(1).unsqueeze(0).to(scores.dtype)).view(b_, h, n, n)


class RelativePositionBias(nn.Module):
    """A learnable ((2M-1)^2, heads) table, gathered into an (heads, N, N) bias."""

    def __init__(self, window_size: int, num_heads: int, persistent_index: bool = True) -> None:
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # SwinIR's state dict carries the (derived) index; the official key layout keeps it. Other
        # attentions leave it out, so detectors keyed on it do not mistake them for SwinIR.
        self.register_buffer("relative_position_index", relative_position_index(window_size),
                             persistent=persistent_index)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if "relative_position_index" in self._non_persistent_buffers_set:
            state_dict.pop(prefix + "relative_position_index", None)  # derived; older files carry it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table on every call.

        Not cached: edits through ``.data`` (as EMA code and user scripts do) change the table
        without bumping its version counter, so no cache key can see them. The gather is
        heads * N * N elements per block: 1.4 ms per agileir-s forward (24 blocks), below the
        timing noise of a 128x128 image (docs/performance.md).
        """
        n = self.window_size * self.window_size
        table = self.relative_position_bias_table
        bias = table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        return bias if torch.is_grad_enabled() else bias.contiguous()


__all__ = ["VALUE_ALIGN", "aligned_width", "add_mask_", "add_mask", "add_bias_and_mask", "RelativePositionBias"]
