"""Latent DPS: Diffusion Posterior Sampling in the latent space of a latent diffusion prior.

DPS (Chung et al. 2023, Algorithm 1) with the gradient taken through the
decoder, ``grad_z ||y - A(D(z0_hat(z)))||``, as in the latent baseline of Rout
et al. 2023 (PSLD without its gluing term, their "Latent-DPS" baseline).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..operators import Operator
from ..priors.latent import LatentPrior
from .common import (
    ancestral_step,
    bdot,
    check_sigma_y,
    check_sigmas,
    denoise_vjp,
    emit,
    gaussian_noise_as_sigma_y,
    per_sample_norm,
    initial_latent,
)


def latent_alpha_bar(sigma: float) -> float:
    """DDPM ``abar`` of latent level ``sigma``: ``1 / (1 + sigma^2)`` (latents are the network's own units)."""
    return 1.0 / (1.0 + sigma**2)


def require_latent(prior: object, method: str) -> None:
    """Raise ``ValueError`` unless ``prior`` is a latent prior (``encode``, ``decode``, ``latent_shape``)."""
    if not all(callable(getattr(prior, a, None)) for a in ("encode", "decode", "latent_shape")):
        raise ValueError(
            f"{method} needs a latent prior (LatentPrior: encode, decode and a denoiser on latents), got "
            f"{type(prior).__name__}; use dps with a pixel prior"
        )


def measurement_loss(op: Operator, y: Tensor, noise: object | None) -> Callable[[Tensor], Tensor]:
    """``x0 -> (B,)``: ``||y - A(x0)||`` per sample, or with a noise model the normalised NLL direction.

    With ``noise`` (e.g. ``Poisson``) the loss is ``<g / ||g||, A(x0)>`` with
    ``g = noise.grad(y, A x0)`` held fixed, whose gradient is ``J^T g / ||g||``: the
    normalised negative log-likelihood gradient, exactly the norm's gradient for
    Gaussian noise (as :func:`~invdiff.samplers.dps.dps`).
    """

    def loss(x0: Tensor) -> Tensor:
        ax = op(x0)
        if noise is None:
            return per_sample_norm(y - ax)
        g = noise.grad(y, ax.detach())
        u = g / per_sample_norm(g).clamp_min(torch.finfo(g.dtype).tiny).reshape(-1, *([1] * (g.dim() - 1)))
        return bdot(u, ax)

    return loss


def latent_dps(
    prior: LatentPrior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    noise: object | None = None,
    zeta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Latent DPS (Chung et al. 2023, Algorithm 1, on latents as in Rout et al. 2023): returns ``D(z_0)``.

    Each step on latents ``z`` (``sigma' = sigma_next``, ``abar`` from ``latent_alpha_bar``)::

        z0_hat = denoise(z, sigma)                                # one latent denoiser call and its VJP
        z'     = ancestral_step(z, z0_hat, sigma, sigma', eta=1)  # DDPM posterior (Algorithm 1, lines 4-6)
        z'    -= 2 zeta / sqrt(abar(sigma) abar(sigma')) * grad_z ||y - A(D(z0_hat))||   # line 7

    Conversion of ``zeta``: the reference updates ``z_t = sqrt(abar_t) z`` (latents
    are the network's own units, so no range map) with ``-zeta grad_{z_t}
    ||y_m - A x_m||`` on ``[-1, 1]`` images, where ``||.||_m = 2 ||.||`` for a linear
    ``A``; hence ``grad_{z_t} ||.||_m = 2 grad_z ||.|| / sqrt(abar_t)``, and moving
    ``z_{t-1} = sqrt(abar_{t-1}) z'`` by it moves ``z'`` by the step above.  With an
    autoencoder ``E(x) = 2 x`` and the Gaussian image prior carried to latents this
    is :func:`~invdiff.samplers.dps.dps` step for step (tested).  The norm is
    un-squared and per sample, and ``noise`` models are handled as in ``dps``.

    Args:
        prior: a :class:`~invdiff.priors.latent.LatentPrior` (differentiable decoder).
        op: any differentiable operator.
        y: measurement, batch ``B``.
        sigmas: descending latent levels, ``steps + 1`` values ending in 0.
        sigma_y: accepted for a common signature; the normalised step does not use it.
        noise: optional noise model with ``grad(y, ax)``; ``None`` for Gaussian noise.
        zeta: the reference's step size (DPS's ``scale``, PSLD's ``omega``).
        generator: the only source of randomness.
        callback: called after each step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``,
            ``x`` the latent iterate ``(B, c, h, w)`` and ``x0_hat = D(z0_hat)`` the decoded image.

    Returns:
        x ``(B, C, H, W)``, the decoded final latent.  Latent denoiser calls:
        ``len(sigmas) - 1``, each with a backward pass through the denoiser and decoder.
    """
    require_latent(prior, "latent_dps")
    s_list = check_sigmas(sigmas)
    noise, sigma_y = gaussian_noise_as_sigma_y(noise, check_sigma_y(sigma_y))
    if zeta < 0:
        raise ValueError(f"zeta must be >= 0, got {zeta}")
    if noise is not None and not callable(getattr(noise, "grad", None)):
        raise ValueError(f"noise must be a noise model with grad(y, ax), got {type(noise).__name__}")
    measure = measurement_loss(op, y, noise)
    decoded: list[Tensor] = []

    def loss_fn(z0: Tensor) -> Tensor:
        x0 = prior.decode(z0)
        decoded[:] = [x0.detach()]
        return measure(x0)

    z = initial_latent(prior, prior.latent_shape(op.x_shape(y)), s_list[0], generator, like=y)  # z_T ~ N(0, I), VP
    for i, (sigma, sigma_next) in enumerate(zip(s_list[:-1], s_list[1:])):
        z0_hat, grad, _ = denoise_vjp(prior, z, sigma, loss_fn)
        # Unconditional DDPM step in latent space, then the measurement gradient step.
        z_next = ancestral_step(z, z0_hat, sigma, sigma_next, eta=1.0, generator=generator)
        step = 2.0 * zeta / math.sqrt(latent_alpha_bar(sigma) * latent_alpha_bar(sigma_next))
        emit(callback, i, sigma, sigma_next, z, decoded[0])
        z = z_next - step * grad
    return prior.decode(z)
