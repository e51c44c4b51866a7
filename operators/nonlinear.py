"""Nonlinear forward operators: Fourier phase retrieval, saturation, pre-log CT (Beer-Lambert).

All are differentiable with autograd; samplers that need ``J_A^T`` (DPS,
Score-ALD, DAPS) take vector-Jacobian products through ``op(x)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._shape import require_image
from .base import Operator
from .fourier import fft2c
from .tomography import Tomography


class PhaseRetrieval(Operator):
    """Fourier phase retrieval ``y = |fft2c(pad(x))|`` (DPS, Chung et al. 2023, Sec. 4).

    ``x`` is zero-padded by ``p = int(oversample * H / 8)`` pixels on every
    side (``q`` likewise from ``W``) before the centred orthonormal FFT, as in
    the DPS code (``oversample = 2`` pads a 256-pixel image by 64 on each side,
    384 in all).  ``(B, C, H, W) -> (B, C, H + 2p, W + 2q)``.
    """

    def __init__(self, oversample: float = 2.0) -> None:
        super().__init__()
        if oversample < 0:
            raise ValueError(f"oversample must be nonnegative, got {oversample}")
        self.oversample = float(oversample)

    def _pad(self, n: int) -> int:
        return int(self.oversample / 8.0 * n)

    def forward(self, x: Tensor) -> Tensor:
        require_image(x.shape, "PhaseRetrieval")
        p, q = self._pad(x.shape[2]), self._pad(x.shape[3])
        return fft2c(F.pad(x, (q, q, p, p))).abs().to(x.dtype)  # half input: FFT in float32, cast back

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        b, c, hp, wp = require_image(y.shape, "PhaseRetrieval")
        # n -> n + 2 int(oversample n / 8) is strictly increasing: invert by search
        size = []
        for m in (hp, wp):
            n = next((n for n in range(1, m + 1) if n + 2 * self._pad(n) == m), None)
            if n is None:
                raise ValueError(f"no image size gives a {hp}x{wp} measurement with oversample={self.oversample}")
            size.append(n)
        return (b, c, size[0], size[1])

    def check(self, x_shape: tuple[int, ...]) -> None:
        require_image(x_shape, "PhaseRetrieval")

    def extra_repr(self) -> str:
        return f"oversample={self.oversample}"


class Saturation(Operator):
    """Smooth sensor saturation ``y = tanh(alpha x) / tanh(alpha)`` (HDR-style soft clipping).

    Maps 0 to 0 and 1 to 1, with slope ``alpha / tanh(alpha)`` at 0 and
    ``alpha / (tanh(alpha) cosh(alpha)^2)`` at 1: highlights are compressed
    more as ``alpha`` grows (``alpha -> 0`` is the identity).  Invertible:
    ``x = artanh(y tanh(alpha)) / alpha``.  Shape preserving.
    """

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.alpha * x) / math.tanh(self.alpha)

    def inverse(self, y: Tensor) -> Tensor:
        """``x`` with ``A(x) = y``, for ``|y| < 1 / tanh(alpha)``."""
        return torch.atanh(y * math.tanh(self.alpha)) / self.alpha

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        return require_image(y.shape, "Saturation")

    def check(self, x_shape: tuple[int, ...]) -> None:
        require_image(x_shape, "Saturation")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class BeerLambert(Operator):
    """Pre-log CT: expected photon counts ``y = I0 exp(-mu A x)`` (Beer-Lambert law).

    ``A`` is a ``Tomography`` (line integrals in pixel units), ``x`` the
    attenuation map in data units, ``mu`` the attenuation per pixel of unit
    density (default ``1 / max(H, W)``: a unit object across the whole field
    of view absorbs ``1 - 1/e``) and ``I0`` the unattenuated count.  Pair with
    ``Poisson`` noise for photon-limited CT.
    """

    def __init__(self, tomography: Tomography, I0: float = 1e4, mu: float | None = None) -> None:
        super().__init__()
        if not isinstance(tomography, Tomography):
            raise ValueError(f"tomography must be a Tomography operator, got {type(tomography).__name__}")
        if I0 <= 0:
            raise ValueError(f"I0 must be positive, got {I0}")
        self.tomography = tomography
        self.I0 = float(I0)
        self.mu = float(mu) if mu is not None else 1.0 / max(tomography.image_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.I0 * torch.exp(-self.mu * self.tomography(x))

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        return self.tomography.x_shape(y)

    def check(self, x_shape: tuple[int, ...]) -> None:
        self.tomography.check(x_shape)

    def extra_repr(self) -> str:
        return f"I0={self.I0:g}, mu={self.mu:g}"
