"""Parity with deepinv 0.5: invdiff's DDRM and DPS reach deepinv's PSNR on a shared problem.

Shared problem: a 1x16x16 smooth Gaussian prior (exact denoiser, wrapped as a deepinv
``Denoiser`` in [0, 1] data units), ground truths drawn from it, 50 % random inpainting
with Gaussian noise ``sigma_y``.  Both libraries run the same number of noise levels
(DDRM: 100 levels, deepinv's default ``linspace(1, 0, 100)``; DPS: 100 DDPM steps,
deepinv's ``num_steps=100``) at their default knobs, and both report the mean of
``SAMPLES`` posterior samples (a single sample's PSNR rewards under-dispersed samplers).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

deepinv = pytest.importorskip("deepinv")

import invdiff  # noqa: E402
from invdiff.operators import Inpainting, random_mask  # noqa: E402
from invdiff.priors import GaussianPrior  # noqa: E402

SHAPE = (1, 16, 16)
SIGMA_Y = 0.05
N_IMAGES = 16
SAMPLES = 8  # posterior samples averaged per image on both sides
DDRM_STEPS = 100  # deepinv: np.linspace(1, 0, 100) (its default), 100 denoiser calls
DPS_STEPS = 100  # deepinv: DPS(num_steps=100) instead of its default 1000


class _PriorDenoiser(deepinv.models.Denoiser):
    """deepinv denoiser ``D(x, sigma)`` in [0, 1] data units calling ``prior.denoise``."""

    def __init__(self, prior: GaussianPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        dtype = self.prior.mean.dtype
        s = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        return self.prior.denoise(x.to(dtype), s).to(x.dtype)


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) for data range 1: ``(B, C, H, W)`` -> ``(B,)``."""
    mse = (x_hat - x).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse)


def _problem(seed: int):
    """Ground truth, mask operator and noisy measurement for one seed."""
    prior = GaussianPrior.smooth(SHAPE, length_scale=2.0, variance=0.04, mean=0.5)
    g = torch.Generator().manual_seed(seed)
    x = prior.sample(1, generator=g)
    op = Inpainting(random_mask((16, 16), missing=0.5, generator=g))
    y = op(x) + SIGMA_Y * torch.randn(x.shape, generator=g) * op.mask
    return prior, x, op, y


def _run_all(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Per-image PSNRs ``(N_IMAGES,)`` of invdiff and deepinv, and total seconds of each."""
    ours, theirs, t_ours, t_theirs = [], [], 0.0, 0.0
    for seed in range(N_IMAGES):
        prior, x, op, y = _problem(seed)
        # deepinv's DDRM needs its own DecomposablePhysics: same mask, same noise level
        physics = deepinv.physics.Inpainting(
            img_size=SHAPE, mask=op.mask[0].clone(), noise_model=deepinv.physics.GaussianNoise(SIGMA_Y)
        )
        den = _PriorDenoiser(prior)
        t0 = time.perf_counter()
        res = invdiff.restore(
            y, op, prior, method=method, steps=steps, sigma_y=SIGMA_Y, samples=SAMPLES, seed=seed
        )
        t_ours += time.perf_counter() - t0
        ours.append(_psnr(res.mean, x))
        if method == "ddrm":
            model = deepinv.sampling.DDRM(den, sigmas=np.linspace(1, 0, steps))
        else:
            model = deepinv.sampling.DPS(den, num_steps=steps, dtype=torch.float64)
        with torch.random.fork_rng():
            torch.manual_seed(1000 + seed)  # deepinv draws its noise from the global RNG
            t0 = time.perf_counter()
            # SAMPLES posterior samples in one batch, averaged like ``Result.mean``
            x_d = model(y.expand(SAMPLES, -1, -1, -1).contiguous(), physics).mean(0, keepdim=True)
            t_theirs += time.perf_counter() - t0
        theirs.append(_psnr(x_d.float(), x))
    return torch.cat(ours), torch.cat(theirs), t_ours, t_theirs


@pytest.mark.parametrize("method, steps", [("ddrm", DDRM_STEPS), ("dps", DPS_STEPS)])
def test_psnr_parity_with_deepinv(method: str, steps: int) -> None:
    ours, theirs, t_ours, t_theirs = _run_all(method, steps)
    diff = ours - theirs
    se = diff.std().item() / math.sqrt(len(diff))
    print(
        f"{method}: invdiff {ours.mean():.2f} dB, deepinv {theirs.mean():.2f} dB, "
        f"diff {diff.mean():+.2f} +- {se:.2f} dB (s.e.); "
        f"time invdiff {t_ours:.2f} s, deepinv {t_theirs:.2f} s, deepinv/invdiff {t_theirs / t_ours:.2f}x"
    )
    # a draw from the prior alone scores about 11 dB and the exact posterior mean 27.4 dB
    assert ours.mean() > 20.0
    assert diff.mean().item() >= -0.2, f"invdiff {method} is {-diff.mean():.2f} dB below deepinv"
