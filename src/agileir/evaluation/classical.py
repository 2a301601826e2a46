"""Classical denoisers as a baseline row beside a model: BM3D and non-local means.

Why: a denoising table needs the strongest method that needs no training beside the model, as
the papers print it. BM3D comes from the ``bm3d`` package (``pip install 'agileir[baselines]'``),
non-local means from scikit-image; both are given the true sigma, as published BM3D rows are.
"""

from __future__ import annotations

import numpy as np

from agileir.errors import ConfigError

CLASSICAL_DENOISERS = ("bm3d", "nlm")


def _bm3d(noisy: np.ndarray, sigma: float) -> np.ndarray:
    try:
        import bm3d
    except ImportError:
        raise ConfigError("the bm3d baseline needs the bm3d package: pip install 'agileir[baselines]' "
                          "(or use --classical nlm, from scikit-image)") from None
    x = noisy.astype(np.float64)
    if x.ndim == 3 and x.shape[2] == 3:
        return bm3d.bm3d_rgb(x, sigma_psd=sigma)
    return np.asarray(bm3d.bm3d(x if x.ndim == 2 else x[:, :, 0], sigma_psd=sigma)).reshape(noisy.shape)


def _nlm(noisy: np.ndarray, sigma: float) -> np.ndarray:
    try:
        from skimage.restoration import denoise_nl_means
    except ImportError:
        raise ConfigError("the nlm baseline needs scikit-image: pip install 'agileir[baselines]'") from None
    channel_axis = -1 if noisy.ndim == 3 else None
    # scikit-image's recommended setting for a known sigma: h = 0.8 sigma, fast mode
    return denoise_nl_means(noisy.astype(np.float64), h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True, channel_axis=channel_axis)


def classical_denoise(noisy: np.ndarray, sigma: float, method: str) -> np.ndarray:
    """Denoise a float ``(H, W[, C])`` image in [0, 1] units (not clipped) with Gaussian noise of
    ``sigma`` (0-255 units); returns uint8, rounded as model outputs are."""
    if method not in CLASSICAL_DENOISERS:
        raise ConfigError(f"unknown classical denoiser {method!r}; choose one of {', '.join(CLASSICAL_DENOISERS)}")
    out = (_bm3d if method == "bm3d" else _nlm)(noisy, float(sigma) / 255.0)
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


__all__ = ["CLASSICAL_DENOISERS", "classical_denoise"]
