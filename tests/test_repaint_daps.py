"""RePaint's jump schedule and known region; DAPS against exact Gaussian posteriors."""

from __future__ import annotations

import math

import pytest
import torch

from invdiff.exact import dense_matrix, gaussian_posterior
from invdiff.operators import Gaussian, Identity, Inpainting, Poisson, random_mask
from invdiff.priors import GaussianPrior
from invdiff.samplers.daps import _pf_ode, daps
from invdiff.samplers.repaint import jump_schedule, repaint

from counting import CountingPrior  # tests/counting.py

F64 = torch.float64
SHAPE = (1, 8, 8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inpainting_problem(seed: int = 0, sigma_y: float = 0.05, batch: int = 1):
    """``(prior, op, x, y)``: half the pixels of a smooth Gaussian image, noise on the known ones."""
    prior = GaussianPrior.smooth(SHAPE)
    g = gen(seed)
    x = prior.sample(batch, g, dtype=F64)
    mask = random_mask((batch, *SHAPE), 0.5, generator=g).to(F64)
    op = Inpainting(mask)
    y = op(x + sigma_y * torch.randn(x.shape, generator=g, dtype=F64))
    return prior, op, x, y


# -- RePaint ---------------------------------------------------------------------------------------


def test_jump_schedule_small_case_by_hand():
    # 6 levels, jumps of 2 levels, 3 visits: jump points at RePaint times t = 0 and 2, i.e. levels 5 and 3.
    path = jump_schedule(6, jump_length=2, jump_n_sample=3)
    assert path == [0, 1, 2, 3, 2, 1, 2, 3, 2, 1, 2, 3, 4, 5, 4, 3, 4, 5, 4, 3, 4, 5, 6]
    steps = list(zip(path[:-1], path[1:]))
    assert all(abs(j - i) == 1 for i, j in steps)
    falls = sum(j > i for i, j in steps)
    assert falls == 14 == 6 + 2 * (3 - 1) * 2  # denoiser calls
    # Each jump point starts jump_n_sample - 1 = 2 re-noisings; nothing else jumps.
    jumps_from = [i for k, (i, j) in enumerate(steps) if j < i and (k == 0 or steps[k - 1][1] > steps[k - 1][0])]
    assert jumps_from == [3, 3, 5, 5]
    assert set(path) == set(range(7))


def test_jump_schedule_edge_cases_and_paper_count():
    assert jump_schedule(5, 10, 10) == [0, 1, 2, 3, 4, 5]  # jumps longer than the walk: none
    assert jump_schedule(5, 2, 1) == [0, 1, 2, 3, 4, 5]  # one visit: plain ancestral sampling
    paper = jump_schedule(250, 10, 10)
    falls = sum(j > i for i, j in zip(paper[:-1], paper[1:]))
    assert falls == 250 + 10 * 9 * 24 == 2410
    assert len(paper) == 1 + 2410 + 2160 and paper[0] == 0 and paper[-1] == 250
    with pytest.raises(ValueError, match="at least 1"):
        jump_schedule(5, 0, 10)


def test_repaint_calls_and_exact_known_region():
    prior, op, _, y = inpainting_problem(batch=2)
    counting = CountingPrior(prior)
    seen = []
    x = repaint(counting, op, y, prior.sigmas(6), jump_length=2, jump_n_sample=3, generator=gen(), callback=seen.append)
    assert counting.calls == len(seen) == 14
    assert [d["i"] for d in seen] == list(range(14))
    mask = op.mask.expand_as(y)
    assert torch.equal(x * mask, y)  # sigma_y = 0: the known region is y, bit for bit
    assert ((x - y).abs() * (1 - mask)).sum() > 0  # the unknown region is filled in


def test_repaint_noise_in_known_region():
    """Known region at level s: y + sqrt(max(s^2 - sigma_y^2, 0)) n, and y itself once s <= sigma_y."""
    prior, op, _, y = inpainting_problem(batch=1)
    n, sigma_y = 200, 0.5
    y = y.repeat(n, 1, 1, 1)
    mask = op.mask.expand_as(y).bool()
    seen = []
    out = repaint(prior, op, y, prior.sigmas(30), sigma_y=sigma_y, jump_length=3, jump_n_sample=2,
                  generator=gen(1), callback=seen.append)
    assert torch.equal(out[mask], y[mask])
    z, exact_levels = [], 0
    for d in seen:
        r = (d["x"] - y)[mask]
        if d["sigma_next"] <= sigma_y:
            assert torch.equal(r, torch.zeros_like(r))
            exact_levels += 1
        else:
            z.append(r / math.sqrt(d["sigma_next"] ** 2 - sigma_y**2))
    z = torch.cat(z)
    assert exact_levels > 3 and z.numel() > 10**5
    # Standard normal residuals: mean and std within 5 standard errors.
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    assert abs(z.std().item() - 1) < 5 / math.sqrt(2 * z.numel())


def test_repaint_rejects_other_operators():
    prior = GaussianPrior.smooth(SHAPE)
    y = torch.zeros(1, *SHAPE)
    with pytest.raises(ValueError, match="RePaint needs an inpainting operator with a .mask; Identity has none"):
        repaint(prior, Identity(), y, prior.sigmas(3))
    with pytest.raises(ValueError, match="binary mask"):
        repaint(prior, Inpainting(torch.full((8, 8), 0.5)), y, prior.sigmas(3))


# -- DAPS ------------------------------------------------------------------------------------------


def test_pf_ode_matches_the_exact_flow():
    """On a Gaussian prior the PF-ODE is solvable: ``x(0) - m = sqrt(l / (l + sigma^2)) (x - m)`` per eigenvalue."""
    lam = torch.logspace(-2, 0, 16, dtype=F64)
    prior = GaussianPrior(torch.full((1, 4, 4), 0.5, dtype=F64), lam.reshape(1, 4, 4))
    sigma = 3.0
    x = prior.sample(2, gen(), dtype=F64) + sigma * torch.randn(2, 1, 4, 4, generator=gen(1), dtype=F64)
    exact = 0.5 + (x - 0.5) * (lam / (lam + sigma**2)).sqrt().reshape(1, 1, 4, 4)
    assert torch.equal(_pf_ode(prior, x, sigma, 1, 0.0), prior.denoise(x, sigma))  # one step to 0: D(x, sigma)
    err = [(_pf_ode(prior, x, sigma, k, 0.0) - exact).abs().max().item() for k in (4, 16, 64)]
    # Euler is first order: 4x the steps, about 1/4 the error (measured max errors ~0.55, 0.17, 0.046 on the
    # rho = 7 nodes straight to 0; the last step, from the smallest node to 0, is the coarsest).
    assert err[2] < 0.05
    assert 3.0 < err[0] / err[1] < 4.5 and 3.5 < err[1] / err[2] < 4.5
    # Stopping at s_end (DAPS's reference stops at 0.005 in data units): the flow's value there.
    s_end = 0.05
    exact_end = 0.5 + (x - 0.5) * ((lam + s_end**2) / (lam + sigma**2)).sqrt().reshape(1, 1, 4, 4)
    err_end = [(_pf_ode(prior, x, sigma, k, s_end) - exact_end).abs().max().item() for k in (16, 64)]
    assert err_end[1] < 0.025 and err_end[1] < err_end[0] / 3  # measured ~0.079, 0.020
    assert torch.equal(_pf_ode(prior, x, 0.01, 5, 0.05), prior.denoise(x, 0.01))  # already below the end


def test_daps_nfe_and_noise_models():
    prior, op, _, y = inpainting_problem()
    counting = CountingPrior(prior)
    with torch.no_grad():
        a = daps(counting, op, y, prior.sigmas(6), sigma_y=0.05, ode_steps=3, langevin_steps=4, generator=gen())
    # levels x ode_steps, but one call at the last level (below ode_sigma_min, where the ODE has nothing to do);
    # the Langevin steps call the operator only
    assert counting.calls == 5 * 3 + 1
    # A Gaussian noise model is the Gaussian likelihood with that sigma.
    b = daps(prior, op, y, prior.sigmas(6), noise=Gaussian(0.05), ode_steps=3, langevin_steps=4, generator=gen())
    assert torch.equal(a, b)
    # Poisson counts: any noise model with nll gradient.
    yp = Poisson(0.01).sample(op(prior.sample(1, gen(2), dtype=F64).clamp_min(0)), gen(3))
    c = daps(prior, op, yp, prior.sigmas(6), noise=Poisson(0.01), ode_steps=1, langevin_steps=4, lr=1e-6,
             generator=gen())
    assert torch.isfinite(c).all() and not torch.equal(c, a)


def test_daps_approaches_y_as_sigma_y_vanishes():
    """On A = I a posterior sample sits at rms distance ~ sigma_y from y; DAPS floors the likelihood std at tau."""
    prior = GaussianPrior.smooth(SHAPE)
    x = prior.sample(1, gen(), dtype=F64)
    A = dense_matrix(Identity(), SHAPE)
    dist, exact = [], []
    for k, sigma_y in enumerate([0.2, 0.05, 0.01, 0.0]):
        y = x + sigma_y * torch.randn(x.shape, generator=gen(10 + k), dtype=F64)
        out = daps(prior, Identity(), y.repeat(16, 1, 1, 1), prior.sigmas(50), sigma_y=sigma_y, ode_steps=1,
                   generator=gen(1))
        dist.append(((out - y) ** 2).mean().sqrt().item())
        mean, cov = gaussian_posterior(prior, A, y.flatten(), sigma_y)
        exact.append(math.sqrt((((mean - y.flatten()) ** 2).sum() + cov.trace()).item() / 64))
    # Measured: dist 0.28, 0.059, 0.0098, 0.0034 against exact 0.200, 0.050, 0.0101, 0.
    assert dist[0] > dist[1] > dist[2] > dist[3] > 0
    assert dist[2] == pytest.approx(exact[2], rel=0.15)
    tau = 0.0035355  # the default likelihood floor: with sigma_y = 0, y is matched to within ~tau
    assert 0.7 * tau < dist[3] < 1.3 * tau


def test_daps_mean_approaches_the_exact_posterior():
    """Inpainting a Gaussian prior: the sample mean nears the exact posterior mean as annealing lengthens.

    DAPS is not exact at finite cost: it replaces p(x0 | x_t) by N(x0_hat, sigma_t^2 I) and runs
    a short Langevin chain per level.  Measured (64 samples, lr 5e-5, 100 Langevin steps, generator
    seeds 0-7): mean |error| / posterior std 0.83-0.92 with 30 levels and 0.36-0.48 with 120 levels
    (max over the 64 pixels 2.5-3.0 and 1.31-1.64); the prior mean is ~3 posterior stds away.
    Monte-Carlo noise alone is ~0.14 posterior std per pixel (mean |noise| ~0.11), so most of the
    remaining error at 120 levels is DAPS's bias, which this test documents rather than hides.
    The bounds leave room for the spread across seeds and across CPUs (float results differ).
    """
    prior, op, _, y = inpainting_problem(seed=0, sigma_y=0.05)
    mean, cov = gaussian_posterior(prior, dense_matrix(op, SHAPE), y.flatten(), 0.05)
    pstd = cov.diagonal().sqrt()
    err = {}
    for levels in (30, 120):
        out = daps(prior, op, y.repeat(64, 1, 1, 1), prior.sigmas(levels), sigma_y=0.05, ode_steps=1, lr=5e-5,
                   generator=gen(10))
        err[levels] = (out.mean(0).flatten() - mean).abs() / pstd
    prior_err = ((prior.mean - mean).abs() / pstd).mean().item()
    assert prior_err > 2.5
    assert err[120].mean() < 0.55 and err[120].max() < 2.0
    assert err[120].mean() < 0.6 * err[30].mean()


def test_daps_short_schedule_stays_stable():
    """Five levels down to sigma_min ~ 0.002: without the cap eta <= r_t^2 the last Langevin steps blow up (~1e28)."""
    prior, op, _, y = inpainting_problem()
    for lr in (2.5e-5, 1e-4):
        out = daps(prior, op, y.repeat(8, 1, 1, 1), prior.sigmas(5), sigma_y=0.05, ode_steps=1, lr=lr, generator=gen())
        assert out.abs().max() < 2.0
