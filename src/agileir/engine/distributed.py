"""Data-parallel helpers: process-group set-up from ``torchrun``'s environment, rank-0 gating,
and the few collectives the trainer needs.

Why: one code path for a single process, ``torchrun --nproc_per_node N`` on one machine and
multi-node jobs; NCCL on GPUs, gloo on CPUs. Without ``torchrun`` (no ``WORLD_SIZE`` in the
environment) every helper degrades to the single-process no-op.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from agileir.runtime import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that logs, validates and writes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed(device: str = "auto", timeout_minutes: float = 60.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes, or return the single-process info.

    The backend is NCCL for CUDA devices and gloo otherwise; each process uses GPU
    ``LOCAL_RANK``. The timeout covers rank 0 validating while the others wait.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world, local_rank, dev, backend)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (a copy; the input is left alone)."""
    out = value.detach().clone()
    if is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (safe to call twice or without one)."""
    if is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when there is more than one process, else ``model``."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # A one-input-channel convolution's weight grad (C, 1, k, k) comes back with stride 1 on its size-1
    # dimension, the bucket view with stride k*k: the same memory layout, which DDP still reports on
    # every rank as a stride mismatch that "may impair performance". Only that false alarm is silenced.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides", category=UserWarning)
    if info.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[info.device.index], output_device=info.device.index)
    return DistributedDataParallel(model)


__all__ = ["DistInfo", "init_distributed", "barrier", "all_reduce_mean", "all_gather_object", "cleanup", "wrap_ddp",
           "is_initialized"]
