"""Measurement noise models ``y ~ p(y | A x)`` in data units: Gaussian and Poisson.

Each model draws ``y`` from the noiseless measurement ``ax = A(x)``
(``sample``) and gives the negative log-likelihood ``-log p(y | ax)`` summed
per batch item, up to a constant independent of ``ax`` (``nll``, shape
``(B,)``), and its gradient with respect to ``ax`` (``grad``, shaped like
``ax``).  Samplers that accept any likelihood (DPS, Score-ALD, DAPS) take one
as ``noise=``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _per_sample(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


class Gaussian:
    """Additive white Gaussian noise ``y = ax + sigma n``, ``n ~ N(0, I)``; ``sigma = 0`` is noiseless.

    ``nll(y, ax) = ||y - ax||^2 / (2 sigma^2)`` (dropping
    ``(M / 2) log(2 pi sigma^2)``).  For ``sigma = 0`` the likelihood is a hard
    constraint ``y = ax``: ``sample`` returns ``ax`` and ``nll``/``grad``
    raise.
    """

    def __init__(self, sigma: float) -> None:
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma is a standard deviation in data units and must be >= 0, got {sigma}")
        self.sigma = sigma

    def sample(self, ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.sigma == 0:
            return ax.clone()
        n = torch.randn(ax.shape, generator=generator, device=ax.device, dtype=ax.dtype)
        return ax + self.sigma * n

    def _need_sigma(self) -> None:
        if self.sigma == 0:
            raise ValueError(
                "Gaussian(0) is noiseless: its likelihood is the constraint y = A(x), which has no finite "
                "negative log-likelihood; use sigma > 0 or a method that enforces y exactly"
            )

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        """``(B,)``: ``||y - ax||^2 / (2 sigma^2)`` per batch item."""
        self._need_sigma()
        return _per_sample((y - ax) ** 2) / (2 * self.sigma**2)

    def grad(self, y: Tensor, ax: Tensor) -> Tensor:
        """``d nll / d ax = (ax - y) / sigma^2``."""
        self._need_sigma()
        return (ax - y) / self.sigma**2

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma:g})"


class Poisson:
    """Poisson noise in data units: ``y = gain * Poisson(ax / gain)``.

    ``ax / gain`` is the expected photon count, so ``E[y] = ax`` and
    ``Var[y] = gain * ax``: a larger ``gain`` is noisier (fewer counts per
    data unit).  Negative ``ax`` is clipped to 0 when sampling.

    With counts ``k = y / gain`` and rate ``lam = ax / gain``,
    ``nll = sum(lam - k log(lam + eps))`` (dropping ``log k!``); ``eps``
    (in counts) keeps it finite at ``lam = 0``, and for ``lam < 0`` it is
    continued linearly (value and slope of ``lam = 0``) so that its gradient
    stays finite and points back to nonnegative rates.
    """

    def __init__(self, gain: float, eps: float = 1e-3) -> None:
        gain = float(gain)
        if not math.isfinite(gain) or gain <= 0:
            raise ValueError(f"gain must be positive (data units per photon count), got {gain}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.gain = gain
        self.eps = float(eps)

    def sample(self, ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        rate = (ax / self.gain).clamp(min=0)
        return torch.poisson(rate, generator=generator) * self.gain

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        """``(B,)``: ``sum(lam - k log(lam + eps))``, linear for ``lam < 0``."""
        k, lam = y / self.gain, ax / self.gain
        pos = torch.where(lam >= 0, lam, torch.zeros_like(lam))  # unlike clamp, keeps slope 1 at lam = 0
        inside = pos - k * torch.log(pos + self.eps)
        outside = -k * math.log(self.eps) + (1 - k / self.eps) * lam
        return _per_sample(torch.where(lam >= 0, inside, outside))

    def grad(self, y: Tensor, ax: Tensor) -> Tensor:
        """``d nll / d ax = (1 - k / (max(lam, 0) + eps)) / gain``."""
        k, lam = y / self.gain, ax / self.gain
        return (1 - k / (lam.clamp(min=0) + self.eps)) / self.gain

    def __repr__(self) -> str:
        return f"Poisson(gain={self.gain:g})"
