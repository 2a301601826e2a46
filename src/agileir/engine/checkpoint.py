"""Training checkpoints: atomic writes, a pointer to the latest complete one, and RNG states.

Layout of ``<run>/checkpoints``::

    iter_0005000.safetensors   deployable weights (the EMA when enabled) + configuration in the
                               metadata: ``agileir.load_model`` / ``agileir test`` take it as is
    iter_0005000.state.pth     training state: ``params`` (raw weights), ``params_ema``,
                               optimizer, scheduler, RNG states of every rank, iteration, sampler
                               position, best validation score (loads with ``weights_only=True``)
    latest.json                which iteration is the newest *complete* checkpoint

Why: each file is written to a temporary name and renamed (``agileir.fileio.atomic_path``), and
``latest.json`` is replaced only after both files of a checkpoint are in place; older
checkpoints are pruned only after that. A process killed at any moment therefore leaves the
previous checkpoint complete and ``latest.json`` pointing at it.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agileir.errors import AgileIRError
from agileir.fileio import atomic_path, atomic_write_text

LATEST = "latest.json"
STATE_SUFFIX = ".state.pth"
WEIGHTS_SUFFIX = ".safetensors"
STATE_FORMAT = 1


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint on disk."""

    iteration: int
    weights: Path
    state: Path

    def describe(self) -> str:
        return f"{self.weights} (iteration {self.iteration})"


def checkpoint_stem(iteration: int) -> str:
    return f"iter_{int(iteration):07d}"


# ----------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) generator states, as weights_only-safe values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- writing


def save_checkpoint(directory: str | os.PathLike, iteration: int, weights_model: torch.nn.Module,
                    state: dict[str, Any], keep: int = 2, protect: tuple[Path, ...] = (),
                    metadata: dict[str, str] | None = None) -> CheckpointInfo:
    """Write ``iter_<it>.safetensors`` + ``iter_<it>.state.pth``, then point ``latest.json`` at them.

    ``weights_model`` is saved with :func:`agileir.save_model` (the deployable weights);
    ``state`` is the training state (``torch.save``). ``keep`` complete checkpoints are
    retained (0 or less: all); files in ``protect`` are never pruned.
    """
    from agileir.models.loading import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = checkpoint_stem(iteration)
    weights = directory / f"{stem}{WEIGHTS_SUFFIX}"
    state_path = directory / f"{stem}{STATE_SUFFIX}"
    meta = {"agileir.iteration": str(int(iteration)), **(metadata or {})}
    save_model(weights_model, weights, extra_metadata=meta)
    payload = dict(state)
    payload["format"] = STATE_FORMAT
    payload["iteration"] = int(iteration)
    with atomic_path(state_path) as tmp:
        torch.save(payload, str(tmp))
    pointer = {"iteration": int(iteration), "weights": weights.name, "state": state_path.name}
    atomic_write_text(directory / LATEST, json.dumps(pointer, indent=2) + "\n")
    info = CheckpointInfo(int(iteration), weights, state_path)
    if keep > 0:
        prune_checkpoints(directory, keep, protect=(weights, state_path, *protect))
    return info


def prune_checkpoints(directory: str | os.PathLike, keep: int, protect: tuple[Path, ...] = ()) -> None:
    """Delete all but the newest ``keep`` checkpoints (never a file in ``protect``)."""
    directory = Path(directory)
    states = sorted(directory.glob(f"iter_*{STATE_SUFFIX}"))
    protected = {p.resolve() for p in protect}
    for state in states[:-keep] if keep > 0 else []:
        weights = state.with_name(state.name[: -len(STATE_SUFFIX)] + WEIGHTS_SUFFIX)
        for path in (state, weights):
            if path.resolve() not in protected and path.exists():
                path.unlink()


def clear_checkpoints(directory: str | os.PathLike) -> None:
    """Delete every checkpoint of a run folder (``overwrite: true``); the pointer goes first."""
    directory = Path(directory)
    pointer = directory / LATEST
    if pointer.exists():
        pointer.unlink()
    for path in list(directory.glob(f"iter_*{STATE_SUFFIX}")) + list(directory.glob(f"iter_*{WEIGHTS_SUFFIX}")):
        path.unlink()


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporary files a killed process left behind (``.<name>.*.tmp``); returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    count = 0
    for path in directory.glob(".*.tmp"):
        try:
            path.unlink()
            count += 1
        except OSError:
            pass
    return count


# ----------------------------------------------------------------------------- reading


def find_latest(directory: str | os.PathLike) -> CheckpointInfo | None:
    """The checkpoint ``latest.json`` names, or ``None`` when the run has none yet."""
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    try:
        doc = json.loads(pointer.read_text())
        info = CheckpointInfo(int(doc["iteration"]), directory / doc["weights"], directory / doc["state"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AgileIRError(f"{pointer}: unreadable checkpoint pointer ({exc})") from None
    for path in (info.weights, info.state):
        if not path.is_file():
            raise AgileIRError(f"{pointer} names {path.name}, which is missing")
    return info


def resolve_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """A checkpoint from a run folder, its ``checkpoints`` folder, ``latest.json`` or a
    ``*.state.pth`` / ``iter_*.safetensors`` file."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "checkpoints", p):
            info = find_latest(candidate)
            if info is not None:
                return info
        raise AgileIRError(f"{p}: no checkpoint to resume from (no {LATEST})")
    if p.name == LATEST:
        info = find_latest(p.parent)
        if info is None:  # pragma: no cover - the file exists
            raise AgileIRError(f"{p}: no checkpoint")
        return info
    name = p.name
    for suffix in (STATE_SUFFIX, WEIGHTS_SUFFIX):
        if name.endswith(suffix) and name.startswith("iter_"):
            stem = name[: -len(suffix)]
            state = p.with_name(stem + STATE_SUFFIX)
            weights = p.with_name(stem + WEIGHTS_SUFFIX)
            if not state.is_file():
                raise AgileIRError(f"{state}: training state not found (needed to resume)")
            return CheckpointInfo(int(stem.split("_")[1]), weights, state)
    raise AgileIRError(f"{p}: not a run folder, {LATEST} or iter_*{STATE_SUFFIX} checkpoint")


def load_training_state(info: CheckpointInfo, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The training state of a checkpoint (``torch.load`` with ``weights_only=True``)."""
    try:
        state = torch.load(str(info.state), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign files
        raise AgileIRError(f"cannot read the training state {info.state}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise AgileIRError(f"{info.state}: not an agileir training state")
    return state


__all__ = ["CheckpointInfo", "LATEST", "capture_rng_state", "restore_rng_state", "save_checkpoint",
           "prune_checkpoints", "clear_checkpoints", "remove_stale_temporaries", "find_latest", "resolve_checkpoint",
           "load_training_state", "checkpoint_stem"]
