"""Coil sensitivity maps for multi-coil MRI: estimated from the calibration region, or simulated.

``estimate_sensitivities`` is the low-resolution method: inverse-FFT the fully
sampled central columns of k-space (the autocalibration signal, ACS) of each
coil under a Hann window, giving coil images ``c_j ~ S_j x`` of low resolution
across the columns (every row of a Cartesian column is measured, so the rows
keep their resolution), and divide them by their root sum of squares,

    S_j = c_j / sqrt(sum_k |c_k|^2)

(McKenzie et al. 2002, "Self-calibrating parallel imaging with automatic coil
sensitivity extraction", MRM 47:529; the same normalised low-resolution
estimate initialises the learned maps of E2E-VarNet, Sriram et al. 2020).
Where the image is smooth, ``c_j = S_j x_low`` and the estimate is
``S_j e^{i phase(x_low)} / sqrt(sum_k |S_k|^2)``: the maps carry the
low-resolution phase of the image, so the image that the estimated maps
explain is close to real and non-negative (its magnitude).  This is what lets a
prior of real images in ``[0, 1]`` serve complex MRI data (``MultiCoilMRI``
with real input).  It is a cheap estimate: near sharp edges the maps inherit
some of the image's low-pass blur, and it does not handle aliasing of the
object beyond the field of view (ESPIRiT, Uecker et al. 2014, does).

``birdcage_sensitivities`` simulates smooth maps for testing and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._shape import as_4d_mask, fmt
from .fourier import ifft2c

__all__ = ["estimate_sensitivities", "birdcage_sensitivities", "calibration_width"]


def calibration_width(mask: Tensor) -> int:
    """Width of the contiguous run of measured columns around the k-space centre of a ``(H, W)`` / ``(B, 1, H, W)`` mask.

    Uses the first mask of a batch (column ``W // 2`` is the centre in
    ``fft2c`` layout).  A column counts as measured if every row is.
    """
    mask = as_4d_mask(mask, "calibration_width")
    cols = (mask[0, 0] > 0).all(dim=0)
    w = cols.numel()
    centre = w // 2
    if not bool(cols[centre]):
        raise ValueError(
            "the mask does not measure the centre column of k-space, so there is no calibration region; "
            "give coil maps, or a mask with a fully sampled centre (center_fraction > 0)"
        )
    lo, hi = centre, centre
    while lo > 0 and bool(cols[lo - 1]):
        lo -= 1
    while hi < w - 1 and bool(cols[hi + 1]):
        hi += 1
    return hi - lo + 1


def _hann(n: int, size: int, like: Tensor) -> Tensor:
    """A length-``size`` window: a Hann bump over the central ``n`` entries (positive at their ends), 0 elsewhere."""
    win = torch.zeros(size, dtype=like.dtype, device=like.device)
    bump = torch.hann_window(n + 2, periodic=False, dtype=like.dtype, device=like.device)[1:-1]
    start = size // 2 - n // 2  # centred on index size // 2, the DC of fft2c layout
    win[start : start + n] = bump
    return win


def estimate_sensitivities(
    kspace: Tensor,
    calib_width: int | None = None,
    mask: Tensor | None = None,
    *,
    eps: float = 1e-6,
) -> Tensor:
    """Coil sensitivities from the calibration region (low-resolution, root-sum-of-squares normalised).

    Args:
        kspace: centred multi-coil k-space, complex ``(N_c, H, W)`` or ``(B, N_c, H, W)``;
            zero-filled where not measured.
        calib_width: number of fully sampled central columns (the ACS width).  Default: from
            ``mask`` (``calibration_width``), else the run of columns with nonzero data around
            the centre.
        mask: the sampling mask, ``(H, W)`` or ``(B, 1, H, W)``, used only to find ``calib_width``.
        eps: soft threshold relative to the largest root sum of squares, so that maps fade to 0
            where no coil sees signal: ``S_j = c_j rss / (rss^2 + (eps max rss)^2)``.

    Returns:
        complex maps shaped like ``kspace`` (``(B, N_c, H, W)`` for 4-D input).
    """
    if not isinstance(kspace, Tensor) or not kspace.is_complex() or kspace.dim() not in (3, 4):
        shape = fmt(kspace.shape) if isinstance(kspace, Tensor) else type(kspace).__name__
        raise ValueError(
            f"estimate_sensitivities: kspace must be a complex tensor (N_c, H, W) or (B, N_c, H, W), got {shape}"
        )
    squeeze = kspace.dim() == 3
    k = kspace[None] if squeeze else kspace
    _, _, h, w = k.shape
    if calib_width is None:
        if mask is not None:
            calib_width = calibration_width(mask)
        else:
            measured = (k.abs().sum(dim=(0, 1, 2)) > 0).float()
            calib_width = calibration_width(measured.expand(h, w))
    calib_width = int(calib_width)
    if not 1 <= calib_width <= w:
        raise ValueError(f"calib_width must be between 1 and the k-space width {w}, got {calib_width}")
    real = k.real
    # Every row of a measured column is measured: low resolution across the columns only, and a
    # Hann taper over all rows against ringing along the readout.
    window = _hann(h, h, real)[:, None] * _hann(calib_width, w, real)[None, :]
    c = ifft2c(k * window)  # low-resolution coil images (B, N_c, H, W)
    rss = torch.sqrt((c.abs() ** 2).sum(dim=1, keepdim=True))
    floor = eps * rss.amax(dim=(-2, -1), keepdim=True)
    maps = c * (rss / (rss**2 + floor**2).clamp_min(torch.finfo(real.dtype).tiny))
    return maps[0] if squeeze else maps


def birdcage_sensitivities(
    coils: int,
    size: int | Sequence[int],
    *,
    radius: float = 1.5,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Smooth synthetic coil maps ``(N_c, H, W)``, root sum of squares 1 at every pixel.

    Coil ``j`` is a straight wire along the scanner axis at angle ``2 pi j / N_c`` on a
    circle of ``radius`` (in units of half the field of view) around the image centre.
    Its field is tangential with magnitude ``1 / r`` (Biot-Savart), which as a complex
    number ``B_x + i B_y`` is ``i e^{i theta} / r``, ``(r, theta)`` the polar coordinates
    of the pixel about the wire; the maps are these fields divided by their root sum of
    squares.
    """
    if coils < 1:
        raise ValueError(f"coils must be a positive number of coils, got {coils}")
    if not dtype.is_complex:
        raise ValueError(f"dtype must be complex (torch.complex64 or torch.complex128), got {dtype}")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    yy = torch.linspace(-1, 1, h, dtype=torch.float64, device=device)[:, None]
    xx = torch.linspace(-1, 1, w, dtype=torch.float64, device=device)[None, :]
    maps = []
    for j in range(coils):
        phi = 2 * math.pi * j / coils
        dx, dy = xx - radius * math.cos(phi), yy - radius * math.sin(phi)
        # i e^{i theta} / r = i (dx + i dy) / r^2
        maps.append(1j * torch.complex(dx, dy) / (dx**2 + dy**2))
    s = torch.stack(maps)
    s = s / torch.sqrt((s.abs() ** 2).sum(dim=0, keepdim=True))
    return s.to(dtype)
