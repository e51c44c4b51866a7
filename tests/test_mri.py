"""MRI end to end: the multi-coil operator against dense matrices and deepinv, masks, coil maps,
normalisation, fastMRI HDF5 files, baselines, and diffusion reconstruction with an analytic prior."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from typer.testing import CliRunner

from invdiff import restore
from invdiff.datasets import ellipse_phantom
from invdiff.metrics import psnr
from invdiff.medical.mri import (
    center_crop,
    crop_readout,
    normalisation_scale,
    read_fastmri,
    reconstruct_mri,
    sense,
    to_channels,
    to_complex,
    tv_reconstruction,
)
from invdiff.operators import (
    MRI,
    MultiCoilMRI,
    birdcage_sensitivities,
    calibration_width,
    estimate_sensitivities,
    mri_mask,
)
from invdiff.operators.fourier import fft2c
from invdiff.priors import ChannelwisePrior, GaussianPrior, Prior
from invdiff.samplers.common import ridge_adjoint_solve

D = torch.float64
C128 = torch.complex128


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def np_fft2c(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def random_maps(coils: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Generic complex maps (not smooth, not normalised): the operator identities hold for any maps."""
    g = gen(seed)
    return torch.complex(torch.randn(coils, h, w, generator=g, dtype=D), torch.randn(coils, h, w, generator=g, dtype=D))


def dense(fn, n_in: int, shape) -> np.ndarray:
    """The matrix of a linear map from its action on the basis vectors ``(B=n_in, *shape)``."""
    basis = torch.eye(n_in, dtype=D).reshape(n_in, *shape)
    return fn(basis).reshape(n_in, -1).T.numpy()


MASK8 = mri_mask((8, 8), acceleration=2, center_fraction=0.25, generator=gen(1)).to(D)
MAPS8 = random_maps(3, 8, 8)


# -- the operator ------------------------------------------------------------------------------


def reference_forward(x: np.ndarray, complex_input: bool) -> np.ndarray:
    """numpy: ``y[b, c, j] = M fft2c(S_j x[b, c])`` laid out as (B, C, N_c, re/im, H, W)."""
    z = x[:, 0::2] + 1j * x[:, 1::2] if complex_input else x.astype(complex)
    k = MASK8.numpy()[0, 0] * np_fft2c(MAPS8.numpy()[None, None] * z[:, :, None])
    return np.stack([k.real, k.imag], axis=3).reshape(x.shape[0], -1, 8, 8)


@pytest.mark.parametrize("complex_input", [False, True])
def test_multicoil_forward_and_adjoint_match_dense_matrices(complex_input: bool) -> None:
    op = MultiCoilMRI(MASK8, MAPS8, complex_input=complex_input)
    c = 2 if complex_input else 1
    x = torch.randn(2, c, 8, 8, generator=gen(2), dtype=D)
    y = op(x)
    assert y.shape == (2, 6, 8, 8)  # one (complex) image channel, 3 coils, (re, im)
    np.testing.assert_allclose(y.numpy(), reference_forward(x.numpy(), complex_input), atol=1e-12)
    a = dense(op, c * 64, (c, 8, 8))  # (M, N)
    at = dense(op.adjoint, 6 * 64, (6, 8, 8))  # (N, M)
    np.testing.assert_allclose(at, a.T, atol=1e-12)
    assert op.x_shape(y) == tuple(x.shape)


def test_normal_operator_is_the_sum_over_coils_of_sh_fh_m_f_s() -> None:
    # complex input: A^T A is the real form of sum_j S_j^H F^H M F S_j
    n = 64
    f = np_fft2c(np.eye(n).reshape(n, 8, 8)).reshape(n, n).T  # centred DFT matrix: columns = fft2c of basis
    m = np.diag(MASK8.numpy()[0, 0].reshape(-1))
    normal = sum(np.diag(s.conj()) @ f.conj().T @ m @ f @ np.diag(s) for s in MAPS8.numpy().reshape(3, n))
    real_form = np.block([[normal.real, -normal.imag], [normal.imag, normal.real]])  # on [Re x; Im x]
    op = MultiCoilMRI(MASK8, MAPS8, complex_input=True)
    # the operator's channels are (re, im) planes, i.e. exactly the [Re x; Im x] vector layout
    np.testing.assert_allclose(dense(op.normal, 2 * n, (2, 8, 8)), real_form, atol=1e-12)
    # real input: the real part of the same matrix
    op_r = MultiCoilMRI(MASK8, MAPS8)
    np.testing.assert_allclose(dense(op_r.normal, n, (1, 8, 8)), normal.real, atol=1e-12)


def test_one_coil_of_ones_is_the_single_coil_svd_operator() -> None:
    for complex_input in (False, True):
        c = 2 if complex_input else 1
        x = torch.randn(2, c, 8, 8, generator=gen(3), dtype=D)
        multi = MultiCoilMRI(MASK8, torch.ones(1, 8, 8, dtype=C128), complex_input)
        single = MRI(MASK8, complex_input)
        torch.testing.assert_close(multi(x), single(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(multi.adjoint(multi(x)), single.adjoint(single(x)), rtol=0, atol=1e-12)


def test_matches_deepinv_multicoil_mri() -> None:
    import deepinv as dinv

    maps = birdcage_sensitivities(4, 16)
    mask = mri_mask((16, 16), 4, 0.125, generator=gen(4))
    x = torch.rand(2, 2, 16, 16, generator=gen(5))
    physics = dinv.physics.MultiCoilMRI(mask=mask[0, 0], coil_maps=maps[None], img_size=(16, 16))
    ours = MultiCoilMRI(mask, maps, complex_input=True)
    ref = physics.A(x)  # (B, 2, N_c, H, W)
    torch.testing.assert_close(ours(x), ref.permute(0, 2, 1, 3, 4).reshape(2, 8, 16, 16), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.adjoint(ours(x)), physics.A_adjoint(ref), rtol=1e-5, atol=1e-6)


def test_per_sample_masks_and_maps_and_repeat_batch() -> None:
    masks = mri_mask((2, 1, 8, 8), 2, 0.25, generator=gen(6)).to(D)
    maps = torch.stack([random_maps(2, 8, 8, 7), random_maps(2, 8, 8, 8)])
    op = MultiCoilMRI(masks, maps)
    x = torch.randn(2, 1, 8, 8, generator=gen(9), dtype=D)
    y = op(x)
    for i in range(2):
        single = MultiCoilMRI(masks[i : i + 1], maps[i])
        torch.testing.assert_close(y[i : i + 1], single(x[i : i + 1]), rtol=0, atol=1e-12)
    rep = op.repeat_batch(3)
    torch.testing.assert_close(rep(x.repeat(3, 1, 1, 1)), y.repeat(3, 1, 1, 1))
    with pytest.raises(ValueError, match="per-sample mask"):
        op.check((3, 1, 8, 8))


def test_conjugate_gradient_solves_match_dense_solves() -> None:
    op = MultiCoilMRI(MASK8, MAPS8, complex_input=True)
    a = dense(op, 128, (2, 8, 8))
    v = torch.randn(1, 6, 8, 8, generator=gen(10), dtype=D)
    lam = 0.3
    # PiGDM / DiffPIR's data step A^T (A A^T + lam I)^-1 v, by CG in measurement space
    got = ridge_adjoint_solve(op, v, lam, cg_iters=200, tol=1e-12)
    want = a.T @ np.linalg.solve(a @ a.T + lam * np.eye(a.shape[0]), v.numpy().reshape(-1))
    np.testing.assert_allclose(got.numpy().reshape(-1), want, rtol=1e-8, atol=1e-8)
    # CG-SENSE (A^T A + lam I) x = A^T y in image space
    x = sense(v, op, lam, iters=200, tol=1e-12)
    want = np.linalg.solve(a.T @ a + lam * np.eye(128), a.T @ v.numpy().reshape(-1))
    np.testing.assert_allclose(x.numpy().reshape(-1), want, rtol=1e-8, atol=1e-8)


# -- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("acceleration,center_fraction", [(4, 0.08), (8, 0.04)])
def test_fastmri_masks_fraction_and_centre(kind: str, acceleration: int, center_fraction: float) -> None:
    w = 320
    m = mri_mask((16, 1, 8, w), acceleration, center_fraction, kind, generator=gen(11))
    cols = m[:, 0, 0]
    assert (m == m[:, :, :1]).all()  # whole columns
    n_center = round(w * center_fraction)
    pad = (w - n_center + 1) // 2
    assert (cols[:, pad : pad + n_center] == 1).all()
    assert calibration_width(m[:1]) >= n_center
    fraction = cols.sum(1) / w
    # random: binomial around 1/R; equispaced: within one column of W/R
    tol = 0.03 if kind == "random" else 2.0 / w
    assert abs(fraction.mean().item() - 1 / acceleration) < tol, fraction
    if kind == "equispaced":
        assert (fraction - 1 / acceleration).abs().max() <= 2.0 / w


@pytest.mark.parametrize("acceleration,center_fraction", [(4, 0.08), (8, 0.04)])
def test_equispaced_mask_spacing(acceleration: int, center_fraction: float) -> None:
    w = 320
    n_center = round(w * center_fraction)
    spacing = (w - n_center) / (w / acceleration - n_center)
    m = mri_mask((1, 1, 4, w), acceleration, center_fraction, "equispaced", generator=gen(12))[0, 0, 0]
    pad = (w - n_center + 1) // 2
    outside = torch.ones(w, dtype=torch.bool)
    outside[pad - 1 : pad + n_center + 1] = False  # the centre block and its neighbours
    idx = torch.nonzero((m > 0) & outside).flatten()
    gaps = torch.diff(idx)
    gaps = gaps[gaps < 2 * spacing]  # consecutive lines on one side of the centre
    assert set(gaps.tolist()) <= {int(np.floor(spacing)), int(np.ceil(spacing))}, (spacing, gaps)


# -- coil maps -----------------------------------------------------------------------------------


def test_sensitivity_estimation_recovers_smooth_maps() -> None:
    n = 32
    x = torch.from_numpy(ellipse_phantom(n, np.random.default_rng(1))[..., 0]).to(D)
    maps = birdcage_sensitivities(4, n, dtype=C128)
    kspace = fft2c(maps * x)
    body = ndi.binary_erosion(x.numpy() > 0.05, iterations=2)
    inside = torch.from_numpy(body)

    def error(est: torch.Tensor) -> float:
        e, s = est[:, inside], maps[:, inside]
        phase = (e * s.conj()).sum()
        e = e * (phase.abs() / phase)  # remove one global phase
        return float((e - s).abs().norm() / s.abs().norm())

    # measured: 1.8 % with 16 calibration columns of 32 and 5.8 % with 8 (the low-pass mixes the
    # maps across the phantom's edges)
    wide = error(estimate_sensitivities(kspace, 16))
    narrow = error(estimate_sensitivities(kspace, 8))
    assert wide < 0.025 and narrow < 0.08 and wide < narrow / 2
    # calibration width found from a mask, and from which columns hold data
    mask = mri_mask((n, n), 4, 0.125, generator=gen(13))  # the centre 4 of 32 columns and random others
    est_mask = estimate_sensitivities(kspace * mask[0, 0], mask=mask)
    est_data = estimate_sensitivities(kspace * mask[0, 0])
    torch.testing.assert_close(est_mask, est_data)
    torch.testing.assert_close(est_mask, estimate_sensitivities(kspace, calibration_width(mask)))


def test_birdcage_maps_have_unit_root_sum_of_squares() -> None:
    s = birdcage_sensitivities(6, (12, 10), dtype=C128)
    assert s.shape == (6, 12, 10)
    torch.testing.assert_close((s.abs() ** 2).sum(0), torch.ones(12, 10, dtype=D))


# -- normalisation and reconstruction helpers ------------------------------------------------------


def multicoil_problem(n: int = 32, coils: int = 4, acceleration: int = 4, seed: int = 0):
    x = torch.from_numpy(ellipse_phantom(n, np.random.default_rng(seed))).permute(2, 0, 1)[None].to(D)
    maps = birdcage_sensitivities(coils, n, dtype=C128)
    mask = mri_mask((n, n), acceleration, 0.125, generator=gen(seed)).to(D)
    return x, maps, mask, MultiCoilMRI(mask, maps)


def test_normalisation_scale_is_the_quantile_and_round_trips() -> None:
    x, maps, mask, op = multicoil_problem()
    y = op(x)
    scale = normalisation_scale(y, op)
    zf = op.adjoint(y).abs().numpy().reshape(-1)
    assert scale.item() == pytest.approx(np.quantile(zf, 0.99), rel=1e-12)
    # the scale is linear in y, and reconstructing y / scale then multiplying back is the same
    assert normalisation_scale(7.0 * y, op).item() == pytest.approx(7.0 * scale.item(), rel=1e-12)
    direct = sense(y, op, 1e-2, iters=100, tol=1e-12)
    back = sense(y / scale, op, 1e-2, iters=100, tol=1e-12) * scale
    torch.testing.assert_close(back, direct, rtol=1e-8, atol=1e-10)
    # complex input: the magnitude of the channel pairs
    opc = MultiCoilMRI(mask, maps, complex_input=True)
    yc = opc(torch.cat([x, 0.5 * x], dim=1))
    zc = opc.adjoint(yc).numpy()
    assert normalisation_scale(yc, opc).item() == pytest.approx(
        np.quantile(np.hypot(zc[:, 0], zc[:, 1]).reshape(-1), 0.99), rel=1e-12
    )


def test_crop_readout_keeps_the_central_image_rows() -> None:
    g = gen(14)
    img = torch.complex(torch.randn(2, 3, 16, 8, generator=g, dtype=D), torch.randn(2, 3, 16, 8, generator=g, dtype=D))
    k = fft2c(img)
    cropped = crop_readout(k, 8)
    assert cropped.shape == (2, 3, 8, 8)
    torch.testing.assert_close(torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(cropped, dim=(-2, -1)),
                                                                  norm="ortho"), dim=(-2, -1)),
                               img[..., 4:12, :], rtol=1e-10, atol=1e-12)  # fmt: skip


def test_tv_baseline_beats_zero_filled_on_a_phantom() -> None:
    x, _, _, op = multicoil_problem(acceleration=8)
    y = op(x)
    zf = psnr(op.adjoint(y).clamp(0, 1), x).item()
    tv = psnr(tv_reconstruction(y, op, 3e-3, iters=60).clamp(0, 1), x).item()
    assert tv > zf + 3, (tv, zf)


# -- fastMRI files -----------------------------------------------------------------------------------


def write_fastmri(path, kspace: np.ndarray, crop: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """A fastMRI-layout file: ``kspace`` (slices, [coils,] H, W) complex64, ``reconstruction_rss``, attrs."""
    import h5py

    coil_axis = kspace.ndim == 4
    imgs = np_ifft2c(kspace)
    rss_img = np.sqrt((np.abs(imgs) ** 2).sum(axis=1)) if coil_axis else np.abs(imgs)
    if crop is not None:
        h, w = rss_img.shape[-2:]
        rss_img = rss_img[..., (h - crop) // 2 : (h - crop) // 2 + crop, (w - crop) // 2 : (w - crop) // 2 + crop]
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        f.create_dataset("reconstruction_rss", data=rss_img.astype(np.float32))
        if mask is not None:
            f.create_dataset("mask", data=mask.astype(np.float32))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(rss_img.max())
    return rss_img


@pytest.mark.parametrize("coils", [None, 3])
def test_read_fastmri_and_zero_filled_rss_match_numpy(tmp_path, coils) -> None:
    rng = np.random.default_rng(15)
    shape = (2, coils, 16, 12) if coils else (2, 16, 12)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    path = tmp_path / "scan.h5"
    target = write_fastmri(path, k, crop=8)
    vol = read_fastmri(path)
    assert vol.kspace.shape == (2, coils or 1, 16, 12) and vol.multicoil == bool(coils)
    assert vol.mask is None and vol.crop_size == (8, 8) and vol.attrs["acquisition"] == "CORPD_FBK"
    np.testing.assert_allclose(vol.target.numpy()[:, 0], target, rtol=1e-6)
    # fully sampled: the zero-filled RSS is the reference reconstruction
    np.testing.assert_allclose(vol.zero_filled_rss().numpy()[:, 0], target, rtol=1e-4, atol=1e-5)
    # undersampled by the file's mask: independent numpy zero-filled RSS
    cols = (rng.random(12) < 0.5).astype(np.float32)
    cols[5:7] = 1
    write_fastmri(path, k * cols, crop=8, mask=cols)
    vol = read_fastmri(path, slices=[1])
    assert vol.slices == [1] and vol.mask.shape == (1, 1, 16, 12)
    imgs = np_ifft2c(k[1:] * cols)
    want = np.sqrt((np.abs(imgs) ** 2).sum(axis=1)) if coils else np.abs(imgs)
    np.testing.assert_allclose(vol.zero_filled_rss().numpy()[:, 0], want[..., 4:12, 2:10], rtol=1e-4, atol=1e-5)
    # without a mask dataset the measured columns are found from the data
    write_fastmri(path, k * cols, crop=8)
    np.testing.assert_array_equal(read_fastmri(path).mask[0, 0, 0].numpy(), cols)


# -- diffusion reconstruction ------------------------------------------------------------------------


def test_restore_multicoil_with_a_gaussian_prior_beats_zero_filled() -> None:
    x, maps, mask, op = multicoil_problem(n=32, coils=4, acceleration=4)
    g = gen(16)
    y = op(x) + 0.01 * torch.randn(op(x).shape, generator=g, dtype=D) * mask
    prior = GaussianPrior.smooth((1, 32, 32), length_scale=1.5, variance=0.05, mean=0.3)
    zf = psnr(op.adjoint(y).clamp(0, 1), x).item()
    for method, steps in (("pigdm", 20), ("dps", 200)):
        out = restore(y, op, prior, method=method, steps=steps, sigma_y=0.01).mean
        assert torch.isfinite(out).all()
        got = psnr(out.clamp(0, 1), x).item()
        assert got > zf + 1.0, (method, got, zf)
    with pytest.raises(ValueError, match="'ddrm' needs an operator with an SVD.*MultiCoilMRI"):
        restore(y, op, prior, method="ddrm", steps=5, sigma_y=0.01)


def test_reconstruct_mri_given_maps_estimated_maps_and_complex_route() -> None:
    x, maps, mask, op = multicoil_problem(n=32, coils=4, acceleration=4)
    kspace = to_complex(op(x)) * 1e-3  # arbitrary units: the normalisation takes them out
    prior = GaussianPrior.smooth((1, 32, 32), length_scale=1.5, variance=0.05, mean=0.3)
    rec = reconstruct_mri(kspace, prior, maps=maps[None], method="pigdm", steps=20, sigma_y=0.01)
    assert rec.magnitude.shape == (1, 1, 32, 32) and torch.isfinite(rec.magnitude).all()
    assert rec.scale.item() == pytest.approx(1e-3 * normalisation_scale(op(x), op).item(), rel=1e-10)
    zf = psnr((rec.zero_filled * 1e3).clamp(0, 1), x).item()
    given = psnr((rec.magnitude * 1e3).clamp(0, 1), x).item()
    assert given > zf + 2.0, (given, zf)  # measured 21.0 vs 16.7 dB
    # maps estimated from a wide calibration region (16 of 32 columns, 2x) come close to the true ones
    mask2 = mri_mask((32, 32), 2, 0.5, generator=gen(0)).to(D)
    k2 = to_complex(MultiCoilMRI(mask2, maps)(x))
    true_maps = psnr(reconstruct_mri(k2, prior, maps=maps[None], method="pigdm", steps=20,
                                     sigma_y=0.01).magnitude.clamp(0, 1), x).item()  # fmt: skip
    estimated = psnr(reconstruct_mri(k2, prior, method="pigdm", steps=20, sigma_y=0.01).magnitude.clamp(0, 1), x).item()
    assert estimated > true_maps - 1.0, (estimated, true_maps)  # measured 23.9 vs 24.2 dB
    # single coil, no maps, complex image: MRI with its SVD and the 1-channel prior on the real and the
    # imaginary part in turn; the same as a 2-channel prior whose channels are independent copies of it
    single = to_complex(MRI(mask)(x))
    rec = reconstruct_mri(single, prior, maps=None, complex_input=True, method="ddrm", steps=10)
    assert isinstance(rec.op, MRI) and rec.image.shape == (1, 2, 32, 32)
    two = GaussianPrior.smooth((2, 32, 32), length_scale=1.5, variance=0.05, mean=0.3)
    y = to_channels(single)
    ref = restore(y / rec.scale, MRI(mask, complex_input=True), two, method="ddrm", steps=10, sigma_y=0.0)
    torch.testing.assert_close(rec.image, ref.mean * rec.scale, rtol=1e-10, atol=1e-12)
    # noiseless DDRM keeps the measured k-space exactly
    assert (rec.op(rec.image) - y).norm() / y.norm() < 1e-10


class _Shipped(Prior):
    """A prior marked as loaded by a shipped name (as ``load_prior("phantoms")`` marks it)."""

    shipped = "phantoms"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def denoise(self, x, sigma):
        return self.inner.denoise(x, sigma)


def test_channelwise_prior_denoises_each_group_with_the_inner_prior() -> None:
    inner = GaussianPrior.smooth((1, 8, 8), length_scale=1.5, variance=0.05, mean=0.3)
    prior = ChannelwisePrior(inner, groups=2)
    assert prior.channels == 2 and prior.sigma_max == inner.sigma_max
    # the mean of the real and imaginary groups is the inner mean twice; a shipped inner prior stays shipped
    torch.testing.assert_close(prior.data_mean(), inner.data_mean().repeat(2, 1, 1))
    assert prior.shipped is None and ChannelwisePrior(_Shipped(inner)).shipped == "phantoms"
    x = torch.randn(3, 2, 8, 8, generator=gen(17), dtype=D)
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=D)
    out = prior.denoise(x, sigma)
    for c in range(2):
        torch.testing.assert_close(out[:, c : c + 1], inner.denoise(x[:, c : c + 1], sigma))
    with pytest.raises(ValueError, match="2 groups of 1 channel"):
        prior.denoise(torch.zeros(1, 3, 8, 8), 0.1)


def test_cli_restores_an_h5_file_and_writes_magnitude_png_and_nifti(tmp_path) -> None:
    n = 32
    x = ellipse_phantom(n, np.random.default_rng(18))[..., 0]
    maps = birdcage_sensitivities(3, n, dtype=C128).numpy()
    k = np_fft2c(maps[None] * x[None, None])  # one slice, 3 coils, fully sampled
    write_fastmri(tmp_path / "knee.h5", k, crop=n)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        __import__("invdiff.cli", fromlist=["app"]).app,
        ["restore", str(tmp_path / "knee.h5"), "--task", "mri", "--acceleration", "4", "--center-fraction", "0.125",
         "--method", "pigdm", "--steps", "3", "--samples", "1", "--sigma-y", "0.01", "-o", str(out), "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "1 restored" in r.output
    for f in ("restored.nii.gz", "restored.png", "zero_filled.png", "comparison.png", "metrics.json"):
        assert (out / "knee" / f).is_file(), f
    row = json.loads((out / "knee" / "metrics.json").read_text())
    assert row["coils"] == 3 and row["simulated_mask"] and 0 < row["psnr"] < 60
    import nibabel as nib

    vol = np.asarray(nib.load(out / "knee" / "restored.nii.gz").dataobj)
    assert vol.shape == (n, n) and np.isfinite(vol).all()


# -- errors ------------------------------------------------------------------------------------------


def _h5_without_kspace(tmp_path):
    import h5py

    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.zeros((2, 4, 4)))
    return read_fastmri(path)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda t: MultiCoilMRI(torch.ones(8, 8), random_maps(2, 8, 6)), r"coil maps have shape \(1, 2, 8, 6\) but the mask is \(1, 1, 8, 8\)"),
        (lambda t: MultiCoilMRI(torch.ones(8, 8), random_maps(2, 8, 8))(torch.zeros(1, 1, 8, 6)),
         r"mask has shape \(1, 1, 8, 8\) but the image is \(1, 1, 8, 6\)"),
        (lambda t: MultiCoilMRI(torch.ones(8, 8), random_maps(2, 8, 8)).adjoint(torch.zeros(1, 6, 8, 8)),
         r"\(B, 2 C N_c, H, W\) with N_c = 2 coils"),
        (lambda t: MultiCoilMRI(torch.ones(8, 8), random_maps(2, 8, 8)).adjoint(torch.zeros(1, 4, 8, 6)),
         r"k-space has shape \(1, 4, 8, 6\) but the mask is \(1, 1, 8, 8\)"),
        (lambda t: MultiCoilMRI(torch.ones(8, 8), torch.ones(8, 8)), r"coil maps must be complex \(N_c, H, W\)"),
        (lambda t: MultiCoilMRI(torch.ones(8, 8), random_maps(2, 8, 8), True)(torch.zeros(1, 3, 8, 8)),
         r"odd number of channels"),
        (lambda t: estimate_sensitivities(torch.zeros(2, 8, 8)), r"must be a complex tensor"),
        (lambda t: calibration_width(torch.zeros(8, 8)), r"does not measure the centre column"),
        (lambda t: reconstruct_mri(torch.ones(1, 2, 8, 8, dtype=C128), GaussianPrior(0.0, torch.ones(64), (1, 8, 8)),
                                   maps=None), r"2 coils: give coil maps"),
        (lambda t: reconstruct_mri(torch.ones(1, 1, 8, 8, dtype=C128), GaussianPrior(0.0, torch.ones(64), (1, 8, 8)),
                                   mask=torch.ones(8, 6)), r"mask has shape \(8, 6\) but k-space is 8x8"),
        (lambda t: _h5_without_kspace(t), r"no 'kspace' dataset \(the file holds image\)"),
        (lambda t: read_fastmri(t / "missing.h5"), r"no such file"),
        (lambda t: center_crop(torch.zeros(1, 1, 4, 4), (8, 8)), r"cannot crop 4x4 to 8x8"),
        (lambda t: to_channels(torch.zeros(1, 2, 4, 4)), r"expects complex k-space"),
    ],
)
def test_errors_are_clear(tmp_path, call, message) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        call(tmp_path)


def test_mri_task_builds_single_or_multicoil_operators() -> None:
    from invdiff.cli.tasks import build_operator

    single = build_operator("mri", (1, 1, 16, 16), {"acceleration": 4, "center_fraction": 0.125})
    multi = build_operator("mri", (1, 1, 16, 16), {"acceleration": 4, "center_fraction": 0.125, "coils": 3,
                                                   "mask_kind": "equispaced"})  # fmt: skip
    assert isinstance(single, MRI) and isinstance(multi, MultiCoilMRI) and multi.coils == 3
    torch.testing.assert_close(multi.coil_maps()[0], birdcage_sensitivities(3, 16))
    # the same seed rebuilds the same operator (measurement sidecars rely on it)
    again = build_operator("mri", (1, 1, 16, 16), {"acceleration": 4, "center_fraction": 0.125, "coils": 3,
                                                   "mask_kind": "equispaced"})  # fmt: skip
    assert torch.equal(multi.mask, again.mask)
    with pytest.raises(ValueError, match="--coils must be a positive number"):
        build_operator("mri", (1, 1, 16, 16), {"coils": 0})
