"""Unconditional sampling from a prior: EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def heun(
    prior, x: Tensor, sigmas: Tensor, *, callback: Callable[[dict], None] | None = None
) -> Tensor:
    """Integrate the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` down ``sigmas``.

    ``x``: ``(B, C, H, W)`` initial noise already scaled by ``sigmas[0]``.
    ``2 * (len(sigmas) - 1) - 1`` denoiser calls (no correction on the last step to 0).
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_hat = prior.denoise(x, sigma)
        d_cur = (x - x0_hat) / sigma
        # Euler step.
        x_next = x + (sigma_next - sigma) * d_cur
        # Apply 2nd order correction.
        if sigma_next > 0:
            d_next = (x_next - prior.denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (0.5 * d_cur + 0.5 * d_next)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x_next, "x0_hat": x0_hat})
        x = x_next
    return x


def sample_prior(prior, shape: tuple[int, ...], steps: int = 18, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """``shape`` unconditional samples with :func:`heun` on the prior's schedule."""
    sigmas = prior.sigmas(steps).to(device)
    x = torch.randn(shape, generator=generator, device=device) * sigmas[0]
    with torch.no_grad():
        return heun(prior, x, sigmas)
