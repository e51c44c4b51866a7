"""DAPS (Zhang et al. 2025, "Improving diffusion inverse problem solving with decoupled noise annealing")."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .common import accumulation_dtype, ancestral_step, check_sigma_y, check_sigmas, emit, initial_x, linearize, randn

if TYPE_CHECKING:
    from ..operators import Operator
    from ..priors import Prior

#: Langevin step sizes of the reference's pixel-space configs, in data units (their value / 4).
DAPS_LR = {
    "super_resolution": 2.5e-5,
    "gaussian_blur": 2.5e-5,
    "inpainting_random": 2.5e-5,
    "inpainting_box": 1.25e-5,
    "motion_blur": 1.25e-5,
    "phase_retrieval": 1.25e-5,
    "hdr": 5e-6,
    "nonlinear_blur": 2.5e-6,  # with langevin_steps=200
}


def daps(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    noise: Any | None = None,
    ode_steps: int = 5,
    ode_sigma_min: float = 0.005,
    langevin_steps: int = 100,
    lr: float = 2.5e-5,
    tau: float = 0.0035355,
    lr_min_ratio: float = 0.01,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """DAPS (Zhang et al. 2025, decoupled annealing posterior sampling, Algorithm 1) in data space.

    At each annealing level ``sigma_t`` of ``sigmas``:

    1. ``x0_hat``: the probability-flow ODE from ``x_t`` at ``sigma_t`` down to ``ode_sigma_min``,
       ``ode_steps`` Euler steps on a rho = 7 schedule (``ode_steps`` denoiser calls), and the
       iterate there, still carrying noise of std ``ode_sigma_min``, as the reference returns
       (``DiffusionPFODE``: ``sigma_min`` 0.01 on [-1, 1], so 0.005 here); at a level at or below
       ``ode_sigma_min`` it is ``D(x_t, sigma_t)``;
    2. ``langevin_steps`` Langevin steps on ``x0`` targeting
       ``p(x0 | x_t, y) ~ N(x0; x0_hat, r_t^2 I) p(y | x0)`` with ``r_t = sigma_t``, starting at
       ``x0_hat``, step ``eta = min(lr * (1 - (1 - lr_min_ratio) i / len(sigmas)), r_t^2)`` at level ``i``:
       ``x0 += eta * ((x0_hat - x0) / r_t^2 - grad nll(y | x0)) + sqrt(2 eta) n``;
    3. ``x_{t-1} = x0 + sigma_{t-1} n`` (after the last level, ``sigma_{t-1} = 0``: returns ``x0``).

    The likelihood ``p(y | x0)`` is ``N(y; A(x0), s^2 I)`` with ``s = max(sigma_y, tau)``, or the
    noise model's ``nll`` when ``noise`` is given (a ``Gaussian`` noise model likewise
    floored at ``tau``); its gradient goes through ``op.adjoint`` for linear operators and
    autograd otherwise, so nonlinear operators work.

    Defaults are the reference's pixel-space configs (200 levels, 5 ODE steps, 100 Langevin
    steps, lr 1e-4, tau 0.01, lr_min_ratio 0.01 on [-1, 1] data) in data units: ``x_m = 2x - 1``
    doubles every length, so a Langevin step ``eta_m`` in [-1, 1] units is ``eta_m / 4`` here
    (lr = 2.5e-5; per-task values in ``DAPS_LR``), and the reference's data term
    ``||A(x_m) - y_m||^2 / tau_m^2`` is a Gaussian of std ``tau_m / sqrt(2)`` in [-1, 1] units,
    ``tau_m / (2 sqrt(2)) = 0.0035355`` here.

    Stability: a Langevin step is stable while ``eta (1 / r_t^2 + ||A||^2 / s^2) < 2``.  The
    defaults put the data term at that edge (``lr = 2 tau^2``), so lower ``lr`` along with
    ``tau``.  For the prior term the step is capped at ``eta <= r_t^2``; the cap binds only
    below ``r_t = sqrt(lr) = 0.005``, under the reference's lowest level (0.05 in data units),
    where schedules reaching the prior's ``sigma_min`` would otherwise diverge.

    The reference keeps ``s = tau`` for every task, below its measurement noise (0.025 in data
    units); here ``s`` is never below ``sigma_y``, so the target is the true posterior whenever
    ``sigma_y >= tau`` (pass ``sigma_y=0`` for the reference's over-weighted data term).  The
    annealing schedule is ``sigmas`` (the reference anneals ``karras_sigmas(200, 0.05, 50)`` in
    data units).

    Args:
        prior: denoiser ``D(x, sigma)`` in data space.
        op: any differentiable operator.
        y: measurement, batch ``B``.
        sigmas: descending annealing levels, ``steps + 1`` values ending in 0.
        sigma_y: measurement noise std (data units).
        noise: a noise model with ``nll(y, ax)`` and ``grad(y, ax)``, used instead of ``sigma_y``.
        ode_steps, ode_sigma_min: Euler steps of the inner PF-ODE and the level it stops at (data units;
            0 integrates to ``D`` at the last step).
        generator: the only source of randomness.
        callback: called once per level with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``
            (``x0_hat`` the ODE estimate, ``x`` the next level's sample).

    Returns:
        x ``(B, C, H, W)``.  Denoiser calls: ``ode_steps`` per level above ``ode_sigma_min`` and one per
        level at or below it (the Langevin steps call only the operator).
    """
    if ode_steps < 1 or langevin_steps < 0:
        raise ValueError(f"ode_steps must be >= 1 and langevin_steps >= 0, got {ode_steps}, {langevin_steps}")
    if not ode_sigma_min >= 0:
        raise ValueError(f"ode_sigma_min must be >= 0, got {ode_sigma_min}")
    s = check_sigmas(sigmas)
    sigma_y = check_sigma_y(sigma_y)
    x_shape = op.x_shape(y)
    steps = len(s) - 1
    data_grad = _data_grad(op, y, sigma_y, noise, tau)
    acc = accumulation_dtype(y.dtype)

    # The reference's x_T = sigma_max n on [-1, 1] (EDM, VE): centred on the data's middle.
    x = initial_x(prior, x_shape, s[0], generator, like=y, vp=False)
    for i in range(steps):
        sigma, sigma_next = s[i], s[i + 1]
        # 1. Reverse diffusion: x0_hat(x_t) by the probability-flow ODE.
        x0_hat = _pf_ode(prior, x, sigma, ode_steps, ode_sigma_min)
        # 2. Langevin dynamics on p(x0 | x_t, y), step size decaying linearly over the levels
        #    and kept within the prior term's stability bound 2 r_t^2 (halved).
        eta = min(lr * (1.0 - (1.0 - lr_min_ratio) * i / (steps + 1)), sigma**2)
        x0 = x0_hat
        for _ in range(langevin_steps):
            # In at least float32: 1 / sigma^2 and 1 / s^2 pass float16's 65504 below about 0.004.
            score = (x0_hat - x0).to(acc) / sigma**2 - data_grad(x0)
            x0 = (x0 + eta * score).to(y.dtype) + (2 * eta) ** 0.5 * randn(x_shape, generator, like=y)
        # 3. Forward diffusion to the next level.
        x = x0 + sigma_next * randn(x_shape, generator, like=y) if sigma_next > 0 else x0
        emit(callback, i, sigma, sigma_next, x, x0_hat)
    return x


def _pf_ode(prior: Prior, x: Tensor, sigma: float, steps: int, sigma_end: float) -> Tensor:
    """``steps`` Euler steps of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` from
    ``sigma`` to ``sigma_end`` on EDM's rho = 7 nodes; ``D(x, sigma)`` when ``sigma <= sigma_end``."""
    if sigma <= sigma_end:
        return prior.denoise(x, sigma)
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    nodes = ((sigma ** (1 / 7) + ramp * (sigma_end ** (1 / 7) - sigma ** (1 / 7))) ** 7).tolist()
    nodes[0], nodes[-1] = sigma, sigma_end
    for sigma_cur, sigma_next in zip(nodes[:-1], nodes[1:]):
        x0_hat = prior.denoise(x, sigma_cur)
        # An Euler step of the PF-ODE is the deterministic DDIM step (eta = 0).
        x = ancestral_step(x, x0_hat, sigma_cur, sigma_next, eta=0.0)
    return x


def _data_grad(op: Operator, y: Tensor, sigma_y: float, noise: Any | None, tau: float) -> Callable[[Tensor], Tensor]:
    """``x0 -> grad_x0 nll(y | x0)`` for the Gaussian ``N(y; A(x0), max(sigma_y, tau)^2)`` or a noise model."""
    if noise is not None:
        from ..operators.noise import Gaussian

        if isinstance(noise, Gaussian):
            sigma_y, noise = float(noise.sigma), None
    acc = accumulation_dtype(y.dtype)
    y = y.to(acc)
    if noise is None:
        s2 = max(sigma_y, tau) ** 2

        def grad_ax(ax: Tensor) -> Tensor:
            return (ax - y) / s2
    else:

        def grad_ax(ax: Tensor) -> Tensor:
            return noise.grad(y, ax)

    def grad(x0: Tensor) -> Tensor:
        """In at least float32 (``acc``): the residual over s^2 overflows float16 for s below about 0.004."""
        ax, vjp = linearize(op, x0.to(acc))
        return vjp(grad_ax(ax))

    return grad
