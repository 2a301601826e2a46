"""Validation during training: ``agileir test``'s protocol (the same library functions) on the
EMA weights, with the inputs and the baseline made once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from agileir.data.pairs import discover
from agileir.engine.config import resolve_path
from agileir.errors import AgileIRError
from agileir.evaluation.protocol import Task, model_runner
from agileir.evaluation.runner import baseline_scores, prepare_folder, score_model


def validation_task(config: Mapping[str, Any], model_config: Any) -> Task:
    """The task validation measures: the model's, at the configured (or the training) level."""
    v, train = config["data"]["val"], config["data"]["train"]
    if model_config.task == "sr":
        return Task("sr", scale=int(model_config.scale))
    if model_config.task == "denoise":
        sigma = v["noise_sigma"]
        if sigma is None:
            sigma = train["noise_sigma"][1] if isinstance(train["noise_sigma"], (list, tuple)) else train["noise_sigma"]
        return Task("denoise", noise=float(sigma))
    q = v["jpeg_quality"]
    if q is None:
        q = train["jpeg_quality"][0] if isinstance(train["jpeg_quality"], (list, tuple)) else train["jpeg_quality"]
    return Task("jpeg", quality=int(q))


class Validator:
    """Scores a model on the ``data.val`` folder; call it with a model, get mean scores."""

    def __init__(self, config: Mapping[str, Any], model_config: Any, device: torch.device) -> None:
        v = config["data"]["val"]
        root = resolve_path(v["dir"])
        self.task = validation_task(config, model_config)
        self.folder = discover(root, self.task.scale if self.task.kind == "sr" else None, str(v["lr_variant"]))
        self.in_chans = int(model_config.in_chans)
        self.device = device
        self.tile, self.overlap = v["tile"], v["tile_overlap"]
        self.items = prepare_folder(self.folder, self.task, self.in_chans, int(v["seed"]), v["max_images"])
        if not self.items:
            raise AgileIRError(f"{root}: no validation images")
        self._baseline: dict[str, float] | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    def describe(self) -> str:
        return f"{self.folder.name} {self.task.describe()} ({len(self.items)} images, {self.folder.lr_source})"

    def baseline(self) -> dict[str, float]:
        """Mean scores of the baseline (bicubic for SR, the degraded input otherwise)."""
        if self._baseline is None:
            self._baseline = baseline_scores(self.items, self.task, self.in_chans == 1)
        return self._baseline

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean PSNR / SSIM (RGB and Y) of ``model`` (put in eval mode for the call)."""
        was_training = model.training
        model.eval()
        try:
            forward = model_runner(model, self.task, self.device, tile=int(self.tile) if self.tile else None,
                                   overlap=self.overlap)
            return score_model(forward, self.items, self.task, self.in_chans == 1)
        finally:
            model.train(was_training)


__all__ = ["Validator", "validation_task"]
