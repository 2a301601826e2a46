"""Learning-rate schedules as pure functions of the iteration.

Why: a schedule that depends only on the iteration number needs no state of its own, so a
resumed run sets exactly the learning rate the uninterrupted run would have used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from agileir.errors import ConfigError

SCHEDULES = ("multistep", "cosine", "constant")


class LRSchedule:
    """``lr(it) = base_lr * factor(it)`` for the optimizer step that produces iteration ``it``.

    * ``multistep``: multiply by ``gamma`` once ``it - 1`` reaches each milestone, i.e. the
      step after the milestone uses the lower rate (what ``MultiStepLR`` stepped after every
      optimizer step gives);
    * ``cosine``: cosine decay from 1 to ``min_factor`` over ``total - warmup`` iterations;
    * ``constant``.

    Each may start with a linear warm-up: ``factor = it / warmup`` for ``it <= warmup``.
    """

    def __init__(self, name: str, total: int, milestones: Sequence[int] = (), gamma: float = 0.5,
                 warmup: int = 0, min_factor: float = 0.0) -> None:
        if name not in SCHEDULES:
            raise ConfigError(f"train.scheduler.name must be one of {SCHEDULES}, got {name!r}")
        if total < 1:
            raise ConfigError(f"train.iterations must be >= 1, got {total}")
        if warmup < 0:
            raise ConfigError(f"train.scheduler.warmup_iterations must be >= 0, got {warmup}")
        if not 0 < gamma <= 1:
            raise ConfigError(f"train.scheduler.gamma must be in (0, 1], got {gamma}")
        self.name = name
        self.total = int(total)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup = int(warmup)
        self.min_factor = float(min_factor)

    def factor(self, iteration: int) -> float:
        """Multiplier of the base learning rate for the step producing ``iteration`` (1-based)."""
        it = max(int(iteration), 1)
        warm = it / self.warmup if self.warmup and it <= self.warmup else 1.0
        done = it - 1  # optimizer steps completed before this one
        if self.name == "multistep":
            f = self.gamma ** sum(1 for m in self.milestones if done >= m)
        elif self.name == "cosine":
            span = max(self.total - self.warmup, 1)
            progress = min(max(done - self.warmup, 0) / span, 1.0)
            f = self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            f = 1.0
        return f * warm

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every parameter group's ``lr`` to its ``initial_lr`` times ``factor(iteration)``."""
        f = self.factor(iteration)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * f
        return optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        """The schedule's parameters (it has no other state; kept for inspection of checkpoints)."""
        return {"name": self.name, "total": self.total, "milestones": list(self.milestones),
                "gamma": self.gamma, "warmup": self.warmup, "min_factor": self.min_factor}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], total: int) -> "LRSchedule":
        """Build from the ``train.scheduler`` section of a run configuration."""
        return cls(str(cfg.get("name", "multistep")), total, cfg.get("milestones") or (),
                   float(cfg.get("gamma", 0.5)), int(cfg.get("warmup_iterations", 0) or 0),
                   float(cfg.get("min_lr_ratio", 0.0) or 0.0))


__all__ = ["LRSchedule", "SCHEDULES"]
