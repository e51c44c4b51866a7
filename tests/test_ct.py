"""CT: limited-angle geometry, dense SVD, FBP and TV baselines, HU, low-dose statistics, DPS with Poisson, volumes."""

from __future__ import annotations

import math

import pytest
import torch

from invdiff import restore
from invdiff.medical.ct import (
    SETUPS,
    PostLogGaussian,
    ct_operator,
    hu_to_mu,
    normalized,
    hu_to_unit,
    low_dose,
    mu_to_hu,
    parse_window,
    post_log,
    tv_reconstruction,
    unit_to_hu,
)
from invdiff.operators import BeerLambert, Identity, Tomography
from invdiff.operators.tomography import TomographySVD
from invdiff.priors import GaussianPrior
from invdiff.cli.tasks import build_operator, measurement_noise, operator_for
from invdiff.volume import restore_batch, restore_volume, slices, stack

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense(fn, in_shape: tuple[int, ...]) -> torch.Tensor:
    """``(out_dim, in_dim)`` matrix of a linear map on items of ``in_shape`` (batch of basis vectors)."""
    n = math.prod(in_shape)
    return fn(torch.eye(n, dtype=D).reshape(n, *in_shape)).reshape(n, -1).T


def shepp_logan(size: int) -> torch.Tensor:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return torch.as_tensor(resize(shepp_logan_phantom(), (size, size), anti_aliasing=True))[None, None].float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


# -- geometry ------------------------------------------------------------------------------------


def test_limited_angle_views_and_weights():
    op = Tomography(6, 8, arc=90.0)
    torch.testing.assert_close(op.angles, torch.arange(6, dtype=D) * 15.0)
    # each view weighs its angular width: the arc in all, pi for a full scan
    torch.testing.assert_close(op.view_weights, torch.full((6,), math.radians(15.0), dtype=D))
    torch.testing.assert_close(Tomography(7, 8).view_weights.sum(), torch.tensor(math.pi, dtype=D))
    # uneven views: half the gaps to both neighbours (on the 180-degree circle), capped at the median gap
    w = Tomography(torch.tensor([0.0, 10.0, 30.0, 100.0]), 8).view_weights
    # gaps 10, 20, 70, 80 (100 -> 180), median 20: halves 5, 10, 10, 10
    torch.testing.assert_close(w, torch.deg2rad(torch.tensor([15.0, 15.0, 20.0, 20.0], dtype=D)))


@pytest.mark.parametrize("arc, size", [(90.0, (6, 8)), (120.0, (7, 7)), (45.0, (5, 9))])
def test_limited_angle_adjoint_matches_dense_matrix(arc, size):
    op = Tomography(5, size, arc=arc)
    a = op.matrix()
    one = (1, *size)
    y_shape = (1, op.n_detectors, op.n_angles)
    # forward and back-projection are the dense matrix and its transpose (sinogram bins angle-major in `matrix`)
    to_rows = lambda y: y.transpose(-1, -2)  # noqa: E731
    torch.testing.assert_close(dense(lambda x: to_rows(op(x)), one), a, rtol=1e-12, atol=1e-12)
    back = dense(lambda y: op.adjoint(to_rows(y.reshape(-1, 1, op.n_angles, op.n_detectors))), (a.shape[0],))
    torch.testing.assert_close(back, a.T, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, *one, generator=gen(1), dtype=D)
    y = torch.randn(2, *y_shape, generator=gen(2), dtype=D)
    assert torch.isclose((op(x) * y).sum(), (x * op.adjoint(y)).sum(), rtol=1e-12)


@pytest.mark.parametrize("views", [5, 12])  # 60 < 64 bins than pixels, then 144 > 64
def test_dense_svd_reconstructs_the_matrix(views):
    tomo = Tomography(views, 8, arc=150.0)
    a = tomo.matrix()
    op = TomographySVD(tomo, rtol=0.0)
    m, n = a.shape
    k = min(m, n)
    assert op.u.shape == (m, k) and op.v.shape == (n, n) and op.s.shape == (k,)
    u, s, v = op.u.double(), op.s.double(), op.v.double()
    torch.testing.assert_close(u @ torch.diag(s) @ v[:, :k].T, a, rtol=0, atol=2e-5 * float(s.max()))
    torch.testing.assert_close(s, torch.linalg.svdvals(a), rtol=0, atol=1e-5 * float(s.max()))
    torch.testing.assert_close(v.T @ v, torch.eye(n, dtype=D), rtol=0, atol=1e-5)
    torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=D), rtol=0, atol=1e-5)
    # the derived forward / adjoint / pinv / solve agree with the geometry and dense algebra
    x = torch.randn(2, 1, 8, 8, generator=gen(3))
    y = tomo.float()(x)
    torch.testing.assert_close(op(x), y, rtol=0, atol=1e-4)
    torch.testing.assert_close(op.adjoint(y), tomo.float().adjoint(y), rtol=0, atol=1e-3)
    cut = TomographySVD(tomo, rtol=1e-3)  # the same cached factors, singulars below 1e-3 s_max dropped
    lstsq = torch.linalg.pinv(a, rtol=1e-3) @ y[0, 0].T.reshape(-1).double()
    torch.testing.assert_close(cut.pinv(y)[0, 0].reshape(-1).double(), lstsq, rtol=0, atol=1e-3)
    solve = torch.linalg.solve(0.5 * a @ a.T + 0.2 * torch.eye(m, dtype=D), y[0, 0].T.reshape(-1).double())
    torch.testing.assert_close(op.solve(y, 0.5, 0.2)[0, 0].T.reshape(-1).double(), solve, rtol=0, atol=1e-4)


def test_dense_svd_zeroes_round_off_singulars_and_refuses_large_images():
    op = TomographySVD(Tomography(7, 8, arc=90.0))  # 7 * 12 = 84 bins, rank below 64
    op(torch.zeros(1, 1, 8, 8))
    s = op.s
    assert (s == 0).any() and (s[s > 0] >= op.rtol * s.max()).all()
    assert op.singulars.shape == (64,) and "rank=" in repr(op)
    with pytest.raises(ValueError, match="too large .* use a method that needs no SVD"):
        Tomography(30, 256).svd()


def test_svd_disk_cache_round_trips(tmp_path):
    tomo = Tomography(3, 6, arc=60.0)
    TomographySVD._memory.pop(tomo.geometry_key(), None)
    first = TomographySVD(tomo, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tomography-svd-*.safetensors"))) == 1
    TomographySVD._memory.pop(tomo.geometry_key(), None)
    second = TomographySVD(tomo, cache_dir=tmp_path)  # read back from disk
    torch.testing.assert_close(first.v, second.v, rtol=0, atol=0)
    assert tomo.geometry_key() != Tomography(3, 6, arc=90.0).geometry_key()


def test_scale_and_normalized_operator():
    tomo = Tomography(9, 12, arc=120.0)
    scaled = Tomography(9, 12, arc=120.0, scale=0.25)
    x = torch.rand(2, 1, 12, 12, generator=gen(8), dtype=D)
    torch.testing.assert_close(scaled(x), 0.25 * tomo(x))
    torch.testing.assert_close(scaled.adjoint(tomo(x)), 0.25 * tomo.adjoint(tomo(x)))
    torch.testing.assert_close(scaled.matrix(), 0.25 * tomo.matrix())
    torch.testing.assert_close(scaled.fbp(scaled(x)), tomo.fbp(tomo(x)))  # FBP answers in image units
    unit = normalized(tomo)
    assert math.isclose(float(torch.linalg.matrix_norm(unit.matrix(), 2)), 1.0, rel_tol=1e-6)
    assert ct_operator(12).scale == normalized(Tomography(30, 12)).scale and ct_operator(12, normalize=False).scale == 1
    assert tomo.geometry_key() != scaled.geometry_key()
    with pytest.raises(ValueError, match="scale must be a positive"):
        Tomography(4, 8, scale=0.0)


# -- baselines ----------------------------------------------------------------------------------


def test_fbp_shepp_logan_64():
    x = shepp_logan(64)
    full = Tomography(180, 64)
    assert psnr(full.fbp(full(x)), x) > 26.5  # measured 27.5 dB
    limited = Tomography(90, 64, arc=90.0)
    assert psnr(limited.fbp(limited(x)), x) < 19.0  # measured 17.1 dB: the missing wedge


def test_tv_pdhg_matches_scikit_image_rof_denoising():
    """With A = I the problem is ROF denoising, which scikit-image solves by Chambolle's projection algorithm."""
    from skimage.restoration import denoise_tv_chambolle

    y = torch.zeros(16, 16, dtype=D)
    y[4:12, 5:11] = 1.0
    y += 0.2 * torch.randn(16, 16, generator=gen(4), dtype=D)
    ref = denoise_tv_chambolle(y.numpy(), weight=0.1, eps=1e-10, max_num_iter=20000)
    rec = tv_reconstruction(y[None, None], Identity(), lam=0.1, iters=1000, nonneg=False)
    torch.testing.assert_close(rec[0, 0], torch.from_numpy(ref), rtol=0, atol=5e-4)  # measured 9.4e-5


def test_tv_beats_fbp_on_sparse_views():
    x = shepp_logan(32)
    op = Tomography(12, 32)
    y = op(x) + 0.05 * torch.randn(op(x).shape, generator=gen(6))
    fbp, tv = op.fbp(y).clamp(0, 1), tv_reconstruction(y, op, lam=1e-3, iters=300).clamp(0, 1)
    assert psnr(tv, x) > psnr(fbp, x) + 2.0  # measured 28.1 vs 24.8 dB


# -- HU -----------------------------------------------------------------------------------------


def test_hounsfield_units():
    mu = torch.tensor([0.0, 0.01929, 2 * 0.01929], dtype=D)
    torch.testing.assert_close(mu_to_hu(mu), torch.tensor([-1000.0, 0.0, 1000.0], dtype=D))
    torch.testing.assert_close(hu_to_mu(mu_to_hu(mu)), mu)
    hu = torch.tensor([-1000.0, -200.0, 0.0, 40.0, 1000.0, 3000.0], dtype=D)
    x = hu_to_unit(hu)  # "ct" window: air -> 0, water -> 1/2, proportional to mu
    torch.testing.assert_close(x, torch.tensor([0.0, 0.4, 0.5, 0.52, 1.0, 2.0], dtype=D))
    torch.testing.assert_close(x, hu_to_mu(hu) / (2 * 0.01929))
    torch.testing.assert_close(unit_to_hu(x), hu)
    torch.testing.assert_close(hu_to_unit(hu, "soft-tissue", clip=True)[[2, 5]], torch.tensor([0.4, 1.0], dtype=D))
    assert parse_window("-500,500") == (-500.0, 500.0) and parse_window((0, 80)) == parse_window("brain")
    for bad in ("bone-ish", "1,2,3", "5,1", (1.0, float("nan"))):
        with pytest.raises(ValueError, match="window"):
            parse_window(bad)


# -- low-dose -----------------------------------------------------------------------------------


def test_beer_lambert_poisson_statistics():
    tomo = Tomography(3, 4)
    x = torch.rand(1, 1, 4, 4, generator=gen(7), dtype=D)
    I0, draws = 200.0, 4000
    ld = low_dose(x.repeat(draws, 1, 1, 1), tomo, I0=I0, mu=0.3, generator=gen(8))
    expected = I0 * torch.exp(-0.3 * tomo(x))[0]  # I0 exp(-mu A x)
    assert torch.equal(ld.counts, ld.counts.round()) and torch.allclose(ld.y * I0, ld.counts)
    mean, var = ld.counts.mean(0), ld.counts.var(0)
    z = (mean - expected) / (expected / draws).sqrt()  # standard errors of the mean
    assert z.abs().max() < 4.5, z.abs().max()
    assert ((var / expected - 1).abs() < 0.12).all()  # Poisson: variance = mean (sd of the ratio ~0.022)
    # post-log: -log(k / I0) / mu recovers A x (bias O(1 / k) at these counts)
    torch.testing.assert_close(ld.sinogram.mean(0), tomo(x)[0], rtol=0, atol=0.05)
    # the Gaussian approximation's sd 1 / (mu sqrt(k)) matches the post-log spread
    ratio = ld.sinogram.std(0) / ld.post_log_noise.sigma.mean(0)
    assert ((ratio - 1).abs() < 0.1).all(), ratio
    assert post_log(torch.zeros(1), 100.0, 1.0) == -math.log(0.5 / 100.0)  # photon starvation -> half a count


def test_post_log_gaussian_is_a_noise_model():
    sigma = torch.rand(2, 1, 3, 4, generator=gen(9), dtype=D) + 0.1
    noise = PostLogGaussian(sigma)
    y, ax = torch.randn(2, 1, 3, 4, dtype=D), torch.randn(2, 1, 3, 4, dtype=D).requires_grad_()
    (g,) = torch.autograd.grad(noise.nll(y, ax).sum(), ax)
    torch.testing.assert_close(noise.grad(y, ax.detach()), g)
    # a batch tiled for 3 posterior samples reuses each image's sigma
    torch.testing.assert_close(noise.grad(y.repeat(3, 1, 1, 1), ax.detach().repeat(3, 1, 1, 1))[2:4], g)
    with pytest.raises(ValueError, match="positive"):
        PostLogGaussian(torch.zeros(1))


def test_dps_poisson_likelihood_beats_fbp():
    prior = GaussianPrior.smooth((1, 16, 16), length_scale=3.0, variance=0.04, mean=0.5)
    x = prior.sample(2, generator=gen(0)).float()
    tomo = Tomography(8, 16)
    ld = low_dose(x, tomo, I0=500.0, generator=gen(1))
    result = restore(ld.y, ld.op, prior, method="dps", steps=100, noise=ld.noise, seed=0)
    assert torch.isfinite(result.mean).all()
    mse = ((result.mean - x) ** 2).flatten(1).mean(1)
    mse_fbp = ((tomo.fbp(ld.sinogram) - x) ** 2).flatten(1).mean(1)
    assert (mse < 0.3 * mse_fbp).all(), (mse, mse_fbp)  # measured 0.0070, 0.0065 vs 0.046, 0.049


# -- set-ups and tasks ------------------------------------------------------------------------------


def test_setups_and_task_options():
    assert set(SETUPS) == {"sparse-30", "sparse-60", "limited-90"}
    op = ct_operator(16, "limited-90")
    assert op.n_angles == 90 and float(op.angles.max()) == 89.0
    with pytest.raises(ValueError, match="unknown CT set-up 'fan'"):
        ct_operator(16, "fan")
    shape = (1, 1, 12, 12)
    tomo = build_operator("ct", shape, {"angles": 9, "arc": 90})
    assert isinstance(tomo, Tomography) and float(tomo.angles[1]) == 10.0
    assert isinstance(operator_for("ddrm", tomo), TomographySVD) and operator_for("pigdm", tomo) is tomo
    low = build_operator("ct", shape, {"dose": 1000})
    assert isinstance(low, BeerLambert) and measurement_noise(low, 0.01, {"dose": 1000}).gain == 1e-3
    for opts, msg in [({"arc": 200}, "--arc"), ({"dose": 0}, "--dose"), ({"angles": 0}, "--angles")]:
        with pytest.raises(ValueError, match=msg):
            build_operator("ct", shape, opts)
    with pytest.raises(ValueError, match=r"arc .* \(0, 180\]"):
        Tomography(10, 8, arc=0.0)


def test_ddrm_runs_on_the_dense_svd():
    prior = GaussianPrior.smooth((1, 8, 8), length_scale=2.0)
    x = prior.sample(1, generator=gen(2)).float()
    op = Tomography(6, 8).svd()
    y = op(x) + 0.01 * torch.randn(op(x).shape, generator=gen(3))
    r = restore(y, op, prior, method="ddrm", steps=20, sigma_y=0.01)
    assert float(((r.mean - x) ** 2).mean()) < 0.1 * float(((op.fbp(y) - x) ** 2).mean())  # measured 9e-5, 6.6e-3


# -- volumes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_slices_and_stack_keep_the_orientation(axis):
    vol = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5)
    s = slices(vol, axis)
    k = axis % 3
    assert s.shape == (vol.shape[k], 1, *[d for i, d in enumerate(vol.shape) if i != k])
    torch.testing.assert_close(s[1, 0], vol.select(k, 1))
    torch.testing.assert_close(stack(s, axis), vol)


def test_restore_volume_restores_each_slice_in_place():
    prior = GaussianPrior.smooth((1, 8, 8), length_scale=2.0)
    clean = prior.sample(3, generator=gen(4)).float()[:, 0]  # three different 8x8 slices
    vol = clean.permute(1, 2, 0)  # (8, 8, 3): slices along the last axis
    noisy = vol + 0.02 * torch.randn(vol.shape, generator=gen(5))
    res = restore_volume(noisy, Identity(), prior, axis=-1, method="ddrm", steps=10, sigma_y=0.02, batch_size=2)
    assert res.mean.shape == vol.shape and res.std.shape == vol.shape
    err = ((res.mean - vol) ** 2).mean(dim=(0, 1))
    swapped = ((res.mean - vol[..., [1, 2, 0]]) ** 2).mean(dim=(0, 1))
    assert (err < 1e-3).all() and (swapped > 10 * err).all()  # measured 3e-4 to 5e-4 against 0.05 to 0.21
    # in chunks or all at once, the same draws in the same order for one chunk size
    one = restore_batch(slices(noisy), Identity(), prior, batch_size=None, method="ddrm", steps=10, sigma_y=0.02)
    torch.testing.assert_close(stack(one.mean), restore_volume(noisy, Identity(), prior, batch_size=None,
                                                               method="ddrm", steps=10, sigma_y=0.02).mean)


def test_volume_errors():
    with pytest.raises(ValueError, match="3-D tensor"):
        slices(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        slices(torch.zeros(2, 3, 4), 3)
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        restore_batch(torch.zeros(2, 1, 8, 8), Identity(), GaussianPrior.smooth((1, 8, 8)), batch_size=0, sigma_y=0.1)
