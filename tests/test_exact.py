"""invdiff.exact: dense operator matrices, exact Gaussian / mixture posteriors, W2, sample scores."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.distributions import MultivariateNormal

from invdiff.exact import dense_matrix, gaussian_posterior, gmm_posterior, posterior_report, wasserstein2_gaussian
from invdiff.priors import GaussianMixturePrior, GaussianPrior

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_spd(n: int, g: torch.Generator, floor: float = 0.05) -> torch.Tensor:
    L = torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)
    return L @ L.T + floor * torch.eye(n, dtype=F64)


def joint_conditioning(m, S, A, y, sigma_y):
    """Brute force: build the joint Gaussian of (x, y) and condition on y (Schur complement)."""
    n, mm = S.shape[0], A.shape[0]
    J = torch.zeros(n + mm, n + mm, dtype=F64)
    J[:n, :n] = S
    J[:n, n:] = S @ A.T
    J[n:, :n] = A @ S
    J[n:, n:] = A @ S @ A.T + sigma_y**2 * torch.eye(mm, dtype=F64)
    mu = torch.cat([m, A @ m])
    Sxy, Syy = J[:n, n:], J[n:, n:]
    mean = mu[:n] + Sxy @ torch.linalg.solve(Syy, y - mu[n:])
    cov = J[:n, :n] - Sxy @ torch.linalg.solve(Syy, Sxy.T)
    return mean, cov


@pytest.fixture(scope="module")
def problem():
    g = gen(0)
    shape = (1, 3, 4)
    n, mm = 12, 7
    m = torch.rand(n, generator=g, dtype=F64)
    S = random_spd(n, g)
    A = torch.randn(mm, n, generator=g, dtype=F64)
    x = torch.rand(n, generator=g, dtype=F64)
    y = A @ x + 0.1 * torch.randn(mm, generator=g, dtype=F64)
    return GaussianPrior(m, S, shape=shape), A, y


# -- dense_matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [256, 5])
def test_dense_matrix_of_a_matrix_operator(batch_size):
    W = torch.randn(10, 12, generator=gen(1), dtype=F64)

    def op(x):
        return (x.reshape(x.shape[0], -1) @ W.T).reshape(x.shape[0], 1, 2, 5)

    torch.testing.assert_close(dense_matrix(op, (1, 3, 4), batch_size=batch_size), W, rtol=0, atol=0)
    torch.testing.assert_close(dense_matrix(op, (1, 1, 3, 4)), W, rtol=0, atol=0)


def test_dense_matrix_of_complex_fft_interleaves_real_imag():
    h, w = 3, 4
    Fh = np.exp(-2j * np.pi * np.outer(np.arange(h), np.arange(h)) / h) / np.sqrt(h)
    Fw = np.exp(-2j * np.pi * np.outer(np.arange(w), np.arange(w)) / w) / np.sqrt(w)
    F = np.kron(Fh, Fw)  # row-major (h, w) pixels
    expected = np.empty((2 * h * w, h * w))
    expected[0::2], expected[1::2] = F.real, F.imag
    got = dense_matrix(lambda x: torch.fft.fft2(x, norm="ortho"), (1, h, w))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-14)


def test_dense_matrix_rejects_affine_and_bad_shapes():
    with pytest.raises(ValueError, match="not linear"):
        dense_matrix(lambda x: x + 1.0, (1, 2, 2))
    with pytest.raises(ValueError, match="x_shape"):
        dense_matrix(lambda x: x, (4, 4))


# -- gaussian_posterior -----------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_y", [0.3, 0.01])
def test_gaussian_posterior_equals_joint_conditioning_and_information_form(problem, sigma_y):
    prior, A, y = problem
    mean, cov = gaussian_posterior(prior, A, y, sigma_y)
    m_ref, c_ref = joint_conditioning(prior.mean, prior.cov, A, y, sigma_y)
    torch.testing.assert_close(mean, m_ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(cov, c_ref, rtol=0, atol=1e-10)
    # information form: cov = (S^-1 + A^T A / sigma_y^2)^-1, mean = cov (S^-1 m + A^T y / sigma_y^2)
    P = torch.linalg.inv(prior.cov) + A.T @ A / sigma_y**2
    c_inf = torch.linalg.inv(P)
    m_inf = c_inf @ (torch.linalg.solve(prior.cov, prior.mean) + A.T @ y / sigma_y**2)
    torch.testing.assert_close(mean, m_inf, rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, c_inf, rtol=0, atol=1e-10)


def test_gaussian_posterior_noiseless_inpainting_is_subset_conditioning():
    prior = GaussianPrior.smooth((1, 4, 4), length_scale=1.5, variance=0.05)
    obs = torch.tensor([0, 3, 5, 6, 9, 12, 15])
    mis = torch.tensor([i for i in range(16) if i not in obs.tolist()])
    mask = torch.zeros(16, dtype=F64)
    mask[obs] = 1.0
    A = torch.diag(mask)  # full-grid inpainting: zero rows at missing pixels
    x = prior.sample(1, gen(2), dtype=F64).reshape(-1)
    y = A @ x
    mean, cov = gaussian_posterior(prior, A, y, 0.0)
    # observed pixels are known exactly
    torch.testing.assert_close(mean[obs], x[obs], rtol=0, atol=1e-9)
    assert cov[obs][:, obs].abs().max() < 1e-9
    # missing pixels: N(m_u + S_uo S_oo^-1 (x_o - m_o), S_uu - S_uo S_oo^-1 S_ou)
    S, m = prior.cov, prior.mean
    Suo, Soo = S[mis][:, obs], S[obs][:, obs]
    m_ref = m[mis] + Suo @ torch.linalg.solve(Soo, x[obs] - m[obs])
    c_ref = S[mis][:, mis] - Suo @ torch.linalg.solve(Soo, Suo.T)
    torch.testing.assert_close(mean[mis], m_ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(cov[mis][:, mis], c_ref, rtol=0, atol=1e-10)
    assert torch.linalg.eigvalsh(cov).min() > -1e-12
    # and sigma_y -> 0 approaches it continuously
    mean_s, cov_s = gaussian_posterior(prior, A, y, 1e-5)
    assert (mean_s - mean).abs().max() < 1e-5 and (cov_s - cov).abs().max() < 1e-6


def test_identity_posterior_mean_is_the_denoiser(problem):
    """A = I, sigma_y = sigma: E[x | y] is exactly the prior's denoiser at level sigma."""
    prior, _, _ = problem
    y = torch.randn(12, generator=gen(3), dtype=F64)
    mean, _ = gaussian_posterior(prior, torch.eye(12, dtype=F64), y, 0.4)
    torch.testing.assert_close(mean, prior.denoise(y.reshape(1, *prior.shape), 0.4).reshape(-1), rtol=0, atol=1e-10)


def test_gaussian_posterior_bad_input(problem):
    prior, A, y = problem
    with pytest.raises(ValueError, match="A has shape"):
        gaussian_posterior(prior, A[:, :5], y, 0.1)
    with pytest.raises(ValueError, match="y has"):
        gaussian_posterior(prior, A, y[:3], 0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        gaussian_posterior(prior, A, y, -1.0)
    with pytest.raises(ValueError, match="GaussianPrior"):
        gaussian_posterior(object(), A, y, 0.1)


# -- gmm_posterior ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gmm_problem():
    g = gen(4)
    n, mm, K = 8, 5, 3
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = 2 * torch.rand(K, n, generator=g, dtype=F64) - 1
    covs = torch.stack([0.2 * random_spd(n, g) for _ in range(K)])
    prior = GaussianMixturePrior(w, means, covs, shape=(2, 2, 2))
    A = torch.randn(mm, n, generator=g, dtype=F64) / 2
    y = A @ (means[0] + means[1]) / 2 + 0.05 * torch.randn(mm, generator=g, dtype=F64)
    return prior, A, y


def test_gmm_posterior_against_direct_evaluation(gmm_problem):
    prior, A, y = gmm_problem
    sigma_y = 0.2
    weights, means, covs = gmm_posterior(prior, A, y, sigma_y)
    eye = torch.eye(A.shape[0], dtype=F64)
    evidence = [
        MultivariateNormal(A @ prior.means[k], A @ prior.covs[k] @ A.T + sigma_y**2 * eye).log_prob(y) for k in range(3)
    ]
    logw = torch.log(prior.weights) + torch.stack(evidence)
    torch.testing.assert_close(weights, torch.softmax(logw, 0), rtol=0, atol=1e-12)
    assert weights.max() < 0.99  # a real mixture, not one component
    for k in range(3):
        m_ref, c_ref = joint_conditioning(prior.means[k], prior.covs[k], A, y, sigma_y)
        torch.testing.assert_close(means[k], m_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(covs[k], c_ref, rtol=0, atol=1e-10)


def test_gmm_identity_posterior_mean_is_the_denoiser(gmm_problem):
    prior, _, _ = gmm_problem
    y = prior.sample(1, gen(5), dtype=F64) + 0.3 * torch.randn(1, 2, 2, 2, generator=gen(6), dtype=F64)
    weights, means, _ = gmm_posterior(prior, torch.eye(8, dtype=F64), y, 0.3)
    torch.testing.assert_close((weights[:, None] * means).sum(0), prior.denoise(y, 0.3).reshape(-1), rtol=0, atol=1e-10)
    torch.testing.assert_close(weights, prior.responsibilities(y, 0.3)[0], rtol=0, atol=1e-12)


# -- W2 and posterior_report ----------------------------------------------------------------------------


def test_w2_identical_is_zero_and_symmetric():
    g = gen(7)
    m = torch.randn(6, generator=g, dtype=F64)
    C = random_spd(6, g)
    assert wasserstein2_gaussian(m, C, m, C) < 1e-6
    m2, C2 = torch.randn(6, generator=g, dtype=F64), random_spd(6, g)
    assert wasserstein2_gaussian(m, C, m2, C2) == pytest.approx(wasserstein2_gaussian(m2, C2, m, C), rel=1e-10)


def test_w2_closed_forms():
    # 1-D: W2 = sqrt((m1 - m2)^2 + (s1 - s2)^2)
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    w = wasserstein2_gaussian(t([0.3]), t([[4.0]]), t([-0.1]), t([[0.25]]))
    assert w == pytest.approx(math.sqrt(0.4**2 + 1.5**2), rel=1e-12)
    # commuting (diagonal) covariances: sum of per-axis terms
    a, b = t([1.0, 2.0, 0.5]), t([0.3, 2.0, 1.5])
    w = wasserstein2_gaussian(torch.zeros(3), torch.diag(a), torch.ones(3), torch.diag(b))
    assert w == pytest.approx(math.sqrt(3 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()), rel=1e-12)


def test_w2_non_commuting_against_scipy_sqrtm():
    g = gen(8)
    C1, C2 = random_spd(5, g).numpy(), random_spd(5, g).numpy()
    r1 = scipy.linalg.sqrtm(C1).real
    ref = math.sqrt(np.trace(C1) + np.trace(C2) - 2 * np.trace(scipy.linalg.sqrtm(r1 @ C2 @ r1).real) + 1.0)
    m2 = torch.full((5,), 1 / math.sqrt(5), dtype=F64)  # |m1 - m2|^2 = 1
    got = wasserstein2_gaussian(torch.zeros(5, dtype=F64), torch.from_numpy(C1), m2, torch.from_numpy(C2))
    assert got == pytest.approx(ref, rel=1e-9)


def test_posterior_report_scores_exact_and_wrong_samples():
    g = gen(9)
    n, S = 16, 4000
    mean = torch.rand(n, generator=g, dtype=F64)
    cov = torch.diag(0.01 + 0.05 * torch.rand(n, generator=g, dtype=F64))
    cov[0, 1] = cov[1, 0] = 0.5 * math.sqrt(cov[0, 0] * cov[1, 1])
    post = GaussianPrior(mean, cov, shape=(1, 4, 4))
    x = post.sample(S, gen(10), dtype=F64)
    rep = posterior_report(x, mean, cov)
    # exact samples: z-scores of 16 pixels (rms ~ 1, max < 4), variance ratios 1 +- 3 sqrt(2/S) = 1 +- 0.07
    assert 0.5 < rep["mean_err_rms_se"] < 1.5 and rep["mean_err_max_se"] < 4
    assert 0.93 < rep["var_ratio_min"] and rep["var_ratio_max"] < 1.07
    assert abs(rep["var_ratio_median"] - 1) < 0.03
    assert rep["w2_rel"] < 0.1 and rep["n_samples"] == S  # the finite-S fit alone gives ~0.035 here
    # a half-standard-deviation bias and a doubled spread are caught
    sd = torch.diagonal(cov).sqrt()
    assert posterior_report(x + 0.5 * sd.reshape(1, 1, 4, 4), mean, cov)["mean_err_max_se"] > 20
    wide = posterior_report(mean + 2 * (x.reshape(S, -1) - mean), mean, cov)
    assert 3.5 < wide["var_ratio_median"] < 4.5 and wide["w2_rel"] > 0.9
    with pytest.raises(ValueError, match="pixels"):
        posterior_report(x, mean[:5], cov)
