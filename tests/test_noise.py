"""Noise models: moments of the draws, the NLL against closed forms, its gradient against autograd."""

from __future__ import annotations

import math

import pytest
import torch

from invdiff.operators import Gaussian, Poisson

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_moments() -> None:
    ax = torch.linspace(-1, 2, 8, dtype=D).reshape(1, 2, 2, 2).expand(20000, 2, 2, 2)
    y = Gaussian(0.3).sample(ax, generator=gen(0))
    # 20000 draws: standard errors 0.3 / sqrt(2e4) = 2e-3 (mean), ~0.5% (variance)
    torch.testing.assert_close(y.mean(0), ax[0], rtol=0, atol=1e-2)
    torch.testing.assert_close(y.var(0), torch.full_like(ax[0], 0.09), rtol=0.04, atol=0)


def test_gaussian_seeded_and_noiseless() -> None:
    ax = torch.rand(2, 1, 4, 4, generator=gen(1), dtype=D)
    torch.testing.assert_close(Gaussian(0.1).sample(ax, gen(5)), Gaussian(0.1).sample(ax, gen(5)))
    assert not torch.equal(Gaussian(0.1).sample(ax, gen(5)), Gaussian(0.1).sample(ax, gen(6)))
    assert torch.equal(Gaussian(0.0).sample(ax), ax)
    with pytest.raises(ValueError, match="Gaussian\\(0\\) is noiseless"):
        Gaussian(0.0).nll(ax, ax)
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        Gaussian(-1)


def test_gaussian_nll_closed_form_and_grad() -> None:
    y = torch.rand(3, 2, 4, 4, generator=gen(2), dtype=D)
    ax = torch.rand(3, 2, 4, 4, generator=gen(3), dtype=D).requires_grad_()
    noise = Gaussian(0.2)
    nll = noise.nll(y, ax)
    assert nll.shape == (3,)
    # -log N(y; ax, sigma^2 I) = nll + (M/2) log(2 pi sigma^2)
    dist = torch.distributions.Normal(ax, 0.2)
    exact = -dist.log_prob(y).flatten(1).sum(1) - 16 * math.log(2 * math.pi * 0.04)
    torch.testing.assert_close(nll, exact)
    (auto,) = torch.autograd.grad(nll.sum(), ax)
    torch.testing.assert_close(noise.grad(y, ax.detach()), auto)


def test_poisson_moments() -> None:
    ax = torch.tensor([0.0, 0.05, 0.5, 2.0], dtype=D).reshape(1, 1, 2, 2).expand(40000, 1, 2, 2)
    gain = 0.1
    y = Poisson(gain).sample(ax, generator=gen(0))
    # counts are integers: y / gain is integral
    torch.testing.assert_close(y / gain, (y / gain).round())
    # E[y] = ax, Var[y] = gain * ax; 4e4 draws: relative standard errors below 2%
    torch.testing.assert_close(y.mean(0), ax[0], rtol=0.03, atol=2e-3)
    torch.testing.assert_close(y.var(0), gain * ax[0], rtol=0.05, atol=1e-4)
    assert Poisson(gain).sample(-torch.ones(2, 1, 1, 1), gen(0)).eq(0).all()


def test_poisson_nll_closed_form_and_grad() -> None:
    gain = 0.5
    noise = Poisson(gain)
    ax = torch.rand(2, 1, 3, 3, generator=gen(4), dtype=D) * 4 + 0.1
    y = noise.sample(ax, gen(5))
    axg = ax.clone().requires_grad_()
    nll = noise.nll(y, axg)
    # -log Poisson(k; lam) = lam - k log lam + log k!, with eps = 1e-3 inside the log
    k, lam = y / gain, ax / gain
    exact = (lam - k * torch.log(lam + 1e-3)).flatten(1).sum(1)
    torch.testing.assert_close(nll, exact)
    ref = -torch.distributions.Poisson(lam).log_prob(k).flatten(1).sum(1) - torch.lgamma(k + 1).flatten(1).sum(1)
    torch.testing.assert_close(nll, ref, rtol=1e-3, atol=1e-2)  # differs only through eps
    (auto,) = torch.autograd.grad(nll.sum(), axg)
    torch.testing.assert_close(noise.grad(y, ax), auto)


def test_poisson_negative_rates_continue_linearly() -> None:
    noise = Poisson(1.0, eps=0.1)
    y = torch.tensor([3.0], dtype=D).reshape(1, 1, 1, 1)
    ax = torch.tensor([-0.2, -1e-9, 0.0, 1e-9], dtype=D).reshape(4, 1, 1, 1).requires_grad_()
    nll = noise.nll(y.expand(4, 1, 1, 1), ax)
    (auto,) = torch.autograd.grad(nll.sum(), ax)
    slope = 1 - 3.0 / 0.1
    # continuous at 0 and linear below with the slope at 0
    torch.testing.assert_close(nll[1:], nll[2].expand(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(nll[0], nll[2] + slope * -0.2)
    torch.testing.assert_close(auto.flatten(), torch.full((4,), slope, dtype=D), rtol=0, atol=1e-6)
    torch.testing.assert_close(noise.grad(y.expand(4, 1, 1, 1), ax.detach()), auto)
    assert torch.isfinite(auto).all()


@pytest.mark.parametrize("noise", [Gaussian(0.05), Poisson(0.01)], ids=["gaussian", "poisson"])
def test_nll_is_minimised_at_the_truth(noise) -> None:
    """Sanity: the expected NLL over draws is smallest at the true ax (compared with scaled ones)."""
    ax = torch.rand(1, 1, 8, 8, generator=gen(7), dtype=D) + 0.2
    y = torch.cat([noise.sample(ax, gen(s)) for s in range(200)])
    scores = [noise.nll(y, ax * f).mean().item() for f in (0.8, 1.0, 1.25)]
    assert scores[1] < scores[0] and scores[1] < scores[2]
