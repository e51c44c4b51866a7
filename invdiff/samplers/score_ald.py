"""Score-ALD: annealed Langevin dynamics posterior sampling (Jalal et al. 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..operators import Operator
from ..priors import Prior
from .common import (
    check_sigma_y,
    check_sigmas,
    col,
    emit,
    gaussian_noise_as_sigma_y,
    linearize,
    nll_grad_and_curvature,
    operator_norm,
    initial_x,
    randn,
)

#: Stability cap: ``alpha * L <= STEP_CAP`` with ``L`` the Lipschitz bound of the drift (stable below 2).
STEP_CAP = 0.5


def score_ald(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    noise: object | None = None,
    steps_per_level: int = 3,
    lr: float | None = None,
    gamma: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Score-ALD (Jalal et al. 2021): annealed Langevin dynamics on prior score plus annealed likelihood.

    For each level ``sigma`` of ``sigmas[:-1]`` (``sigma_last`` the smallest), ``K =
    steps_per_level`` times::

        x += alpha * (score(x, sigma) + J_A(x)^T (y - A(x)) / (sigma_y^2 + gamma^2)) + sqrt(2 alpha) z

    with ``score = (D(x, sigma) - x) / sigma^2``, ``gamma = sigma`` unless given, and
    ``J_A(x)^T`` the adjoint for a linear ``op``, an autograd VJP otherwise.
    Returned is ``x0_hat = D(x, sigma_last)`` of the final state (one more
    denoiser call): the chain's law at ``sigma_last`` is the posterior of
    ``x0 + sigma_last n`` up to ``O(sigma_last^2)``, and Tweedie's denoising removes
    the smoothing, so as ``sigma_last -> 0`` (steps small, chain long enough) the
    output is distributed as the exact posterior ``p(x0 | y)`` (checked on a
    Gaussian prior in the tests).

    Step size and its cap: the drift is Lipschitz with constant at most
    ``L = 1 / sigma^2 + ||A||^2 / (sigma_y^2 + gamma^2)`` per sample (the Hessian of
    ``log p_sigma`` is ``(Cov[x0 | x] / sigma^2 - I) / sigma^2``, with eigenvalues in
    ``[-1 / sigma^2, 0]`` for a log-concave prior such as a Gaussian; the likelihood
    adds ``||A||^2 / (sigma_y^2 + gamma^2)``).  Each level uses
    ``alpha = STEP_CAP / L`` with ``STEP_CAP = 0.5`` (Langevin is stable for
    ``alpha L < 2``), and with ``lr`` given ``alpha = min(lr sigma^2 / sigma_last^2,
    STEP_CAP / L)``, NCSN's annealed step with ``lr`` its ``step_lr``.  Small
    ``sigma_y`` and ``gamma`` therefore shrink the step instead of making the chain
    diverge; for the prior-dominated levels the default is ``alpha ~ 0.5 sigma^2``.
    Source of the default: the reference (csgm-mri-langevin, ``main.py``) steps by
    ``step_lr (sigma / sigma_L)^2`` with ``step_lr = 5e-5`` and ``sigma_L = 0.0066`` (the end of
    its 2311-level geometric schedule), i.e. ``1.15 sigma^2``, on scans normalised to about
    ``[0, 1]``.  That rule depends on where a schedule ends (with a prior's ``sigma_min`` of
    0.002 it would be ``12.5 sigma^2``, beyond the stability bound ``2 / L``), so the default
    is the cap alone, ``0.5 / L``; ``lr=5e-5`` on a schedule ending at 0.0066 gives the
    reference's rule (still capped).
    The ULA bias this step leaves is largest in the stiffest directions (prior
    variance below ``sigma^2``), which the final denoising shrinks to the prior
    mean.  ``||A||`` is the largest singular for SVD operators, else 20 power
    iterations on ``A^T A`` once (linear) or 10 on ``J^T J`` at the start of every
    level (nonlinear).

    With a noise model ``noise``: ``Gaussian(s)`` is the Gaussian likelihood above
    with ``sigma_y = s``.  Any other separable model (e.g. ``Poisson``) enters
    through its gradient ``g = noise.grad(y, A(x))`` and curvature
    ``h = d g / d A(x)`` (elementwise, by autograd): the likelihood term is
    ``-J_A(x)^T (g / (1 + gamma^2 h))``, the gradient of its local Gaussian
    approximation ``N(A(x), 1 / h)`` widened by ``gamma^2`` (for a Gaussian, exactly
    ``(y - A x) / (sigma_y^2 + gamma^2)``), and the cap uses
    ``||A||^2 max(h / (1 + gamma^2 h))`` for the likelihood, re-evaluated every step.

    Args:
        prior: denoiser ``D(x, sigma)`` in data space.
        op: any operator; nonlinear ones must be differentiable.
        y: measurement, batch ``B``.
        sigmas: descending levels, ``steps + 1`` values ending in 0; the Langevin
            chain visits ``sigmas[:-1]``.
        sigma_y: std of the Gaussian noise in ``y`` (data units).
        noise: optional noise model (``Gaussian``, ``Poisson``, any separable one with ``grad(y, ax)``).
        steps_per_level: Langevin steps per level ``K`` (3 in the reference).
        lr: NCSN step scale, ``alpha = lr sigma^2 / sigma_last^2`` (capped); ``None`` for the cap alone.
        gamma: annealing std added to ``sigma_y`` in the likelihood; ``None`` for the current ``sigma``.
        generator: the only source of randomness.
        callback: called after each level with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``.

    Returns:
        x0_hat ``(B, C, H, W)``.  Denoiser calls: ``steps_per_level * (len(sigmas) - 1) + 1``.
    """
    s_list = check_sigmas(sigmas)
    sigma_y = check_sigma_y(sigma_y)
    if steps_per_level < 1:
        raise ValueError(f"steps_per_level must be at least 1, got {steps_per_level}")
    if lr is not None and lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if gamma is not None and gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    noise, sigma_y = gaussian_noise_as_sigma_y(noise, sigma_y)
    if noise is not None and not callable(getattr(noise, "grad", None)):
        raise ValueError(f"noise must be a noise model with grad(y, ax), got {type(noise).__name__}")
    if noise is None and sigma_y == 0 and gamma == 0:
        raise ValueError(
            "sigma_y = 0 and gamma = 0 make the likelihood a hard constraint; give gamma > 0 or leave it None"
        )

    levels, sigma_last = s_list[:-1], s_list[-2]
    linear = getattr(op, "linear", False)

    # Start centred on the data's middle with the first level's spread (VE, as every other start;
    # the reference csgm-mri-langevin draws U[0, 1) on its normalised scans).
    x = initial_x(prior, op.x_shape(y), levels[0], generator, like=y, vp=False)
    norm_a2 = operator_norm(op, x) ** 2 if linear else None
    for i, sigma in enumerate(levels):
        g2 = (sigma if gamma is None else gamma) ** 2
        if not linear:
            norm_a2 = operator_norm(op, x, iters=10) ** 2
        for _ in range(steps_per_level):
            # Likelihood gradient w.r.t. A(x), weight * resid, annealed by gamma, and its curvature bound.
            ax, vjp = linearize(op, x)
            if noise is None:
                resid, weight = y - ax, 1.0 / (sigma_y**2 + g2)
                curv = torch.full_like(norm_a2, weight)
            else:
                g, h = nll_grad_and_curvature(noise, y, ax)
                w = 1.0 / (1.0 + g2 * h)  # N(ax, 1/h) widened by gamma^2
                resid, weight = -g * w, 1.0
                curv = (h * w).flatten(1).amax(1)
            # Step size, capped by the drift's Lipschitz bound L (per sample).
            alpha = STEP_CAP / (1.0 / sigma**2 + norm_a2 * curv)
            if lr is not None:
                alpha = alpha.clamp(max=lr * sigma**2 / sigma_last**2)
            # Langevin step on score + likelihood: alpha (score + J^T resid weight), with alpha folded in first,
            # (alpha / sigma^2) (x0_hat - x) + J^T (alpha weight resid): the score and the weighted residual
            # alone overflow float16 at small sigma and gamma.
            x0_hat = prior.denoise(x, sigma)
            z = randn(x.shape, generator, like=x)
            drift = col(alpha / sigma**2, x) * (x0_hat - x) + vjp(col(alpha * weight, resid) * resid)
            x = x + drift + col((2 * alpha).sqrt(), x) * z
        emit(callback, i, sigma, s_list[i + 1], x, x0_hat)

    # Final denoising at the last level (Tweedie).
    return prior.denoise(x, sigma_last)
