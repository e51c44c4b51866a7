"""DDNM+: zero-shot restoration by range-null space decomposition (Wang et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..operators import Operator
from ..priors import Prior
from .common import check_sigma_y, check_sigmas, emit, initial_x, randn, require_svd, spectral_measurement
from .repaint import jump_schedule


def ddnm(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    eta: float = 0.85,
    travel_length: int = 1,
    travel_repeat: int = 1,
    nu_max: float | None = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """DDNM+ for noisy linear problems (Wang et al. 2023, eqs. 17 and 51, SVD-based scaling).

    Each step denoises, corrects the range space, and re-noises (``sigma' = sigma_next``)::

        x0_hat = D(x, sigma),  eps = (x - x0_hat) / sigma
        x0     = x0_hat - Sigma_t A^+ (A x0_hat - y)                          (eq. 17)
        x'     = x0 + V (d1 * z_bar + d2 * eps_bar)                            (eq. 51)

    where ``Sigma_t = V diag(lambda) V^T`` and, per spectral component ``i`` with
    singular ``s_i`` and noise level ``nu_i = sigma_y / s_i`` of ``y_bar_i``::

        sigma' <  nu_i:  lambda = sigma' sqrt(1 - eta^2) / nu_i,  d1 = eta sigma',                  d2 = 0
        sigma' >  nu_i:  lambda = 1,                               d1 = sqrt(sigma'^2 - nu_i^2),      d2 = 0
        otherwise (s_i = 0, or sigma_y = 0):  lambda = 1,  d1 = eta sigma',  d2 = sqrt(1 - eta^2) sigma'

    so that the noise carried over from ``y`` plus the fresh noise has variance
    ``sigma'^2`` in every component.  With ``sigma_y = 0`` this is plain DDNM
    (``x0 = x0_hat - A^+ (A x0_hat - y)``, a DDIM step with ``eta``), and the output
    satisfies ``A x = y`` exactly for ``y`` in the range of ``A``.

    Units: the reference's ``a = sqrt(abar_{t-1})`` and ``sigma_t = sqrt(1 - abar_{t-1})``
    enter only as ``sigma_t / a``, the next VE level in ``[-1, 1]`` units, compared
    with ``sigma_y`` in the same units; both are twice their data-space values, so
    the rules hold unchanged with ``sigma'`` and ``sigma_y`` in data units.  ``eta``
    has DDRM's meaning (fraction of ``sigma'`` that is fresh noise: the reference's
    ``c1 = sqrt(1 - abar_{t-1}) eta``), not DDIM's.

    Time-travel (Sec. 3.4): the walk over noise levels follows RePaint's jump
    schedule (``jump_schedule(steps, travel_length, travel_repeat)``); going back up
    to level ``k`` re-noises the last denoiser output, ``x = x0_hat + sigma_k z``
    (the reference's ``sqrt(abar) x0_t + sqrt(1 - abar) z``, with the uncorrected
    ``x0_t``).  ``travel_length = travel_repeat = 1`` (the reference configs'
    default) is the plain walk.

    Args:
        prior: denoiser ``D(x, sigma)`` in data space.
        op: an SVD operator (``has_svd``), singulars ``(M,)`` or ``(B, M)``, zeros allowed.
        y: measurement, batch ``B``.
        sigmas: descending levels, ``steps + 1`` values ending in 0 (reference: 100 steps).
        sigma_y: std of the Gaussian noise in ``y`` (data units).
        eta: share of fresh noise, 0.85 as in the reference configs.
        nu_max: components measured with noise ``nu_i = sigma_y / s_i`` above this are
            treated as unmeasured (see ``ddrm``: the partial correction would feed the
            same noise realisation of ``y`` into them at every step); ``None`` keeps
            every ``s_i > 0``.
        travel_length, travel_repeat: time-travel jump size and number of visits (1, 1: none).
        generator: the only source of randomness.
        callback: called after each step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``.

    Returns:
        x ``(B, C, H, W)``.  Denoiser calls: ``len(sigmas) - 1`` without time-travel, else the
        number of falls in the jump schedule.
    """
    require_svd(op, "ddnm")
    s_list = check_sigmas(sigmas)
    sigma_y = check_sigma_y(sigma_y)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")

    # y_bar = Sigma^+ U^T y and nu_i = sigma_y / s_i on the measured components.
    y_bar, nu, measured, m, n = spectral_measurement(op, y, sigma_y, nu_max)
    noisy = measured if sigma_y > 0 else torch.zeros_like(measured)

    x = initial_x(prior, op.x_shape(y), s_list[0], generator, like=y_bar)  # the reference's x_T ~ N(0, I) in VP units
    c_eps = (1 - eta**2) ** 0.5
    path = jump_schedule(len(s_list) - 1, travel_length, travel_repeat)
    x0_hat, n_calls = None, 0
    for k, k_next in zip(path[:-1], path[1:]):
        if k_next < k:  # time-travel back up one level: re-noise the last x0_hat
            x = x0_hat + s_list[k_next] * randn(x.shape, generator, like=x)
            continue
        i, sigma, sigma_next = n_calls, s_list[k], s_list[k_next]
        n_calls += 1
        x0_hat = prior.denoise(x, sigma)
        x0_bar = op.Vt(x0_hat)
        eps_bar = op.Vt((x - x0_hat) / sigma)
        z = randn(x0_bar.shape, generator, like=x0_bar)

        # Default (null space, s_i = 0, noiseless): range-null correction and a DDIM step.
        out = x0_bar + eta * sigma_next * z + c_eps * sigma_next * eps_bar
        x0_m, z_m = x0_bar[:, :m], z[:, :m]
        plain = y_bar + eta * sigma_next * z_m + c_eps * sigma_next * eps_bar[:, :m]
        # sigma' < nu: partial correction lambda, the rest of the noise fresh.
        below = noisy & (sigma_next < nu)
        lam = sigma_next * c_eps / torch.where(below, nu, torch.ones_like(nu))
        head_below = x0_m + lam * (y_bar - x0_m) + eta * sigma_next * z_m
        # sigma' > nu: full correction, topped up with fresh noise to sigma'.
        above = noisy & (sigma_next > nu)
        head_above = y_bar + (sigma_next**2 - nu.clamp(max=sigma_next) ** 2).clamp_min(0).sqrt() * z_m
        head = torch.where(below, head_below, torch.where(above, head_above, plain))
        head = torch.where(measured, head, out[:, :m])

        emit(callback, i, sigma, sigma_next, x, x0_hat)
        x = op.V(torch.cat([head, out[:, m:]], dim=1))
    return x
