"""PiGDM: pseudoinverse-guided diffusion models (Song, Vahdat, Mardani & Kautz 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..operators import Operator
from ..priors import Prior
from .common import (
    ancestral_step,
    bdot,
    check_sigma_y,
    check_sigmas,
    denoise_vjp,
    emit,
    measurement_image,
    randn,
    require_linear,
    ridge_adjoint_solve,
)


def pigdm(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    eta: float = 1.0,
    cg_iters: int = 20,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """PiGDM (Song et al. 2023, Algorithm 1, with its guidance for noisy measurements) in VE data units.

    Each step (``sigma' = sigma_next``)::

        x0_hat = D(x, sigma),   r^2 = sigma^2 / (1 + 4 sigma^2)
        g      = J^T A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat)       # J = d x0_hat / d x
        x'     = ancestral_step(x, x0_hat, sigma, sigma', eta) + r^2 g      # DDIM step on x0_hat + r^2 g

    i.e. the DDIM step is taken from the guided estimate ``x0_hat + r^2 g`` with
    the unguided ``eps`` (the reference's ``awd`` form).  With ``sigma_y = 0``,
    ``r^2 g = J^T A^+ (y - A x0_hat)``, the noiseless pseudoinverse guidance.

    Units: the paper's ``r_t^2 = sigma_m^2 / (1 + sigma_m^2)`` is the variance of
    ``x0 | x_t`` for ``x0 ~ N(0, I)`` on ``[-1, 1]`` images.  In data units
    (``x = (x_m + 1) / 2``) that prior is ``N(1/2, I/4)``, so ``r^2`` is divided by
    4: ``r^2 = sigma^2 / (1 + 4 sigma^2)`` (``sigma_m = 2 sigma``), with ``sigma_y``
    the data-space noise std (half the paper's); the guided estimate then moves
    by exactly half of its ``[-1, 1]`` counterpart, as it must.  The reference
    VP update (RED-diff's ``pgdm``, ``awd``) adds
    ``sqrt(abar_{t-1}) sqrt(abar_t) g_VP`` to ``x_{t-1}``, i.e. ``sqrt(abar_t) g_VP``
    to ``x0_hat``; since ``g_VP = g_VE / sqrt(abar_t)`` for ``x_VE = x_VP / sqrt(abar_t)``,
    that is ``g`` itself in VE form.  The reference's noiseless ``g`` is
    ``J^T A^+ (y - A x0_hat)``, which is ``r^2`` times ``g`` at ``sigma_y = 0``;
    the factor ``r^2`` here extends it to ``sigma_y > 0`` so that both agree as
    ``sigma_y -> 0``.  (Tweedie's formula would add ``sigma^2 g``: PiGDM's
    guidance is ``abar = 1 / (1 + 4 sigma^2)`` times that.)

    The chain starts at ``m + A^+ (y - A m) + sigma_max n`` with ``m`` the middle of the
    data's range (the reference's ``A^+ y_m`` on ``[-1, 1]``, which is 0 on the null space).
    The inverse is exact through the SVD when ``op`` has one (zero singulars
    allowed, also with ``sigma_y = 0``), and ``cg_iters`` conjugate-gradient
    iterations on ``op(op.adjoint(.))`` otherwise.

    Args:
        prior: differentiable denoiser ``D(x, sigma)`` in data space.
        op: a linear operator (SVD or not).
        y: measurement, batch ``B``.
        sigmas: descending levels, ``steps + 1`` values ending in 0 (paper: 100 steps).
        sigma_y: std of the Gaussian noise in ``y`` (data units).
        eta: DDIM ``eta``, 1.0: what the reference's run scripts pass (RED-diff
            ``sample_test.sh`` / ``sample_batch.sh``: ``algo.eta=1.0``, over ``pgdm.yaml``'s 0.0).
        cg_iters: conjugate-gradient iterations for operators without an SVD.
        generator: the only source of randomness.
        callback: called after each step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``.

    Returns:
        x ``(B, C, H, W)``.  Denoiser calls: ``len(sigmas) - 1``, each with one
        backward pass through the denoiser.
    """
    require_linear(op, "pigdm")
    s_list = check_sigmas(sigmas)
    sigma_y = check_sigma_y(sigma_y)

    # x_T = A^+ y + sigma_T n, as the reference initialises, with A^+ regularised like the guidance
    # at sigma_T and the data's middle where nothing is measured (measurement_image).
    x = measurement_image(prior, op, y, sigma_y, s_list[0], cg_iters=cg_iters)
    x = x + s_list[0] * randn(op.x_shape(y), generator, like=y)
    for i, (sigma, sigma_next) in enumerate(zip(s_list[:-1], s_list[1:])):
        r2 = sigma**2 / (1 + 4 * sigma**2)

        def loss_fn(x0: Tensor) -> Tensor:
            # r^2 A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat) = A^T (A A^T + sigma_y^2 / r^2 I)^-1 (y - A x0_hat)
            x0d = x0.detach()
            v = ridge_adjoint_solve(op, y - op(x0d), sigma_y**2 / r2, cg_iters=cg_iters)
            return bdot(v, x0)  # its x-gradient is J^T v = r^2 g

        x0_hat, guidance, _ = denoise_vjp(prior, x, sigma, loss_fn)
        emit(callback, i, sigma, sigma_next, x, x0_hat)
        x = ancestral_step(x, x0_hat, sigma, sigma_next, eta, generator=generator) + guidance
    return x
