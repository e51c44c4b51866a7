"""Parallel-beam tomography (Radon transform) with an exact adjoint, and filtered back-projection.

The projector is pixel-driven: for each angle ``theta`` the pixel centred at
``(u, v)`` (column and row coordinates about the image centre, ``v`` up) lands
on the detector at ``t = u cos(theta) + v sin(theta)`` and its value is split
between the two nearest detector bins by linear interpolation.  The forward is
an explicit scatter-add with these weights and the adjoint (back-projection)
the gather with the same weights, so ``<A x, y> = <x, A^T y>`` holds to float
precision.  Units: one pixel = one detector bin, so a projection approximates
the line integral in pixel units.  The sinogram is ``(B, C, n_detectors,
n_angles)`` as in scikit-image's ``radon``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._shape import fmt, require_image
from .base import LinearOperator


class Tomography(LinearOperator):
    """Parallel-beam Radon transform: ``(B, C, H, W) -> (B, C, n_detectors, n_angles)``.

    Args:
        angles: number of views evenly spread over [0, 180) degrees, or a 1-D
            tensor of angles in degrees.
        image_size: ``H`` (square) or ``(H, W)``.
        n_detectors: detector bins; default ``ceil(sqrt(H^2 + W^2))`` so that
            every pixel is seen at every angle.
    """

    angles: Tensor

    def __init__(
        self, angles: int | Tensor, image_size: int | tuple[int, int], n_detectors: int | None = None
    ) -> None:
        super().__init__()
        if isinstance(angles, int):
            if angles < 1:
                raise ValueError(f"angles must be a positive number of views, got {angles}")
            angles = torch.arange(angles, dtype=torch.float64) * (180.0 / angles)
        angles = torch.as_tensor(angles, dtype=torch.float64)
        if angles.dim() != 1 or angles.numel() == 0:
            raise ValueError(f"angles must be an int or a 1-D tensor of degrees, got shape {fmt(angles.shape)}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.image_size = (int(h), int(w))
        self.n_detectors = int(n_detectors) if n_detectors is not None else math.ceil(math.hypot(h, w))
        self.register_buffer("angles", angles)
        self._geometry_cache: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    @property
    def n_angles(self) -> int:
        return self.angles.numel()

    def _apply(self, fn, *args, **kwargs):
        self._geometry_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # -- shapes --------------------------------------------------------------
    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "Tomography")
        if tuple(shape[2:]) != self.image_size:
            raise ValueError(f"Tomography was built for {fmt(self.image_size)} images but the image is {fmt(shape)}")

    def _check_y(self, y: Tensor) -> None:
        shape = require_image(y.shape, "Tomography")
        if tuple(shape[2:]) != (self.n_detectors, self.n_angles):
            raise ValueError(
                f"sinogram has shape {fmt(shape)} but this Tomography gives "
                f"(B, C, {self.n_detectors}, {self.n_angles}) (n_detectors, n_angles)"
            )

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        self._check_y(y)
        return (y.shape[0], y.shape[1], *self.image_size)

    # -- geometry ------------------------------------------------------------
    def _geometry(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(index_lo, index_hi, weight_lo, weight_hi)``, each ``(A, H*W)``: flat sinogram bins and weights."""
        key = (dtype, device)
        if key not in self._geometry_cache:
            h, w = self.image_size
            d = self.n_detectors
            theta = torch.deg2rad(self.angles.to(device=device, dtype=torch.float64))
            u = (torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2).repeat(h)
            v = ((h - 1) / 2 - torch.arange(h, device=device, dtype=torch.float64)).repeat_interleave(w)
            # detector position in bins (0 .. d - 1 at the bin centres)
            t = torch.cos(theta)[:, None] * u + torch.sin(theta)[:, None] * v + (d - 1) / 2
            lo = t.floor()
            frac = t - lo
            lo = lo.long()
            hi = lo + 1
            # linear interpolation weights, zero for bins off the detector
            w_lo = torch.where((lo >= 0) & (lo < d), 1 - frac, torch.zeros_like(frac))
            w_hi = torch.where((hi >= 0) & (hi < d), frac, torch.zeros_like(frac))
            row = torch.arange(self.n_angles, device=device)[:, None] * d
            self._geometry_cache[key] = (
                row + lo.clamp(0, d - 1),
                row + hi.clamp(0, d - 1),
                w_lo.to(dtype),
                w_hi.to(dtype),
            )
        return self._geometry_cache[key]

    # -- operator --------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Radon transform (Kak & Slaney 1988, eq. 3.1), pixel-driven with linear interpolation."""
        self.check(x.shape)
        b, c, h, w = x.shape
        index_lo, index_hi, w_lo, w_hi = self._geometry(x.dtype, x.device)
        a, d = self.n_angles, self.n_detectors
        xf = x.reshape(b * c, 1, h * w)
        # each pixel splats onto its two nearest bins, at every angle
        sino = x.new_zeros(b * c, a * d)
        sino = sino.index_add(1, index_lo.reshape(-1), (xf * w_lo).reshape(b * c, -1))
        sino = sino.index_add(1, index_hi.reshape(-1), (xf * w_hi).reshape(b * c, -1))
        return sino.reshape(b, c, a, d).transpose(-1, -2)

    def adjoint(self, y: Tensor) -> Tensor:
        """Back-projection, the exact transpose of ``forward``: gather with the same weights."""
        self._check_y(y)
        b, c = y.shape[:2]
        h, w = self.image_size
        index_lo, index_hi, w_lo, w_hi = self._geometry(y.dtype, y.device)
        a, d = self.n_angles, self.n_detectors
        yf = y.transpose(-1, -2).reshape(b * c, a * d)
        g_lo = yf.index_select(1, index_lo.reshape(-1)).reshape(b * c, a, h * w)
        g_hi = yf.index_select(1, index_hi.reshape(-1)).reshape(b * c, a, h * w)
        return (g_lo * w_lo + g_hi * w_hi).sum(dim=1).reshape(b, c, h, w)

    def fbp(self, y: Tensor) -> Tensor:
        """Filtered back-projection (Kak & Slaney 1988, eq. 3.61): ramp-filtered sinogram, back-projected.

        The ramp filter is the band-limited one sampled in space (Kak & Slaney
        eq. 3.73: ``h[0] = 1/4``, ``h[n] = -1/(pi n)^2`` for odd ``n``, else 0),
        applied with zero padding; the back-projection sums over the views with
        weight ``pi / n_angles`` (evenly spread angles over 180 degrees).
        """
        self._check_y(y)
        d = self.n_detectors
        size = max(64, 1 << (2 * d - 1).bit_length())
        n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)]).to(torch.float64)
        h = torch.zeros(size, dtype=torch.float64)
        h[0] = 0.25
        h[1::2] = -1.0 / (math.pi * n) ** 2
        ramp = 2 * torch.fft.fft(h).real  # the factor 2 pairs with the 1/2 in pi / (2 n_angles)
        q = torch.fft.fft(y.transpose(-1, -2), n=size, dim=-1) * ramp.to(device=y.device, dtype=y.dtype)
        filtered = torch.fft.ifft(q, dim=-1).real[..., :d].transpose(-1, -2)
        return self.adjoint(filtered) * (math.pi / (2 * self.n_angles))

    def extra_repr(self) -> str:
        return f"n_angles={self.n_angles}, image_size={self.image_size}, n_detectors={self.n_detectors}"
