"""PnP-DM (``invdiff.samplers.pnp_dm``): the exact Gaussian posterior on both likelihood paths, the reference's
likelihood step in its own units, noise models, batches, determinism and the knobs' checks.

The exact answer is the posterior of a ``GaussianPrior`` under a linear operator (``invdiff.exact``); the
sampler runs at its defaults (``METHODS["pnp_dm"].steps`` iterations) unless a test says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch

from invdiff import METHODS
from invdiff.exact import dense_matrix, gaussian_posterior, posterior_report
from invdiff.operators import Blur, Gaussian, Identity, Inpainting, LinearOperator, Poisson, Saturation, gaussian_kernel
from invdiff.priors import GaussianPrior
from invdiff.samplers.pnp_dm import RHO_FLOOR, _exact_step, pnp_dm

from counting import CountingPrior  # tests/counting.py

F64 = torch.float64
SHAPE = (1, 6, 6)
SIGMA_Y = 0.05
STEPS = METHODS["pnp_dm"].steps
S = 1000  # samples per problem: a variance ratio's Monte-Carlo std is sqrt(2 / S) = 0.045


class Dense(LinearOperator):
    """A dense ``(M, N)`` matrix on images, without an SVD: PnP-DM takes Langevin likelihood steps."""

    def __init__(self, A: torch.Tensor, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.A, self.shape = A, shape

    def forward(self, x):
        return (x.reshape(x.shape[0], -1) @ self.A.mT.to(x)).reshape(x.shape[0], 1, 1, -1)

    def adjoint(self, y):
        return (y.reshape(y.shape[0], -1) @ self.A.to(y)).reshape(y.shape[0], *self.shape)


@pytest.fixture(autouse=True)
def one_thread():
    """These batches are small: torch's intra-op threads cost more than they save (50 times, on a busy CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_prior() -> GaussianPrior:
    return GaussianPrior.smooth(SHAPE, length_scale=2.0, variance=0.04, mean=0.5)


def masks(batch: int = 2) -> torch.Tensor:
    """One random half-missing mask per image ``(batch, 1, 6, 6)``."""
    return (torch.rand(batch, *SHAPE, generator=gen(1)) < 0.5).to(F64)


def problem(op, batch: int = 1):
    """``(prior, y)`` with ``y = A x + sigma_y e``, ``x`` drawn from the prior, ``batch`` images."""
    prior = smooth_prior()
    g = gen(2)
    ax = op(prior.sample(batch, g, dtype=F64))
    return prior, ax + SIGMA_Y * torch.randn(ax.shape, generator=g, dtype=F64)


def scores(x: torch.Tensor, prior, A: torch.Tensor, y: torch.Tensor) -> dict:
    mean, cov = gaussian_posterior(prior, A, y, SIGMA_Y)
    return posterior_report(x, mean, cov)


def assert_exact(r: dict, band: float = 0.08) -> None:
    # An exact sampler, S = 1000 over 36 pixels: rms ~ 1, max ~ 2.7; variance ratios 1 +- 0.045 each.
    assert r["mean_err_rms_se"] < 1.6 and r["mean_err_max_se"] < 4.5, r
    assert abs(r["var_ratio_median"] - 1) < band, r
    assert 0.8 < r["var_ratio_min"] and r["var_ratio_max"] < 1.25, r


# -- the exact posterior ---------------------------------------------------------------------------


def test_svd_path_matches_the_exact_posterior_with_per_sample_masks():
    """Two images with their own masks in one batch (per-sample singulars), each repeated S times.

    60 iterations: at the default 40 the first image's hole keeps a mean bias of about 0.9 standard errors
    of 256 samples (2.4 of these 2000); at 60 it is 0.1 (the chain's law in closed form).
    """
    m = masks(2)
    prior, y = problem(Inpainting(m), batch=2)
    op = Inpainting(m.repeat(S, 1, 1, 1))
    x = pnp_dm(prior, op, y.repeat(S, 1, 1, 1), prior.sigmas(60), sigma_y=SIGMA_Y, generator=gen()).reshape(S, 2, -1)
    for b in range(2):
        assert_exact(scores(x[:, b], prior, dense_matrix(Inpainting(m[b]), SHAPE), y[b]))


def test_svd_path_matches_the_exact_posterior_under_a_blur():
    op = Blur(gaussian_kernel(1.0, size=5), padding="circular")
    prior, y = problem(op)
    x = pnp_dm(prior, op, y.repeat(S, 1, 1, 1), prior.sigmas(STEPS), sigma_y=SIGMA_Y, generator=gen())
    assert_exact(scores(x, prior, dense_matrix(op, SHAPE), y))


def test_the_papers_likelihood_leaves_the_posterior_too_wide():
    # noise_split=False at the same rho_min (sigma_y / max s_i): the x-marginal's noise is sigma_y^2 + rho^2,
    # twice sigma_y^2, so the measured pixels' variance is far too large: the reason for the split.
    op = Inpainting(masks(1))
    prior, y = problem(op)
    x = pnp_dm(prior, op, y.repeat(S, 1, 1, 1), prior.sigmas(STEPS), sigma_y=SIGMA_Y, noise_split=False,
               generator=gen())  # fmt: skip
    assert scores(x, prior, dense_matrix(op, SHAPE), y)["var_ratio_max"] > 1.4


def test_langevin_path_matches_the_exact_posterior():
    # A mask as a dense matrix: no SVD, so Langevin likelihood steps; its nonzero singulars all equal ||A|| = 1,
    # where the single noise share is exact.  100 iterations: rho_min = sigma_y / (2 ||A||) is half the SVD
    # path's, so the hole mixes four times slower (at 60 the mean is 1.3-1.8 standard errors off, rms).
    A = dense_matrix(Inpainting(masks(1)), SHAPE)
    A = A[A.abs().sum(1) > 0]  # the measured pixels only: M = 18 rows
    op = Dense(A, SHAPE)
    prior, y = problem(op)
    x = pnp_dm(prior, op, y.repeat(S, 1, 1, 1), prior.sigmas(100), sigma_y=SIGMA_Y, generator=gen())
    assert_exact(scores(x, prior, A, y))


# -- the chain's law in closed form ------------------------------------------------------------------
#
# With a Gaussian prior every step is linear in the state plus Gaussian noise, so the law of x after the
# chain is Gaussian and follows exactly by linear algebra: the likelihood step in A's right singular
# basis, the prior step's ancestral steps on (x, previous D) with D = m + W_s (x - m), W_s = S (S + s^2 I)^-1.


def chain_law(prior, A, y, sigmas, *, order=2, split=True, decay=0.7, inner_steps=8):
    """Mean ``(N,)`` and covariance ``(N, N)`` of ``pnp_dm``'s output on a ``GaussianPrior`` (SVD path).

    ``order=1`` is the prior step with the plain ``D`` (first-order ancestral steps).
    """
    m, cov = prior.mean.to(F64), prior.cov.to(F64)
    lam, Q = torch.linalg.eigh(cov)
    n = m.numel()
    eye, zero = torch.eye(n, dtype=F64), torch.zeros(n, n, dtype=F64)
    U, s, Vh = torch.linalg.svd(A, full_matrices=True)
    V, s_full = Vh.mT, torch.cat([s, torch.zeros(n - s.numel(), dtype=F64)])
    y_bar = torch.zeros(n, dtype=F64)
    y_bar[: s.numel()] = torch.where(s > 0, (U.mT @ y.reshape(-1)) / s.clamp_min(1e-300), torch.zeros_like(s))

    def inner(rho):
        levels = prior.sigmas(inner_steps, rho).tolist()
        levels[0] = rho
        G, Sg, h_prev = torch.cat([eye, zero]), torch.zeros(2 * n, 2 * n, dtype=F64), None  # [x; D_prev] = G z + .
        for sig, sig_next in zip(levels[:-1], levels[1:]):
            W = (Q * (lam / (lam + sig**2))) @ Q.mT
            if sig_next == 0:
                T = torch.cat([W, zero], 1)
                return T @ G, T @ Sg @ T.mT
            h = math.log(sig / sig_next)
            c = 0.0 if h_prev is None or order == 1 else h / (2 * h_prev)
            r2 = (sig_next / sig) ** 2
            T = torch.cat([torch.cat([r2 * eye + (1 - r2) * (1 + c) * W, -(1 - r2) * c * eye], 1),
                           torch.cat([W, zero], 1)])  # fmt: skip
            add = torch.zeros(2 * n, 2 * n, dtype=F64)
            add[:n, :n] = sig_next**2 * (1 - r2) * eye
            G, Sg, h_prev = T @ G, T @ Sg @ T.mT + add, h
        raise AssertionError("levels end in 0")

    rho_min = SIGMA_Y / s.max().item()
    mu, C = m.clone(), zero.clone()  # the start is the prior's mean exactly (an unbounded prior)
    for k in range(len(sigmas) - 1):
        rho = max(sigmas[0].item() * decay**k, rho_min)
        g = (rho * s_full / SIGMA_Y) ** 2
        g = torch.where(s_full > 0, g.clamp(max=1.0) if split else g / (1 + g), torch.zeros_like(g))
        T = (V * (1 - g)) @ V.mT
        z_mu, z_cov = T @ mu + V @ (g * y_bar), T @ C @ T.mT + (V * rho**2 * (1 - g)) @ V.mT
        K, W = inner(rho)
        mu, C = m + K @ (z_mu - m), K @ z_cov @ K.mT + W
    return mu, C


def test_the_chain_law_in_closed_form_is_what_the_sampler_draws():
    prior = GaussianPrior.smooth((1, 4, 4), length_scale=2.0, variance=0.04, mean=0.5)
    op = Inpainting((torch.rand(1, 1, 4, 4, generator=gen(1)) < 0.5).to(F64))
    y = op(prior.sample(1, gen(2), dtype=F64)) + SIGMA_Y * torch.randn(1, 1, 4, 4, generator=gen(3), dtype=F64)
    sigmas, n = prior.sigmas(12), 4000
    mu, C = chain_law(prior, dense_matrix(op, (1, 4, 4)), y, sigmas, inner_steps=4)
    x = pnp_dm(prior, op, y.repeat(n, 1, 1, 1), sigmas, sigma_y=SIGMA_Y, inner_steps=4, generator=gen()).reshape(n, -1)
    v = torch.diagonal(C)
    assert ((x.mean(0) - mu).abs() / (v / n).sqrt()).max() < 4.5
    assert ((x.var(0) / v - 1).abs() / math.sqrt(2 / n)).max() < 4.5
    assert (v / torch.diagonal(prior.cov)).min() < 0.5  # the measurement matters: the check above could fail


def chain_problem(name: str, k: int):
    """Problem ``k`` of ten on 8x8 like the posterior suite's: ``(prior, A, y, exact mean, exact variances)``.

    Inpainting draws its mask, image and noise from seeds ``1 + 10 k``, ``2 + 10 k`` and ``3 + 10 k``; blur its
    image and noise from the last two.
    """
    shape = (1, 8, 8)
    prior = GaussianPrior.smooth(shape)
    op = {"inpainting": Inpainting((torch.rand(1, 1, 8, 8, generator=gen(1 + 10 * k)) < 0.5).to(F64)),
          "blur": Blur(gaussian_kernel(1.0, size=5), padding="circular")}[name]  # fmt: skip
    ax = op(prior.sample(1, gen(2 + 10 * k), dtype=F64))
    y = ax + SIGMA_Y * torch.randn(ax.shape, generator=gen(3 + 10 * k), dtype=F64)
    A = dense_matrix(op, shape)
    mean, cov = gaussian_posterior(prior, A, y, SIGMA_Y)
    return prior, A, y, mean, torch.diagonal(cov)


@pytest.mark.parametrize("name", ["inpainting", "blur"])
def test_the_chain_law_at_the_defaults_is_the_posterior(name):
    """The docstring's closed-form numbers on ten problems: the median variance ratio, and the mean's error at
    the worst pixel in standard errors of 256 samples, at the default 40 iterations and at 100.

    Inpainting measured (40 iterations): 0.06, 0.19, 0.42, 1.21, 1.88, 2.21, 2.43, 2.79, 5.37, 10.1; at 100
    all but problem 7 below 0.25, problem 7 (a 38-pixel hole) 3.3.  Blur: at most 0.26 at 40, 0.04 at 100.
    """

    def law(prior, A, y, mean, v, steps=STEPS, **kw):
        mu, C = chain_law(prior, A, y, prior.sigmas(steps), **kw)
        return (torch.diagonal(C) / v).median().item(), ((mu - mean).abs() / (v / 256).sqrt()).max().item()

    ratios, bias, bias_100 = [], [], []
    for k in range(10):
        problem_k = chain_problem(name, k)
        ratio, b = law(*problem_k)
        ratios.append(ratio)
        bias.append(b)
        bias_100.append(law(*problem_k, steps=100)[1])
    assert all(0.96 < r < 1.0 for r in ratios), ratios
    if name == "blur":
        assert max(bias) < 0.5 and max(bias_100) < 0.1, (bias, bias_100)
    else:
        # The chain mixes slowly inside a large hole: the error at 40 iterations spans two decades.
        assert sorted(bias)[4] < 2.5 and max(bias) < 11.0, bias
        assert sorted(bias_100)[8] < 0.5 and max(bias_100) < 4.0, bias_100
        assert all(b100 < b for b100, b in zip(bias_100, bias)), (bias, bias_100)
    problem_0 = chain_problem(name, 0)
    assert law(*problem_0, order=1)[0] < 0.75  # first-order ancestral steps: p(x | z) too narrow
    assert law(*problem_0, split=False)[0] > 1.1  # the paper's likelihood at the same rho_min: the x-marginal too wide


# -- the reference's likelihood step, in its own units ---------------------------------------------------


def test_likelihood_step_is_the_reference_proximal_generator():
    """``proximal_generator`` of PnP-DM-public (``pnpdm/tasks/__init__.py``) on [-1, 1] images, same draws."""
    m = masks(2)
    op = Inpainting(m)
    prior, y = problem(op, batch=2)
    x = prior.sample(2, gen(5), dtype=F64)
    rho = 0.3
    step, _ = _exact_step(op, y, SIGMA_Y, False, gen(7))
    z = step(x, rho)

    # Reference units: x_m = 2 x - 1, y_m = A x_m + noise = 2 y - A 1, sigma_m = 2 sigma_y, rho_m = 2 rho.
    x_m, y_m = 2 * x - 1, 2 * y - op(torch.ones_like(x))
    sigma, rho_m = 2 * SIGMA_Y, 2 * rho
    s = op._pad(op._s(op.Vt(x)), 36)  # add_zeros(singulars)
    q_inv = 1 / (s**2 / sigma**2 + 1 / rho_m**2)
    n = torch.randn(op.Vt(x).shape, generator=gen(7), dtype=F64)
    noise = op.V(q_inv.sqrt() * n)
    mu = op.V(q_inv * op.Vt(op.adjoint(y_m / sigma**2) + x_m / rho_m**2))
    torch.testing.assert_close(2 * z - 1, mu + noise, rtol=0, atol=1e-12)


# -- noise models, nonlinear operators, NFE, determinism --------------------------------------------------


def test_gaussian_noise_model_is_sigma_y_on_both_paths():
    for op in (Inpainting(masks(1)), Dense(dense_matrix(Inpainting(masks(1)), SHAPE), SHAPE)):
        prior, y = problem(op)
        kw = dict(langevin_steps=5, generator=None)
        a = pnp_dm(prior, op, y, prior.sigmas(4), noise=Gaussian(SIGMA_Y), **{**kw, "generator": gen()})
        b = pnp_dm(prior, op, y, prior.sigmas(4), sigma_y=SIGMA_Y, **{**kw, "generator": gen()})
        assert torch.equal(a, b)


def test_poisson_noise_model_pulls_towards_the_counts():
    # Identity, Poisson counts of a bright image: the posterior mean sits between the prior's mean (0.5) and
    # the measured image, much nearer the latter (about 400 counts a pixel: a relative noise of 5 %).
    prior = smooth_prior()
    x_true = torch.full((1, *SHAPE), 0.8, dtype=F64)
    noise = Poisson(gain=0.002)
    y = noise.sample(x_true, generator=gen(3))
    out = pnp_dm(prior, Identity(), y.repeat(64, 1, 1, 1), prior.sigmas(STEPS), noise=noise, langevin_steps=20,
                 generator=gen())  # fmt: skip
    assert torch.isfinite(out).all()
    mean = out.mean(0)
    assert (mean - 0.8).abs().mean() < 0.05 and (mean - 0.5).abs().mean() > 0.25


def test_nonlinear_operator_runs_with_langevin_steps():
    op = Saturation(alpha=2.0)
    prior = smooth_prior()
    y = op(prior.sample(2, gen(4), dtype=F64))
    out = pnp_dm(prior, op, y, prior.sigmas(4), sigma_y=SIGMA_Y, langevin_steps=10, generator=gen())
    assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()


def test_denoiser_calls_callback_and_determinism():
    op = Inpainting(masks(2))
    prior, y = problem(op, batch=2)
    counting, seen = CountingPrior(prior), []
    sigmas = prior.sigmas(5)
    x = pnp_dm(counting, op, y, sigmas, sigma_y=SIGMA_Y, inner_steps=3, generator=gen(), callback=seen.append)
    assert x.shape == (2, *SHAPE) and counting.calls == 5 * 3
    # The coupling: rho_k = max(sigmas[0] 0.7^k, sigma_y / max s_i), the next one after, 0 at the end.
    rhos = [max(sigmas[0].item() * 0.7**k, SIGMA_Y) for k in range(5)]
    assert [d["sigma"] for d in seen] == pytest.approx(rhos)
    assert [d["sigma_next"] for d in seen] == pytest.approx(rhos[1:] + [0.0])
    assert all(set(d) == {"i", "sigma", "sigma_next", "x", "x0_hat"} for d in seen) and torch.equal(seen[-1]["x"], x)
    assert torch.equal(x, pnp_dm(prior, op, y, sigmas, sigma_y=SIGMA_Y, inner_steps=3, generator=gen()))
    assert not torch.equal(x, pnp_dm(prior, op, y, sigmas, sigma_y=SIGMA_Y, inner_steps=3, generator=gen(1)))


def test_default_rho_min_follows_sigma_y_and_the_operator():
    def last_rho(op, y, **kw):
        seen = []
        pnp_dm(prior, op, y, prior.sigmas(40), langevin_steps=2, inner_steps=1, callback=seen.append,
               generator=gen(), **kw)  # fmt: skip
        return seen[-1]["sigma"]

    prior = smooth_prior()
    y = torch.full((1, *SHAPE), 0.5, dtype=F64)
    half = Inpainting(torch.full(SHAPE, 0.5, dtype=F64))  # every singular 0.5
    assert last_rho(half, y, sigma_y=0.02) == pytest.approx(0.04)  # sigma_y / max s_i
    assert last_rho(half, y, sigma_y=0.0) == RHO_FLOOR
    dense = Dense(0.5 * torch.eye(36, dtype=F64), SHAPE)
    assert last_rho(dense, y.reshape(1, 1, 1, -1), sigma_y=0.02) == pytest.approx(0.02, rel=1e-3)  # sigma_y / 2||A||
    assert last_rho(Identity(), y, noise=Poisson(0.01)) == RHO_FLOOR


# -- the knobs' checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(inner_steps=0), "inner_steps must be an integer >= 1"),
        (dict(inner_steps=2.5), "inner_steps must be an integer >= 1"),
        (dict(langevin_steps=0), "langevin_steps must be an integer >= 1"),
        (dict(decay=0.0), r"decay must lie in \(0, 1\]"),
        (dict(decay=1.5), r"decay must lie in \(0, 1\]"),
        (dict(langevin_step=0.0), r"langevin_step must lie in \(0, 1\]"),
        (dict(rho_min=-0.1), "rho_min must be a positive noise level"),
        (dict(rho_min=math.nan), "rho_min must be a positive noise level"),
        (dict(noise="poisson"), "noise must be a noise model"),
        (dict(sigma_y=-1.0), "sigma_y must be a finite number"),
        (dict(noise=Gaussian(0.1), sigma_y=0.2), "disagrees"),
    ],
)
def test_bad_knobs_are_one_line_errors(kw, match):
    prior = smooth_prior()
    y = torch.zeros(1, *SHAPE, dtype=F64)
    with pytest.raises(ValueError, match=match) as e:
        pnp_dm(prior, Identity(), y, prior.sigmas(2), **{"sigma_y": 0.05, **kw})
    assert "\n" not in str(e.value)


def test_langevin_path_errors():
    prior = smooth_prior()
    op = Dense(torch.eye(36, dtype=F64), SHAPE)
    y = torch.zeros(1, 1, 1, 36, dtype=F64)
    with pytest.raises(ValueError, match="needs sigma_y > 0 or a noise model"):
        pnp_dm(prior, op, y, prior.sigmas(2))
    with pytest.raises(ValueError, match=r"noise_split needs rho_min < sigma_y / \|\|A\|\|"):
        pnp_dm(prior, op, y, prior.sigmas(2), sigma_y=0.05, rho_min=0.05)
    with pytest.raises(ValueError, match="sigmas"):
        pnp_dm(prior, op, y, torch.tensor([1.0, 0.5]), sigma_y=0.05)
    # the paper's likelihood has no such bound
    pnp_dm(prior, op, y, prior.sigmas(2), sigma_y=0.05, rho_min=0.05, noise_split=False, langevin_steps=2)
