"""The hyper-parameters of a restoration network, as one serialisable record.

A model knows its own configuration (``model.config``); weights saved by the project carry it
in their metadata, and official SwinIR checkpoints have it recovered from their tensors.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any

from agileir.errors import ConfigError
from agileir.models.attention.dispatch import IMPLS as ATTENTION_IMPLS
from agileir.models.attention.dispatch import canonical_impl

ATTENTIONS = ("window", "gswa")
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "none")
#: the task vocabulary of the whole package (API, YAML configs, CLI): super-resolution,
#: Gaussian denoising, JPEG artefact removal
TASKS = ("sr", "denoise", "jpeg")
RESIDUAL_CONNECTIONS = ("1conv", "3conv")
GSWA_ACTIVATIONS = ("relu", "identity")
#: options that change how the network runs, not what it computes or which weights it has;
#: they are left out wherever two configurations are compared for weight compatibility
RUNTIME_FIELDS = ("attention_impl", "grad_checkpoint")
#: field names of earlier versions (still read from weights files and configurations)
LEGACY_FIELDS = {"use_checkpoint": "grad_checkpoint"}


@dataclass
class NetworkConfig:
    """Everything needed to rebuild a network (SwinIR macro-architecture, pluggable attention)."""

    # network body (SwinIR's names)
    in_chans: int = 3
    embed_dim: int = 60
    depths: tuple[int, ...] = (6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    patch_norm: bool = True
    drop_path_rate: float = 0.1
    resi_connection: str = "1conv"
    img_range: float = 1.0
    img_size: int = 64  # training patch; only sizes the attn_mask of official-format exports
    # head
    task: str = "sr"
    scale: int = 2
    upsampler: str = "pixelshuffledirect"
    num_feat: int = 64
    # attention
    attention: str = "window"
    # runtime options (RUNTIME_FIELDS): how it runs, not what it computes
    attention_impl: str = "auto"  # see models/attention/dispatch.py
    grad_checkpoint: bool = False  # recompute each whole block in backward
    # GSWA options (ignored by attention="window")
    key_dim: int = 8
    dwconv_kernel: int = 3
    gswa_activation: str = "relu"
    qkv_norm: bool = False
    zero_init_proj: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        self.attention_impl = canonical_impl(self.attention_impl)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for combinations the network cannot build."""
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        check(self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        check(self.upsampler in UPSAMPLERS, f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        check(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        check(self.resi_connection in RESIDUAL_CONNECTIONS,
              f"resi_connection must be one of {RESIDUAL_CONNECTIONS}, got {self.resi_connection!r}")
        check(self.attention_impl in ATTENTION_IMPLS,
              f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        check(self.gswa_activation in GSWA_ACTIVATIONS,
              f"gswa_activation must be one of {GSWA_ACTIVATIONS}, got {self.gswa_activation!r}")
        check(self.in_chans in (1, 3), f"in_chans must be 1 or 3, got {self.in_chans}")
        check(len(self.depths) == len(self.num_heads) and len(self.depths) > 0,
              "depths and num_heads need the same, non-zero, length")
        for h in self.num_heads:
            check(self.embed_dim % h == 0, f"embed_dim {self.embed_dim} is not divisible by {h} heads")
        check(self.window_size >= 2, "window_size must be at least 2")
        check(self.dwconv_kernel in (0, 1, 3, 5, 7), "dwconv_kernel must be 0 (off), 1, 3, 5 or 7")
        check(self.key_dim >= 1, "key_dim must be positive")
        if self.upsampler == "none":
            check(self.scale == 1, f"upsampler 'none' (denoise/jpeg) needs scale 1, got {self.scale}")
        else:
            check(self.task == "sr", f"task {self.task!r} has no upsampler; use upsampler 'none'")
        if self.upsampler == "pixelshuffle":
            check(self.scale in (2, 3, 4, 8), f"pixelshuffle supports scales 2, 3, 4, 8, got {self.scale}")
        if self.upsampler == "pixelshuffledirect":
            check(self.scale >= 2, f"pixelshuffledirect needs scale >= 2, got {self.scale}")
        if self.upsampler == "nearest+conv":
            check(self.scale in (2, 4), f"nearest+conv supports scales 2 and 4, got {self.scale}")

    def replace(self, **overrides: Any) -> "NetworkConfig":
        overrides = _migrate(overrides)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def weights_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the runtime options: equal for configurations whose weights
        are interchangeable."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def runtime(self, **options: Any) -> "NetworkConfig":
        """A copy with runtime options changed (a weight-affecting option here is an error)."""
        options = _migrate(options)
        bad = sorted(set(options) - set(RUNTIME_FIELDS))
        if bad:
            raise ConfigError(f"not a runtime option: {', '.join(bad)} (runtime options: {', '.join(RUNTIME_FIELDS)})")
        return self.replace(**options)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkConfig":
        d = _migrate(d, warn=False)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model option(s) in configuration: {', '.join(sorted(unknown))}")
        return cls(**d)

    @property
    def is_gswa(self) -> bool:
        return self.attention == "gswa"


def _migrate(options: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """Options with earlier field names renamed; ``warn`` says so with a DeprecationWarning (not
    for weights files, which a user cannot change)."""
    old = [k for k in options if k in LEGACY_FIELDS]
    if not old:
        return options
    out = dict(options)
    for key in old:
        new = LEGACY_FIELDS[key]
        value = out.pop(key)
        if new in out and out[new] != value:
            raise ConfigError(f"both {key!r} (old name) and {new!r} are given, with different values")
        out.setdefault(new, value)
        if warn:
            warnings.warn(f"model option {key!r} is now called {new!r}", DeprecationWarning, stacklevel=3)
    return out
