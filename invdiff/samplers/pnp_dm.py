"""PnP-DM (Wu et al. 2024, "Principled Probabilistic Imaging using Diffusion Models as Plug-and-Play Priors")."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .common import (
    accumulation_dtype,
    ancestral_step,
    check_sigma_y,
    check_sigmas,
    col,
    emit,
    gaussian_noise_as_sigma_y,
    initial_x,
    linearize,
    nll_grad_and_curvature,
    operator_norm,
    randn,
    spectral_measurement,
)

if TYPE_CHECKING:
    from ..operators import Operator
    from ..priors import Prior

#: ``rho_min`` (data units) where ``sigma_y`` cannot set it (noiseless ``y``, noise models, nonlinear
#: operators): the reference's smallest, ``rho_min = 0.02`` on [-1, 1] (``commands.sh``, black-hole runs).
RHO_FLOOR = 0.01


def pnp_dm(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    noise: Any | None = None,
    rho_min: float | None = None,
    decay: float = 0.7,
    inner_steps: int = 8,
    noise_split: bool = True,
    langevin_steps: int = 100,
    langevin_step: float = 0.1,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """PnP-DM (Wu et al. 2024, Algorithm 1: split Gibbs sampling with a diffusion prior step) in data units.

    The chain targets ``pi(x, z) ~ p(x) p(y | z) N(z; x, rho^2 I)`` and alternates, for
    ``k = 0 .. steps - 1`` (``steps = len(sigmas) - 1``), with the coupling annealed as in the paper,
    ``rho_k = max(rho_0 decay^k, rho_min)`` and ``rho_0 = sigmas[0]``::

        z ~ p(z | x, y) ~ p(y | z) N(z; x, rho_k^2 I)                               # 1. likelihood step
        x ~ p(x | z): the reverse diffusion from x = z at level rho_k down to 0     # 2. prior step

    and returns the last ``x`` (not ``z``).  ``sigmas`` gives the coupling's start (``sigmas[0]``:
    ``METHODS["pnp_dm"].sigma_max = 5`` for the shipped priors, the reference's ``rho = 10`` on [-1, 1],
    where every noise level is twice ours; the prior's own ``sigma_max`` otherwise) and the number of
    Gibbs iterations; its other levels are not used, as the paper anneals geometrically.

    1. Likelihood step.  With an SVD (``op.has_svd``) and Gaussian noise it is drawn exactly in the
       basis ``z_bar = V^T z``, as the reference's ``proximal_generator`` (``pnpdm/tasks/__init__.py``):
       with ``y_bar_i = (U^T y)_i / s_i`` and ``nu_i = sigma_y / s_i``,
       ``z_bar_i = x_bar_i + g_i (y_bar_i - x_bar_i) + rho sqrt(1 - g_i) n_i``, ``g_i = 0`` where
       ``s_i = 0`` (``z = x + rho n`` off the measurement) and ``g_i`` below.  Otherwise (any
       differentiable operator, or a noise model such as ``Poisson``) by ``langevin_steps`` unadjusted
       Langevin steps on ``nll(y | z) + ||z - x||^2 / (2 rho^2)``, as the reference's nonlinear tasks
       (``phase_retrieval.py``: 100 steps), started from ``z = x + rho n`` (the coupling's own draw; the
       reference starts at ``z = x``), with the step ``langevin_step / L`` per sample, ``L = 1 / rho^2 +
       ||A||^2 h`` the drift's Lipschitz bound (``h = 1 / tau^2``, or the noise model's curvature bound
       re-evaluated every step; ``||J_A(x)||`` at each iteration's ``x`` for a nonlinear operator).  The
       reference's fixed ``gamma = 1e-4`` on [-1, 1] (``2.5e-5`` here) hardly moves ``z`` at large ``rho``.
    2. Prior step.  The reverse SDE from ``x = z`` at ``rho`` to 0 on ``inner_steps`` levels of the
       prior's own schedule from ``rho``, ``prior.sigmas(inner_steps, rho)`` (one denoiser call each; a
       single call where ``rho`` is at or below the prior's ``sigma_min``): DDPM ancestral steps
       (``common.ancestral_step``, ``eta = 1``) on the second-order data prediction of DPM-Solver++(2M)
       (Lu et al. 2022), ``x0 = D + h / (2 h_prev) (D - D_prev)`` with ``h = log(sigma / sigma_next)``
       (the plain ``D`` at the first level), and ``D`` itself at the last.  The reference integrates the
       same SDE by Euler-Maruyama (``denoiser_edm.py``, ``mode='sde'``) on every level below ``rho`` of a
       100-level EDM schedule (80 to 0.002 on [-1, 1]): 67 calls at its first ``rho`` and 30 at its
       ``rho_min``, 3573 per chain.  With a few steps the first-order (plain ``D``) step leaves
       ``p(x | z)`` too narrow where the prior is flat on the scale of ``rho`` (each step adds
       ``sigma_next^2 / sigma^2`` of the variance it should), and the chain keeps about half the
       shortfall: with 8 such steps the posterior's variance comes out 0.63-0.69 times the exact one,
       with 8 second-order steps 0.98 (``tests/test_pnp_dm.py``, the chain's law in closed form).

    ``noise_split`` (a departure from the paper).  The x-marginal of the paper's target is
    ``p(x) N(y; A x, sigma_y^2 I + rho^2 A A^T)``: the coupling adds ``rho^2 s_i^2`` to the measurement
    noise.  The reference's ``rho_min`` is six times its ``sigma_y`` (0.3 and 0.05 on [-1, 1]); on the
    posterior suite's problems even three times (``rho_min = 0.15``) leaves the posterior's variance two
    to five times too large, and a ``rho_min`` small enough not to mixes slowly: ``sigma_y / 4`` gives variance
    ratios 1.06-1.38 after 40 iterations and 1.0-1.06 after 100, the mean still 2.6 Monte-Carlo standard
    errors off (the chain's law in closed form).  With ``noise_split`` the likelihood step takes only the
    share of ``sigma_y^2`` the coupling does not already supply, ``tau_i^2 = (sigma_y^2 - rho^2
    s_i^2)_+``: ``g_i = min(1, rho^2 / nu_i^2)`` instead of the paper's ``rho^2 / (rho^2 + nu_i^2)``.
    The x-marginal is then exactly the posterior whenever ``rho s_i <= sigma_y`` for every ``i``, so
    ``rho_min = sigma_y / max_i s_i`` is exact and the fastest-mixing exact coupling.  Without an SVD
    the Langevin likelihood uses one share for every component, ``tau^2 = sigma_y^2 - rho_min^2
    ||A||^2`` (linear operators; exact when every nonzero ``s_i`` equals ``||A||``, as for masks;
    otherwise weaker components get up to ``rho_min^2 ||A||^2`` too little noise), with ``rho_min =
    sigma_y / (2 ||A||)``, so that ``tau^2 >= 3/4 sigma_y^2``.

    Defaults against the reference (``configs/sampler/pnp_edm.yaml``, ``commands.sh``: 100 iterations,
    ``rho`` from 10 by ``rho_decay_rate = 0.9`` to ``rho_min = 0.3``, all on [-1, 1]; 20 samples
    collected along each chain from iteration 40 on): 40 iterations (``METHODS``) of ``inner_steps = 8``
    calls, 320 per sample (each chain returns its last ``x``), and ``decay = 0.7``, so that the coupling
    reaches the suite's ``rho_min = 0.05`` from 5 in 13 iterations and from the analytic priors' 16.7 in
    17, and the rest of the chain samples the exact x-marginal.  Measured on ``python -m benchmarks
    posterior --quick``'s problems (8x8 Gaussian prior, ``sigma_y = 0.05``, 256 samples, seed 0, the
    committed run): mean errors 1.0-1.1 standard errors (rms), median variance ratios 0.99-1.0 and W2
    0.059-0.076 (the exact draws': 0.055-0.076) on inpainting, blur and downsampling; the bimodal split
    within 0.6 binomial standard errors.  In closed form on ten 8x8 problems (random masks, images and noise; the worst pixel's
    mean, in standard errors of 256 samples): blur within 0.26 after 40 iterations; inpainting 0.06-10 after
    40 (median 2.0) and 0-3.3 after 100 (nine of ten below 0.25), since inside a large hole each iteration
    moves ``x`` by about ``rho_min`` and the chain mixes slowly there (``tests/test_pnp_dm.py``); 6 inner
    steps give variance ratios of 0.92-0.93, 8 give 0.975-0.98.  Without an SVD (the same problems through
    dense matrices, Langevin steps) the defaults give mean errors of 1.1-4.5 standard errors (inpainting's
    4.5: half the SVD path's ``rho_min``, so the hole mixes four times slower) and ratios 0.92-1.06, and
    100 iterations 0.6-1.5 and 0.89-0.98 (blur's 0.89: the single noise share).  The
    start is the reference's batch sampler's ``x ~ N(0, I)`` on [-1, 1] (``PnPEDMBatch``): the data's
    middle plus half the data's range times ``n``.

    Args:
        prior: denoiser ``D(x, sigma)`` in data space.
        op: any differentiable operator; an SVD operator gets the exact likelihood step.
        y: measurement, batch ``B`` (per-sample masks and singulars allowed).
        sigmas: ``steps + 1`` descending levels ending in 0: ``sigmas[0]`` is ``rho_0``, ``steps`` the number
            of Gibbs iterations.
        sigma_y: std of the Gaussian noise in ``y`` (data units).
        noise: a noise model with ``nll(y, ax)`` and ``grad(y, ax)`` (``Poisson``), used instead of
            ``sigma_y`` by Langevin likelihood steps; a ``Gaussian`` one is ``sigma_y``.
        rho_min: floor of the coupling (data units).  ``None``: ``sigma_y / max_i s_i`` with an SVD,
            ``sigma_y / (2 ||A||)`` for other linear operators, and ``RHO_FLOOR = 0.01`` (the reference's
            black-hole ``rho_min``, 0.02 on [-1, 1]) for a noise model, a nonlinear operator, ``sigma_y = 0``
            or ``noise_split=False`` without an SVD.
        decay: the coupling's factor per iteration (reference 0.9 over 100 iterations).
        inner_steps: levels of the prior step's reverse diffusion, its denoiser calls.
        noise_split: take only ``sigma_y^2 - rho^2 s_i^2`` of the noise in the likelihood step (above);
            ``False`` is the paper's ``p(y | z)`` with the full ``sigma_y``.
        langevin_steps: Langevin steps per likelihood step without an SVD (reference 100).
        langevin_step: their step as a fraction of ``1 / L`` (above), in ``(0, 1]``; the stationary
            variance of the stiffest direction is ``1 / (1 - langevin_step / 2)`` times the target's.
        generator: the only source of randomness.
        callback: called after each iteration with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``:
            ``sigma = rho_k``, ``sigma_next = rho_{k+1}`` (0 after the last), ``x`` the new iterate and
            ``x0_hat = D(z, rho_k)``.

    Returns:
        x ``(B, C, H, W)``.  Denoiser calls: ``inner_steps`` per iteration.
    """
    s_list = check_sigmas(sigmas)
    sigma_y = check_sigma_y(sigma_y)
    for name, v in (("inner_steps", inner_steps), ("langevin_steps", langevin_steps)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must lie in (0, 1] (the coupling's factor per iteration), got {decay}")
    if not 0 < langevin_step <= 1:
        raise ValueError(f"langevin_step must lie in (0, 1] (a fraction of 1 / L), got {langevin_step}")
    if rho_min is not None and not (math.isfinite(rho_min) and rho_min > 0):
        raise ValueError(f"rho_min must be a positive noise level in data units, or None, got {rho_min}")
    noise, sigma_y = gaussian_noise_as_sigma_y(noise, sigma_y)
    if noise is not None and not callable(getattr(noise, "grad", None)):
        raise ValueError(f"noise must be a noise model with grad(y, ax), got {type(noise).__name__}")
    exact = noise is None and getattr(op, "has_svd", False)
    if not exact and noise is None and sigma_y == 0:
        raise ValueError(
            f"pnp_dm draws the likelihood step by Langevin dynamics for {type(op).__name__} (no SVD), which needs "
            "sigma_y > 0 or a noise model"
        )

    # x_0 ~ N(0, I) on [-1, 1] (the reference's PnPEDMBatch): the data's middle plus half its range times n.
    x = initial_x(prior, op.x_shape(y), 0.0, generator, like=y)
    if exact:
        likelihood_step, rho_exact = _exact_step(op, y, sigma_y, noise_split, generator)
        rho_min = (rho_exact if sigma_y > 0 else RHO_FLOOR) if rho_min is None else rho_min
    else:
        linear = getattr(op, "linear", False)
        norm_a2 = operator_norm(op, x) ** 2 if linear else None  # (B,); per iteration for a nonlinear op
        split = noise is None and noise_split and linear
        norm_a = norm_a2.amax().sqrt().item() if split else 0.0
        if rho_min is None:
            rho_min = sigma_y / (2 * norm_a) if split and norm_a > 0 else RHO_FLOOR
        if split and rho_min * norm_a >= sigma_y:
            raise ValueError(
                f"noise_split needs rho_min < sigma_y / ||A|| = {sigma_y / norm_a:.4g} without an SVD, got "
                f"rho_min={rho_min}; lower rho_min or pass noise_split=False"
            )
        tau = math.sqrt(sigma_y**2 - (rho_min * norm_a) ** 2) if split else sigma_y
        likelihood_step = _langevin_step(op, y, tau, noise, norm_a2, langevin_steps, langevin_step, generator)

    steps = len(s_list) - 1
    rhos = [max(s_list[0] * decay**k, rho_min) for k in range(steps)] + [0.0]
    nodes: dict[float, list[float]] = {}
    for k, rho in enumerate(rhos[:-1]):
        # 1. Likelihood step: z ~ p(y | z) N(z; x, rho^2 I).
        z = likelihood_step(x, rho)
        # 2. Prior step: x ~ p(x | z), the reverse diffusion from x_rho = z to 0.
        if rho not in nodes:
            nodes[rho] = _levels_below(prior, rho, inner_steps)
        x, x0_hat = _reverse_diffusion(prior, z, nodes[rho], generator)
        emit(callback, k, rho, rhos[k + 1], x, x0_hat)
    return x


def _levels_below(prior: Prior, rho: float, inner_steps: int) -> list[float]:
    """``[rho, ..., 0]``: ``inner_steps`` levels of the prior's schedule started at ``rho``, then 0."""
    if rho <= float(prior.sigma_min):
        return [rho, 0.0]
    levels = check_sigmas(prior.sigmas(inner_steps, rho))
    levels[0] = rho  # a prior whose sigma_max is below rho starts its schedule lower
    return levels


def _reverse_diffusion(
    prior: Prior, z: Tensor, levels: list[float], generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """From ``x = z`` at ``levels[0]`` to 0: ancestral steps on the 2M data prediction; ``(x, D(z, levels[0]))``."""
    x, d_prev, h_prev, x0_hat = z, None, None, None
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        d = prior.denoise(x, sigma)
        x0_hat = d if x0_hat is None else x0_hat
        if sigma_next == 0:
            return d, x0_hat
        h = math.log(sigma / sigma_next)
        # DPM-Solver++(2M): the data prediction extrapolated linearly in log-sigma from the previous level's.
        x0 = d if d_prev is None else d + (h / (2 * h_prev)) * (d - d_prev)
        x = ancestral_step(x, x0, sigma, sigma_next, 1.0, generator=generator)
        d_prev, h_prev = d, h
    raise ValueError("levels must end in 0")


def _exact_step(
    op: Operator, y: Tensor, sigma_y: float, noise_split: bool, generator: torch.Generator | None
) -> tuple[Callable[[Tensor, float], Tensor], float]:
    """``z | x, y`` drawn exactly in ``op``'s SVD basis, and ``sigma_y / max s_i`` (0 if nothing is measured)."""
    y_bar, nu, measured, m, _ = spectral_measurement(op, y, sigma_y)  # (B, M) each
    work = accumulation_dtype(y_bar.dtype)
    nu2 = nu.to(work) ** 2  # inf where unmeasured, 0 for a noiseless y
    s_max = op._s(y_bar).to(work).masked_fill(~measured, 0).amax().item()

    def step(x: Tensor, rho: float) -> Tensor:
        x_bar = op.Vt(x)  # (B, N)
        # Weight of y_bar_i: min(1, rho^2 / nu_i^2) with the split, rho^2 / (rho^2 + nu_i^2) without.
        g = (rho**2 / nu2).clamp(max=1.0) if noise_split else rho**2 / (rho**2 + nu2)
        g = torch.where(measured, g, torch.zeros_like(g))
        e = randn(x_bar.shape, generator, like=x_bar)
        head = x_bar[:, :m] + g.to(x_bar.dtype) * (y_bar - x_bar[:, :m])
        head = head + (rho * (1 - g).sqrt()).to(x_bar.dtype) * e[:, :m]
        return op.V(torch.cat([head, x_bar[:, m:] + rho * e[:, m:]], dim=1))

    return step, (sigma_y / s_max if s_max > 0 else 0.0)


def _langevin_step(
    op: Operator, y: Tensor, tau: float, noise: Any | None, norm_a2: Tensor | None, n_steps: int, frac: float,
    generator: torch.Generator | None,
) -> Callable[[Tensor, float], Tensor]:
    """``z | x, y`` by ``n_steps`` unadjusted Langevin steps on ``nll(y | z) + ||z - x||^2 / (2 rho^2)``.

    ``nll`` is ``||A(z) - y||^2 / (2 tau^2)`` or the noise model's.  ``norm_a2``: ``||A||^2`` per sample
    ``(B,)`` of a linear operator; ``None`` takes ``||J_A(x)||^2`` at each iteration's ``x``.
    """

    def step(x: Tensor, rho: float) -> Tensor:
        a2 = operator_norm(op, x, iters=10) ** 2 if norm_a2 is None else norm_a2  # (B,)
        z = x + rho * randn(x.shape, generator, like=x)
        for _ in range(n_steps):
            ax, vjp = linearize(op, z)
            if noise is None:
                g, weight, curv = ax - y, 1.0 / tau**2, torch.full_like(a2, 1.0 / tau**2)
            else:
                g, h = nll_grad_and_curvature(noise, y, ax)
                weight, curv = 1.0, h.flatten(1).amax(1).to(a2)
            alpha = frac / (1.0 / rho**2 + a2 * curv)  # (B,)
            # The step folded into the weights first: (A(z) - y) / tau^2 alone can overflow float16.
            drift = col(alpha / rho**2, z) * (x - z) - vjp(col(alpha * weight, g) * g)
            z = z + drift + col((2 * alpha).sqrt(), z) * randn(z.shape, generator, like=z)
        return z

    return step
