"""PSLD: Posterior Sampling with Latent Diffusion (Rout et al. 2023)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..operators import Operator
from ..priors.latent import LatentPrior
from .common import (
    ancestral_step,
    check_sigma_y,
    check_sigmas,
    denoise_vjp,
    emit,
    per_sample_norm,
    initial_latent,
    require_linear,
    ridge_adjoint_solve,
)
from .latent_dps import latent_alpha_bar, require_latent


def psld(
    prior: LatentPrior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    omega: float = 1.0,
    gamma: float = 0.1,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """PSLD (Rout et al. 2023, Algorithm 2): latent DPS plus a "gluing" term that asks ``z0_hat`` to be a fixed point
    of decode -> hard data consistency -> encode.  Returns ``D(z_0)``.

    Each step on latents ``z`` (``sigma' = sigma_next``, ``abar`` from ``latent_alpha_bar``)::

        z0_hat = denoise(z, sigma);  x0 = D(z0_hat)                    # one denoiser call, one VJP
        x_glue = x0 + A^+ (y - A x0)          # = A^+ y + (I - A^+ A) x0: measured part from y, the rest from x0
        L      = 2 omega ||y - A x0|| + gamma ||E(x_glue) - z0_hat||
        z'     = ancestral_step(z, z0_hat, sigma, sigma', eta)         # DDIM (eta = 0, the reference's default)
        z'    -= grad_z L / sqrt(abar(sigma) abar(sigma'))

    The reference subtracts ``grad_{z_t} (omega ||y_m - A x_m|| + gamma ||E(x_glue) - z0_hat||)``
    from ``z_{t-1}`` in VP units; the conversion is that of
    :func:`~invdiff.samplers.latent_dps.latent_dps` (the factor 2 is the ``[-1, 1]``
    image range, which the latent gluing norm does not see), so ``gamma = 0``,
    ``eta = 1`` is latent DPS with ``zeta = omega``.  Differences from the reference
    code: ``A^+`` (exact through the SVD, conjugate gradients otherwise) where it
    uses ``A^T`` (the same when ``A A^T = I``, as for inpainting); the encoder's
    posterior mean where it draws a sample; norms per sample, not over the batch.

    Args:
        prior: a :class:`~invdiff.priors.latent.LatentPrior` (differentiable encoder and decoder).
        op: a linear operator (``A^+`` enters the gluing term).
        y: measurement, batch ``B``.
        sigmas: descending latent levels, ``steps + 1`` values ending in 0 (reference: 1000 DDIM steps).
        sigma_y: accepted for a common signature; the normalised steps do not use it.
        omega: weight of the measurement term (the reference's default 1).
        gamma: weight of the gluing term (the reference's default 0.1).
        eta: DDIM stochasticity (0 deterministic, 1 DDPM ancestral).
        generator: the only source of randomness.
        callback: called after each step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``,
            ``x`` the latent iterate and ``x0_hat = D(z0_hat)`` the decoded image.

    Returns:
        x ``(B, C, H, W)``.  Latent denoiser calls: ``len(sigmas) - 1``, each with a backward
        pass through denoiser, decoder and encoder.
    """
    require_latent(prior, "psld")
    require_linear(op, "psld")
    s_list = check_sigmas(sigmas)
    check_sigma_y(sigma_y)
    if omega < 0 or gamma < 0:
        raise ValueError(f"omega and gamma must be >= 0, got omega={omega}, gamma={gamma}")
    decoded: list[Tensor] = []

    def loss_fn(z0: Tensor) -> Tensor:
        x0 = prior.decode(z0)
        decoded[:] = [x0.detach()]
        r = y - op(x0)
        loss = 2.0 * omega * per_sample_norm(r)
        if gamma > 0:
            x_glue = x0 + ridge_adjoint_solve(op, r, 0.0)  # A^+ y + (I - A^+ A) x0
            loss = loss + gamma * per_sample_norm(prior.encode(x_glue) - z0)
        return loss

    z = initial_latent(prior, prior.latent_shape(op.x_shape(y)), s_list[0], generator, like=y)  # z_T ~ N(0, I), VP
    for i, (sigma, sigma_next) in enumerate(zip(s_list[:-1], s_list[1:])):
        z0_hat, grad, _ = denoise_vjp(prior, z, sigma, loss_fn)
        # DDIM step in latent space, then the measurement and gluing gradient step.
        z_next = ancestral_step(z, z0_hat, sigma, sigma_next, eta=eta, generator=generator)
        emit(callback, i, sigma, sigma_next, z, decoded[0])
        z = z_next - grad / math.sqrt(latent_alpha_bar(sigma) * latent_alpha_bar(sigma_next))
    return prior.decode(z)
