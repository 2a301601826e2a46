"""Restore users' images with a loaded model: the one object the Python API and the CLI share.

Why: a model maps ``(B, C, H, W)`` float tensors; a user has a numpy array, a PIL image or a
tensor, 8- or 16-bit, gray, RGB or RGBA, and wants the same kind back. :class:`Restorer` does the
conversions, channel adaptation, alpha, precision, tiling (with an automatic tile size from the
memory available) and the optional x8 self-ensemble, around one model.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from agileir.errors import ConfigError, ImageError
from agileir.inference.ensemble import TRANSFORMS, self_ensemble
from agileir.inference.tiling import (DEFAULT_OVERLAP, Progress, RowSink, check_overlap, check_tile, run_model,
                                     tile_starts)
from agileir.inference.precision import precision_context, prepare_precision
from agileir.runtime import INFERENCE_PRECISIONS, resolve_device

ImageLike = Union[np.ndarray, Image.Image, torch.Tensor]
_LUMA = (0.299, 0.587, 0.114)  # BT.601 weights: colour model output back to a gray image


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the CUDA allocator's free bytes, or the OS's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def inference_bytes_per_pixel(config: Any) -> int:
    """Rough upper bound of the memory one input pixel costs in a no-grad forward pass.

    Live at once inside a block: the residual stream and its norm, q/k/v, the attention output
    and the MLP hidden layer (about ``(6 + mlp_ratio) * C`` floats), one head's (window) or one
    group's (GSWA) attention maps over the window (``heads * N`` floats; twice for the softmax
    copy), and the upsampler's widest layer at the output resolution. Float32, times 1.5 for
    allocator slack; the automatic tile only needs to be safe, not tight.
    """
    c, n = config.embed_dim, config.window_size ** 2
    heads = max(config.num_heads)
    body = (6 + config.mlp_ratio) * c + 2 * heads * n
    s2 = config.scale ** 2
    if config.upsampler in ("pixelshuffle", "nearest+conv"):
        head = 2 * s2 * config.num_feat
    else:
        head = 2 * s2 * config.in_chans
    return int(4 * (body + head) * 1.5)


def auto_tile(config: Any, height: int, width: int, device: torch.device, fraction: float = 0.5) -> int | None:
    """Tile side (a window multiple) that fits in ``fraction`` of the free memory; None when the
    whole image fits."""
    budget = available_memory_bytes(device) * fraction
    per_pixel = inference_bytes_per_pixel(config)
    if height * width * per_pixel <= budget:
        return None
    m = config.window_size
    side = int(math.sqrt(budget / per_pixel)) // m * m
    return max(side, 4 * m)


def parse_tile(tile: int | str | None) -> int | str | None:
    """``None``/``0`` (whole image), ``"auto"`` or a tile side in pixels, from an option value."""
    if tile is None or tile == "auto":
        return tile
    try:
        side = int(tile)
    except (TypeError, ValueError):
        raise ConfigError(f"--tile must be 'auto', 0 (whole image) or a number of pixels, got {tile!r}") from None
    if side < 0:
        raise ConfigError(f"--tile must be positive (a multiple of the model's window), 'auto' or 0, got {side}")
    return side or None


class _PassProgress:
    """Turns per-pass progress into one count over all passes of an image.

    Why: with the x8 self-ensemble the tiled runner reports ``tiles done / tiles`` eight times
    over; a user wants one count that goes from 0 to ``tiles x passes``. In whole-image mode the
    model is one call, so its transformer blocks report instead, through forward hooks
    (``blocks done / blocks`` per pass). Once a pass reports tiles (the whole-image pass fell
    back to tiles on out-of-memory), its block reports are ignored, so the two never mix; the
    total then changes once, to the tiles' count.
    """

    def __init__(self, callback: Progress, passes: int) -> None:
        self.callback, self.passes = callback, passes
        self.index = -1
        self.tiled = self.reported = False

    def start_pass(self) -> None:
        self.index += 1
        self.tiled = self.reported = False

    def tiles(self, done: int, total: int) -> None:
        self.tiled = True
        self._emit(done, total)

    def blocks(self, done: int, total: int) -> None:
        if not self.tiled:
            self._emit(done, total)

    def end_pass(self) -> None:
        if not self.reported:  # a model with no blocks to hook: one step per pass
            self._emit(1, 1)

    def _emit(self, done: int, total: int) -> None:
        self.reported = True
        self.callback(self.index * total + done, self.passes * total)


def _progress_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose ends mark progress through one whole-image forward pass.

    The transformer blocks of each residual group (``model.layers[i].residual_group.blocks``):
    in every preset they have the same width, window and cost, so equal steps give a steady rate
    and an honest ETA, and there are 24 of them in the S presets where the four residual groups
    alone would move a bar only four times. A group without such blocks counts as one step;
    a model without ``layers`` has none (one step per pass).
    """
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (torch.nn.ModuleList, torch.nn.Sequential)):
        return []
    steps: list[torch.nn.Module] = []
    for group in layers:
        blocks = getattr(getattr(group, "residual_group", None), "blocks", None)
        if isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)) and len(blocks):
            steps.extend(blocks)
        else:
            steps.append(group)
    return steps


@contextlib.contextmanager
def _block_hooks(model: torch.nn.Module, report: Progress | None):
    """While inside, call ``report(i, n)`` as step ``i`` of :func:`_progress_modules` finishes."""
    steps = _progress_modules(model) if report is not None else []
    handles = []
    for i, module in enumerate(steps, start=1):
        def hook(module, args, output, i=i, n=len(steps)):
            report(i, n)  # type: ignore[misc]
        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_strength(strength: float, config: Any) -> float:
    """``strength`` as a float in [0, 1], for a scale-1 (denoise / JPEG) model; else ConfigError."""
    value = float(strength)
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"strength must be between 0 (keep the input) and 1 (the model's full output), got {strength}")
    if value != 1.0 and config.task == "sr":
        raise ConfigError("strength applies to denoising and JPEG models; a super-resolution model has no "
                          "same-size input to blend with")
    return value


class Restorer:
    """A model ready to restore images: ``Restorer(model).restore(image)``.

    ``image`` may be a numpy array (``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``; uint8, uint16 or
    float in [0, 1]), a PIL image, or a float tensor ``(C, H, W)`` / ``(B, C, H, W)`` in [0, 1];
    the result has the same kind, dtype and layout, ``scale`` times larger for super-resolution.
    Gray images through colour models come back gray (BT.601 luma of the output); colour images
    through one-channel models are restored channel by channel; alpha is upscaled with MATLAB
    bicubic, apart from the model.

    Args:
        model: a :class:`~agileir.RestorationTransformer` (or compatible module with ``config``).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: None (the model's own: fp32, or int8 for int8 weights), ``fp32``, ``bf16``
            (autocast), ``int8`` (dynamic quantization of the linear layers, CPU) or ``auto``
            (bf16 where the device has bf16 units, else fp32); see
            :mod:`agileir.inference.precision`. float16 is not offered: SwinIR-type networks
            overflow its range. ``self.precision`` is the resolved one.
        tile: None or 0 (whole image, falling back to tiles on CUDA out-of-memory), a tile side
            in input pixels (a multiple of the window), or ``"auto"`` (from free memory).
        tile_overlap: overlap between tiles in input pixels.
        self_ensemble: average the eight flips/rotations (8x the time, about +0.1 dB).
        strength: denoising / JPEG models only: how much of the model's correction is kept,
            ``input + strength * (model(input) - input)``, from 0 (the input) to 1 (the model's
            output, the default). Blind models have no level input; this is the control users of
            real photos ask for (keep some grain, or some texture the model takes for noise).
    """

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device = "auto", precision: str | None = None,
                 tile: int | str | None = None, tile_overlap: int = DEFAULT_OVERLAP,
                 self_ensemble: bool = False, strength: float = 1.0) -> None:
        tile = parse_tile(tile)
        self.strength = check_strength(strength, model.config)
        if isinstance(tile, int):
            check_tile(tile, model.config.window_size)
            check_overlap(tile_overlap, tile)
        self.device = resolve_device(device)
        model, self.precision = prepare_precision(model.eval(), precision, self.device)
        self.model = model.eval().to(self.device)
        self.tile, self.tile_overlap = tile, tile_overlap
        self.self_ensemble = self_ensemble

    @classmethod
    def from_name(cls, spec: str, scale: int | None = None, **options: Any) -> "Restorer":
        """A restorer for shipped weights (``agileir-s`` + ``scale``, ``agileir-s_x4``) or a weights file."""
        from agileir.models.registry import resolve_model

        return cls(resolve_model(spec, scale), **options)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def scale(self) -> int:
        return int(self.config.scale) if self.config.task == "sr" else 1

    # ------------------------------------------------------------------ tensors

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with precision_context(self.device, self.precision):
            y = self.model(x).float()
        if self.strength != 1.0:  # per tile and per pass: tiling and the ensemble see the blend
            y = torch.lerp(x.to(y.dtype), y, self.strength)
        return y

    def tile_for(self, height: int, width: int) -> int | None:
        """The tile side an ``height x width`` image is run with now (None: whole image)."""
        if self.tile == "auto":
            return auto_tile(self.config, height, width, self.device)
        return self.tile  # type: ignore[return-value]

    def progress_total(self, height: int, width: int) -> int:
        """How many progress steps restoring an ``height x width`` image reports: tiles x passes
        when tiled, transformer blocks x passes for the whole image (passes: 8 with the
        self-ensemble, else 1). With ``tile="auto"`` it reflects the free memory now; the
        progress callback's own total is the one that counts if that changes."""
        tile = self.tile_for(height, width)
        passes = len(TRANSFORMS) if self.self_ensemble else 1
        if tile is None:
            return passes * max(len(_progress_modules(self.model)), 1)
        return passes * len(tile_starts(height, tile, self.tile_overlap)) * len(tile_starts(width, tile, self.tile_overlap))

    @torch.no_grad()
    def _run(self, x: torch.Tensor, progress: Progress | None = None, emit: RowSink | None = None) -> torch.Tensor | None:
        """(B, C_model, H, W) float32 CPU -> (B, C_model, sH, sW) float32 CPU (or to ``emit`` in
        bands of rows, see :func:`~agileir.inference.tiling.tiled_forward`; one pass only).

        ``progress(done, total)`` counts over all passes: see :meth:`progress_total`.
        """
        tile = self.tile_for(*x.shape[-2:])
        tracker = _PassProgress(progress, len(TRANSFORMS) if self.self_ensemble else 1) if progress else None

        def once(t: torch.Tensor) -> torch.Tensor:
            if tracker is None:
                return run_model(self._forward, t, tile=tile, overlap=self.tile_overlap, scale=self.scale,
                                 window_size=self.config.window_size, device=self.device, emit=emit)
            tracker.start_pass()
            calls = 0

            def forward(patch: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                calls += 1
                if calls > 1:  # the whole-image call fell back to tiles: count tiles, not blocks
                    tracker.tiled = True
                return self._forward(patch)

            with _block_hooks(self.model, tracker.blocks if tile is None else None):
                out = run_model(forward, t, tile=tile, overlap=self.tile_overlap, scale=self.scale,
                                window_size=self.config.window_size, device=self.device, progress=tracker.tiles,
                                emit=emit)
            tracker.end_pass()
            return out

        if emit is not None and self.self_ensemble:
            raise ValueError("the self-ensemble averages whole passes: it cannot emit rows")
        return self_ensemble(once, x) if self.self_ensemble else once(x)

    def restore_tensor(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Restore a float ``(C, H, W)`` or ``(B, C, H, W)`` tensor in [0, 1] (1 or 3 channels,
        or 4 with alpha); returned on the input's device and dtype, clamped to [0, 1]."""
        if not torch.is_tensor(x) or not torch.is_floating_point(x) or x.dim() not in (3, 4):
            raise ImageError("expected a float tensor (C, H, W) or (B, C, H, W) with values in [0, 1]")
        batched = x.dim() == 4
        t = (x if batched else x.unsqueeze(0)).detach().to("cpu", torch.float32)
        c = t.shape[1]
        if c not in (1, 3, 4):
            raise ImageError(f"expected 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {c}")
        colour, alpha = (t[:, :3], t[:, 3:]) if c == 4 else (t, None)
        out = self._restore_channels(colour, progress)
        if alpha is not None:
            out = torch.cat([out, self._resize_alpha(alpha)], dim=1)
        out = out.clamp_(0.0, 1.0).to(x.device, x.dtype)
        return out if batched else out[0]

    def _restore_channels(self, x: torch.Tensor, progress: Progress | None) -> torch.Tensor:
        b, c, h, w = x.shape
        model_c = self.config.in_chans
        if c == model_c:
            return self._run(x, progress)
        if c == 1 and model_c == 3:
            y = self._run(x.expand(b, 3, h, w).contiguous(), progress)
            weights = torch.tensor(_LUMA, dtype=y.dtype).view(1, 3, 1, 1)
            return (y * weights).sum(dim=1, keepdim=True)
        if c == 3 and model_c == 1:
            y = self._run(x.reshape(b * 3, 1, h, w), progress)
            return y.reshape(b, 3, *y.shape[-2:])
        raise ImageError(f"cannot restore a {c}-channel image with a {model_c}-channel model")

    def _resize_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return alpha
        from agileir.data.resize import imresize_torch

        return imresize_torch(alpha.double(), self.scale).float()

    # ------------------------------------------------------------------ arrays and PIL

    def restore_array(self, pixels: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """Restore an ``(H, W[, C])`` array (uint8, uint16 or float in [0, 1]); same dtype back."""
        arr = np.asarray(pixels)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")
        if arr.dtype == np.uint8:
            peak = 255.0
        elif arr.dtype == np.uint16:
            peak = 65535.0
        elif np.issubdtype(arr.dtype, np.floating):
            peak = 1.0
        else:
            raise ImageError(f"unsupported pixel type {arr.dtype} (uint8, uint16 or float in [0, 1])")
        chw = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        x = np.array(chw, dtype=np.float32, order="C")  # the one float copy of the input
        x /= np.float32(peak)
        x = torch.from_numpy(x)
        if not self.self_ensemble and x.shape[0] == self.config.in_chans:
            return self._restore_in_bands(x, arr, peak, progress)
        y = self.restore_tensor(x, progress).numpy()
        if peak != 1.0:  # in place: no image-sized float temporaries beside the result
            y *= np.float32(peak)
            np.rint(y, out=y)
        y = y[0] if arr.ndim == 2 else np.moveaxis(y, 0, -1)
        return y.astype(arr.dtype, order="C")

    def _restore_in_bands(self, x: torch.Tensor, arr: np.ndarray, peak: float, progress: Progress | None) -> np.ndarray:
        """The output assembled in the input's dtype, band by band of tile rows: no float copy of
        the whole enlarged image (the common case: no self-ensemble, no channel conversion)."""
        s = self.scale
        out = np.empty((arr.shape[0] * s, arr.shape[1] * s) + arr.shape[2:], dtype=arr.dtype)

        def emit(row: int, rows: torch.Tensor) -> None:  # in place: the rows are the caller's to discard
            band = rows[0].clamp_(0.0, 1.0)
            if peak != 1.0:
                band.mul_(peak).round_()  # half to even, as np.rint
            band = band.numpy()
            out[row: row + band.shape[1]] = band[0] if arr.ndim == 2 else np.moveaxis(band, 0, -1)

        self._run(x[None], progress, emit)
        return out

    def restore_pil(self, image: Image.Image, progress: Progress | None = None) -> Image.Image:
        """Restore a PIL image (L, I;16, RGB, RGBA; palette and LA images as RGB(A))."""
        if image.mode in ("L", "RGB", "RGBA", "I;16"):
            arr = np.asarray(image)
        elif image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            arr = np.asarray(image.convert("RGBA"))
        elif image.mode == "1":
            arr = np.asarray(image.convert("L"))
        else:
            arr = np.asarray(image.convert("RGB"))
        return Image.fromarray(self.restore_array(arr, progress))

    def restore(self, image: ImageLike, progress: Progress | None = None) -> ImageLike:
        """Restore a numpy array, PIL image or tensor and return the same kind (see the class)."""
        if isinstance(image, Image.Image):
            return self.restore_pil(image, progress)
        if torch.is_tensor(image):
            return self.restore_tensor(image, progress)
        if isinstance(image, np.ndarray):
            return self.restore_array(image, progress)
        raise ImageError(f"cannot restore a {type(image).__name__}: pass a numpy array, PIL image or tensor")

    __call__ = restore


__all__ = ["Restorer", "ImageLike", "INFERENCE_PRECISIONS", "parse_tile", "auto_tile", "inference_bytes_per_pixel",
           "available_memory_bytes"]
