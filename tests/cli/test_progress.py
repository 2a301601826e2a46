"""Progress of ``agileir upscale``: one bar per image, counting the work that is really done.

Tiled: tiles x passes (8 with --self-ensemble), in one count that never restarts. Whole image:
transformer blocks x passes, reported by forward hooks as the model runs. The callback's calls
are captured, so each step is seen, not only the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import agileir
from agileir.cli import main
from agileir.data.formats import write_picture
from agileir.inference.restorer import Restorer
from agileir.inference.tiling import OutOfMemoryError, tile_starts

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(5)
DEPTHS = (2, 3)


def _tiny(scale: int = 2):
    torch.manual_seed(0)
    return agileir.build_model("agileir-s", embed_dim=12, depths=DEPTHS, num_heads=(2, 2), window_size=4,
                               scale=scale)


def _image(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.int64).astype(np.uint8)


def _calls(restorer: Restorer, image: np.ndarray) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    restorer.restore_array(image, progress=lambda done, total: calls.append((done, total)))
    return calls


@pytest.mark.parametrize("ensemble", [False, True])
def test_tiled_progress_counts_tiles_times_passes_in_one_run(ensemble):
    h, w, tile, overlap = 20, 28, 8, 4  # not square: rotated passes swap height and width
    tiles = len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap))
    passes = 8 if ensemble else 1
    restorer = Restorer(_tiny(), device="cpu", tile=tile, tile_overlap=overlap, self_ensemble=ensemble)
    calls = _calls(restorer, _image(h, w))
    total = tiles * passes
    assert calls == [(i, total) for i in range(1, total + 1)]  # one step per tile, never reset
    assert restorer.progress_total(h, w) == total


@pytest.mark.parametrize("ensemble", [False, True])
def test_whole_image_progress_moves_with_each_transformer_block(ensemble):
    passes = 8 if ensemble else 1
    restorer = Restorer(_tiny(), device="cpu", tile=None, self_ensemble=ensemble)
    calls = _calls(restorer, _image(12, 16))
    total = sum(DEPTHS) * passes
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert restorer.progress_total(12, 16) == total


def test_progress_hooks_are_removed_after_the_run():
    model = _tiny()
    Restorer(model, device="cpu", tile=None).restore_array(_image(8, 8), progress=lambda d, t: None)
    assert all(not block._forward_hooks for layer in model.layers for block in layer.residual_group.blocks)


def test_out_of_memory_fallback_switches_the_count_to_tiles(monkeypatch):
    restorer = Restorer(_tiny(), device="cpu", tile=None, tile_overlap=4)
    forward = restorer._forward

    def whole_image_does_not_fit(x):
        if x.shape[-1] >= 16:
            raise OutOfMemoryError("simulated")
        return forward(x)

    monkeypatch.setattr(restorer, "_forward", whole_image_does_not_fit)
    with pytest.warns(RuntimeWarning, match="retrying with --tile 8"):
        calls = _calls(restorer, _image(16, 16))
    tiles = len(tile_starts(16, 8, 4)) ** 2
    assert calls == [(i, tiles) for i in range(1, tiles + 1)]  # tiles only: no block counts mixed in


class _FakeBar:
    """Stands in for tqdm: records what the command asks of each bar."""

    made: list["_FakeBar"] = []

    def __init__(self, total=None, desc="", unit="it", **kwargs):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.initial_total, self.postfix, self.closed = total, "", False
        _FakeBar.made.append(self)

    def update(self, k=1):
        self.n += k

    def refresh(self):
        pass

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def close(self):
        self.closed = True


@pytest.fixture()
def fake_tqdm(monkeypatch):
    import tqdm

    _FakeBar.made = []
    monkeypatch.setattr(tqdm, "tqdm", _FakeBar)
    return _FakeBar.made


def test_upscale_shows_one_bar_per_image_with_tiles_times_passes(tmp_path, fake_tqdm):
    weights = agileir.save_model(_tiny(), tmp_path / "tiny.safetensors")
    write_picture(tmp_path / "in" / "a.png", _image(20, 28))
    write_picture(tmp_path / "in" / "b.png", _image(12, 12))
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(weights),
               "--tile", "8", "--tile-overlap", "4", "--self-ensemble"])
    assert rc == 0
    expected = {"a.png": 8 * len(tile_starts(20, 8, 4)) * len(tile_starts(28, 8, 4)),
                "b.png": 8 * len(tile_starts(12, 8, 4)) ** 2}
    assert [bar.desc for bar in fake_tqdm] == ["1/2 a.png", "2/2 b.png"]  # one bar per image, nothing else
    for bar in fake_tqdm:
        total = expected[bar.desc.split()[-1]]
        assert bar.initial_total == bar.total == bar.n == total  # known before the work, reached at the end
        assert bar.unit == "tile" and bar.postfix == "pass 8/8" and bar.closed


def test_upscale_whole_image_bar_counts_blocks(tmp_path, fake_tqdm):
    weights = agileir.save_model(_tiny(), tmp_path / "tiny.safetensors")
    write_picture(tmp_path / "a.png", _image(12, 16))
    assert main(["upscale", str(tmp_path / "a.png"), "--model", str(weights), "--tile", "0"]) == 0
    (bar,) = fake_tqdm
    assert bar.unit == "block" and bar.initial_total == bar.n == sum(DEPTHS) and bar.postfix == ""
