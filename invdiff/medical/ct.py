"""Computed tomography end to end: set-ups, Hounsfield units, low-dose simulation, FBP and TV baselines.

* Set-ups (``SETUPS``, ``ct_operator``): parallel-beam sparse-view scans (30 or
  60 views over 180 degrees) and a limited-angle scan (90 views over 90
  degrees), as a ``Tomography`` or, for the samplers that need an SVD (DDRM,
  DDNM), a ``TomographySVD`` from a dense SVD computed once per geometry.
* Hounsfield units: ``HU = 1000 (mu - mu_water) / (mu_water - mu_air)`` and a
  window ``[lo, hi]`` in HU mapped linearly onto the prior's ``[0, 1]``.  The
  default window ``ct = (-1000, 1000)`` starts at air, so the prior's values are
  proportional to the attenuation ``mu`` (``x = mu / (2 mu_water)``) and the
  sinogram of ``x`` is the physical sinogram up to one scale.
* Low-dose CT (``low_dose``): photon counts ``k ~ Poisson(I0 exp(-mu A x))``
  (Beer-Lambert, pre-log), restored with DPS and the Poisson likelihood of the
  measured transmission ``k / I0`` (``BeerLambert(I0=1)`` + ``Poisson(gain=1/I0)``),
  or through the post-log sinogram ``-log(k / I0) / mu`` with its Gaussian
  approximation (``PostLogGaussian``, variance ``1 / (mu^2 k)`` per bin).
* Baselines: ``Tomography.fbp`` and ``tv_reconstruction`` (PDHG).

Everything works on ``(B, C, H, W)`` images and ``(B, C, n_detectors, n_angles)`` sinograms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..operators import BeerLambert, Operator, Poisson, Tomography
from ..operators.tomography import TomographySVD
from ..samplers.common import operator_norm

__all__ = [
    "MU_WATER",
    "WINDOWS",
    "SETUPS",
    "ct_operator",
    "normalized",
    "parse_window",
    "hu_to_mu",
    "mu_to_hu",
    "hu_to_unit",
    "unit_to_hu",
    "LowDose",
    "low_dose",
    "post_log",
    "PostLogGaussian",
    "tv_reconstruction",
]

#: linear attenuation of water at 70 keV in 1/mm (NIST XCOM: 0.1929 cm^2/g at density 1 g/cm^3)
MU_WATER = 0.01929

#: named HU windows ``(lo, hi)``; ``ct`` (air to +1000 HU) is the default mapping onto ``[0, 1]``
WINDOWS: dict[str, tuple[float, float]] = {
    "ct": (-1000.0, 1000.0),
    "soft-tissue": (-160.0, 240.0),  # level 40, width 400
    "lung": (-1350.0, 150.0),  # level -600, width 1500
    "bone": (-450.0, 1050.0),  # level 300, width 1500
    "brain": (0.0, 80.0),  # level 40, width 80
}

#: scan set-ups: ``Tomography`` keyword arguments
SETUPS: dict[str, dict[str, float]] = {
    "sparse-30": {"angles": 30, "arc": 180.0},
    "sparse-60": {"angles": 60, "arc": 180.0},
    "limited-90": {"angles": 90, "arc": 90.0},
}


def normalized(tomography: Tomography) -> Tomography:
    """The same geometry with ``scale = 1 / ||A||``: an operator of norm 1.

    Samplers' default step sizes are set for operators of norm about 1 (masks,
    downsampling); a CT projector's norm grows like ``sqrt(n_angles * H)`` (about 40
    for 30 views of 64x64), which would make DPS's steps that much longer and
    Score-ALD's that much shorter.  Dividing ``A`` (and so ``y`` and ``sigma_y``) by
    ``||A||`` leaves the posterior unchanged.  ``||A||`` by 100 power iterations.
    """
    if not isinstance(tomography, Tomography):
        raise ValueError(f"normalized needs a Tomography, got {type(tomography).__name__}")
    spec = Tomography(tomography.angles.detach().cpu(), tomography.image_size, tomography.n_detectors)
    norm = float(operator_norm(spec, torch.zeros(1, 1, *spec.image_size, dtype=torch.float64), iters=100)[0])
    return Tomography(spec.angles, spec.image_size, spec.n_detectors, scale=1.0 / norm)


def ct_operator(
    size: int | tuple[int, int],
    setup: str = "sparse-30",
    *,
    normalize: bool = True,
    svd: bool = False,
    cache_dir: str | Path | None = None,
) -> Tomography | TomographySVD:
    """The parallel-beam operator of a named set-up (``SETUPS``) for ``size`` images.

    ``normalize``: line integrals divided by ``||A||`` (``normalized``), so that the
    samplers' defaults apply; ``False`` for line integrals in pixel units.
    ``svd=True`` gives the ``TomographySVD`` for DDRM / DDNM.
    """
    if setup not in SETUPS:
        raise ValueError(f"unknown CT set-up {setup!r}; choose one of {', '.join(SETUPS)}")
    spec = SETUPS[setup]
    op = Tomography(int(spec["angles"]), size, arc=float(spec["arc"]))
    op = normalized(op) if normalize else op
    return op.svd(cache_dir=cache_dir) if svd else op


# -- Hounsfield units ---------------------------------------------------------------------------


def parse_window(window: str | Sequence[float]) -> tuple[float, float]:
    """A window as ``(lo, hi)`` HU from a name in ``WINDOWS``, ``"lo,hi"`` or a pair of numbers."""
    if isinstance(window, str):
        if window in WINDOWS:
            return WINDOWS[window]
        parts = window.split(",")
        try:
            lo, hi = (float(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            lo = hi = None
        if lo is None:
            raise ValueError(
                f"window {window!r} is neither a name ({', '.join(WINDOWS)}) nor LO,HI in HU, e.g. -1000,1000"
            )
    else:
        try:
            lo, hi = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a name, 'LO,HI' or a pair of numbers, got {window!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"window ({lo:g}, {hi:g}) HU must be finite with lo < hi")
    return lo, hi


def hu_to_mu(hu: Tensor, mu_water: float = MU_WATER, mu_air: float = 0.0) -> Tensor:
    """Attenuation from Hounsfield units: ``mu = mu_water + HU (mu_water - mu_air) / 1000``."""
    return mu_water + hu * (mu_water - mu_air) / 1000.0


def mu_to_hu(mu: Tensor, mu_water: float = MU_WATER, mu_air: float = 0.0) -> Tensor:
    """Hounsfield units from attenuation: ``HU = 1000 (mu - mu_water) / (mu_water - mu_air)``."""
    if not mu_water > mu_air:
        raise ValueError(f"mu_water ({mu_water}) must exceed mu_air ({mu_air})")
    return 1000.0 * (mu - mu_water) / (mu_water - mu_air)


def hu_to_unit(hu: Tensor, window: str | Sequence[float] = "ct", clip: bool = False) -> Tensor:
    """HU -> the prior's ``[0, 1]``: ``(HU - lo) / (hi - lo)``, clipped to ``[0, 1]`` if ``clip``."""
    lo, hi = parse_window(window)
    x = (hu - lo) / (hi - lo)
    return x.clamp(0.0, 1.0) if clip else x


def unit_to_hu(x: Tensor, window: str | Sequence[float] = "ct") -> Tensor:
    """The prior's ``[0, 1]`` -> HU: ``lo + x (hi - lo)`` (inverse of ``hu_to_unit`` without clipping)."""
    lo, hi = parse_window(window)
    return lo + x * (hi - lo)


# -- low-dose CT --------------------------------------------------------------------------------


def post_log(counts: Tensor, I0: float, mu: float, min_count: float = 0.5) -> Tensor:
    """Line integrals from photon counts: ``-log(max(k, min_count) / I0) / mu``.

    Zero counts (photon starvation) have no logarithm; they are replaced by
    ``min_count``, the usual fix (a count of 0 means "at most about half a photon").
    """
    return -torch.log(counts.clamp_min(min_count) / I0) / mu


class PostLogGaussian:
    """The post-log Gaussian approximation: ``y_j ~ N((A x)_j, sigma_j^2)``, ``sigma_j^2 = 1 / (mu^2 k_j)``.

    By the delta method ``Var[log k] ~ 1 / E[k]`` for Poisson counts ``k``, with the
    measured count as the plug-in for ``E[k]`` (Sauer & Bouman 1993, weighted least
    squares for transmission tomography).  ``sigma`` ``(B, C, n_detectors, n_angles)``
    per bin; ``nll``, ``grad`` as in ``invdiff.operators.noise`` (for DPS, Score-ALD,
    DAPS as ``noise=``).  A batch tiled ``S`` times (several posterior samples) reuses
    the per-bin ``sigma`` of each image.
    """

    def __init__(self, sigma: Tensor) -> None:
        if not isinstance(sigma, Tensor) or not torch.isfinite(sigma).all() or (sigma <= 0).any():
            raise ValueError("sigma must be a tensor of positive, finite standard deviations per sinogram bin")
        self.sigma = sigma

    def _sigma(self, like: Tensor) -> Tensor:
        s = self.sigma.to(device=like.device, dtype=like.dtype)
        if s.dim() == like.dim() and s.shape[0] not in (1, like.shape[0]):
            if like.shape[0] % s.shape[0]:
                raise ValueError(f"sigma has batch {s.shape[0]} but the measurement has {like.shape[0]}")
            s = s.repeat(like.shape[0] // s.shape[0], *([1] * (s.dim() - 1)))
        return s

    @classmethod
    def from_counts(cls, counts: Tensor, mu: float, min_count: float = 0.5) -> "PostLogGaussian":
        return cls(1.0 / (mu * counts.clamp_min(min_count).sqrt()))

    def sample(self, ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n = torch.randn(ax.shape, generator=generator, device=ax.device, dtype=ax.dtype)
        return ax + self._sigma(ax) * n

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        """``(B,)``: ``sum_j (y_j - ax_j)^2 / (2 sigma_j^2)``."""
        return (((y - ax) / self._sigma(y)) ** 2).flatten(1).sum(1) / 2

    def grad(self, y: Tensor, ax: Tensor) -> Tensor:
        """``(ax - y) / sigma^2``."""
        return (ax - y) / self._sigma(y) ** 2

    @property
    def rms(self) -> float:
        """``sqrt(mean sigma_j^2)``: one ``sigma_y`` for the samplers that take a scalar."""
        return float(self.sigma.pow(2).mean().sqrt())

    def __repr__(self) -> str:
        return f"PostLogGaussian(rms sigma={self.rms:.4g})"


@dataclass
class LowDose:
    """A simulated low-dose scan.

    The pre-log measurement is the transmission ``y = k / I0`` rather than the counts
    ``k``: the same likelihood, in units where ``op`` is of order one as the
    samplers' step sizes assume (DPS moves ``x`` along ``J^T g / ||g||``, so an
    operator answering in thousands of counts would take steps thousands of times
    too long).

    Attributes:
        counts: photon counts ``k ~ Poisson(I0 exp(-mu A x))``, sinogram-shaped.
        I0: unattenuated counts per bin.
        y: measured transmission ``k / I0``.
        op: ``BeerLambert(tomography, I0=1, mu)``: the expected transmission ``exp(-mu A x)``.
        noise: ``Poisson(gain=1/I0)``: the likelihood of ``y`` (``noise=`` for DPS).
        sinogram: post-log line integrals ``-log(k / I0) / mu`` (``post_log``).
        post_log_noise: ``PostLogGaussian`` of the post-log sinogram.
    """

    counts: Tensor
    I0: float
    y: Tensor
    op: BeerLambert
    noise: Poisson
    sinogram: Tensor
    post_log_noise: PostLogGaussian

    @property
    def sigma_y(self) -> float:
        """rms post-log noise, for samplers that take one ``sigma_y``."""
        return self.post_log_noise.rms


def low_dose(
    x: Tensor,
    tomography: Tomography,
    I0: float = 1e4,
    mu: float | None = None,
    generator: torch.Generator | None = None,
    min_count: float = 0.5,
) -> LowDose:
    """Simulate photon-limited CT of ``x`` ``(B, C, H, W)``: Beer-Lambert counts with Poisson noise.

    ``I0`` is the unattenuated count per bin (lower is noisier), ``mu`` the
    attenuation per pixel of unit value (``BeerLambert``'s default ``1 / max(H, W)``).
    """
    if not (math.isfinite(I0) and I0 > 0):
        raise ValueError(f"I0 is the unattenuated photon count per bin and must be positive, got {I0}")
    op = BeerLambert(tomography, I0=1.0, mu=mu)
    noise = Poisson(gain=1.0 / I0)
    y = noise.sample(op(x), generator=generator)
    counts = torch.round(y * I0)  # exact integers (y is counts times 1 / I0)
    return LowDose(
        counts=counts,
        I0=float(I0),
        y=y,
        op=op,
        noise=noise,
        sinogram=post_log(counts, I0, op.mu, min_count),
        post_log_noise=PostLogGaussian.from_counts(counts, op.mu, min_count),
    )


# -- TV baseline --------------------------------------------------------------------------------


def _grad(x: Tensor) -> Tensor:
    """Forward differences with a zero last row/column: ``(B, C, H, W) -> (B, C, 2, H, W)``."""
    dy = torch.zeros_like(x)
    dx = torch.zeros_like(x)
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([dy, dx], dim=2)


def _grad_adjoint(p: Tensor) -> Tensor:
    """``grad^T`` (minus the divergence) of ``(B, C, 2, H, W)``."""
    py, px = p[:, :, 0], p[:, :, 1]
    out = torch.zeros_like(py)
    out[..., :-1, :] -= py[..., :-1, :]
    out[..., 1:, :] += py[..., :-1, :]
    out[..., :, :-1] -= px[..., :, :-1]
    out[..., :, 1:] += px[..., :, :-1]
    return out


def tv_reconstruction(
    y: Tensor,
    op: Operator,
    lam: float,
    *,
    iters: int = 500,
    nonneg: bool = True,
    x0: Tensor | None = None,
) -> Tensor:
    """Isotropic-TV regularised least squares by PDHG (Chambolle & Pock 2011, Algorithm 1).

    Solves ``min_x 1/2 ||A x - y||^2 / ||A||^2 + lam TV(x)`` (subject to ``x >= 0``
    when ``nonneg``) with ``K = [A / ||A||; grad]`` in one primal-dual loop, as is
    standard for CT (Sidky, Jorgensen & Pan 2012).  deepinv's TV prior would solve
    the TV proximal step by an inner iterative loop inside every outer step; the
    single loop here needs none.  Scaling ``A`` by its norm (power iteration) makes
    ``lam`` comparable across geometries and gives ``||K||^2 <= 1 + 8``, so
    ``tau = sigma = 0.99 / 3``.  ``y`` and the result are ``(B, C, ...)`` batches.
    """
    if not getattr(op, "linear", False):
        raise ValueError(f"tv_reconstruction needs a linear operator with an adjoint, got {type(op).__name__}")
    if lam < 0 or iters < 1:
        raise ValueError(f"lam must be >= 0 and iters >= 1, got lam={lam}, iters={iters}")
    x_shape = op.x_shape(y)
    norm = operator_norm(op, torch.zeros(x_shape, dtype=y.dtype, device=y.device), iters=50)
    norm = norm.clamp_min(torch.finfo(y.dtype).tiny).reshape(-1, 1, 1, 1)
    yn = y / norm
    tau = sigma = 0.99 / 3.0
    x = torch.zeros(x_shape, dtype=y.dtype, device=y.device) if x0 is None else x0.clone()
    x_bar = x.clone()
    p = torch.zeros_like(y)
    q = torch.zeros_like(_grad(x))
    for _ in range(iters):
        # dual steps: prox of the conjugate of 1/2 ||. - y||^2, and projection onto the lam-ball (isotropic TV)
        p = (p + sigma * (op(x_bar) / norm - yn)) / (1.0 + sigma)
        q = q + sigma * _grad(x_bar)
        q = q / (q.norm(dim=2, keepdim=True) / max(lam, 1e-30)).clamp_min(1.0) if lam > 0 else torch.zeros_like(q)
        # primal step, then extrapolation
        x_new = x - tau * (op.adjoint(p) / norm + _grad_adjoint(q))
        if nonneg:
            x_new = x_new.clamp_min(0.0)
        x_bar = 2 * x_new - x
        x = x_new
    return x
