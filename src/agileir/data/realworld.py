"""Real-world degradation for training and evaluating real-photo models, in torch and batched.

Why: phone photos, scans and web images are blurred, resized, noisy and JPEG-compressed, often
more than once; a model trained on clean bicubic LR sharpens all of that. This is a second-order
degradation model in the style of Real-ESRGAN / BSRGAN (blur, resize, noise, JPEG, twice, then a
final resize with an optional sinc filter), written from those papers' descriptions. It runs on
the batch's device, so a GPU makes its inputs too.

Reproducibility: every random choice (kernel, scale, mode, sigma, quality, the order of the last
two steps) is drawn on a CPU generator seeded from ``seed``, so the parameters are identical on
every device; the noise fields are drawn on the batch's device from a seed derived the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agileir.errors import ConfigError

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
MAX_KERNEL = 21  # every blur / sinc kernel lives on this grid (smaller ones are zero outside their support)


# ============================================================================= kernels


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) float64 coordinates of a ``size`` x ``size`` grid centred on 0."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.meshgrid(ax, ax, indexing="ij")


def _support_mask(sizes: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid, grid) mask of each kernel's own odd ``size`` inside the common grid."""
    y, x = _grid(grid)
    half = ((sizes.to(torch.float64) - 1) / 2)[:, None, None]
    return (y.abs() <= half) & (x.abs() <= half)


def _normalise(kernels: torch.Tensor) -> torch.Tensor:
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def gaussian_kernels(sizes: torch.Tensor, sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor,
                     beta: torch.Tensor | None = None, shape: str = "gaussian", grid: int = MAX_KERNEL) -> torch.Tensor:
    """(B, grid, grid) float64 blur kernels that sum to 1.

    ``shape``: ``"gaussian"`` exp(-d/2), ``"generalized"`` exp(-d^beta / 2) (beta < 1 heavy
    tails, > 1 flat top), ``"plateau"`` 1 / (1 + d^beta), where d = x^T S^-1 x for the covariance
    S of principal sigmas (sigma_x, sigma_y) rotated by ``theta`` radians.
    """
    y, x = _grid(grid)
    c, s = torch.cos(theta.double())[:, None, None], torch.sin(theta.double())[:, None, None]
    u = c * x + s * y  # coordinates along the principal axes
    v = -s * x + c * y
    d = (u / sigma_x.double()[:, None, None]) ** 2 + (v / sigma_y.double()[:, None, None]) ** 2
    if shape == "gaussian":
        k = torch.exp(-0.5 * d)
    elif shape == "generalized":
        k = torch.exp(-0.5 * d ** beta.double()[:, None, None])
    elif shape == "plateau":
        k = 1.0 / (1.0 + d ** beta.double()[:, None, None])
    else:
        raise ValueError(f"unknown kernel shape {shape!r}")
    return _normalise(k * _support_mask(sizes, grid))


def sinc_kernels(sizes: torch.Tensor, cutoff: torch.Tensor, grid: int = MAX_KERNEL) -> torch.Tensor:
    """(B, grid, grid) float64 circular low-pass (2-D sinc, ``cutoff`` in radians per pixel) summing to 1.

    The ideal filter's response ``cutoff * J1(cutoff * r) / (2 pi r)`` (value ``cutoff^2 / 4 pi`` at
    r = 0), cut to the kernel's support: it makes the ringing of over-sharpened photos.
    """
    y, x = _grid(grid)
    r = torch.sqrt(x ** 2 + y ** 2)[None]
    w = cutoff.double()[:, None, None]
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    k = torch.where(r == 0, w ** 2 / (4 * math.pi), w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r))
    return _normalise(k * _support_mask(sizes, grid))


def filter_batch(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each image of (B, C, H, W) with its own (B, k, k) kernel, reflect-padded."""
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if min(h, w) > pad else "replicate"
    x = F.pad(images.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(images.dtype).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(x, weight, groups=b * c).reshape(b, c, h, w)


# ============================================================================= JPEG


_LUMA_TABLE = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
               14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
               49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA_TABLE = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32  # ITU-T T.81 Annex K, tables K.1 and K.2


def quantization_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 8, 8) luma and chroma tables for integer qualities 1-100, scaled as libjpeg does."""
    q = quality.double().clamp(1, 100)[:, None, None]
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    out = []
    for table in (_LUMA_TABLE, _CHROMA_TABLE):
        base = torch.tensor(table, dtype=torch.float64).reshape(1, 8, 8)
        out.append(torch.floor((base * scale + 50.0) / 100.0).clamp(1, 255))
    return out[0], out[1]


def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m  # orthonormal DCT-II: coefficients = M @ block @ M.T


def _jpeg_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantise (B, H, W) level-shifted samples (H, W multiples of 8) in the 8x8 DCT domain."""
    b, h, w = plane.shape
    m = _dct_matrix().to(plane)
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = m @ blocks @ m.T
    t = table.to(plane)[:, None, None]
    coef = torch.round(coef / t) * t
    return (m.T @ coef @ m).permute(0, 1, 3, 2, 4).reshape(b, h, w)


def jpeg_batch(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Baseline JPEG round trip of (B, 3 or 1, H, W) images in [0, 1], one quality per image.

    JFIF YCbCr, 4:2:0 chroma (Pillow's default), the standard tables scaled by quality, and
    triangle ("fancy") chroma upsampling on decoding; the result is on the 8-bit grid.
    """
    b, c, h, w = images.shape
    x = torch.round(images.clamp(0, 1) * 255).double()
    luma_t, chroma_t = quantization_tables(quality)
    ph, pw = (-h) % 16, (-w) % 16
    x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    if c == 1:
        y = _jpeg_plane(x[:, 0] - 128, luma_t) + 128
        out = y[:, None]
    else:
        r, g, bl = x[:, 0], x[:, 1], x[:, 2]
        y = 0.299 * r + 0.587 * g + 0.114 * bl
        cb = -0.168735892 * r - 0.331264108 * g + 0.5 * bl + 128
        cr = 0.5 * r - 0.418687589 * g - 0.081312411 * bl + 128
        y = _jpeg_plane(y - 128, luma_t) + 128
        chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
        chroma = torch.stack([_jpeg_plane(chroma[:, i] - 128, chroma_t) + 128 for i in range(2)], 1)
        chroma = F.interpolate(F.pad(chroma, (1, 1, 1, 1), mode="replicate"), scale_factor=2, mode="bilinear",
                               align_corners=False)[:, :, 2:-2, 2:-2]
        cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
        out = torch.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], 1)
    out = torch.round(out[:, :, :h, :w].clamp(0, 255)) / 255
    return out.to(images.dtype)


# ============================================================================= settings


def _range(value: Any, name: str, low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        value = (value, value)
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ConfigError(f"{name} must be a number or [low, high], got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not (low <= a <= b <= high):
        raise ConfigError(f"{name} must satisfy {low:g} <= low <= high <= {high:g}, got [{a:g}, {b:g}]")
    return a, b


def _probability(value: Any, name: str) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    return p


@dataclass(frozen=True)
class Stage:
    """One order of degradation: blur, resize, noise, JPEG (each range is [low, high], drawn uniformly)."""

    blur_prob: float = 1.0
    kernel_size: tuple[float, float] = (7, 21)  # odd sizes in this range
    kernel_kinds: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # weights of KERNEL_KINDS
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1  # a sinc kernel instead of a blur kernel
    resize_kinds: tuple[float, float, float] = (0.2, 0.7, 0.1)  # weights of up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # weights of RESIZE_MODES
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # 0-255 units
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[float, float] = (30, 95)

    def checked(self, where: str) -> "Stage":
        """The stage with every value validated (ConfigError names the option)."""
        def weights(value: Any, n: int, name: str) -> tuple[float, ...]:
            w = tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else ()
            if len(w) != n or min(w) < 0 or sum(w) <= 0:
                raise ConfigError(f"{where}.{name} must be {n} non-negative weights, got {value!r}")
            return w

        size = _range(self.kernel_size, f"{where}.kernel_size", 1, MAX_KERNEL)
        if not any(int(s) % 2 for s in range(math.ceil(size[0]), int(size[1]) + 1)):
            raise ConfigError(f"{where}.kernel_size {list(size)} holds no odd size")
        return replace(
            self, blur_prob=_probability(self.blur_prob, f"{where}.blur_prob"), kernel_size=size,
            kernel_kinds=weights(self.kernel_kinds, len(KERNEL_KINDS), "kernel_kinds"),
            blur_sigma=_range(self.blur_sigma, f"{where}.blur_sigma", 1e-3),
            generalized_beta=_range(self.generalized_beta, f"{where}.generalized_beta", 1e-3),
            plateau_beta=_range(self.plateau_beta, f"{where}.plateau_beta", 1e-3),
            sinc_prob=_probability(self.sinc_prob, f"{where}.sinc_prob"),
            resize_kinds=weights(self.resize_kinds, 3, "resize_kinds"),
            resize_range=_range(self.resize_range, f"{where}.resize_range", 1e-2, 8.0),
            resize_modes=weights(self.resize_modes, len(RESIZE_MODES), "resize_modes"),
            gaussian_noise_prob=_probability(self.gaussian_noise_prob, f"{where}.gaussian_noise_prob"),
            noise_sigma=_range(self.noise_sigma, f"{where}.noise_sigma", 0.0, 255.0),
            poisson_scale=_range(self.poisson_scale, f"{where}.poisson_scale", 0.0),
            gray_noise_prob=_probability(self.gray_noise_prob, f"{where}.gray_noise_prob"),
            jpeg_quality=_range(self.jpeg_quality, f"{where}.jpeg_quality", 1, 100))


def _second_stage() -> Stage:
    return Stage(blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_kinds=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
                 noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5))


@dataclass(frozen=True)
class RealWorldSettings:
    """The whole degradation model: the ``data.train.realworld`` config section."""

    first: Stage = field(default_factory=Stage)
    second: Stage = field(default_factory=_second_stage)
    second_order_prob: float = 1.0  # apply the second stage at all
    final_sinc_prob: float = 0.8
    final_sinc_size: tuple[float, float] = (7, 21)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any] | None, where: str = "realworld") -> "RealWorldSettings":
        """Settings from a config mapping (missing keys keep their defaults); ConfigError on any
        unknown key or out-of-range value."""
        doc = dict(doc or {})
        doc.pop("enabled", None)
        stages = {}
        for name in ("first", "second"):
            sub = dict(doc.pop(name, None) or {})
            base = getattr(cls(), name)
            unknown = sorted(set(sub) - {f.name for f in fields(Stage)})
            if unknown:
                raise ConfigError(f"unknown option {where}.{name}.{unknown[0]}")
            stages[name] = replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}) \
                .checked(f"{where}.{name}")
        unknown = sorted(set(doc) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown option {where}.{unknown[0]}")
        out = cls(**stages, **{k: v for k, v in doc.items()})
        return replace(out, second_order_prob=_probability(out.second_order_prob, f"{where}.second_order_prob"),
                       final_sinc_prob=_probability(out.final_sinc_prob, f"{where}.final_sinc_prob"),
                       final_sinc_size=_range(out.final_sinc_size, f"{where}.final_sinc_size", 1, MAX_KERNEL))


def realworld_defaults(settings: RealWorldSettings | None = None) -> dict[str, Any]:
    """``settings`` (default: the defaults) as a plain config mapping (lists for ranges)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    return plain(asdict(settings or RealWorldSettings()))


# ============================================================================= the pipeline


def _generator(seed: int | Sequence[int]) -> torch.Generator:
    state = np.random.SeedSequence(seed if isinstance(seed, int) else list(seed)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2 ** 63 - 1))


def _uniform(g: torch.Generator, bounds: tuple[float, float], n: int) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n, generator=g, dtype=torch.float64)


def _choice(g: torch.Generator, weights: Sequence[float], n: int) -> torch.Tensor:
    return torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True, generator=g)


def _odd_sizes(g: torch.Generator, bounds: tuple[float, float], n: int) -> torch.Tensor:
    odd = torch.tensor([s for s in range(math.ceil(bounds[0]), int(bounds[1]) + 1) if s % 2])
    return odd[torch.randint(len(odd), (n,), generator=g)]


def random_blur_kernels(g: torch.Generator, stage: Stage, n: int) -> torch.Tensor:
    """(n, MAX_KERNEL, MAX_KERNEL) kernels drawn from the stage's kinds (or sinc, with ``sinc_prob``)."""
    sizes = _odd_sizes(g, stage.kernel_size, n)
    kinds = _choice(g, stage.kernel_kinds, n)
    sx, sy = _uniform(g, stage.blur_sigma, n), _uniform(g, stage.blur_sigma, n)
    theta = _uniform(g, (-math.pi, math.pi), n)
    iso = kinds % 2 == 0  # iso, generalized_iso, plateau_iso
    sy = torch.where(iso, sx, sy)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    beta_g, beta_p = _uniform(g, stage.generalized_beta, n), _uniform(g, stage.plateau_beta, n)
    out = gaussian_kernels(sizes, sx, sy, theta)
    shape_of = kinds // 2  # 0 gaussian, 1 generalized, 2 plateau
    for shape, beta, code in (("generalized", beta_g, 1), ("plateau", beta_p, 2)):
        pick = shape_of == code
        if pick.any():
            out[pick] = gaussian_kernels(sizes[pick], sx[pick], sy[pick], theta[pick], beta[pick], shape)
    sinc = torch.rand(n, generator=g, dtype=torch.float64) < stage.sinc_prob
    if sinc.any():
        out[sinc] = random_sinc_kernels(g, stage.kernel_size, int(sinc.sum()))
    return out


def random_sinc_kernels(g: torch.Generator, size: tuple[float, float], n: int) -> torch.Tensor:
    """Sinc kernels with Real-ESRGAN's cutoff ranges: pi/3-pi for small kernels, pi/5-pi for large."""
    sizes = _odd_sizes(g, size, n)
    low = torch.where(sizes < 13, math.pi / 3, math.pi / 5)
    cutoff = low + (math.pi - low) * torch.rand(n, generator=g, dtype=torch.float64)
    return sinc_kernels(sizes, cutoff)


def _resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    kwargs = {} if mode == "area" else {"align_corners": False}
    if mode == "bicubic":
        kwargs["antialias"] = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    return F.interpolate(images, size=size, mode=mode, **kwargs).clamp_(0, 1)


def _random_resize(g: torch.Generator, images: torch.Tensor, stage: Stage, base: tuple[int, int]) -> torch.Tensor:
    """One random scale and mode for the batch (as in Real-ESRGAN), relative to ``base``'s size."""
    kind = int(_choice(g, stage.resize_kinds, 1))
    low, high = stage.resize_range
    factor = {0: (1.0, max(high, 1.0)), 1: (min(low, 1.0), 1.0), 2: (1.0, 1.0)}[kind]
    s = float(_uniform(g, factor, 1))
    mode = RESIZE_MODES[int(_choice(g, stage.resize_modes, 1))]
    size = (max(1, round(base[0] * s)), max(1, round(base[1] * s)))
    return _resize(images, size, mode)


def _random_noise(g: torch.Generator, images: torch.Tensor, stage: Stage) -> torch.Tensor:
    """Per image: Gaussian (sigma) or Poisson (scale) noise, colour or the same on every channel."""
    b, c = images.shape[:2]
    gaussian = torch.rand(b, generator=g, dtype=torch.float64) < stage.gaussian_noise_prob
    gray = torch.rand(b, generator=g, dtype=torch.float64) < stage.gray_noise_prob
    sigma = _uniform(g, stage.noise_sigma, b) / 255
    scale = _uniform(g, stage.poisson_scale, b)
    dev = torch.Generator(device=images.device).manual_seed(int(torch.randint(2 ** 62, (1,), generator=g)))
    shape = lambda t: t.to(images.device, images.dtype)[:, None, None, None]  # noqa: E731
    colour_noise = torch.randn(images.shape, generator=dev, device=images.device, dtype=images.dtype)
    gray_noise = torch.randn((b, 1) + images.shape[2:], generator=dev, device=images.device, dtype=images.dtype)
    g_noise = torch.where(shape(gray) > 0, gray_noise.expand_as(images), colour_noise) * shape(sigma)
    luma = images.mean(1, keepdim=True) if c == 3 else images
    p_colour = torch.poisson(images * 255, generator=dev) / 255 - images
    p_gray = (torch.poisson(luma * 255, generator=dev) / 255 - luma).expand_as(images)
    p_noise = torch.where(shape(gray) > 0, p_gray, p_colour) * shape(scale)
    return (images + torch.where(shape(gaussian) > 0, g_noise, p_noise)).clamp_(0, 1)


def _random_jpeg(g: torch.Generator, images: torch.Tensor, stage: Stage) -> torch.Tensor:
    q = torch.round(_uniform(g, stage.jpeg_quality, images.shape[0]))
    return jpeg_batch(images, q)


def _where(apply: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``kernels`` where ``apply`` (per image), the identity kernel elsewhere."""
    identity = torch.zeros_like(kernels)
    identity[:, MAX_KERNEL // 2, MAX_KERNEL // 2] = 1
    return torch.where(apply[:, None, None], kernels, identity)


def _stage(g: torch.Generator, images: torch.Tensor, stage: Stage, base: tuple[int, int]) -> torch.Tensor:
    b = images.shape[0]
    blur = torch.rand(b, generator=g, dtype=torch.float64) < stage.blur_prob
    images = filter_batch(images, _where(blur, random_blur_kernels(g, stage, b)))
    images = _random_resize(g, images.clamp(0, 1), stage, base)
    return _random_noise(g, images, stage)


class RealWorldDegradation:
    """HR batch -> degraded LR batch at ``1 / scale`` of its size (8-bit grid, in [0, 1])."""

    def __init__(self, settings: RealWorldSettings | None = None, scale: int = 4) -> None:
        self.settings = settings or RealWorldSettings()
        self.scale = int(scale)

    def __call__(self, hr: torch.Tensor, seed: int | Sequence[int]) -> torch.Tensor:
        """Degrade (B, C, H, W) images in [0, 1] (H, W multiples of the scale); same seed, same result."""
        st, g = self.settings, _generator(seed)
        b, _, h, w = hr.shape
        target = (h // self.scale, w // self.scale)
        x = _stage(g, hr.float() if not hr.is_floating_point() else hr, st.first, (h, w))
        x = _random_jpeg(g, x, st.first)
        if float(torch.rand(1, generator=g, dtype=torch.float64)) < st.second_order_prob:
            x = _stage(g, x, st.second, target)
        sinc = torch.rand(b, generator=g, dtype=torch.float64) < st.final_sinc_prob
        kernels = _where(sinc, random_sinc_kernels(g, st.final_sinc_size, b))
        mode = RESIZE_MODES[int(_choice(g, st.second.resize_modes, 1))]
        if float(torch.rand(1, generator=g, dtype=torch.float64)) < 0.5:  # resize + sinc, then JPEG
            x = _random_jpeg(g, filter_batch(_resize(x, target, mode), kernels), st.second)
        else:  # JPEG, then resize + sinc
            x = filter_batch(_resize(_random_jpeg(g, x, st.second), target, mode), kernels)
        return (torch.round(x.clamp(0, 1) * 255) / 255).to(hr.dtype if hr.is_floating_point() else torch.float32)


def cut_context(lr: torch.Tensor, hr: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training pair without ``context`` LR pixels on every side (``context * scale`` HR pixels).

    Why: degrading a crop larger than the patch lets the blur and sinc kernels, up to 21 taps, read
    image content at the patch's edge instead of padding, as they do on a whole photo.
    """
    if context <= 0:
        return lr, hr
    scale = hr.shape[-1] // lr.shape[-1]
    c, C = context, context * scale
    return lr[..., c: lr.shape[-2] - c, c: lr.shape[-1] - c], hr[..., C: hr.shape[-2] - C, C: hr.shape[-1] - C]


__all__ = ["RealWorldDegradation", "cut_context", "RealWorldSettings", "Stage", "gaussian_kernels", "sinc_kernels",
           "filter_batch", "jpeg_batch", "realworld_defaults", "quantization_tables", "random_blur_kernels", "random_sinc_kernels",
           "KERNEL_KINDS", "RESIZE_MODES", "MAX_KERNEL"]
