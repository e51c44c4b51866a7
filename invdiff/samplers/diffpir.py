"""DiffPIR: denoising diffusion models for plug-and-play image restoration (Zhu et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..operators import Operator
from ..priors import Prior
from .common import check_sigma_y, check_sigmas, emit, measurement_image, randn, require_linear, ridge_adjoint_solve

#: ``cg_iters`` for a blur without an SVD (a photo's 'valid' blur), as the command line and ``BlindBlur`` run
#: DiffPIR: early stopping regularises the ill-conditioned data step, and 5 iterations restored two 128x128
#: photo crops (Gaussian blur std 2, noise 0.01, 20 steps) better than 2, 10 or 50 (camera: 3: 25.4 dB,
#: 10: 25.0, 50: 24.8; astronaut: 2: 26.1, 5: 26.9, 10: 25.4) at a fraction of the time.
VALID_BLUR_CG_ITERS = 5

#: the reference's data weight and the steps it was set for
REFERENCE_LAMBDA = 7.0
REFERENCE_STEPS = 100


def default_lambda(steps: int, op: Operator | None = None) -> float:
    """DiffPIR's ``lambda_`` when none is given: the reference's 7.0, raised for a blur in fewer steps.

    For a blur run in ``steps < 100`` noise levels the weight is ``7.0 * 100 / steps``
    (35 at 20 steps, 14 at 50).  The data step
    ``x0_hat + A^T (A A^T + rho_t I)^-1 (y - A x0_hat)`` passes the measurement noise
    with gain ``s / (s^2 + rho_t)`` at singular value ``s``, up to ``1 / (2 sqrt(rho_t))``
    where the spectrum reaches ``sqrt(rho_t)``: a blur's does (its transfer function
    falls continuously to 0), inpainting's (0 or 1) and 4x bicubic super-resolution's
    do not reach as low.  The noise it lets through is up to ``sigma / sqrt(lambda_)``
    at each step; the reference's 100 steps leave the next denoiser call a level
    close to ``sigma`` to take it out, a short run a much lower one.  Measured on
    validation photos (``python -m benchmarks dataweight``: 128x128 crops of training
    photos, noise 0.01 and 0.03, weights 7, 14, 35, 70): on a photo's 'valid' blur
    (Gaussian and camera shake, conjugate gradients in the data step) the best weight
    was 35-70 at 20 steps and 14 at 50; this rule's weight gained 2.3 / 6.8 dB over the
    reference's 7 at 20 steps (noise 0.01 / 0.03) and 0.6 / 4.0 dB at 50 (at 20 steps
    and noise 0.03, 70 was 0.5 dB better still).  The circular blur's exact data step gains less (+0.3 /
    +1.0 dB at 20 steps, 14 best; at 50 steps and noise 0.03, 0.2 dB below 7).
    Inpainting and 4x super-resolution did best at 7 at both step counts, and keep it.
    """
    from ..operators import Blur

    if isinstance(op, Blur) and steps < REFERENCE_STEPS:
        return REFERENCE_LAMBDA * REFERENCE_STEPS / steps
    return REFERENCE_LAMBDA


def diffpir_run_defaults(steps: int, op: Operator | None) -> dict[str, float]:
    """The knobs whose defaults depend on the run (``Method.run_defaults``): ``lambda_`` by ``default_lambda``."""
    return {"lambda_": default_lambda(steps, op)}


#: Floor on ``sigma_y`` (data units) in the data step, as the reference's ``max(0.001, noise_level_img)``.
SIGMA_Y_FLOOR = 1e-3


def diffpir(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    lambda_: float | None = None,
    zeta: float = 0.3,
    cg_iters: int = 50,
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """DiffPIR (Zhu et al. 2023, Algorithm 1, with the closed-form data step) in VE data units.

    Each step but the last (``sigma' = sigma_next``)::

        x0_hat = D(x, sigma)                                                 # denoising
        x0     = argmin_z ||y - A z||^2 + rho_t ||z - x0_hat||^2             # data step
               = x0_hat + A^T (A A^T + rho_t I)^-1 (y - A x0_hat)
        eps    = (x - x0) / sigma                                            # effective noise
        x'     = x0 + sigma' (sqrt(1 - zeta) eps + sqrt(zeta) z)             # zeta-mixed re-noising

    and the last step returns ``x0_hat`` of the smallest level without a data
    step.  The reference's schedule stops at its ``t = 0`` instead and returns the
    chain there: the last data-consistent ``x0`` re-noised to ``sqrt(1 - abar_0)``
    (about 0.005 in data units); here the schedule reaches 0, so the denoiser at the
    smallest level takes that last noise away.

    Units of ``rho_t = lambda_ sigma_y^2 / sigma_bar_t^2``: the reference takes
    ``sigma_y`` on ``[0, 1]`` images (data units, as here) but ``sigma_bar_t`` as
    the model's level on ``[-1, 1]`` images, ``sigma_bar_t = 2 sigma``, and solves
    the data step on ``[0, 1]`` images.  Keeping its ``lambda_`` (7.0) therefore
    means ``rho_t = lambda_ sigma_y^2 / (4 sigma^2)`` in data units, used here.
    Without ``lambda_`` a blur in fewer than the reference's 100 steps gets a larger
    weight (``default_lambda``: ``7 * 100 / steps``), a documented deviation: at 20
    steps the reference's 7 lets the data step's amplified noise through to the result.
    ``sigma_y`` is floored at ``SIGMA_Y_FLOOR = 1e-3`` inside ``rho_t`` (the
    reference's ``max(0.001, sigma_y)``), so a noiseless ``y`` gives a strong but
    finite data step.

    The data step is exact through the SVD when ``op`` has one, and uses
    ``cg_iters`` conjugate-gradient iterations on ``op(op.adjoint(.)) + rho_t I``
    otherwise.  The chain starts, as the reference's inpainting and deblurring scripts
    do, from the measurement noised to the first level, ``x_T = x_y + sqrt(sigma_T^2 -
    sigma_y^2) n`` (``y`` already carries ``sigma_y``), with ``x_y = m + A^T (A A^T + lam
    I)^-1 (y - A m)`` the measurement as an image: ``m`` the middle of the data's
    range where nothing is measured (exactly the reference's masked ``y`` on
    ``[-1, 1]`` for inpainting), and ``lam = sigma_y^2 / r_T^2`` (at least 1e-6, as
    PiGDM's start) for other operators, where the reference uses ``y`` itself
    (deblurring) or its bicubic upsampling (super-resolution).  At the reference's
    full start (``t = 999``, ``sqrt(abar) = 0.006``) this is pure noise; at a
    truncated start (``METHODS`` uses 2) it is not: on a box hole it was worth about
    1 dB at a start of 10.  The reference's optional DDIM ``eta`` inside the ``(1 - zeta)`` part is 0
    in its configs and omitted.

    ``clip_x0`` clips ``x0_hat`` to ``prior.data_range`` before the data step, as the
    reference (``p_sample(..., clip_denoised=True)``); the data-consistent ``x0`` is
    not clipped.

    Args:
        prior: denoiser ``D(x, sigma)`` in data space.
        op: a linear operator (SVD or not).
        y: measurement, batch ``B``.
        sigmas: descending levels, ``steps + 1`` values ending in 0 (reference: 100 steps).
        sigma_y: std of the Gaussian noise in ``y`` (data units).
        lambda_: the data weight, the reference's ``lambda`` (7.0 in its deblurring / super-resolution
            runs, at 100 steps); ``None``: ``default_lambda(steps, op)``, which raises it for a blur in
            fewer steps.
        zeta: share of fresh noise when re-noising, 0.3 as in the reference runs.
        cg_iters: conjugate-gradient iterations for operators without an SVD.
        clip_x0: clip ``x0_hat`` to ``prior.data_range`` (a no-op for unbounded priors).
        generator: the only source of randomness.
        callback: called after each step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``.

    Returns:
        x ``(B, C, H, W)``.  Denoiser calls: ``len(sigmas) - 1``.
    """
    require_linear(op, "diffpir")
    s_list = check_sigmas(sigmas)
    sigma_y = check_sigma_y(sigma_y)
    if lambda_ is None:
        lambda_ = default_lambda(len(s_list) - 1, op)
    if lambda_ <= 0:
        raise ValueError(f"lambda_ must be > 0, got {lambda_}")
    if not 0 <= zeta <= 1:
        raise ValueError(f"zeta must lie in [0, 1], got {zeta}")
    sigma_n = max(sigma_y, SIGMA_Y_FLOOR)

    # Start: the measurement as an image (the data's middle where nothing is measured), noised to sigma_T.
    sigma_T = s_list[0]
    x_y = measurement_image(prior, op, y, sigma_y, sigma_T, cg_iters=cg_iters)
    x = x_y + max(sigma_T**2 - sigma_y**2, 0.0) ** 0.5 * randn(op.x_shape(y), generator, like=y)
    for i, (sigma, sigma_next) in enumerate(zip(s_list[:-1], s_list[1:])):
        x0_hat = prior.denoise(x, sigma)
        if clip_x0:
            x0_hat = prior.clip(x0_hat)
        emit(callback, i, sigma, sigma_next, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            break
        # Data step: proximal point of ||y - A z||^2 with weight rho_t around x0_hat.
        rho = lambda_ * sigma_n**2 / (2 * sigma) ** 2
        x0 = x0_hat + ridge_adjoint_solve(op, y - op(x0_hat), rho, cg_iters=cg_iters)
        # Re-noise to sigma' with the effective noise of x0, mixed with fresh noise.
        eps = (x - x0) / sigma
        z = randn(x.shape, generator, like=x)
        x = x0 + sigma_next * ((1 - zeta) ** 0.5 * eps + zeta**0.5 * z)
    return x
