"""Estimate the measurement noise ``sigma_y`` from the measurement itself (``restore(..., sigma_y="auto")``).

Wavelet median absolute deviation (Donoho & Johnstone 1994, Biometrika 81(3), Sec. 4.2): on the
finest diagonal wavelet band natural images are sparse while white noise of std ``sigma`` keeps
std ``sigma`` (an orthonormal wavelet), so ``sigma ~ median(|d|) / 0.6745``.  Plain images go
through scikit-image's ``estimate_sigma`` (Daubechies-2 wavelet, each channel, channel mean);
inpainting measurements through :func:`masked_sigma`, the same rule on fully known 2x2 blocks.

What the benchmark ``python -m benchmarks noise_level`` measured on photographs
(``benchmarks/results/noise_level.md``) is in :func:`estimate_sigma_y`'s docstring.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .operators import (
    MRI, BeerLambert, Blur, Colorization, Downsampling, Identity, Inpainting, MultiCoilMRI, PhaseRetrieval,
    Saturation, Tomography, TomographySVD,
)  # fmt: skip

if TYPE_CHECKING:
    from .operators import Operator

#: the noise of rounding to 8 bits, ``1 / 255 / sqrt(12)`` (uniform error over one level): the floor of the estimate
QUANTISATION_SIGMA = 1.0 / 255.0 / math.sqrt(12.0)

#: ``Phi^-1(3/4)``: the median of ``|n|`` for ``n ~ N(0, 1)``
_MAD_TO_SIGMA = 0.6744897501960817

#: fewest detail coefficients an estimate is taken from (plain images: ``H, W >= 8``)
_MIN_COEFFS = 32


#: operators whose measurement is an image, with the noise added after them white on its pixel grid
IMAGE_OPERATORS = (Identity, Blur, Downsampling, Colorization, Inpainting, Saturation)

#: operators whose measurement is not an image: k-space, sinograms, photon counts, Fourier magnitudes
NOT_IMAGES = (MRI, MultiCoilMRI, Tomography, TomographySVD, BeerLambert, PhaseRetrieval)


def estimate_sigma_y(y: Tensor, op: Operator | None = None) -> float:
    """The measurement-noise std of ``y`` in data units, by wavelet MAD (Donoho & Johnstone 1994, Sec. 4.2).

    Args:
        y: measurement ``(B, C, H, W)``: a noisy image (denoising), a blurred, low-resolution
            or gray image (deblurring, super-resolution, colorization), or the masked image of
            inpainting (``op`` an :class:`~invdiff.operators.Inpainting`; only fully known 2x2
            blocks count there, see :func:`masked_sigma`).
        op: the forward operator, or ``None`` for a plain image.  Operators whose measurement
            is not an image (MRI k-space, CT sinograms) raise ``ValueError``, and so do
            operators this function does not know: pass ``sigma_y`` explicitly for those, or
            call ``estimate_sigma_y(y)`` without ``op`` if ``y`` is an image.

    Returns:
        One value for the whole batch: the largest of the per-image estimates (each the mean
        over channels), because ``restore`` runs with one ``sigma_y`` and too small a value
        makes the samplers fit the noise while too large a one only smooths.  Estimate a batch
        mixing noise levels image by image.  The value is at least ``QUANTISATION_SIGMA``
        (``1 / 255 / sqrt(12)``, about 0.0011): an image stored in 8 bits carries at least
        its rounding error, so no 8-bit file is noiseless, and 0 would ask samplers to
        match the rounding exactly.

    Accuracy, measured by ``python -m benchmarks noise_level --full`` on six scikit-image
    photographs (``benchmarks/results/noise_level.md``; estimate / true, median over images):
    the estimate is the noise of ``y`` plus whatever of the photograph the finest wavelet band
    mistakes for noise (its own sensor and rounding noise, fine texture): a clean photo reads
    0.002 to 0.011 (0.015 after 4x downsampling), so denoising, inpainting and super-resolution
    read high at small noise (medians about 2x at 0.005, 3x for super-resolution; 1.2-1.4x at
    0.02; 1.05-1.15x at 0.05; 1.01-1.03x at 0.1).
    Blurred measurements read true (0.97-1.01 at every level): the blur removes the photo's
    noise and texture before the noise is added.  JPEG files read mostly low, and erratically
    (0.1-2x): compression removes the finest frequencies, noise included.  No correction is applied: the
    excess depends on the photograph (0.002 to 0.015 at zero noise) and cannot be told from the
    noise, and JPEG's loss varies with quality, content and level; for JPEG files pass
    ``sigma_y`` explicitly.
    """
    if not isinstance(y, Tensor) or y.dim() != 4:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be a (B, C, H, W) tensor to estimate its noise, got {shape}")
    if isinstance(op, NOT_IMAGES):
        raise ValueError(
            f"{type(op).__name__} measurements (k-space, sinograms) are not images, so their noise cannot be "
            "estimated from y; pass sigma_y= explicitly"
        )
    if op is not None and not isinstance(op, IMAGE_OPERATORS):
        raise ValueError(
            f"cannot tell whether {type(op).__name__}'s measurements are images; pass sigma_y= explicitly, "
            "or estimate_sigma_y(y) without op if y is an image"
        )
    y = y.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(y).all():
        raise ValueError("y has NaN or infinite values; clean the measurement before estimating its noise")
    if isinstance(op, Inpainting):
        known = (op.mask.detach().to(device="cpu", dtype=torch.float64) == 1).expand(y.shape)
        sigmas = [masked_sigma(y[b], known[b]) for b in range(y.shape[0])]
    else:
        sigmas = [_plain_sigma(y[b]) for b in range(y.shape[0])]
    # A flat image has no detail to measure (the wavelet MAD is 0/0): it reads as the floor.
    sigmas = [s for s in sigmas if math.isfinite(s)]
    return max(max(sigmas, default=QUANTISATION_SIGMA), QUANTISATION_SIGMA)


def _plain_sigma(y: Tensor) -> float:
    """scikit-image's wavelet MAD of one image ``(C, H, W)``, mean over channels."""
    _, h, w = y.shape
    if min(h, w) < 8:
        raise ValueError(f"y is {h}x{w}, too small to estimate its noise (at least 8x8); pass sigma_y= explicitly")
    try:
        import pywt  # noqa: F401  (estimate_sigma's wavelet transform)
    except ImportError:
        raise ImportError("sigma_y='auto' needs PyWavelets (pip install PyWavelets) or pass sigma_y=") from None
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(y.permute(1, 2, 0).numpy(), average_sigmas=True, channel_axis=-1))


def masked_sigma(y: Tensor, known: Tensor) -> float:
    """Wavelet MAD of ``y`` ``(C, H, W)`` on the 2x2 blocks whose four pixels are all ``known`` (bool, same shape).

    The finest Haar diagonal detail of a block ``[[a, b], [c, d]]`` is ``(a - b - c + d) / 2``:
    orthonormal (white noise keeps its std) and zero on any locally linear image.  It is taken
    at every block position (undecimated) and pooled over channels, and
    ``sigma = median(|detail|) / 0.6745``.  Written here rather than calling scikit-image's
    ``estimate_sigma``, which takes no mask: the jumps between known pixels and the zeros of
    unknown ones enter its wavelet coefficients as if they were noise (a 50 % random mask
    reads about 1.8x the true noise on ``camera``).
    """
    a, b = y[:, :-1, :-1], y[:, :-1, 1:]
    c, d = y[:, 1:, :-1], y[:, 1:, 1:]
    full = known[:, :-1, :-1] & known[:, :-1, 1:] & known[:, 1:, :-1] & known[:, 1:, 1:]
    detail = ((a - b - c + d) / 2)[full]
    if detail.numel() < _MIN_COEFFS:
        raise ValueError(
            f"only {detail.numel()} fully known 2x2 pixel blocks (at least {_MIN_COEFFS} are needed) to estimate "
            "the noise of this inpainting measurement; pass sigma_y= explicitly"
        )
    return float(np.median(detail.abs().numpy())) / _MAD_TO_SIGMA
