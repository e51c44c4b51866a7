"""RePaint: inpainting by resampling the known region (Lugmayr et al. 2022, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .common import ancestral_step, check_sigma_y, check_sigmas, emit, initial_x, randn

if TYPE_CHECKING:
    from ..operators import Operator
    from ..priors import Prior


def jump_schedule(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """RePaint's resampling schedule (Lugmayr et al. 2022, Sec. 4.2) as indices into ``sigmas``.

    The walk starts at level 0 (``sigmas[0]``, pure noise) and ends at level ``steps``
    (``sigmas[steps] = 0``); consecutive entries differ by one level.  Every
    ``jump_length`` levels, counted up from the last noisy level ``steps - 1``, the
    walk jumps back ``jump_length`` levels and descends again, ``jump_n_sample - 1``
    times in all, before it continues.  A rise ``i -> i - 1`` is a re-noising, a fall
    ``i -> i + 1`` a reverse step (one denoiser call), so the number of calls is
    ``steps + jump_length * (jump_n_sample - 1) * len(range(0, steps - jump_length, jump_length))``
    (2410 for the paper's 250 levels with jump_length = jump_n_sample = 10).
    """
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(
            f"steps, jump_length and jump_n_sample must be at least 1, "
            f"got {steps}, {jump_length}, {jump_n_sample}"
        )
    # Jump points t = 0, L, 2L, ... in RePaint's time (t = 0 the last noisy level), as level indices.
    jumps = {steps - 1 - t: jump_n_sample - 1 for t in range(0, steps - jump_length, jump_length)}
    i, path = 0, [0]
    while i < steps:
        i += 1
        path.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            for _ in range(jump_length):
                i -= 1
                path.append(i)
    return path


def inpainting_mask(op: Operator, y: Tensor) -> Tensor:
    """The known-pixel mask of an inpainting operator, broadcast to ``y``'s shape ``(B, C, H, W)``.

    Raises ``ValueError`` unless ``op`` has a ``mask`` and acts as ``x -> mask * x`` on the full grid.
    """
    mask = getattr(op, "mask", None)
    if not isinstance(mask, Tensor):
        raise ValueError(
            f"RePaint needs an inpainting operator with a .mask; {type(op).__name__} has none "
            "(use a method that works with any operator, e.g. dps or daps)"
        )
    mask = mask.to(device=y.device, dtype=y.dtype)
    try:
        mask = mask.expand(y.shape)
    except RuntimeError:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the measurement is {tuple(y.shape)}"
        ) from None
    # The operator must keep the masked pixels and zero the rest, on the image grid.
    try:
        ax = op(torch.ones_like(y))
    except (RuntimeError, ValueError):
        ax = None
    if ax is None or ax.shape != y.shape or not torch.allclose(ax, mask):
        raise ValueError(
            f"RePaint needs an operator x -> mask * x on the image grid; {type(op).__name__} "
            "is not one (its .mask is not a pixel mask)"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("RePaint needs a binary mask (1 = known, 0 = missing); this one has values in between")
    return mask


def repaint(
    prior: Prior,
    op: Operator,
    y: Tensor,
    sigmas: Tensor,
    *,
    sigma_y: float = 0.0,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1 with the jump schedule of Sec. 4.2).

    Each reverse step merges, as Algorithm 1 does, the known region of ``y`` noised to the new
    level with the unknown region from the prior's ancestral step (the DDPM posterior, i.e.
    DDIM ``eta = 1``; a model's learned variance is not used).  A jump re-noises with fresh
    noise, RePaint's ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``, which in
    variance-exploding form is ``x + sqrt(sigma_t^2 - sigma_{t-1}^2) n``.

    Args:
        prior: denoiser ``D(x, sigma)`` in data space.
        op: an inpainting operator ``x -> mask * x`` with a ``.mask`` (1 = known pixel).
        y: measurement ``(B, C, H, W)`` on the full grid.
        sigmas: descending noise levels, ``steps + 1`` values ending in 0.
        sigma_y: std of the noise already in ``y``.  The known region at level ``sigma`` is
            ``y + sqrt(max(sigma^2 - sigma_y^2, 0)) n`` (``y`` already carries ``sigma_y``
            of noise), and ``y`` itself once ``sigma <= sigma_y``; the output's known region
            is therefore ``y`` (exactly, with its noise).
        jump_length, jump_n_sample: resampling jump size ``j`` and number of visits ``r``
            (paper defaults 10 and 10; ``jump_n_sample=1`` is plain ancestral sampling).
        clip_x0: clip ``x0_hat`` to ``prior.data_range`` before the step, as the reference
            (``clip_denoised: true`` in all its configs); a no-op for unbounded priors.
        generator: the only source of randomness.
        callback: called after every reverse step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``,
            ``i`` counting reverse steps.

    Returns:
        x ``(B, C, H, W)``.  Denoiser calls: one per reverse step, ``len(sigmas) - 1`` plus
        ``jump_length * (jump_n_sample - 1)`` per jump (see ``jump_schedule``).
    """
    s = check_sigmas(sigmas)
    sigma_y = check_sigma_y(sigma_y)
    mask = inpainting_mask(op, y)
    path = jump_schedule(len(s) - 1, jump_length, jump_n_sample)

    # Line 1: x_T ~ N(0, I) in the reference's VP units on [-1, 1], i.e. centred on the data's middle.
    x = initial_x(prior, y.shape, s[0], generator, like=y)
    n_reverse = 0
    for i, j in zip(path[:-1], path[1:]):
        sigma, sigma_next = s[i], s[j]
        if j > i:
            # Lines 4-8: known part from y, unknown part by one reverse (ancestral) step, then merge.
            x0_hat = prior.denoise(x, sigma)
            if clip_x0:
                x0_hat = prior.clip(x0_hat)
            x_unknown = ancestral_step(x, x0_hat, sigma, sigma_next, generator=generator)
            extra = max(sigma_next**2 - sigma_y**2, 0.0) ** 0.5
            x_known = y + extra * randn(y.shape, generator, like=y) if extra > 0 else y
            x = mask * x_known + (1 - mask) * x_unknown
            emit(callback, n_reverse, sigma, sigma_next, x, x0_hat)
            n_reverse += 1
        else:
            # Line 10: jump back one level, x_t ~ N(x_{t-1}, (sigma_t^2 - sigma_{t-1}^2) I).
            x = x + (sigma_next**2 - sigma**2) ** 0.5 * randn(y.shape, generator, like=y)
    return x
