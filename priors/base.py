"""The prior protocol: one denoiser ``denoise(x, sigma) -> x0_hat`` in data space.

A noisy image at level ``sigma`` is ``x = x0 + sigma * n`` (variance-exploding
form) with ``x0`` in the prior's ``data_range`` (``(0, 1)`` for natural
images).  Whatever a model was trained as, its wrapper answers in these units;
samplers see only ``denoise`` and a descending tensor of sigmas.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5): ``steps`` levels then a final 0, float64."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([s, s.new_zeros(1)])


def geometric_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Log-uniform schedule from ``sigma_max`` to ``sigma_min``, then 0, float64."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    s = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps, dtype=torch.float64)
    return torch.cat([s, s.new_zeros(1)])


def as_sigma(sigma: float | Tensor, x: Tensor) -> Tensor:
    """``sigma`` (float, 0-d or ``(B,)``) -> tensor of shape ``(B, 1, ..., 1)`` like ``x``."""
    s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma has {s.shape[0]} entries but x has batch {x.shape[0]}")
    return s.reshape(-1, *([1] * (x.dim() - 1)))


def parameter_dtype(module: object) -> torch.dtype | None:
    """The narrowest floating dtype among ``module``'s parameters; None for a parameter-free one.

    A network in float16 or bfloat16 answers its half dtype even where some layers stay in
    float32 (guided-diffusion's mixed precision keeps norms and embeddings there).
    """
    if not isinstance(module, nn.Module):
        return None
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if not dtypes:
        return None
    return min(dtypes, key=lambda d: torch.finfo(d).bits)


def to_network(x: Tensor, module: object) -> Tensor:
    """``x`` in ``module``'s parameter dtype (unchanged for a parameter-free module).

    Networks run in their own dtype; the samplers' state stays in at least float32, so
    a prior casts what it hands its network and casts the answer back (EDM's and
    guided-diffusion's mixed precision).
    """
    dtype = parameter_dtype(module)
    return x if dtype is None or dtype == x.dtype else x.to(dtype)


class Prior(nn.Module):
    """A diffusion prior answering ``denoise(x, sigma) ~ E[x0 | x0 + sigma n = x]``.

    Attributes:
        sigma_min, sigma_max: the range of noise levels the prior knows (data units).
        data_range: ``(lo, hi)`` of clean data; samplers may clip ``x0_hat`` to it.
        shipped: the shipped name this prior was loaded by (``load_prior("natural-gray")``),
            None for any other prior; the methods' default schedule starts were chosen on the
            shipped priors and apply to them only.
        casts_input: True when ``denoise`` hands its network inputs in the network's dtype
            (``to_network``) and answers in ``x``'s, as every wrapper here does: a half-precision
            network then computes only what it must in half.  ``restore`` runs the chain in at
            least float32 and, for a prior with half-precision parameters that does not say
            it casts, casts ``x`` to that dtype for the whole ``denoise`` and the answer back.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    data_range: tuple[float, float] = (0.0, 1.0)
    shipped: str | None = None
    casts_input: bool = False

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:  # pragma: no cover - abstract
        """``x``: ``(B, C, H, W)``, ``sigma``: float or ``(B,)`` -> ``x0_hat`` like ``x``."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self.denoise(x, sigma)

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        """The prior's natural descending schedule: ``steps + 1`` values, the last 0.

        ``sigma_max`` starts the schedule lower than the prior's own ``sigma_max``
        (a larger value is capped at it).
        """
        return karras_sigmas(steps, self.sigma_min, self.schedule_start(sigma_max))

    def schedule_start(self, sigma_max: float | None) -> float:
        """The first noise level of a schedule asked to start at ``sigma_max`` (None: the prior's own)."""
        if sigma_max is None:
            return float(self.sigma_max)
        if not (math.isfinite(sigma_max) and sigma_max > self.sigma_min):
            raise ValueError(
                f"sigma_max must be a finite noise level above the prior's sigma_min {self.sigma_min:g}, "
                f"got {sigma_max!r}"
            )
        return min(float(sigma_max), float(self.sigma_max))

    def data_mean(self) -> Tensor | None:
        """The mean of clean data, ``(C, H, W)``, where the prior knows it exactly; None otherwise."""
        return None

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``grad log p_sigma(x) = (x0_hat - x) / sigma^2``."""
        s = as_sigma(sigma, x)
        return (self.denoise(x, sigma) - x) / s**2

    def clip(self, x0: Tensor) -> Tensor:
        """Clamp to ``data_range``."""
        return x0.clamp(*self.data_range)
