"""x8 self-ensemble."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agileir.inference.ensemble import inverse_transform, self_ensemble, transform


def _model(scale: int = 1) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 3 * scale * scale, 3, padding=1)]
    if scale > 1:
        layers.append(nn.PixelShuffle(scale))
    return nn.Sequential(*layers).eval()


# the eight transforms written out independently of the implementation
def _forward_ops():
    return [
        lambda x: x,
        lambda x: x.transpose(-2, -1).flip(-2),  # rot90 ccw
        lambda x: x.flip(-2).flip(-1),  # rot180
        lambda x: x.transpose(-2, -1).flip(-1),  # rot270 ccw
        lambda x: x.flip(-1),
        lambda x: x.flip(-1).transpose(-2, -1).flip(-2),
        lambda x: x.flip(-1).flip(-2).flip(-1),
        lambda x: x.flip(-1).transpose(-2, -1).flip(-1),
    ]


def _inverse_ops():
    return [
        lambda y: y,
        lambda y: y.flip(-2).transpose(-2, -1),
        lambda y: y.flip(-1).flip(-2),
        lambda y: y.flip(-1).transpose(-2, -1),
        lambda y: y.flip(-1),
        lambda y: y.flip(-2).transpose(-2, -1).flip(-1),
        lambda y: y.flip(-1).flip(-2).flip(-1),
        lambda y: y.flip(-1).transpose(-2, -1).flip(-1),
    ]


def test_transforms_are_the_dihedral_group() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    outs = [transform(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) + tuple(o.shape) for o in outs}) == 8
    for k, (fwd, inv) in enumerate(zip(_forward_ops(), _inverse_ops())):
        assert torch.equal(transform(x, k), fwd(x)), k
        assert torch.equal(inverse_transform(transform(x, k), k), x), k
        assert torch.equal(inv(fwd(x)), x), k


@pytest.mark.parametrize("scale", [1, 2])
def test_self_ensemble_is_mean_of_eight_passes(scale: int) -> None:
    model = _model(scale)
    x = torch.rand(1, 3, 9, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        passes = [inv(model(fwd(x))) for fwd, inv in zip(_forward_ops(), _inverse_ops())]
        expected = torch.stack(passes).mean(0)
        out = self_ensemble(model, x)
        plain = model(x)
    assert out.shape == (1, 3, 9 * scale, 13 * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # the conv is not rotation-invariant: the ensemble is not just one pass
    assert (out - plain).abs().max() > 1e-3


def test_calls_model_eight_times() -> None:
    seen = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x * 2

    x = torch.rand(1, 1, 4, 6)
    torch.testing.assert_close(self_ensemble(fn, x), x * 2)
    assert len(seen) == 8 and seen.count((1, 1, 6, 4)) == 4
