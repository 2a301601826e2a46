"""Deterministic activation-memory census and peak-memory helpers (docs/performance.md).

"Activation memory" here is the number of bytes of *distinct tensor storages* that autograd holds
for backward at the end of a forward pass, excluding the model's parameters (and, by default, its
buffers). It is measured with :func:`torch.autograd.graph.saved_tensors_hooks`: every tensor an
autograd node saves -- including tensors a custom :class:`torch.autograd.Function` passes to
``ctx.save_for_backward`` -- goes through the pack hook, which records the tensor's untyped
storage and hands autograd a detached alias (same storage, no extra memory, no reference cycle
through ``grad_fn``). A storage is counted once, at its full size, however many views of it are
saved; a saved tensor whose graph has already been freed by the end of the forward pass (e.g. a
branch whose result was discarded) is not counted, because its alias is gone.

Blind spots, by construction:

* Tensors a custom Function keeps as ``ctx`` attributes (``ctx.x = x``) bypass the hooks and are
  invisible. Kernels in this project must use ``ctx.save_for_backward`` for every tensor.
* Tensors kept alive by closures rather than by autograd (e.g. the inputs held by
  ``torch.utils.checkpoint(..., use_reentrant=False)``, whose own hooks shadow this census inside
  the checkpointed region) are not seen; the reentrant variant saves its inputs through
  ``save_for_backward`` and is seen.
* Because the hooks hand back detached aliases, double backward (``create_graph=True``) through
  the census is not supported; use it to measure, not to train.

The figure users feel is the peak of a whole step: :func:`agileir.runtime.peak_memory_bytes`
(peak RSS on CPU, best measured in a fresh process since it never decreases; the CUDA
allocator's peak on GPU).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "SavedEntry",
    "SavedReport",
    "SavedTensorCensus",
    "saved_activation_bytes",
]

_MiB = 1024 * 1024

StorageKey = tuple[str, int]


@dataclass(frozen=True)
class SavedEntry:
    """One distinct storage held for backward: its size and the first saved view's dtype/shape."""

    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: str
    saved_count: int  # how many saved tensors (views) point at this storage


@dataclass
class SavedReport:
    """Census result: total bytes of distinct non-excluded storages held for backward."""

    total_bytes: int
    num_storages: int
    num_saved: int  # saved-tensor slots alive at the end, counting duplicates and excluded ones
    excluded_bytes: int  # distinct parameter/buffer storages that were saved (not in the total)
    entries: list[SavedEntry] = field(default_factory=list)  # largest first

    @property
    def total_mib(self) -> float:
        return self.total_bytes / _MiB

    def by_dtype(self) -> dict[torch.dtype, int]:
        """Bytes per dtype (of the first view saved of each storage)."""
        out: dict[torch.dtype, int] = {}
        for e in self.entries:
            out[e.dtype] = out.get(e.dtype, 0) + e.nbytes
        return out

    def by_shape(self, top: int = 10) -> list[tuple[torch.dtype, tuple[int, ...], int, int]]:
        """(dtype, shape, number of storages, bytes) groups, largest total first."""
        groups: dict[tuple[torch.dtype, tuple[int, ...]], list[int]] = {}
        for e in self.entries:
            g = groups.setdefault((e.dtype, e.shape), [0, 0])
            g[0] += 1
            g[1] += e.nbytes
        rows = [(dt, shp, n, b) for (dt, shp), (n, b) in groups.items()]
        rows.sort(key=lambda r: -r[3])
        return rows[:top]

    def summary(self, top: int = 10) -> str:
        """Human-readable breakdown for debugging."""
        lines = [f"saved activations: {self.total_bytes} B ({self.total_mib:.2f} MiB) in "
                 f"{self.num_storages} storages, {self.num_saved} saved slots, "
                 f"{self.excluded_bytes} B of parameters/buffers excluded"]
        for dt, shp, n, b in self.by_shape(top):
            lines.append(f"  {str(dt):>16} {str(list(shp)):<28} x{n:<5} {b / _MiB:10.3f} MiB")
        return "\n".join(lines)


def _storage_key_and_size(t: torch.Tensor) -> tuple[StorageKey, int]:
    try:
        st = t.untyped_storage()
        return (str(t.device), st.data_ptr()), st.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, wrapper subclasses
        return ("id", id(t)), t.nelement() * t.element_size()


def _excluded_keys(exclude: Any, exclude_buffers: bool) -> set[StorageKey]:
    if exclude is None:
        return set()
    if isinstance(exclude, torch.nn.Module):
        tensors: list[torch.Tensor] = list(exclude.parameters())
        if exclude_buffers:
            tensors += list(exclude.buffers())
    elif isinstance(exclude, torch.Tensor):
        tensors = [exclude]
    else:
        tensors = list(exclude)
    return {_storage_key_and_size(t)[0] for t in tensors if t is not None}


@dataclass
class _Record:
    ref: weakref.ref
    key: StorageKey
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: str


class SavedTensorCensus:
    """Context manager recording every tensor autograd saves inside it.

    ``exclude``: a module (its parameters, and its buffers if ``exclude_buffers``) or an iterable
    of tensors whose storages are model state rather than activations. Call :meth:`report` while
    the graph is alive (i.e. before backward) to get a :class:`SavedReport`.
    """

    def __init__(self, exclude: torch.nn.Module | Iterable[torch.Tensor] | None = None,
                 exclude_buffers: bool = True) -> None:
        self._excluded = _excluded_keys(exclude, exclude_buffers)
        self._records: list[_Record] = []
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        alias = t.detach()  # same storage; avoids an output -> grad_fn -> output cycle
        key, nbytes = _storage_key_and_size(t)
        self._records.append(_Record(weakref.ref(alias), key, nbytes, t.dtype,
                                     tuple(t.shape), str(t.device)))
        return alias

    @staticmethod
    def _unpack(alias: torch.Tensor) -> torch.Tensor:
        return alias

    def __enter__(self) -> SavedTensorCensus:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None

    def report(self) -> SavedReport:
        """Distinct storages still held (alias alive), parameters/buffers excluded."""
        seen: dict[StorageKey, list] = {}
        excluded: dict[StorageKey, int] = {}
        num_saved = 0
        for r in self._records:
            if r.ref() is None:  # the node that saved it is gone: not held any more
                continue
            num_saved += 1
            if r.key in self._excluded:
                excluded[r.key] = r.nbytes
                continue
            if r.key in seen:
                seen[r.key][4] += 1
            else:
                seen[r.key] = [r.nbytes, r.dtype, r.shape, r.device, 1]
        entries = [SavedEntry(nb, dt, shp, dev, cnt) for nb, dt, shp, dev, cnt in seen.values()]
        entries.sort(key=lambda e: -e.nbytes)
        return SavedReport(total_bytes=sum(e.nbytes for e in entries), num_storages=len(entries),
                           num_saved=num_saved, excluded_bytes=sum(excluded.values()),
                           entries=entries)


def saved_activation_bytes(fn: Callable[..., Any], *args: Any,
                           exclude: torch.nn.Module | Iterable[torch.Tensor] | None = None,
                           exclude_buffers: bool = True, **kwargs: Any) -> tuple[Any, SavedReport]:
    """Run ``fn(*args, **kwargs)`` and census what autograd holds for backward when it returns.

    Returns ``(result, report)``; the graph stays usable, so ``result.backward()`` still works.
    ``exclude`` and ``exclude_buffers`` are consumed here, not passed to ``fn``.
    """
    census = SavedTensorCensus(exclude, exclude_buffers)
    with census:
        result = fn(*args, **kwargs)
    return result, census.report()
