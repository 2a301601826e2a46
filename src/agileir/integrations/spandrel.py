"""Load agileir weights through spandrel, the model loader of chaiNNer and ComfyUI.

spandrel (checked against 0.4.2) has no plugin discovery: it reads no entry points, so an
installed agileir cannot announce itself. One call adds the architecture to spandrel's registry::

    import spandrel
    from agileir.integrations.spandrel import register

    register()                                   # spandrel.MAIN_REGISTRY; a second call is a no-op
    desc = spandrel.ModelLoader().load_from_file("agileir-s_x2.safetensors")
    sr = desc(lr)                                # (1, 3, H, W) in [0, 1] -> (1, 3, 2H, 2W)

The entry is detected just before spandrel's own ``SwinIR`` and claims only what that entry
cannot load: AgileIR (GSWA) weights, and the SwinIR-layout weights agileir writes (``save_model``
stores no ``relative_position_index`` / ``attn_mask``; a ``model.state_dict()`` has no
``attn_mask``). Official SwinIR checkpoints carry the shift masks and stay with spandrel's SwinIR.
spandrel's SwinIR detector checks ``conv_first.weight``, ``...blocks.0.norm1.weight``,
``...blocks.0.mlp.fc1.bias`` and ``...blocks.0.attn.relative_position_index``; GSWA does not
persist that derived index, so no AgileIR state dict (file or in memory) is taken for SwinIR.

spandrel reads safetensors with ``safetensors.torch.load_file``, which drops the file's metadata,
so the configuration is recovered from the tensors (``agileir.models.loading.detect_config``).
Options that leave no trace in the weights fall back to agileir's conventions: GSWA's
``gswa_activation`` is taken as ``"relu"`` (every preset's choice) and ``img_range`` is 255 only
for the window-7 residual (JPEG) models. For weights trained otherwise, load them with
``agileir.load_model(path)``, which reads the metadata, and wrap the model with :func:`describe`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

try:
    from spandrel import (
        MAIN_REGISTRY,
        ArchRegistry,
        ArchSupport,
        Architecture,
        DuplicateArchitectureError,
        ImageModelDescriptor,
        ModelTiling,
        SizeRequirements,
    )
except ImportError as exc:
    raise type(exc)(f"agileir.integrations.spandrel needs spandrel (pip install 'agileir[spandrel]'): {exc}",
                    name=exc.name) from exc
except RuntimeError as exc:  # e.g. a CUDA torchvision beside a CPU torch: "operator torchvision::nms does not exist"
    raise ImportError("spandrel is installed but cannot be imported: its torchvision import failed "
                      f"(torchvision must be built for the installed torch): {exc}") from exc

from agileir.models.config import NetworkConfig
from agileir.models.detect import detect_config
from agileir.models.loading import DERIVED_SUFFIXES, load_model
from agileir.models.network import RestorationTransformer

__all__ = ["ARCH_ID", "AgileIRArch", "detect_agileir", "describe", "register"]

ARCH_ID = "AgileIR"
# Detected ahead of spandrel's SwinIR, whose key check also matches AgileIR state dicts.
DETECT_BEFORE = ("SwinIR",)

_ATTN0 = "layers.0.residual_group.blocks.0.attn."
_GSWA_KEY = _ATTN0 + "group_qkv.0.weight"
_WINDOW_KEY = _ATTN0 + "qkv.weight"


def _layout_keys(config: NetworkConfig) -> set[str]:
    """The parameter names of a network with ``config`` (derived buffers left out).

    Names depend on the structure only, so a twin with the smallest widths stands in for the
    real network; building it leaves the global random state untouched.
    """
    twin = config.replace(embed_dim=math.lcm(*config.num_heads), key_dim=1, mlp_ratio=1.0, num_feat=4,
                          window_size=2, dwconv_kernel=1 if config.dwconv_kernel else 0,
                          drop_path_rate=0.0, grad_checkpoint=False, zero_init_proj=False)
    with torch.random.fork_rng(devices=[]):
        keys = RestorationTransformer(twin).state_dict().keys()
    return {k for k in keys if not k.endswith(DERIVED_SUFFIXES)}


def _detect(sd: Mapping[str, Any]) -> bool:
    if "conv_first.weight" not in sd:
        return False
    gswa = _GSWA_KEY in sd
    if not gswa:
        if _WINDOW_KEY not in sd:
            return False
        if any(k.endswith(".attn_mask") for k in sd):
            return False  # official SwinIR layout (shift masks saved): spandrel's SwinIR loads it
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        return False
    config = detect_config(sd)
    if config.is_gswa != gswa:
        return False
    if not gswa and all(d == 1 for d in config.depths) and any(k.endswith(".relative_position_index") for k in sd):
        return False  # no shifted block, so no masks to miss: spandrel's SwinIR loads it as it is
    return {k for k in sd if not k.endswith(DERIVED_SUFFIXES)} == _layout_keys(config)


def detect_agileir(state_dict: Mapping[str, Any]) -> bool:
    """True when ``state_dict`` holds agileir weights that spandrel's SwinIR entry cannot load.

    That is: an AgileIR (GSWA) network, or a SwinIR-layout one without the shift masks (agileir's
    own files and state dicts). The keys must be exactly those of the detected configuration.
    Never raises: spandrel runs this on every state dict that reaches this entry.
    """
    try:
        return _detect(state_dict)
    except Exception:
        return False


def describe(model: RestorationTransformer) -> ImageModelDescriptor[RestorationTransformer]:
    """A spandrel descriptor for a loaded agileir model (e.g. from ``agileir.load_model(path)``)."""
    cfg = model.config
    tags = ["AgileIR" if cfg.is_gswa else "SwinIR", f"{cfg.embed_dim}dim", f"w{cfg.window_size}",
            cfg.upsampler, cfg.resi_connection]
    if cfg.is_gswa:
        tags.append(f"k{cfg.key_dim}")
    return ImageModelDescriptor(
        model.eval(),
        model.state_dict(),  # the model's own: it includes the buffers files leave out
        architecture=ARCHITECTURE,
        purpose="SR" if cfg.scale > 1 else "Restoration",
        tags=tags,
        # agileir refuses fp16 (SwinIR-type activations overflow it, see inference.restorer);
        # bf16 weights run as they are.
        supports_half=bool(getattr(model, "fp16_safe", False)),
        supports_bfloat16=True,
        scale=cfg.scale,
        input_channels=cfg.in_chans,
        output_channels=cfg.in_chans,
        # Any size is padded to the window multiple inside the model; below one window that
        # padding would be a reflection of more than half the image, so spandrel pads up first.
        size_requirements=SizeRequirements(minimum=cfg.window_size),
        tiling=ModelTiling.SUPPORTED,
    )


class AgileIRArch(Architecture[RestorationTransformer]):
    """spandrel's view of agileir's network (AgileIR, and SwinIR as agileir saves it)."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name="AgileIR", detect=detect_agileir)

    def load(self, state_dict: Mapping[str, Any]) -> ImageModelDescriptor[RestorationTransformer]:
        return describe(load_model(state_dict))


ARCHITECTURE = AgileIRArch()


def register(registry: ArchRegistry | None = None) -> ArchSupport:
    """Add the AgileIR architecture to ``registry`` (spandrel's ``MAIN_REGISTRY`` by default).

    It is detected just before spandrel's ``SwinIR`` entry. Calling again returns the entry
    already there; another architecture under the id ``"AgileIR"`` raises
    ``spandrel.DuplicateArchitectureError``.
    """
    registry = MAIN_REGISTRY if registry is None else registry
    existing = registry.get(ARCH_ID)
    if existing is not None:
        if type(existing.architecture).__module__ == __name__:
            return existing
        raise DuplicateArchitectureError(
            f"the spandrel registry already holds another architecture with id {ARCH_ID!r} "
            f"({type(existing.architecture).__module__}.{type(existing.architecture).__qualname__})")
    support = ArchSupport.from_architecture(ARCHITECTURE, before=DETECT_BEFORE)
    registry.add(support)
    return support
