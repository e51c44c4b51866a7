"""The shared sampler maths of ``invdiff.samplers.common``, checked against exact answers."""

from __future__ import annotations

import math

import pytest
import torch

from invdiff.exact import dense_matrix
from invdiff.operators import LinearOperator, Operator
from invdiff.operators.downsampling import Downsampling
from invdiff.operators.inpainting import Inpainting
from invdiff.priors import GaussianPrior, Prior
from invdiff.samplers.common import (
    ancestral_sigmas,
    ancestral_step,
    bdot,
    check_sigmas,
    conjugate_gradient,
    denoise_vjp,
    linearize,
    operator_norm,
    per_sample_norm,
    randn,
    ridge_adjoint_solve,
    vp_alpha_bar,
)

F64 = torch.float64


class CountingPrior(Prior):
    """Delegates to ``inner`` and counts ``denoise`` calls."""

    def __init__(self, inner: Prior) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.sigma_min, self.sigma_max, self.data_range = inner.sigma_min, inner.sigma_max, inner.data_range

    def denoise(self, x, sigma):
        self.calls += 1
        return self.inner.denoise(x, sigma)


class Dense(LinearOperator):
    """A dense matrix ``(M, N)`` acting on ``(B, C, H, W)`` images; measurements ``(B, M)``. No SVD."""

    def __init__(self, A: torch.Tensor, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.A, self.shape = A, shape

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.A.mT.to(x)

    def adjoint(self, y):
        return (y @ self.A.to(y)).reshape(y.shape[0], *self.shape)


class Squash(Operator):
    """A nonlinear operator ``x -> 2 tanh(x)`` (Jacobian ``2 / cosh^2``, norm at most 2)."""

    def forward(self, x):
        return 2 * torch.tanh(x)


def diag_prior(variances: list[float], mean: float = 0.5) -> GaussianPrior:
    v = torch.tensor(variances, dtype=F64)
    return GaussianPrior(torch.full((1, 1, len(variances)), mean, dtype=F64), v.reshape(1, 1, -1))


# -- helpers ----------------------------------------------------------------------------------------


def test_randn_is_seeded_and_follows_like():
    like = torch.zeros(3, dtype=F64)
    a = randn((4, 5), torch.Generator().manual_seed(3), like=like)
    b = randn((4, 5), torch.Generator().manual_seed(3), like=like)
    c = randn((4, 5), torch.Generator().manual_seed(4), like=like)
    assert a.dtype == F64 and a.shape == (4, 5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_sample_norm_and_dot():
    x = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 0.0]]]])
    assert per_sample_norm(x).tolist() == [5.0, 0.0]
    assert bdot(x, x).tolist() == [25.0, 0.0]
    # The gradient of the norm at 0 is 0, not NaN (DPS may meet y = A x0_hat).
    z = torch.zeros(2, 3, requires_grad=True)
    per_sample_norm(z).sum().backward()
    assert torch.equal(z.grad, torch.zeros(2, 3))


def test_check_sigmas_rejects_bad_schedules():
    assert check_sigmas(torch.tensor([2.0, 1.0, 0.0])) == [2.0, 1.0, 0.0]
    for bad, msg in [
        (torch.tensor([1.0]), "at least 2"),
        (torch.tensor([2.0, 1.0]), "end in exactly 0"),
        (torch.tensor([1.0, 2.0, 0.0]), "strictly decreasing"),
        (torch.tensor([1.0, float("nan"), 0.0]), "NaN"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_sigmas(bad)


def test_vp_alpha_bar_matches_a_ddpm_schedule():
    # DDPM linear schedule: sigma_m = sqrt((1 - abar) / abar) on [-1, 1], sigma = sigma_m / 2 in data units.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    abar = torch.cumprod(1 - betas, 0)
    sigma = ((1 - abar) / abar).sqrt() / 2
    got = torch.tensor([vp_alpha_bar(s) for s in sigma.tolist()], dtype=F64)
    torch.testing.assert_close(got, abar, rtol=1e-12, atol=0)


# -- the ancestral / DDIM step -----------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ancestral_sigmas(eta):
    sigma, sigma_next = 2.0, 0.5
    down, up = ancestral_sigmas(sigma, sigma_next, eta)
    assert down**2 + up**2 == pytest.approx(sigma_next**2)
    # DDIM's sigma_t(eta) (Song et al. 2021, eq. 16) in VP units, divided by sqrt(abar_{t-1}).
    a, a_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    ddim = eta * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(1 - a / a_next)
    assert up == pytest.approx(ddim / math.sqrt(a_next))
    if eta == 1.0:
        assert down == pytest.approx(sigma_next**2 / sigma)  # DDPM posterior mean weight


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ancestral_step_with_true_x0_keeps_the_marginal_exactly(eta):
    # x = x0 + sigma n  ->  x0 + sigma_next n' in distribution (DDIM's defining property).
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.3, dtype=F64)
    x = x0 + 1.5 * torch.randn(x0.shape, generator=g, dtype=F64)
    out = ancestral_step(x, x0, 1.5, 0.4, eta, generator=g)
    se_var = 0.4**2 * math.sqrt(2 / n)
    assert abs((out - x0).mean().item()) < 4 * 0.4 / math.sqrt(n)
    assert abs((out - x0).var().item() - 0.4**2) < 4 * se_var


def test_ancestral_step_marginal_with_exact_gaussian_denoiser():
    # Prior N(m, diag(lam)); x ~ N(m, lam + sigma^2).  With the exact denoiser the step is linear:
    # x' - m = k (x - m) + sigma_up z,  k = (lam + sigma_down sigma) / (lam + sigma^2), so
    # Var[x'] = lam + sigma'^2 - lam (sigma - sigma_down)^2 / (lam + sigma^2): the target minus the
    # (1 - sigma_down / sigma)^2 Var[x0 | x] a plug-in x0_hat leaves out.  It vanishes as sigma' -> sigma.
    lam = torch.tensor([0.04, 0.01, 1e-4, 1.0], dtype=F64)
    prior = diag_prior(lam.tolist())
    g = torch.Generator().manual_seed(1)
    n = 100_000
    for sigma, sigma_next in [(0.3, 0.1), (0.3, 0.297)]:
        x = prior.mean.reshape(1, 1, 1, -1) + (lam + sigma**2).sqrt() * torch.randn(n, 1, 1, 4, generator=g, dtype=F64)
        out = ancestral_step(x, prior.denoise(x, sigma), sigma, sigma_next, 1.0, generator=g)
        down, _ = ancestral_sigmas(sigma, sigma_next, 1.0)
        expected = lam + sigma_next**2 - lam * (sigma - down) ** 2 / (lam + sigma**2)
        var = (out - prior.mean.reshape(1, 1, 1, -1)).pow(2).mean(0).flatten()
        torch.testing.assert_close(var, expected, rtol=4 * math.sqrt(2 / n), atol=0)
    # For the small step the plug-in defect is below 0.1 % of the target: the marginal is kept.
    assert (expected / (lam + sigma_next**2)).min() > 0.999


# -- gradients -----------------------------------------------------------------------------------------


def test_denoise_vjp_matches_autograd_and_calls_the_prior_once():
    prior = GaussianPrior.smooth((1, 4, 4))
    counting = CountingPrior(prior)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=F64)
    y = torch.randn(3, 1, 4, 4, generator=g, dtype=F64)
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=F64)

    def loss_fn(x0):
        return per_sample_norm(y - x0**2)

    with torch.no_grad():  # as restore() runs samplers
        x0_hat, grad, loss = denoise_vjp(counting, x, sigma, loss_fn)
    assert counting.calls == 1
    # Reference: a separate autograd computation, one sample at a time.
    for b in range(3):
        xb = x[b : b + 1].clone().requires_grad_(True)
        lb = per_sample_norm(y[b : b + 1] - prior.denoise(xb, sigma[b : b + 1]) ** 2)
        (gb,) = torch.autograd.grad(lb.sum(), xb)
        torch.testing.assert_close(grad[b : b + 1], gb, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(loss[b], lb[0].detach())
    torch.testing.assert_close(x0_hat, prior.denoise(x, sigma))
    assert not grad.requires_grad and not x0_hat.requires_grad


def test_linearize_vjp_of_a_nonlinear_operator():
    op = Squash()
    x = torch.linspace(-1, 1, 8, dtype=F64).reshape(1, 1, 2, 4)
    v = torch.randn(1, 1, 2, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    ax, vjp = linearize(op, x)
    torch.testing.assert_close(ax, 2 * torch.tanh(x))
    torch.testing.assert_close(vjp(v), v * 2 / torch.cosh(x) ** 2)
    torch.testing.assert_close(vjp(2 * v), 2 * v * 2 / torch.cosh(x) ** 2)  # reusable


# -- linear algebra ------------------------------------------------------------------------------------


def test_conjugate_gradient_solves_per_sample_spd_systems():
    g = torch.Generator().manual_seed(3)
    n = 12
    B = torch.randn(2, n, n, generator=g, dtype=F64)
    M = B @ B.mT + torch.tensor([0.1, 5.0], dtype=F64).reshape(2, 1, 1) * torch.eye(n, dtype=F64)  # per-sample SPD
    b = torch.randn(2, 1, 3, 4, generator=g, dtype=F64)

    def apply(v):
        return (M @ v.reshape(2, n, 1)).reshape(v.shape)

    x = conjugate_gradient(apply, b, iters=200, tol=1e-12)
    exact = torch.linalg.solve(M, b.reshape(2, n, 1)).reshape(b.shape)
    torch.testing.assert_close(x, exact, rtol=1e-8, atol=1e-10)
    # Too few iterations leave a residual: the iteration count is honoured.
    x2 = conjugate_gradient(apply, b, iters=2, tol=1e-12)
    assert (x2 - exact).abs().max() > 1e-3


def test_ridge_adjoint_solve_svd_and_cg_match_the_dense_formula():
    g = torch.Generator().manual_seed(4)
    shape = (1, 4, 4)
    x = torch.randn(2, *shape, generator=g, dtype=F64)
    mask = (torch.rand(1, *shape, generator=g) > 0.4).to(F64)
    for op in [Inpainting(mask), Downsampling(2)]:
        v = op(x)
        A = dense_matrix(op, shape)
        for lam in [0.0, 0.3]:
            got = ridge_adjoint_solve(op, v, lam).reshape(2, -1)
            if lam == 0:
                want = v.reshape(2, -1) @ torch.linalg.pinv(A).mT  # A^+ v, zero singulars dropped
            else:
                K = A @ A.mT + lam * torch.eye(A.shape[0], dtype=F64)
                want = v.reshape(2, -1) @ (A.mT @ torch.linalg.inv(K)).mT
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # Without an SVD: conjugate gradients in measurement space, per-sample lam.
    A = torch.randn(6, 16, generator=g, dtype=F64)
    op = Dense(A, shape)
    v = torch.randn(2, 6, generator=g, dtype=F64)
    lam = torch.tensor([0.0, 0.5], dtype=F64)
    got = ridge_adjoint_solve(op, v, lam, cg_iters=50, tol=1e-14).reshape(2, -1)
    for b in range(2):
        want = A.mT @ torch.linalg.solve(A @ A.mT + lam[b] * torch.eye(6, dtype=F64), v[b])
        torch.testing.assert_close(got[b], want, rtol=1e-8, atol=1e-10)


def test_operator_norm():
    g = torch.Generator().manual_seed(5)
    shape = (1, 4, 4)
    x = torch.randn(2, *shape, generator=g, dtype=F64)
    # SVD: the largest singular, per sample (a per-sample mask with one empty image).
    masks = torch.stack([torch.ones(shape), torch.zeros(shape)]).to(F64)
    assert operator_norm(Inpainting(masks), x).tolist() == [1.0, 0.0]
    assert operator_norm(Downsampling(2), x).tolist() == pytest.approx([0.5, 0.5])
    # Linear without SVD: power iterations approach ||A||_2 from below.
    A = torch.randn(6, 16, generator=g, dtype=F64)
    est = operator_norm(Dense(A, shape), x, iters=100)
    torch.testing.assert_close(est, torch.linalg.matrix_norm(A, ord=2).expand(2), rtol=1e-6, atol=0)
    # Nonlinear: the Jacobian norm at x, max_i 2 / cosh^2(x_i).
    est = operator_norm(Squash(), x, iters=200)
    want = (2 / torch.cosh(x) ** 2).flatten(1).amax(1)
    torch.testing.assert_close(est, want, rtol=1e-4, atol=0)


def test_spectral_measurement_on_downsampling_matches_the_dense_svd():
    from invdiff.exact import dense_matrix
    from invdiff.operators import Downsampling
    from invdiff.samplers.common import spectral_measurement

    op = Downsampling(2, filter="box", image_size=(4, 4))
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    y = op(x)
    y_bar, nu, measured, m, n = spectral_measurement(op, y, 0.1)
    assert (m, n) == (4, 16) and bool(measured.all())
    # box averaging of 2x2 blocks: every singular value is 1/2, so nu = 0.1 / (1/2)
    torch.testing.assert_close(nu, torch.full((1, 4), 0.2, dtype=torch.float64))
    # y_bar = Sigma^-1 U^T y equals V^T x on the measured components
    torch.testing.assert_close(y_bar, op.Vt(x)[:, :m])
    s = torch.linalg.svdvals(dense_matrix(op, (1, 1, 4, 4)))
    torch.testing.assert_close(s, torch.full((4,), 0.5, dtype=torch.float64))


def test_spectral_measurement_nu_max_drops_components_noisier_than_it():
    from invdiff.samplers.common import spectral_measurement

    op = Downsampling(2, filter="box", image_size=(4, 4))  # every singular 1/2: nu = 2 sigma_y
    y = op(torch.rand(1, 1, 4, 4, dtype=torch.float64))
    kept = spectral_measurement(op, y, 0.1, nu_max=0.2)  # nu = 0.2: at the bound, kept
    assert bool(kept[2].all())
    y_bar, nu, measured, _, _ = spectral_measurement(op, y, 0.1, nu_max=0.19)
    assert not bool(measured.any()) and bool(torch.isinf(nu).all()) and bool((y_bar == 0).all())


@pytest.mark.parametrize("method", ["ddrm", "ddnm"])
def test_svd_samplers_ignore_components_measured_above_nu_max(method):
    from invdiff import samplers

    sampler = getattr(samplers, method)
    g = torch.Generator().manual_seed(0)
    prior = GaussianPrior.smooth((1, 4, 4), length_scale=1.5)
    op = Inpainting((torch.rand(1, 4, 4, generator=g) < 0.5).to(torch.float64))
    y1, y2 = (op(torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)) for _ in range(2))
    sigmas = torch.linspace(2.0, 0.0, 11, dtype=torch.float64)

    def run(y: torch.Tensor, nu_max: float | None) -> torch.Tensor:
        return sampler(prior, op, y, sigmas, sigma_y=0.3, nu_max=nu_max, generator=torch.Generator().manual_seed(1))

    # nu = sigma_y = 0.3 on observed pixels: nu_max 0.2 makes every pixel unmeasured, so y has no effect
    torch.testing.assert_close(run(y1, 0.2), run(y2, 0.2), rtol=0, atol=0)
    # nu_max above nu changes nothing against the paper's rule (None), and y matters again
    torch.testing.assert_close(run(y1, 1.0), run(y1, None), rtol=0, atol=0)
    assert not torch.allclose(run(y1, 1.0), run(y2, 1.0))
    with pytest.raises(ValueError, match="nu_max"):
        run(y1, 0.0)
