"""DPS: Diffusion Posterior Sampling for general noisy inverse problems (Chung et al. 2023)."""

from __future__ import annotations

import math
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
    gaussian_noise_as_sigma_y,
    initial_x,
    per_sample_norm,
    vp_alpha_bar,
)

#: Step sizes ``zeta`` (the ``scale`` of the ``ps`` conditioning) in the reference task configs
#: (DPS2022/diffusion-posterior-sampling ``configs/*_config.yaml``, FFHQ 256, 1000 DDPM steps).
#: They apply unchanged here: ``dps`` converts the reference's VP step to data units exactly.
DPS_ZETA: dict[str, float] = {
    "inpainting": 0.5,  # random mask, 30-70 % missing, Gaussian sigma 0.05
    "super_resolution": 0.3,  # x4, Gaussian sigma 0.05
    "gaussian_blur": 0.3,  # 61x61 kernel, std 3.0
    "motion_blur": 0.3,  # 61x61 kernel, intensity 0.5, Gaussian sigma 0.05
    "nonlinear_blur": 0.3,  # Gaussian sigma 0.05
    "phase_retrieval": 1.0,  # oversampling 2.0, Poisson noise
}

#: the number of DDPM steps the reference's step sizes (``DPS_ZETA``, the paper's 1.0) are set for
REFERENCE_STEPS = 1000


def zeta_for_steps(steps: int, total: float = float(REFERENCE_STEPS)) -> float:
    """The ``zeta`` that keeps DPS's summed guidance ``zeta * steps`` at ``total`` when run with ``steps`` levels.

    The reference's ``zeta = 1`` is set for its 1000 steps (``total = 1000``); with
    fewer steps each one must pull harder for the measurement to be reached (30-view CT
    of Shepp-Logan at 200 steps: 22.0 dB with ``zeta = 1``, 29.8 dB with 5; see
    ``benchmarks/ct.py``).  ``total`` other than 1000 is a summed guidance chosen
    for a problem (e.g. 250 for the MRI benchmark).
    """
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return float(total) / int(steps)


def dps(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    noise: object | None = None,
    zeta: float = 1.0,
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """DPS (Chung et al. 2023, Algorithm 1): ancestral steps minus ``zeta`` times the gradient of ``||y - A(x0_hat)||``.

    Each step (``sigma' = sigma_next``, ``abar`` from ``vp_alpha_bar``)::

        x0_hat = clip(D(x, sigma))                                   # one denoiser call and its VJP
        x'     = ancestral_step(x, x0_hat, sigma, sigma', eta=1)     # DDPM posterior (Algorithm 1, lines 4-6)
        x'    -= zeta / (2 sqrt(abar(sigma) abar(sigma'))) * grad_x ||y - A(x0_hat)||    # line 7

    The norm is un-squared, as in the reference code (the paper's
    ``zeta_i = zeta' / ||y - A(x0_hat)||`` on the squared norm is the same up to a
    factor 2), and taken per sample (the reference takes one norm over the whole
    batch, which couples the samples).

    Conversion of ``zeta``: the reference updates the VP iterate
    ``x_t = sqrt(abar_t) (2 x - 1)`` on ``[-1, 1]`` images, where
    ``y_m - A x0_m = 2 (y - A x0_hat)`` for a linear (or affine) ``A``, so
    ``||.||_m = 2 ||.||`` and ``dx / dx_t = 1 / (2 sqrt(abar_t))``, hence
    ``grad_{x_t} ||.||_m = grad_x ||.|| / sqrt(abar_t)``; the VP step
    ``-zeta grad_{x_t} ||.||_m`` moves ``x_{t-1} = sqrt(abar_{t-1}) (2 x' - 1)``, i.e.
    ``x'`` by ``-zeta grad_x ||.|| / (2 sqrt(abar_t abar_{t-1}))``.  With the prior's
    DDPM schedule (1000 steps, as in the reference) this is the reference's
    algorithm step for step, with its ``zeta`` (``DPS_ZETA``).  For a nonlinear
    ``A`` the ``[-1, 1]`` and data-space norms differ by more than a constant, so
    ``zeta`` is then only approximately the reference's.

    Variance of the ancestral step: the DDPM posterior's fixed ``beta_tilde`` (``eta = 1``).
    The reference's FFHQ and ImageNet models learn theirs (``learn_sigma: True``,
    ``model_var_type: learned_range``); a prior here exposes only ``denoise``, so that
    interpolation is not available, and the reference-parity test applies the fixed
    variance to its transcription.

    Likelihood: without ``noise`` or with ``Gaussian(s)`` (including ``sigma_y = 0``) the
    gradient is that of ``||y - A(x0_hat)||``, which does not depend on
    ``sigma_y`` (the step is normalised).  With a noise model ``noise`` (e.g.
    ``Poisson``) the residual is replaced by the negative log-likelihood's
    gradient ``g = noise.grad(y, A x0_hat)`` and the step direction is
    ``J^T g / ||g||`` (``J`` the Jacobian of ``A(x0_hat(x))``), the normalised
    NLL gradient: for a Gaussian it is exactly the norm's gradient above, and for
    Poisson it weights each residual by the inverse variance at ``A x0_hat``
    instead of the reference's ad-hoc division by ``|y|``.

    Args:
        prior: differentiable denoiser ``D(x, sigma)`` in data space.
        op: any differentiable operator (linear or not).
        y: measurement, batch ``B``.
        sigmas: descending levels, ``steps + 1`` values ending in 0 (reference: 1000 steps).
        sigma_y: std of Gaussian noise in ``y``; not used by the (normalised) update,
            accepted so that every sampler has the same signature.
        noise: optional noise model with ``grad(y, ax)``; ``None`` for Gaussian noise.
        zeta: the reference's step size (``DPS_ZETA`` per task); 1.0 as in the paper.
        clip_x0: clip ``x0_hat`` to ``prior.data_range`` before the step and the
            gradient, as the reference (``clip_denoised``); a no-op for unbounded priors.
        generator: the only source of randomness.
        callback: called after each step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``.

    Returns:
        x ``(B, C, H, W)``.  Denoiser calls: ``len(sigmas) - 1``, each with one
        backward pass through the denoiser.
    """
    s_list = check_sigmas(sigmas)
    noise, sigma_y = gaussian_noise_as_sigma_y(noise, check_sigma_y(sigma_y))
    if zeta < 0:
        raise ValueError(f"zeta must be >= 0, got {zeta}")
    if noise is not None and not callable(getattr(noise, "grad", None)):
        raise ValueError(f"noise must be a noise model with grad(y, ax), got {type(noise).__name__}")

    def loss_fn(x0: Tensor) -> Tensor:
        ax = op(prior.clip(x0) if clip_x0 else x0)
        if noise is None:
            return per_sample_norm(y - ax)  # ||y - A(x0_hat)||, per sample
        g = noise.grad(y, ax.detach())
        u = g / per_sample_norm(g).clamp_min(torch.finfo(g.dtype).tiny).reshape(-1, *([1] * (g.dim() - 1)))
        return bdot(u, ax)  # its x-gradient is J^T g / ||g||

    x = initial_x(prior, op.x_shape(y), s_list[0], generator, like=y)  # the reference's x_T ~ N(0, I) in VP units
    for i, (sigma, sigma_next) in enumerate(zip(s_list[:-1], s_list[1:])):
        x0_hat, grad, _ = denoise_vjp(prior, x, sigma, loss_fn)
        if clip_x0:
            x0_hat = prior.clip(x0_hat)
        # Unconditional DDPM step, then the measurement gradient step in data units.
        x_next = ancestral_step(x, x0_hat, sigma, sigma_next, eta=1.0, generator=generator)
        step = zeta / (2.0 * math.sqrt(vp_alpha_bar(sigma) * vp_alpha_bar(sigma_next)))
        emit(callback, i, sigma, sigma_next, x, x0_hat)
        x = x_next - step * grad
    return x
