"""Tiled inference with feathered blending and automatic retry on device out-of-memory.

Why: transformer restoration models need memory that grows with the image; large images are run
as overlapping tiles. The full image (input and output accumulator) stays on the CPU and only
one tile at a time goes to the device. Tiles are multiples of the model's window (so no tile is
padded inside the model) and edge tiles are shifted inward rather than padded.

Blending: neighbouring tiles overlap by at least ``overlap`` input pixels. Inside each overlap a
linear ramp of ``feather`` pixels (default ``overlap // 2``) is centred; before it only the
first tile counts, after it only the second, and across it the weights go linearly from one to
the other, so the weights of all tiles sum to one at every pixel. Because the ramp leaves
``(overlap - feather) / 2`` pixels at each tile edge with zero weight, a model whose receptive
field is at most that many pixels gives exactly the whole-image result.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Callable

import numpy as np
import torch

from agileir.errors import AgileIRError, ConfigError, ImageError

OutOfMemoryError: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

Model = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]
RowSink = Callable[[int, torch.Tensor], None]  # (first output row, (B, C, n, W) float32 rows)

#: overlap of neighbouring tiles in input pixels, for every command and the API
DEFAULT_OVERLAP = 32


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``.

    The last tile is aligned to the end (shifted inward), so every tile has full size when
    ``length >= tile``; a shorter image is one tile of its own length.
    """
    if tile <= 0:
        raise ConfigError(f"tile size must be positive, got {tile}")
    check_overlap(overlap, tile)
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp_profile(size: int, starts: list[int], tile: int, feather: int, scale: int) -> list[np.ndarray]:
    """1-D weights (output resolution) of every tile along one dimension."""
    t = min(tile, size) * scale
    profiles = []
    for i, start in enumerate(starts):
        w = np.ones(t, dtype=np.float64)
        for neighbour, side in ((i - 1, "left"), (i + 1, "right")):
            if not 0 <= neighbour < len(starts):
                continue
            a, b = sorted((start, starts[neighbour]))
            ov = (a + min(tile, size) - b) * scale  # overlap of the pair, output pixels
            if ov <= 0:
                continue
            f = min(feather * scale, ov)
            margin = (ov - f) // 2
            # ramp positions relative to the pair's overlap start (global b*scale)
            k = np.arange(ov, dtype=np.float64)
            up = np.clip((k - margin + 0.5) / f, 0.0, 1.0) if f > 0 else (k >= margin).astype(np.float64)
            if side == "left":  # this tile is the second of the pair: ramp up at its start
                w[:ov] *= up
            else:  # this tile is the first of the pair: ramp down at its end
                w[t - ov:] *= 1.0 - up
        profiles.append(w)
    return profiles


def _normalised_profiles(size: int, tile: int, overlap: int, feather: int, scale: int) -> tuple[list[int], list[np.ndarray]]:
    """Tile starts along one dimension and their 1-D weights divided by the weights' sum at each
    position, so that along this dimension the tiles' weights sum to one."""
    starts = tile_starts(size, tile, overlap)
    profiles = _ramp_profile(size, starts, tile, feather, scale)
    total = np.zeros(size * scale, dtype=np.float64)
    for start, w in zip(starts, profiles):
        total[start * scale: start * scale + w.size] += w
    if not np.all(total > 0):  # cannot happen with the centred ramps; guard anyway
        raise AgileIRError("internal error: tile weights do not cover the image")
    return starts, [w / total[start * scale: start * scale + w.size] for start, w in zip(starts, profiles)]


def blend_weights(
    height: int,
    width: int,
    tile: int,
    overlap: int,
    feather: int | None = None,
    scale: int = 1,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Normalised blending weights: ``(y0, x0, weight)`` per tile, in output pixels, row by row.

    ``y0, x0`` are the tile's top-left corner in the output (``scale`` times the input
    position) and ``weight`` its ``(th, tw)`` map; the maps of all tiles sum to one.
    The 2-D ramps are separable, so each map is the outer product of two 1-D profiles that are
    normalised on their own: made one tile at a time, with no image-sized weight total.
    """
    feather = overlap // 2 if feather is None else int(feather)
    if not 0 <= feather <= overlap:
        raise ConfigError(f"feather must be in [0, overlap] = [0, {overlap}], got {feather}")
    ys, py = _normalised_profiles(height, tile, overlap, feather, scale)
    xs, px = _normalised_profiles(width, tile, overlap, feather, scale)
    for y0, wy in zip(ys, py):
        for x0, wx in zip(xs, px):
            yield y0 * scale, x0 * scale, np.outer(wy, wx)


def check_overlap(overlap: int, tile: int) -> None:
    """The overlap must leave each tile something of its own: ``0 <= overlap < tile``."""
    if not 0 <= overlap < tile:
        raise ConfigError(f"tile overlap must be in [0, {tile}) for {tile}-pixel tiles, got {overlap}")


def check_tile(tile: int, window_size: int) -> None:
    """A tile must be a positive multiple of the model's window (no padding inside a tile)."""
    if tile < window_size or tile % window_size:
        lower = max(window_size, tile // window_size * window_size)
        raise ConfigError(
            f"tile size {tile} must be a multiple of the model's window size {window_size} "
            f"(e.g. {lower})"
        )


@torch.no_grad()
def tiled_forward(
    model: Model,
    x: torch.Tensor,
    tile: int,
    overlap: int = DEFAULT_OVERLAP,
    *,
    scale: int = 1,
    window_size: int = 1,
    device: torch.device | str | None = None,
    feather: int | None = None,
    progress: Progress | None = None,
    emit: RowSink | None = None,
) -> torch.Tensor | None:
    """Run ``model`` on ``x`` (``(B, C, H, W)``, kept on the CPU) tile by tile.

    Each tile is moved to ``device``, restored, and blended into a float32 CPU accumulator with
    :func:`blend_weights`. Returns ``(B, C_out, scale*H, scale*W)`` on the CPU. ``progress``
    is called with ``(tiles done, tiles in all)`` after each tile.

    With ``emit``, the accumulator is one band of tile rows, not the image: each time a row of
    tiles is done, ``emit(first_row, rows)`` receives the output rows no later tile touches (float32
    ``(B, C_out, n, scale*W)``, valid during the call only; ``emit`` may change them in place), and the function returns None. The
    caller then keeps the image in its own dtype: memory is bounded by the tile, not the image.
    """
    check_tile(tile, window_size)
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    device = torch.device(device) if device is not None else x.device
    b, _, h, w = x.shape
    x_cpu = x.cpu()
    th, tw = min(tile, h), min(tile, w)
    out: torch.Tensor | None = None
    top = 0  # output row of the accumulator's first row (0 unless emitting bands)
    n_tiles = len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap))
    for done, (y0, x0, weight) in enumerate(blend_weights(h, w, tile, overlap, feather, scale), start=1):
        if emit is not None and out is not None and y0 > top:  # a new tile row: rows above it are final
            emit(top, out[:, :, : y0 - top])
            out = torch.roll(out, top - y0, dims=2)
            out[:, :, out.shape[2] - (y0 - top):].zero_()
            top = y0
        iy, ix = y0 // scale, x0 // scale
        patch = x_cpu[:, :, iy : iy + th, ix : ix + tw].to(device)
        res = model(patch)
        if res.shape[-2:] != (th * scale, tw * scale):
            raise AgileIRError(
                f"model returned {tuple(res.shape[-2:])} for a {th}x{tw} tile; expected scale {scale}"
            )
        res = res.detach().to("cpu", torch.float32)
        if out is None:
            rows = th * scale if emit is not None else h * scale
            out = torch.zeros((b, res.shape[1], rows, w * scale), dtype=torch.float32)
        out[:, :, y0 - top : y0 - top + res.shape[-2], x0 : x0 + res.shape[-1]].add_(
            res.mul_(torch.from_numpy(weight.astype(np.float32))))
        del patch, res
        if progress is not None:
            progress(done, n_tiles)
    assert out is not None
    if emit is None:
        return out
    emit(top, out[:, :, : h * scale - top])
    return None


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _smaller_tile(tile: int, window_size: int) -> int:
    return (tile // 2) // window_size * window_size


def run_model(
    model: Model,
    x: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    scale: int = 1,
    window_size: int = 1,
    device: torch.device | str | None = None,
    feather: int | None = None,
    progress: Progress | None = None,
    emit: RowSink | None = None,
) -> torch.Tensor | None:
    """Restore ``x`` whole (``tile=None``) or in tiles, retrying with smaller tiles on OOM.

    On ``torch.OutOfMemoryError`` the whole-image pass falls back to tiles of half the larger
    side, and a tiled pass halves its tile (kept a multiple of ``window_size``, overlap
    reduced to below half the tile) until it fits; a :class:`RuntimeWarning` reports each
    retry. Raises :class:`AgileIRError` when even a one-window tile does not fit.
    The result is a float32 tensor on the CPU; with ``emit`` (see :func:`tiled_forward`) it
    goes to ``emit`` in bands of rows (the whole image at once when untiled) and None is returned.
    """
    device = torch.device(device) if device is not None else x.device
    h, w = x.shape[-2:]
    if tile is None:
        try:
            with torch.no_grad():
                whole = model(x.to(device)).detach().to("cpu", torch.float32)
            if emit is None:
                return whole
            emit(0, whole)
            return None
        except OutOfMemoryError:
            _free_device_memory(device)
            tile = _smaller_tile(max(h, w), window_size)
            if tile < window_size:
                raise AgileIRError("out of device memory even for a tiny image") from None
            overlap = min(overlap, tile // 2)
            warnings.warn(f"out of device memory for the whole image; retrying with --tile {tile}",
                          RuntimeWarning, stacklevel=2)
    else:
        check_tile(tile, window_size)
    while True:
        try:
            return tiled_forward(model, x, tile, overlap, scale=scale, window_size=window_size,
                                 device=device, feather=feather, progress=progress, emit=emit)
        except OutOfMemoryError:
            _free_device_memory(device)
            new_tile = _smaller_tile(tile, window_size)
            if new_tile < window_size:
                raise AgileIRError(
                    f"out of device memory even with {tile}x{tile} tiles; use --device cpu"
                ) from None
            tile = new_tile
            overlap = min(overlap, tile // 2)
            if feather is not None:
                feather = min(feather, overlap)
            warnings.warn(f"out of device memory; retrying with --tile {tile} --tile-overlap {overlap}",
                          RuntimeWarning, stacklevel=2)


def swinir_test_pad(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` the way SwinIR's official test script does, for exact parity.

    Bottom/right, with a mirrored copy that repeats the edge pixel (symmetric padding), up to
    ``(H // window + 1) * window``: a *full extra window* when ``H`` is already a multiple. The
    network then needs no padding of its own; crop the output to ``scale * (H, W)``. The
    agileir network pads only the missing rows, by reflection (edge not repeated); the two
    differ in the third decimal of PSNR.
    """
    h, w = x.shape[-2:]
    ph = (h // window_size + 1) * window_size - h
    pw = (w // window_size + 1) * window_size - w
    if ph > h or pw > w:
        raise ImageError(f"image {w}x{h} is too small for symmetric padding to the window {window_size}")
    x = torch.cat([x, torch.flip(x, dims=(-2,))], dim=-2)[..., : h + ph, :]
    return torch.cat([x, torch.flip(x, dims=(-1,))], dim=-1)[..., :, : w + pw]


__all__ = ["OutOfMemoryError", "DEFAULT_OVERLAP", "check_overlap", "check_tile", "tile_starts", "blend_weights", "tiled_forward", "run_model", "swinir_test_pad"]
