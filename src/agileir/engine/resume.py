"""What may change when a run is resumed, and what happens to each change.

A resumed run continues the same experiment, so a setting that would change what has already
been learnt or the stream of training data is refused, with a message saying how to start a new
run or fine-tune from the weights; a setting that only steers the rest of the run is applied and
logged. The configuration the run writes (``config.yaml``) is then the one in force. The table is
in docs/training.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from agileir.errors import ConfigError

#: dotted option prefixes whose change is refused on resume, and why
REFUSED = {
    "seed": "it changes the training data stream",
    "data.batch_size": "it changes the training data stream",
    "data.train.hr_dir": "it changes the training data",
    "data.train.lr_dir": "it changes the training data",
    "data.train.patch_size": "it changes the training data",
    "data.train.flip": "it changes the training data",
    "data.train.rotate": "it changes the training data",
    "data.train.noise_sigma": "it changes the training data",
    "data.train.jpeg_quality": "it changes the training data",
    "data.train.lr_border": "it changes the training data",
    "data.train.realworld": "it changes the training data",
    "data.train.realworld_context": "it changes the training data",
    "model": "the network differs",
    "train.loss": "it changes the objective",
    "train.optimizer.name": "the optimizer state belongs to another optimizer",
}
#: options under a refused prefix that are applied all the same (they do not change the weights)
APPLIED = ("model.attention_impl", "model.grad_checkpoint", "model.init_from")
#: optimizer hyper-parameters applied to the restored optimizer state (param-group keys)
OPTIMIZER_KEYS = {"lr": "initial_lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay"}
#: options that do not describe the run itself (where it is, how it is resumed)
IGNORED = ("name", "output_dir", "resume", "overwrite")


def _leaves(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, Mapping):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): list(doc) if isinstance(doc, tuple) else doc}


def changed_settings(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted option: (value in the checkpoint's run, value now)}`` for every difference."""
    a, b = _leaves(saved), _leaves(now)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in IGNORED and a.get(k) != b.get(k))
    return {k: (a.get(k), b.get(k)) for k in keys}


def refused_reason(option: str) -> str | None:
    """Why a change of ``option`` is refused on resume, or None when it is applied."""
    if option in APPLIED:
        return None
    for prefix, why in REFUSED.items():
        if option == prefix or option.startswith(prefix + "."):
            return why
    return None


def check_resume(saved: Mapping[str, Any], now: Mapping[str, Any], checkpoint: str) -> dict[str, tuple[Any, Any]]:
    """The applied changes; a :class:`ConfigError` naming the first refused one otherwise."""
    changes = changed_settings(saved, now)
    for option, (old, new) in changes.items():
        why = refused_reason(option)
        if why is not None:
            raise ConfigError(
                f"cannot resume {checkpoint} with {option} changed ({old!r} -> {new!r}): {why}; start a new run "
                f"(another name=...), or fine-tune from its weights with model.init_from=<weights .safetensors>")
    return changes


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, settings: Mapping[str, Any]) -> None:
    """Write ``train.optimizer`` hyper-parameters into restored param groups (the schedule then
    scales ``initial_lr``), so the configured values are the ones in force."""
    for key, group_key in OPTIMIZER_KEYS.items():
        value = settings[key]
        value = tuple(float(b) for b in value) if key == "betas" else float(value or 0.0)
        for group in optimizer.param_groups:
            group[group_key] = value


__all__ = ["REFUSED", "APPLIED", "changed_settings", "refused_reason", "check_resume", "apply_optimizer_settings"]
