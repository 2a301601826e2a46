"""spandrel integration: agileir weights load through spandrel; official SwinIR stays spandrel's."""

import sys
import types
from enum import Enum

import pytest
import torch


def _stand_in_for_torchvision() -> None:
    """Let spandrel's registry import where torchvision cannot be imported.

    spandrel imports three names from ``torchvision.transforms.functional`` at import time, for
    two unrelated architectures (LaMa, RestoreFormer). No CPU torchvision build exists for the
    pinned CPU torch, and PyPI's (CUDA) build fails to import beside it, so the test session gets
    a minimal stand-in with those names; everything spandrel does for SwinIR and AgileIR is real.
    """
    try:
        import torchvision  # noqa: F401
        return
    except (ImportError, RuntimeError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    class InterpolationMode(Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def unavailable(*args, **kwargs):
        raise NotImplementedError("torchvision stand-in (tests only)")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode, functional.rotate, functional.normalize = InterpolationMode, unavailable, unavailable
    root.transforms, transforms.functional = transforms, functional
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


_stand_in_for_torchvision()
spandrel = pytest.importorskip("spandrel", minversion="0.4")

from agileir import save_model  # noqa: E402
from agileir.models import build_model, official_state_dict  # noqa: E402
from agileir.models.loading import DERIVED_SUFFIXES  # noqa: E402
from agileir.integrations.spandrel import ARCH_ID, AgileIRArch, detect_agileir, register  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 3), window_size=4, key_dim=2, num_feat=8)


@pytest.fixture()
def registry():
    """spandrel's registry with AgileIR added, as a copy: the global one is left as it is."""
    reg = spandrel.MAIN_REGISTRY.copy()
    register(reg)
    return reg


def saved_dict(model):
    """The tensors agileir's save_model writes (no derived buffers)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith(DERIVED_SUFFIXES)}


def claimed_by(registry, sd):
    return [a.architecture.id for a in registry.architectures("detection") if a.detect(sd)]


@pytest.mark.parametrize("preset, opts, purpose", [
    ("agileir-s", dict(scale=2), "SR"),
    ("agileir-s", dict(scale=3, upsampler="pixelshuffle", dwconv_kernel=5, qkv_norm=True), "SR"),
    ("agileir-s", dict(task="denoise"), "Restoration"),
    ("swinir-s", dict(scale=2), "SR"),  # SwinIR as agileir saves it
])
def test_agileir_safetensors_load_through_spandrel(tmp_path, registry, preset, opts, purpose):
    model = build_model(preset, **dict(TINY, **opts)).eval()
    path = save_model(model, tmp_path / "m.safetensors")
    desc = spandrel.ModelLoader(registry=registry).load_from_file(path)

    assert isinstance(desc.architecture, AgileIRArch) and desc.architecture.id == ARCH_ID
    assert isinstance(desc, spandrel.ImageModelDescriptor)
    assert (desc.scale, desc.purpose) == (model.config.scale, purpose)
    assert desc.input_channels == desc.output_channels == 3
    assert desc.size_requirements.minimum == model.config.window_size
    assert desc.size_requirements.multiple_of == 1
    assert desc.tiling == spandrel.ModelTiling.SUPPORTED
    assert desc.model.config.attention == model.config.attention
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(desc.model(x), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(desc(x), ref.clamp(0, 1), atol=1e-6, rtol=0)


def test_agileir_state_dicts_are_not_taken_by_spandrels_swinir(registry):
    # spandrel's SwinIR detector keys on ``attn.relative_position_index``; GSWA does not persist
    # that derived buffer, so neither files nor in-memory state dicts look like SwinIR to it.
    model = build_model("agileir-s", **TINY).eval()
    others = [a for a in claimed_by(spandrel.MAIN_REGISTRY.copy(), model.state_dict()) if a != ARCH_ID]
    assert others == []  # no built-in spandrel architecture claims AgileIR weights
    assert claimed_by(registry, saved_dict(model)) == [ARCH_ID]
    assert claimed_by(registry, model.state_dict()) == [ARCH_ID]
    ids = [a.architecture.id for a in registry.architectures("detection")]
    assert ids.index(ARCH_ID) < ids.index("SwinIR")
    desc = spandrel.ModelLoader(registry=registry).load_from_state_dict(model.state_dict())
    assert desc.architecture.id == ARCH_ID
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(desc.model(x), model(x), atol=1e-6, rtol=0)


def test_official_swinir_stays_spandrels_swinir(registry):
    model = build_model("swinir-s", **TINY).eval()
    sd = official_state_dict(model, img_size=16)
    assert not detect_agileir(sd)
    assert claimed_by(registry, sd) == ["SwinIR"]
    desc = spandrel.ModelLoader(registry=registry).load_from_state_dict(sd).eval()  # spandrel leaves train mode
    assert desc.architecture.id == "SwinIR" and desc.scale == 2
    x = torch.rand(1, 3, 16, 16)  # no padding on either side: the two implementations agree
    with torch.no_grad():
        torch.testing.assert_close(desc.model(x), model(x), atol=1e-5, rtol=0)


def test_detect_rejects_other_state_dicts():
    model = build_model("agileir-s", **TINY)
    sd = model.state_dict()
    assert detect_agileir(sd)
    assert not detect_agileir({})
    assert not detect_agileir({"conv_first.weight": torch.zeros(12, 3, 3, 3)})
    assert not detect_agileir(dict(sd, extra=torch.zeros(1)))
    assert not detect_agileir(dict(sd, note="not a tensor"))
    broken = dict(sd)
    del broken["layers.1.residual_group.blocks.0.mlp.fc1.weight"]
    assert not detect_agileir(broken)


def test_detect_leaves_the_random_state_alone():
    sd = build_model("agileir-s", **TINY).state_dict()
    state = torch.get_rng_state()
    assert detect_agileir(sd)
    assert torch.equal(torch.get_rng_state(), state)


def test_register_is_idempotent():
    reg = spandrel.MAIN_REGISTRY.copy()
    first = register(reg)
    assert register(reg) is first
    assert [a.architecture.id for a in reg].count(ARCH_ID) == 1
    assert register() is register()  # spandrel.MAIN_REGISTRY
    assert ARCH_ID in spandrel.MAIN_REGISTRY
    empty = spandrel.ArchRegistry()  # no SwinIR to be ordered before
    register(empty)
    assert [a.architecture.id for a in empty.architectures("detection")] == [ARCH_ID]


def test_register_refuses_a_foreign_architecture_with_the_same_id():
    class Other(spandrel.Architecture):
        def __init__(self):
            super().__init__(id=ARCH_ID, detect=lambda sd: False)

        def load(self, state_dict):
            raise NotImplementedError

    reg = spandrel.ArchRegistry()
    reg.add(spandrel.ArchSupport.from_architecture(Other()))
    with pytest.raises(spandrel.DuplicateArchitectureError):
        register(reg)
