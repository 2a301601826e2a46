"""The trainer behind ``agileir train``: the optimisation loop, checkpoints and resume.

:func:`train` runs a configuration (see :mod:`agileir.engine.config`) in a single process or
under ``torchrun`` (DDP: NCCL on GPUs, gloo on CPUs). Why it is built this way:

* **Exact resume.** Everything random is either saved (python / numpy / torch RNG states of
  every rank, optimizer, EMA) or a pure function of the iteration (data order and per-sample
  augmentation, :class:`agileir.data.datasets.StepBatchSampler`; learning rate,
  :class:`agileir.engine.schedule.LRSchedule`). A run stopped at iteration ``k`` and resumed
  gives bit-identical losses and weights on CPU in fp32. What may change on resume is decided
  by :mod:`agileir.engine.resume`.
* **Crash safety.** Checkpoints are written atomically (:mod:`agileir.engine.checkpoint`).
* **Same model for any number of processes.** The global batch is split across ranks and the
  gradients are averaged, so ``torchrun --nproc_per_node N`` trains what one process would.
* **Validation with the evaluation protocol** of ``agileir test`` (:mod:`agileir.engine.validation`,
  the same library functions), on the EMA weights, with best-checkpoint tracking.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agileir.data.realworld import cut_context
from agileir.engine import checkpoint as ckpt
from agileir.engine import distributed as ddp
from agileir.engine.builders import (build_network, build_optimizer, build_realworld, build_train_dataset,
                                     init_from_weights)
from agileir.engine.config import dump_config, resolve_config, resolve_path
from agileir.engine.ema import ModelEMA
from agileir.engine.losses import build_loss
from agileir.engine.resume import apply_optimizer_settings, check_resume
from agileir.engine.runlog import CsvLog, open_tensorboard, say
from agileir.engine.schedule import LRSchedule
from agileir.engine.validation import Validator
from agileir.errors import AgileIRError, ConfigError
from agileir.fileio import atomic_write_text
from agileir.models.loading import save_model
from agileir.runtime import MiB, autocast, peak_memory_bytes

@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    iteration: int
    weights: Path | None = None  # exported model (EMA weights when enabled)
    last_checkpoint: Path | None = None
    best: dict[str, Any] = field(default_factory=dict)
    final_scores: dict[str, float] | None = None
    baseline_scores: dict[str, float] | None = None
    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    is_main: bool = True  # False on the other ranks of a DDP job (they print nothing)


class NonFiniteLossError(AgileIRError):
    """Too many non-finite losses in a row; the message names the last good checkpoint."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Trainer:
    """One training run; see :func:`train`. Attributes are public for tests and extensions
    (e.g. ``loss_fn`` can be replaced before :meth:`run`)."""

    def __init__(self, config: Mapping[str, Any], *, resume: str | os.PathLike | None = None) -> None:
        config = resolve_config(config)  # a complete copy: the caller's dict is never modified
        if resume is not None:
            config["resume"] = str(resume)
        self.config = config
        self.dist = ddp.init_distributed(str(config["device"]))
        if config["threads"]:
            torch.set_num_threads(int(config["threads"]))
        self.device = self.dist.device
        self.main = self.dist.is_main
        self.run_dir = (resolve_path(config["output_dir"]) or Path("runs")) / str(config["name"])
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.total = int(config["train"]["iterations"])
        t = config["train"]
        seed = int(config["seed"])
        _seed_everything(seed + self.dist.rank)

        # --- where to start
        self.resume_info = self._find_resume()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.ckpt_dir)
            ckpt.remove_stale_temporaries(self.run_dir)
            if self.resume_info is None and config["overwrite"] and self.ckpt_dir.is_dir():
                ckpt.clear_checkpoints(self.ckpt_dir)
        ddp.barrier()

        # --- model, EMA, optimisation
        self.model = build_network(config).to(self.device)
        self.net_config = self.model.config
        init_from = config["model"].get("init_from")  # an open section: the key may be absent
        if init_from and self.resume_info is None:
            n, left = init_from_weights(self.model, init_from)
            if self.main:
                say(f"agileir: initialised {n} tensors from {init_from}"
                     + (f"; {len(left)} left as initialised (e.g. {left[0]})" if left else ""))
        decay = t["ema_decay"]
        self.ema = ModelEMA(self.model, float(decay)) if decay else None
        self.optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], t["optimizer"])
        self.schedule = LRSchedule.from_config(t["scheduler"], self.total)
        self.loss_fn = build_loss(t["loss"]["name"], float(t["loss"]["eps"]))
        self.precision = str(t["precision"])
        self.grad_clip = float(t["grad_clip"]) if t["grad_clip"] else None
        self.max_nonfinite = int(t["max_nonfinite"])

        self.iteration = 0
        # training-step clock (wall and this process's CPU seconds, validation and checkpoints
        # excluded), carried across resume: what equal-time comparisons read from the logs
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self.best: dict[str, Any] = {}
        self.last_checkpoint: ckpt.CheckpointInfo | None = None
        self.last_good_checkpoint: ckpt.CheckpointInfo | None = None  # written outside a non-finite streak
        self.nonfinite = 0
        rng_states = None
        if self.resume_info is not None:
            rng_states = self._load_state(self.resume_info)
        self.ddp_model = ddp.wrap_ddp(self.model, self.dist)

        # --- data
        self.dataset = build_train_dataset(config, int(self.net_config.in_chans), progress=self.main and self._bar_on())
        self.degrade = build_realworld(config)  # None: the dataset makes the LR
        self.validator = None
        if self.main and config["data"]["val"]["dir"]:
            self.validator = Validator(config, self.net_config, self.device)

        # RNG last: building the pieces above must not shift the random streams of a resumed run
        if rng_states is not None:
            if len(rng_states) == self.dist.world_size:
                ckpt.restore_rng_state(rng_states[self.dist.rank])
            else:
                if self.main:
                    say(f"agileir: resume: the checkpoint was written by {len(rng_states)} process(es), this run "
                        f"has {self.dist.world_size}: random streams are re-seeded (data order is kept)")
                _seed_everything(seed + self.dist.rank + 1000003 * self.iteration)

    # ------------------------------------------------------------------ set-up helpers

    def _bar_on(self) -> bool:
        setting = self.config["log"]["progress"]
        if setting == "auto":
            return sys.stderr.isatty()
        return bool(setting)

    def _find_resume(self) -> ckpt.CheckpointInfo | None:
        resume = self.config["resume"]
        existing = ckpt.find_latest(self.ckpt_dir) if self.ckpt_dir.is_dir() else None
        if resume in (None, False, "", "none", "null"):
            if existing is not None and not self.config["overwrite"]:
                raise ConfigError(
                    f"{self.run_dir} already has a checkpoint at iteration {existing.iteration}; "
                    "continue it with --resume, or start afresh with overwrite=true or another name=...")
            return None
        if str(resume) == "auto":
            return existing
        return ckpt.resolve_checkpoint(resolve_path(resume) or Path(str(resume)))

    def _load_state(self, info: ckpt.CheckpointInfo) -> list[dict[str, Any]] | None:
        state = ckpt.load_training_state(info)
        saved_net = state.get("network_config")
        if saved_net is not None:
            from agileir.models.config import NetworkConfig

            mine, theirs = self.net_config.weights_dict(), NetworkConfig.from_dict(saved_net).weights_dict()
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if diff:
                raise ConfigError(f"cannot resume from {info.state}: the model differs in {', '.join(diff)} "
                                  f"(checkpoint {diff[0]}={theirs.get(diff[0])!r}, now {mine.get(diff[0])!r}); "
                                  "start a new run, or fine-tune with model.init_from=<weights>")
        applied: dict[str, tuple[Any, Any]] = {}
        if state.get("config_yaml"):
            saved_config = resolve_config(yaml.safe_load(state["config_yaml"]))
            applied = check_resume(saved_config, self.config, str(info.state))
        self.model.load_state_dict(state["params"], strict=True)
        if self.ema is not None:
            if state.get("params_ema") is not None:
                self.ema.load_state_dict(state["params_ema"])
                self.ema.updates = int(state.get("ema_updates", 0))
            else:
                self.ema = ModelEMA(self.model, self.ema.decay)
        self.optimizer.load_state_dict(state["optimizer"])
        apply_optimizer_settings(self.optimizer, self.config["train"]["optimizer"])  # the configured values rule
        self.iteration = int(state["iteration"])
        self.best = dict(state.get("best") or {})
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.train_cpu_seconds = float(state.get("train_cpu_seconds", 0.0))
        self.last_checkpoint = self.last_good_checkpoint = info
        if self.main:
            say(f"agileir: resuming {self.run_dir.name} from {info.describe()}")
            for option, (old, new) in applied.items():
                say(f"agileir: resume: {option} {old!r} -> {new!r} (applied)")
        return state.get("rng")

    # ------------------------------------------------------------------ checkpoints

    def _export_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save(self) -> ckpt.CheckpointInfo | None:
        """Write a checkpoint of the current iteration (collective: every rank calls it)."""
        rng = ddp.all_gather_object(ckpt.capture_rng_state())
        if not self.main:
            ddp.barrier()
            return None
        state = {
            "params": _state_dict_cpu(self.model),
            "params_ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": rng,
            "sampler": {"seed": int(self.config["seed"]), "global_batch": int(self.config["data"]["batch_size"]),
                        "num_items": len(self.dataset), "samples_consumed":
                            self.iteration * int(self.config["data"]["batch_size"])},
            "best": dict(self.best),
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "network_config": self.net_config.to_dict(),
            "config_yaml": dump_config(self.config),
            "world_size": self.dist.world_size,
        }
        info = ckpt.save_checkpoint(
            self.ckpt_dir, self.iteration, self._export_model(), state,
            keep=int(self.config["train"]["keep_checkpoints"]),
            metadata={"agileir.weights": "params_ema" if self.ema is not None else "params"})
        self.last_checkpoint = info
        if self.nonfinite == 0:
            self.last_good_checkpoint = info
        ddp.barrier()
        return info

    # ------------------------------------------------------------------ the loop

    def _loader(self):
        from torch.utils.data import DataLoader

        from agileir.data.datasets import StepBatchSampler, collate

        sampler = StepBatchSampler(len(self.dataset), int(self.config["data"]["batch_size"]),
                                   seed=int(self.config["seed"]), rank=self.dist.rank,
                                   world_size=self.dist.world_size, start_step=self.iteration,
                                   total_steps=self.total)
        workers = int(self.config["data"]["num_workers"])
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                          persistent_workers=False, prefetch_factor=2 if workers else None)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float | None]:
        """One optimisation step; returns (global mean loss, grad norm or None when skipped)."""
        lr_img = batch["lr"].to(self.device, non_blocking=True) if "lr" in batch else None
        hr_img = batch["hr"].to(self.device, non_blocking=True)
        if self.degrade is not None:  # seeded by (seed, step, rank): a resumed run makes the same inputs
            lr_img = self.degrade(hr_img, (int(self.config["seed"]), self.iteration, self.dist.rank))
            lr_img, hr_img = cut_context(lr_img, hr_img, int(self.config["data"]["train"]["realworld_context"]))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            out = self.ddp_model(lr_img)
        loss = self.loss_fn(out.float(), hr_img)
        global_loss = float(ddp.all_reduce_mean(loss.detach()).item())
        loss.backward()  # always: DDP's gradient all-reduce must run on every rank
        if not math.isfinite(global_loss):
            self.optimizer.zero_grad(set_to_none=True)
            return global_loss, None
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan"), None
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return global_loss, norm

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train up to ``train.iterations`` (or ``stop_at``, writing a checkpoint there)."""
        from tqdm import tqdm

        t = self.config["train"]
        start = self.iteration
        end = min(self.total, int(stop_at)) if stop_at else self.total
        result = TrainResult(self.run_dir, self.iteration, is_main=self.main)
        if self.main:
            atomic_write_text(self.run_dir / "config.yaml", dump_config(self.config))
            self.train_log = CsvLog(self.run_dir / "train_log.csv",
                                    ["iteration", "loss", "lr", "grad_norm", "it_per_s", "elapsed_s", "train_s",
                                     "train_cpu_s", "peak_mem_mib", "skipped"], start if self.resume_info else None)
            self.val_log = CsvLog(self.run_dir / "val_log.csv",
                                  ["iteration", "psnr", "ssim", "psnr_y", "ssim_y", "best_psnr_y", "train_s",
                                   "train_cpu_s"],
                                  start if self.resume_info else None)
            self.tb = open_tensorboard(self.config["log"]["tensorboard"], self.run_dir / "tensorboard")
            n_params = sum(p.numel() for p in self.model.parameters())
            say(f"agileir: {self.run_dir.name}: {self.config['model']['preset']} x{self.net_config.scale} "
                 f"({n_params:,} parameters), {len(self.dataset)} training images, global batch "
                 f"{self.config['data']['batch_size']} on {self.dist.world_size} process(es) ({self.device.type}), "
                 f"iterations {start + 1}-{end} of {self.total}")
            if self.validator is not None:
                say(f"agileir: validation on {self.validator.describe()} every {t['val_every']} iterations")
        if start >= end:
            result.iteration = self.iteration
            return self._finish(result, end)

        loader = self._loader()
        bar = tqdm(total=end, initial=start, desc=self.run_dir.name, unit="it", file=sys.stderr,
                   disable=not (self.main and self._bar_on()), dynamic_ncols=True, smoothing=0.05)
        self.nonfinite = 0
        window_losses: list[float] = []
        t_start = time.perf_counter()
        t_window = t_start
        t_clock, cpu_clock = t_start, time.process_time()
        it_window = start
        skipped_window = 0
        log_every = int(t["log_every"])
        try:
            for batch in loader:
                self.iteration += 1
                lr = self.schedule.apply(self.optimizer, self.iteration)
                loss, norm = self._step(batch)
                if norm is None:
                    self.nonfinite += 1
                    skipped_window += 1
                    if self.main:
                        say(f"agileir: warning: non-finite loss at iteration {self.iteration} "
                             f"({self.nonfinite} in a row); step skipped")
                    if self.nonfinite >= self.max_nonfinite:
                        good = self.last_good_checkpoint
                        raise NonFiniteLossError(
                            f"stopped at iteration {self.iteration} after {self.nonfinite} non-finite losses in a "
                            f"row; last good checkpoint: {good.describe() if good else 'none was written'}")
                else:
                    self.nonfinite = 0
                    window_losses.append(loss)
                    result.losses.append(loss)
                bar.update(1)
                t_now, cpu_now = time.perf_counter(), time.process_time()
                self.train_seconds += t_now - t_clock
                self.train_cpu_seconds += cpu_now - cpu_clock
                if self.iteration % log_every == 0 or self.iteration == end:
                    now = t_now
                    rate = (self.iteration - it_window) / max(now - t_window, 1e-9)
                    mean_loss = float(np.mean(window_losses)) if window_losses else float("nan")
                    mem = peak_memory_bytes(self.device) / MiB
                    if self.main:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", mem=f"{mem:.0f}MiB", refresh=False)
                        row = {"iteration": self.iteration, "loss": mean_loss, "lr": lr,
                               "grad_norm": norm if norm is not None else float("nan"), "it_per_s": rate,
                               "elapsed_s": now - t_start, "train_s": self.train_seconds,
                               "train_cpu_s": self.train_cpu_seconds, "peak_mem_mib": mem, "skipped": skipped_window}
                        self.train_log.write(row)
                        if self.tb is not None:
                            self.tb.add_scalar("train/loss", mean_loss, self.iteration)
                            self.tb.add_scalar("train/lr", lr, self.iteration)
                            self.tb.add_scalar("train/it_per_s", rate, self.iteration)
                        if bar.disable:
                            eta = (end - self.iteration) / max(rate, 1e-9)
                            say(f"iter {self.iteration}/{end}  loss {mean_loss:.4f}  lr {lr:.2e}  {rate:.2f} it/s  "
                                 f"ETA {eta / 60:.1f} min  peak {mem:.0f} MiB")
                    window_losses, t_window, it_window, skipped_window = [], now, self.iteration, 0
                t_pause = time.perf_counter()
                if self.iteration % int(t["val_every"]) == 0 or self.iteration == self.total:
                    self._validate(bar)
                if self.iteration % int(t["checkpoint_every"]) == 0 or self.iteration == end:
                    self.save()
                t_clock, cpu_clock = time.perf_counter(), time.process_time()
                t_window += t_clock - t_pause  # it/s counts training steps only
                if self.iteration >= end:
                    break
        finally:
            bar.close()
        result.elapsed_s = time.perf_counter() - t_start
        return self._finish(result, end)

    def _validate(self, bar: Any) -> dict[str, float] | None:
        scores = None
        if self.main and self.validator is not None:
            scores = self.validator(self._export_model())
            improved = scores["psnr_y"] > self.best.get("psnr_y", -math.inf)
            if improved:
                self.best = {"iteration": self.iteration, **{k: float(v) for k, v in scores.items()}}
                save_model(self._export_model(), self.run_dir / "best.safetensors",
                           extra_metadata={"agileir.iteration": str(self.iteration),
                                           "agileir.val": json.dumps(self.best)})
            self.val_log.write({"iteration": self.iteration, **scores, "best_psnr_y": self.best.get("psnr_y"),
                                "train_s": self.train_seconds, "train_cpu_s": self.train_cpu_seconds})
            if self.tb is not None:
                for k, v in scores.items():
                    self.tb.add_scalar(f"val/{k}", v, self.iteration)
            note = "  (best)" if improved else f"  (best {self.best['psnr_y']:.2f} at {self.best['iteration']})"
            say(f"agileir: iteration {self.iteration}: {self.validator.name} PSNR-Y {scores['psnr_y']:.2f} dB, "
                 f"SSIM-Y {scores['ssim_y']:.4f}{note}")
            self._last_scores = (self.iteration, scores)
        ddp.barrier()
        return scores

    def _finish(self, result: TrainResult, end: int) -> TrainResult:
        result.iteration = self.iteration
        result.best = dict(self.best)
        result.last_checkpoint = self.last_checkpoint.weights if self.last_checkpoint else None
        if self.iteration >= self.total and self.main:
            result.weights = save_model(self._export_model(), self.run_dir / "model.safetensors",
                                        extra_metadata={"agileir.iteration": str(self.iteration)})
            if self.validator is not None:
                last = getattr(self, "_last_scores", None)
                scores = last[1] if last and last[0] == self.iteration else self.validator(self._export_model())
                result.final_scores = scores
                result.baseline_scores = self.validator.baseline()
                doc = {"iteration": self.iteration, "dataset": self.validator.name,
                       "task": self.validator.task.describe(), "model": scores,
                       "baseline": result.baseline_scores, "best": self.best, "weights": str(result.weights)}
                atomic_write_text(self.run_dir / "results.json", json.dumps(doc, indent=2) + "\n")
        if self.main and getattr(self, "tb", None) is not None:
            self.tb.close()
        ddp.barrier()
        return result


def train(config: Mapping[str, Any], *, resume: str | os.PathLike | None = None,
          stop_at: int | None = None) -> TrainResult:
    """Run (or continue) the training the configuration describes.

    ``resume``: ``"auto"`` (the run's latest checkpoint if there is one) or a checkpoint path;
    ``stop_at``: end this session after that iteration with a checkpoint (continue later with
    ``resume``). Under ``torchrun`` every process calls this; rank 0 logs and writes files.
    """
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, resume=resume)
        return trainer.run(stop_at=stop_at)
    finally:
        ddp.cleanup()
        torch.set_num_threads(threads)  # ``threads`` applies to the run, not to the caller


__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "train"]
