"""One parametrised suite over every operator: adjoints, SVDs, dense matrices, per-sample masks, errors.

Every operator is compared with an independent reference (scipy, scikit-image,
numpy FFTs, explicit formulas) on tiny images in float64, and its SVD with the
dense matrix's ``torch.linalg.svd``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal as sps
import torch
from skimage.measure import block_reduce

from invdiff.operators import (
    MRI,
    BeerLambert,
    Blur,
    Colorization,
    Downsampling,
    Identity,
    Inpainting,
    PhaseRetrieval,
    Saturation,
    Tomography,
    box_mask,
    from_deepinv,
    gaussian_kernel,
    mask_from_image,
    motion_kernel,
    mri_mask,
    random_mask,
    to_deepinv,
)
from invdiff.operators.downsampling import bicubic_matrix, helmert
from invdiff.operators.fourier import (
    coords_spectrum,
    fourier_coords,
    fourier_image,
    magnitude_coords,
    phase_coords,
    rotate_coords,
    spectrum_coords,
)

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=D)


# -- independent references (numpy / scipy / scikit-image) -----------------------


def np_per_image(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[torch.Tensor], torch.Tensor]:
    def ref(x: torch.Tensor) -> torch.Tensor:
        out = [[fn(x[b, c].numpy()) for c in range(x.shape[1])] for b in range(x.shape[0])]
        return torch.as_tensor(np.array(out), dtype=D)

    return ref


def np_fft2c(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a), norm="ortho"))


def mri_ref(mask: torch.Tensor, complex_input: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    m = mask.numpy()[0, 0]

    def ref(x: torch.Tensor) -> torch.Tensor:
        xs = x.numpy()
        xc = xs[:, 0::2] + 1j * xs[:, 1::2] if complex_input else xs
        out = []
        for b in range(xc.shape[0]):
            chans = []
            for c in range(xc.shape[1]):
                k = m * np_fft2c(xc[b, c])
                chans += [k.real, k.imag]
            out.append(chans)
        return torch.as_tensor(np.array(out), dtype=D)

    return ref


# -- the operator cases -------------------------------------------------------------


@dataclass
class Case:
    make: Callable[[], torch.nn.Module]
    x_shape: tuple[int, int, int, int]
    ref: Callable[[torch.Tensor], torch.Tensor] | None  # independent forward, or None


K3 = torch.rand(3, 3, generator=gen(1), dtype=D)  # asymmetric kernels catch flips and shifts
K43 = torch.rand(4, 3, generator=gen(2), dtype=D)
K_RGB = torch.rand(3, 2, 3, generator=gen(3), dtype=D)
PIXEL_MASK = random_mask((8, 8), missing=0.5, generator=gen(4)).to(D)
CHANNEL_MASK = (torch.rand(1, 3, 8, 8, generator=gen(5)) > 0.4).to(D)
MRI_COLS = mri_mask((8, 8), acceleration=2, center_fraction=0.25, generator=gen(6)).to(D)
MRI_PIXELS = (torch.rand(1, 1, 7, 6, generator=gen(7)) > 0.5).to(D)  # odd x even, not k/-k symmetric


def _deepinv_inpainting():
    import deepinv as dinv

    return from_deepinv(dinv.physics.Inpainting(img_size=(2, 8, 8), mask=CHANNEL_MASK[:, :2].float()))


SVD_CASES = {
    "identity": Case(Identity, (2, 3, 8, 8), lambda x: x),
    "inpainting": Case(lambda: Inpainting(PIXEL_MASK), (2, 3, 8, 8), lambda x: x * PIXEL_MASK),
    "inpainting_per_channel": Case(lambda: Inpainting(CHANNEL_MASK), (1, 3, 8, 8), lambda x: x * CHANNEL_MASK),
    "blur_circular": Case(
        lambda: Blur(K3), (2, 1, 8, 8), np_per_image(lambda a: ndi.convolve(a, K3.numpy(), mode="wrap"))
    ),
    "blur_circular_even_kernel_odd_image": Case(
        lambda: Blur(K43), (1, 2, 7, 6), np_per_image(lambda a: ndi.convolve(a, K43.numpy(), mode="wrap"))
    ),
    "blur_circular_per_channel": Case(
        lambda: Blur(K_RGB),
        (1, 3, 6, 8),
        lambda x: torch.stack(
            [np_per_image(lambda a, k=K_RGB[c].numpy(): ndi.convolve(a, k, mode="wrap"))(x[:, c : c + 1])[:, 0] for c in range(3)],
            dim=1,
        ),
    ),
    "downsampling_box": Case(
        lambda: Downsampling(2), (2, 3, 8, 8), np_per_image(lambda a: block_reduce(a, (2, 2), np.mean))
    ),
    "downsampling_box_4": Case(
        lambda: Downsampling(4, image_size=(8, 12)), (1, 1, 8, 12), np_per_image(lambda a: block_reduce(a, (4, 4), np.mean))
    ),
    "downsampling_bicubic": Case(
        lambda: Downsampling(2, "bicubic"),
        (2, 1, 8, 8),
        np_per_image(lambda a: bicubic_matrix(8, 2) @ a @ bicubic_matrix(8, 2).T),
    ),
    "downsampling_bicubic_rect": Case(
        lambda: Downsampling(4, "bicubic"),
        (1, 2, 12, 8),
        np_per_image(lambda a: bicubic_matrix(12, 4) @ a @ bicubic_matrix(8, 4).T),
    ),
    "colorization": Case(Colorization, (2, 3, 8, 8), lambda x: x.mean(dim=1, keepdim=True)),
    "mri_real": Case(lambda: MRI(MRI_COLS), (2, 1, 8, 8), mri_ref(MRI_COLS, False)),
    "mri_real_pixels_odd": Case(lambda: MRI(MRI_PIXELS), (1, 2, 7, 6), mri_ref(MRI_PIXELS, False)),
    "mri_complex": Case(lambda: MRI(MRI_COLS, complex_input=True), (2, 2, 8, 8), mri_ref(MRI_COLS, True)),
    "deepinv_inpainting": Case(_deepinv_inpainting, (1, 2, 8, 8), lambda x: x * CHANNEL_MASK[:, :2]),
}

LINEAR_CASES = {
    **SVD_CASES,
    "blur_reflect": Case(
        lambda: Blur(K43, "reflect"), (2, 1, 8, 7), np_per_image(lambda a: ndi.convolve(a, K43.numpy(), mode="mirror"))
    ),
    "blur_replicate": Case(
        lambda: Blur(K3, "replicate"), (1, 2, 6, 8), np_per_image(lambda a: ndi.convolve(a, K3.numpy(), mode="nearest"))
    ),
    "blur_valid": Case(
        lambda: Blur(K43, "valid"), (1, 1, 8, 8), np_per_image(lambda a: sps.convolve2d(a, K43.numpy(), mode="valid"))
    ),
    "tomography": Case(lambda: Tomography(5, 8), (2, 1, 8, 8), None),
    "tomography_angles": Case(lambda: Tomography(torch.tensor([0.0, 33.0, 90.0, 151.0]), (6, 8)), (1, 2, 6, 8), None),
}


def build(name: str, cases: dict[str, Case]):
    case = cases[name]
    return case.make(), case, randn(*case.x_shape, seed=11)


def dense(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...]) -> torch.Tensor:
    """Matrix ``(out_dim, in_dim)`` of a batch-independent linear map on items of shape ``in_shape``."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=D).reshape(n, *in_shape)
    return fn(basis).reshape(n, -1).T


# -- linear operators ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LINEAR_CASES))
def test_adjoint_identity(name: str) -> None:
    op, _, x = build(name, LINEAR_CASES)
    y = randn(*op(x).shape, seed=12)
    lhs, rhs = (op(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12, atol=1e-12), (lhs, rhs)
    assert op.x_shape(y) == tuple(x.shape)


@pytest.mark.parametrize("name", list(LINEAR_CASES))
def test_autograd_vjp_is_the_adjoint(name: str) -> None:
    """Samplers differentiate through op(x): its vector-Jacobian product must be A^T."""
    op, _, x = build(name, LINEAR_CASES)
    x = x.clone().requires_grad_()
    y = op(x)
    v = randn(*y.shape, seed=15)
    (vjp,) = torch.autograd.grad(y, x, v)
    torch.testing.assert_close(vjp, op.adjoint(v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [n for n, c in LINEAR_CASES.items() if c.ref is not None])
def test_forward_matches_reference_and_dense_adjoint(name: str) -> None:
    op, case, x = build(name, LINEAR_CASES)
    torch.testing.assert_close(op(x), case.ref(x), rtol=1e-10, atol=1e-12)
    one = case.x_shape[1:]
    a = dense(case.ref, one)
    torch.testing.assert_close(dense(op, one), a, rtol=1e-10, atol=1e-12)
    y_shape = tuple(op(x).shape[1:])
    torch.testing.assert_close(dense(op.adjoint, y_shape), a.T, rtol=1e-10, atol=1e-12)


# -- SVD operators ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SVD_CASES))
def test_svd_against_dense_matrix(name: str) -> None:
    op, case, x = build(name, SVD_CASES)
    one = case.x_shape[1:]
    a = dense(case.ref, one)  # (M_y, N) from the independent reference
    op(x)  # learn the image shape
    s = op.singulars
    assert s.dim() == 1 and s.dtype == D and (s >= 0).all()
    assert s.numel() <= a.shape[1]
    expected = torch.linalg.svdvals(a)
    got = torch.cat([s, s.new_zeros(max(expected.numel() - s.numel(), 0))]).sort(descending=True).values
    torch.testing.assert_close(got[: expected.numel()], expected, rtol=1e-10, atol=1e-10)
    # V^T is orthogonal on the image, U has orthonormal columns (square unless the data space is larger)
    vt = dense(op.Vt, one)
    torch.testing.assert_close(vt @ vt.T, torch.eye(vt.shape[0], dtype=D), rtol=0, atol=1e-12)
    y_one = tuple(op(x).shape[1:])
    u = dense(op.U, (s.numel(),))
    torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1], dtype=D), rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(op.Ut, y_one), u.T, rtol=0, atol=1e-12)
    # A = U diag(s) V^T[:M]
    torch.testing.assert_close(u @ torch.diag(s) @ vt[: s.numel()], a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SVD_CASES))
def test_svd_round_trips_and_derived_maps(name: str) -> None:
    op, case, x = build(name, SVD_CASES)
    y = op(x)
    z = op.Vt(x)
    assert z.shape == (x.shape[0], x[0].numel())
    torch.testing.assert_close(op.V(z), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(z.norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    w = op.Ut(y)
    torch.testing.assert_close(op.U(w), y, rtol=0, atol=1e-12)  # y = A x lies in U's range
    torch.testing.assert_close(w.norm(dim=1), y.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    # forward and adjoint in SVD form
    s = op._s(z)
    m = s.shape[1]
    torch.testing.assert_close(op.U(s * z[:, :m]), case.ref(x), rtol=1e-10, atol=1e-12)
    r = randn(*y.shape, seed=13)
    wr = op.Ut(r)
    back = op.V(torch.cat([op._s(wr) * wr, wr.new_zeros(wr.shape[0], z.shape[1] - m)], dim=1))
    torch.testing.assert_close(op.adjoint(r), back, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SVD_CASES))
def test_pinv_and_solve_against_dense(name: str) -> None:
    op, case, x = build(name, SVD_CASES)
    y = op(x)
    # A A^+ y = y on the range
    torch.testing.assert_close(op(op.pinv(y)), y, rtol=1e-9, atol=1e-10)
    one = case.x_shape[1:]
    a = dense(case.ref, one)
    r = randn(*y.shape, seed=14)
    rf = r.reshape(r.shape[0], -1)
    pinv = torch.linalg.pinv(a, rtol=1e-10)
    torch.testing.assert_close(op.pinv(r).reshape(r.shape[0], -1), rf @ pinv.T, rtol=1e-8, atol=1e-9)
    eye = torch.eye(a.shape[0], dtype=D)
    for a_, b_ in [(0.7, 0.3), (2.0, 1e-2)]:
        want = torch.linalg.solve(a_ * a @ a.T + b_ * eye, rf.T).T
        torch.testing.assert_close(op.solve(r, a_, b_).reshape(r.shape[0], -1), want, rtol=1e-8, atol=1e-9)
    # per-sample (B,) coefficients
    a_b = torch.tensor([0.5, 3.0][: r.shape[0]], dtype=D)
    b_b = torch.tensor([0.2, 0.05][: r.shape[0]], dtype=D)
    got = op.solve(r, a_b, b_b).reshape(r.shape[0], -1)
    for i in range(r.shape[0]):
        want = torch.linalg.solve(a_b[i] * a @ a.T + b_b[i] * eye, rf[i])
        torch.testing.assert_close(got[i], want, rtol=1e-8, atol=1e-9)


def test_mri_real_singulars_are_0_invsqrt2_1() -> None:
    op = MRI(MRI_COLS)
    op(randn(1, 1, 8, 8))
    values = set(np.round(op.singulars.numpy(), 12).tolist())
    assert values == {0.0, round(1 / math.sqrt(2), 12), 1.0}
    # the count of each value follows from the k / -k pairs of the mask
    mu = np.fft.ifftshift(MRI_COLS.numpy()[0, 0])
    both = sum(mu[i, j] * mu[-i % 8, -j % 8] for i in range(8) for j in range(8))
    assert (op.singulars == 1).sum().item() == both


def test_mri_complex_singulars_are_the_mask() -> None:
    op = MRI(MRI_COLS, complex_input=True)
    op(randn(1, 2, 8, 8))
    torch.testing.assert_close(op.singulars, MRI_COLS.expand(1, 2, 8, 8).reshape(-1))


def test_float32_in_float32_out_and_size_change() -> None:
    op = Blur(gaussian_kernel(1.0))
    x32 = torch.rand(1, 3, 16, 16, generator=gen(0))
    y = op(x32)
    assert y.dtype == torch.float32 and op.singulars.dtype == torch.float32
    assert op(torch.rand(2, 1, 10, 12, generator=gen(0))).shape == (2, 1, 10, 12)
    assert op.singulars.shape == (120,)


def test_singulars_before_any_data_raise_clearly() -> None:
    with pytest.raises(ValueError, match="does not know the image size"):
        Identity().singulars


def test_x_shape_of_a_measurement_is_enough_for_the_svd() -> None:
    """restore() and the samplers start from y: x_shape(y) or Ut(y) teach the operator its image size."""
    op = Downsampling(2)
    y = randn(2, 3, 4, 6)
    assert op.x_shape(y) == (2, 3, 8, 12)
    assert op.singulars.shape == (72,) and op.singulars.dtype == D
    assert op.V(op.Vt(randn(2, 3, 8, 12))).shape == (2, 3, 8, 12)
    mri = MRI(torch.ones(8, 8))
    mri.Ut(randn(1, 2, 8, 8))
    assert mri.image_shape == (1, 8, 8) and mri.singulars.shape == (64,)


def test_blur_transfer_function_and_deepinv_blurfft_agree() -> None:
    import deepinv as dinv

    k = K3.float()
    x = torch.rand(2, 3, 8, 8, generator=gen(0))
    physics = dinv.physics.BlurFFT(img_size=(3, 8, 8), filter=k[None, None])
    torch.testing.assert_close(Blur(k)(x), physics.A(x), rtol=1e-5, atol=1e-6)


# -- per-sample masks and repeat_batch -----------------------------------------------------


@pytest.mark.parametrize(
    "make,x_shape",
    [
        (lambda: Inpainting(random_mask((2, 3, 8, 8), 0.6, generator=gen(8)).to(D)), (2, 3, 8, 8)),
        (lambda: MRI(mri_mask((2, 1, 8, 8), 2, 0.25, generator=gen(9)).to(D)), (2, 1, 8, 8)),
        (lambda: MRI(mri_mask((2, 1, 8, 8), 2, 0.25, "equispaced", generator=gen(9)).to(D), True), (2, 2, 8, 8)),
    ],
    ids=["inpainting", "mri_real", "mri_complex"],
)
def test_per_sample_masks_and_repeat_batch(make, x_shape) -> None:
    op = make()
    x = randn(*x_shape)
    y = op(x)
    assert op.singulars.shape == (2, x[0].numel())
    # each image sees its own mask: compare with single-mask operators
    for i in range(2):
        single = type(op)(op.mask[i : i + 1], *([op.complex_input] if isinstance(op, MRI) else []))
        torch.testing.assert_close(y[i : i + 1], single(x[i : i + 1]), rtol=1e-12, atol=1e-12)
        r = randn(1, *y.shape[1:], seed=20 + i)
        torch.testing.assert_close(op.pinv(y)[i : i + 1], single.pinv(y[i : i + 1]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            op.solve(torch.cat([r, r]), 0.5, 0.1)[i : i + 1], single.solve(r, 0.5, 0.1), rtol=1e-10, atol=1e-12
        )
    # sample-major tiling: sample k of image b sees mask b
    rep = op.repeat_batch(3)
    torch.testing.assert_close(rep(x.repeat(3, 1, 1, 1)), y.repeat(3, 1, 1, 1))
    assert rep.singulars.shape[0] == 6
    with pytest.raises(ValueError, match="per-sample mask"):
        op.check((3, *x_shape[1:]))


def test_batch_independent_repeat_batch_returns_self() -> None:
    op = Inpainting(PIXEL_MASK)
    assert op.repeat_batch(4) is op
    blur = Blur(K3)
    assert blur.repeat_batch(2) is blur


# -- tomography --------------------------------------------------------------------------


def test_tomography_matches_skimage_radon() -> None:
    from skimage.transform import radon

    op = Tomography(12, 17, n_detectors=17)
    yy, xx = np.mgrid[:17, :17] - 8
    disc = ((xx - 2) ** 2 + (yy + 1) ** 2 < 20).astype(float) + 0.5 * ((xx + 3) ** 2 + yy**2 < 6)
    ours = op(torch.as_tensor(disc)[None, None])[0, 0].numpy()
    theirs = radon(disc, theta=op.angles.numpy(), circle=True)
    # scikit-image rotates the image and sums rows (ray-driven); ours splats pixels onto the
    # detector (pixel-driven): the two discretisations differ at edges (measured 0.9990)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.998
    # both integrate the object's mass at every angle
    np.testing.assert_allclose(ours.sum(axis=0), disc.sum(), rtol=1e-10)


def test_fbp_reconstructs_shepp_logan() -> None:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    phantom = torch.as_tensor(resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True))[None, None].float()
    op = Tomography(180, 128)
    rec = op.fbp(op(phantom))
    psnr = 10 * math.log10(1.0 / ((rec - phantom) ** 2).mean().item())
    assert psnr > 20.0, psnr  # measured: 29.6 dB


# -- nonlinear operators ---------------------------------------------------------------------


NONLINEAR = {
    "phase_retrieval": (lambda: PhaseRetrieval(oversample=2.0), (1, 1, 8, 8)),
    "saturation": (lambda: Saturation(alpha=2.0), (2, 3, 4, 4)),
    "beer_lambert": (lambda: BeerLambert(Tomography(4, 6), I0=100.0), (1, 1, 6, 6)),
}


@pytest.mark.parametrize("name", list(NONLINEAR))
def test_nonlinear_gradcheck(name: str) -> None:
    make, shape = NONLINEAR[name]
    op = make()
    x = torch.rand(*shape, generator=gen(0), dtype=D).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-6)
    assert op.x_shape(op(x).detach()) == shape
    assert not op.linear


def test_phase_retrieval_matches_numpy_and_dps_padding() -> None:
    op = PhaseRetrieval(oversample=2.0)
    x = torch.rand(1, 1, 16, 16, generator=gen(0), dtype=D)
    y = op(x)
    assert y.shape == (1, 1, 24, 24)  # 16 + 2 * int(2 / 8 * 16)
    want = np.abs(np_fft2c(np.pad(x[0, 0].numpy(), 4)))
    np.testing.assert_allclose(y[0, 0].numpy(), want, rtol=1e-10, atol=1e-12)
    assert PhaseRetrieval(2.0)(torch.zeros(1, 1, 256, 256)).shape[-1] == 384  # DPS: 64 pixels per side


def test_saturation_and_beer_lambert_values() -> None:
    sat = Saturation(alpha=2.0)
    x = torch.tensor([0.0, 0.25, 1.0], dtype=D).reshape(1, 1, 1, 3)
    torch.testing.assert_close(sat(x).flatten(), torch.tensor([0.0, math.tanh(0.5) / math.tanh(2.0), 1.0], dtype=D))
    torch.testing.assert_close(sat.inverse(sat(x)), x)
    tomo = Tomography(3, 4)
    bl = BeerLambert(tomo, I0=50.0, mu=0.2)
    x = torch.rand(1, 1, 4, 4, generator=gen(0), dtype=D)
    torch.testing.assert_close(bl(x), 50.0 * torch.exp(-0.2 * tomo(x)))
    assert BeerLambert(tomo).mu == 0.25


# -- helpers ---------------------------------------------------------------------------------


def test_random_mask_fraction_and_seed() -> None:
    m = random_mask((3, 2, 10, 10), missing=0.7, generator=gen(0))
    assert m.shape == (3, 1, 10, 10)
    assert ((m == 0).flatten(1).sum(1) == 70).all()
    assert not torch.equal(m[0], m[1])
    torch.testing.assert_close(m, random_mask((3, 2, 10, 10), missing=0.7, generator=gen(0)))
    assert random_mask((5, 5), 0.0).min() == 1 and random_mask((5, 5), 1.0).max() == 0


def test_box_mask() -> None:
    m = box_mask((8, 10), 4)
    assert m.shape == (1, 1, 8, 10) and (m == 0).sum() == 16
    assert (m[0, 0, 2:6, 3:7] == 0).all()
    m = box_mask((2, 3, 8, 8), (2, 3), center=(0, 0))
    assert m.shape == (2, 1, 8, 8) and (m == 0).sum() == 2 * 2  # clipped to the image: rows 0, cols 0..1


def test_mask_from_image(tmp_path) -> None:
    from skimage import io

    img = np.zeros((6, 5, 3), dtype=np.uint8)
    img[1:3, 2, 1] = 255
    img[5, 4, 0] = 7
    path = tmp_path / "mask.png"
    io.imsave(path, img, check_contrast=False)
    # default: nonzero = the region to fill (OpenCV, LaMa, diffusers), so the 2 white pixels are unknown;
    # the faint 7 (under half the mask's maximum, like a JPEG artefact) marks nothing
    m = mask_from_image(path, shape=(1, 3, 6, 5))
    assert m.shape == (1, 1, 6, 5) and m.sum() == 30 - 2 and m[0, 0, 1, 2] == 0 and m[0, 0, 5, 4] == 1
    k = mask_from_image(path, shape=(1, 3, 6, 5), nonzero="known")
    assert k.sum() == 2 and k[0, 0, 1, 2] == 1 and k[0, 0, 5, 4] == 0
    torch.testing.assert_close(mask_from_image(img[..., 0]), torch.as_tensor(img[..., 0] == 0).float()[None, None])
    with pytest.raises(ValueError, match="nonzero must be"):
        mask_from_image(img, nonzero="white")
    with pytest.raises(ValueError, match="is 6x5 .* but the image is 8x8"):
        mask_from_image(path, shape=(8, 8))


def test_gaussian_kernel() -> None:
    k = gaussian_kernel(1.5, dtype=D)
    assert k.shape == (11, 11)  # 2 ceil(4.5) + 1
    torch.testing.assert_close(k.sum(), torch.tensor(1.0, dtype=D))
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, k.flip(0).flip(1))
    # the ratio of neighbouring samples is the Gaussian's
    torch.testing.assert_close(k[5, 6] / k[5, 5], torch.tensor(math.exp(-0.5 / 1.5**2), dtype=D))


def test_motion_kernel_is_seeded() -> None:
    a = motion_kernel(21, 0.5, generator=gen(3))
    b = motion_kernel(21, 0.5, generator=gen(3))
    c = motion_kernel(21, 0.5, generator=gen(4))
    assert a.shape == (21, 21) and torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a.sum(), torch.tensor(1.0))
    assert (a >= 0).all() and (a > 1e-3).sum() > 5  # a trajectory, not a point


@pytest.mark.parametrize("kind", ["random", "equispaced"])
def test_mri_mask_acceleration_and_center(kind: str) -> None:
    m = mri_mask((8, 1, 32, 256), acceleration=4, center_fraction=0.08, kind=kind, generator=gen(0))
    assert m.shape == (8, 1, 32, 256)
    assert (m == m[:, :, :1]).all()  # column masks
    n_center = round(256 * 0.08)
    pad = (256 - n_center + 1) // 2
    assert (m[..., pad : pad + n_center] == 1).all()
    measured = m[:, 0, 0].sum(1) / 256
    assert abs(measured.mean().item() - 0.25) < 0.03, measured
    assert torch.equal(m, mri_mask((8, 1, 32, 256), 4, 0.08, kind, generator=gen(0)))


def test_helmert_and_bicubic_matrices() -> None:
    h = helmert(5)
    torch.testing.assert_close(h @ h.T, torch.eye(5, dtype=D))
    torch.testing.assert_close(h[0], torch.full((5,), 1 / math.sqrt(5), dtype=D))
    a = bicubic_matrix(32, 4)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    # interior rows equal PyTorch's antialiased bicubic downsampling (Keys a = -0.5)
    x = torch.randn(1, 1, 32, 32, generator=gen(0), dtype=D)
    ref = torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    ours = Downsampling(4, "bicubic")(x)
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], rtol=1e-10, atol=1e-12)


def test_real_fourier_basis() -> None:
    for h, w in [(8, 8), (5, 7), (6, 3)]:
        basis = torch.eye(h * w, dtype=D).reshape(-1, h, w)
        t = fourier_coords(basis)  # row i: coordinates of pixel i
        torch.testing.assert_close(t @ t.T, torch.eye(h * w, dtype=D), rtol=0, atol=1e-12)
        z = randn(2, h * w)
        torch.testing.assert_close(fourier_coords(fourier_image(z, (h, w))), z, rtol=0, atol=1e-12)
        torch.testing.assert_close(spectrum_coords(coords_spectrum(z, (h, w))), z, rtol=0, atol=1e-12)
        # a Hermitian transfer function acts as |K| then a rotation in the coordinates
        k = torch.fft.fft2(randn(h, w, seed=1))
        x = randn(h, w, seed=2)
        direct = fourier_coords(torch.fft.ifft2(k * torch.fft.fft2(x)).real)
        cos, sin = phase_coords(k)
        rotated = rotate_coords(magnitude_coords(k) * fourier_coords(x), cos, sin, (h, w))
        torch.testing.assert_close(rotated, direct, rtol=1e-10, atol=1e-12)
        undone = rotate_coords(rotated, cos, sin, (h, w), inverse=True)
        torch.testing.assert_close(undone, magnitude_coords(k) * fourier_coords(x), rtol=1e-10, atol=1e-12)


# -- deepinv bridge --------------------------------------------------------------------------


def test_from_deepinv_svd_linear_and_nonlinear() -> None:
    import deepinv as dinv

    x = torch.rand(2, 2, 8, 8, generator=gen(0))
    inp = dinv.physics.Inpainting(img_size=(2, 8, 8), mask=CHANNEL_MASK[:, :2].float())
    op = from_deepinv(inp)
    assert getattr(op, "has_svd", False)
    torch.testing.assert_close(op(x), inp.A(x))
    torch.testing.assert_close(op.pinv(op(x)), inp.A_dagger(inp.A(x)), rtol=1e-5, atol=1e-6)
    blur = dinv.physics.BlurFFT(img_size=(2, 8, 8), filter=K3.float()[None, None])
    op = from_deepinv(blur)
    assert op.linear and not getattr(op, "has_svd", False)  # half-spectrum coefficients: not a real basis
    y = torch.rand(2, 2, 8, 8, generator=gen(1))
    torch.testing.assert_close(op.adjoint(y), blur.A_adjoint(y))
    pr = from_deepinv(dinv.physics.PhaseRetrieval(B=dinv.physics.Denoising()))
    assert not pr.linear


def test_to_deepinv_round_trip() -> None:
    import deepinv as dinv

    x = torch.rand(2, 1, 8, 8, generator=gen(0), dtype=D)
    for op in [Inpainting(PIXEL_MASK), Blur(K3), Blur(K3, "reflect"), Downsampling(2, "bicubic"), Tomography(4, 8)]:
        physics = to_deepinv(op)
        assert isinstance(physics, dinv.physics.LinearPhysics)
        torch.testing.assert_close(physics.A(x), op(x))
        y = physics.A(x)
        torch.testing.assert_close(physics.A_adjoint(y), op.adjoint(y))
        assert from_deepinv(physics) is op
        back = from_deepinv(dinv.physics.LinearPhysics(A=physics.A, A_adjoint=physics.A_adjoint))
        torch.testing.assert_close(back(x), op(x))
        torch.testing.assert_close(back.adjoint(y), op.adjoint(y))
    assert not isinstance(to_deepinv(Saturation()), dinv.physics.LinearPhysics)
    torch.testing.assert_close(to_deepinv(Saturation()).A(x), Saturation()(x))


def test_to_deepinv_prox_l2_closed_form() -> None:
    op = Blur(K3)
    x = torch.rand(2, 1, 8, 8, generator=gen(0), dtype=D)
    z = torch.rand(2, 1, 8, 8, generator=gen(1), dtype=D)
    y = op(x)
    physics = to_deepinv(op)
    a = dense(op, (1, 8, 8))
    for gamma in [0.5, torch.tensor([0.5, 4.0], dtype=D)]:
        got = physics.prox_l2(z, y, gamma).reshape(2, -1)
        g = torch.as_tensor(gamma, dtype=D).expand(2)
        for i in range(2):
            lhs = g[i] * a.T @ a + torch.eye(64, dtype=D)
            want = torch.linalg.solve(lhs, g[i] * a.T @ y[i].reshape(-1) + z[i].reshape(-1))
            torch.testing.assert_close(got[i], want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(physics.A_dagger(y), op.pinv(y))


# -- error messages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: Inpainting(torch.ones(1, 1, 64, 64))(torch.zeros(1, 3, 128, 128)),
         r"mask has shape \(1, 1, 64, 64\) but the image is \(1, 3, 128, 128\)"),
        (lambda: Inpainting(torch.ones(2, 1, 8, 8)).check((3, 1, 8, 8)), r"2 per-sample masks .* 3 images"),
        (lambda: Downsampling(4)(torch.zeros(1, 3, 10, 12)),
         r"image size 10x12 of image \(1, 3, 10, 12\) is not divisible by the downsampling factor 4"),
        (lambda: Downsampling(2, image_size=(8, 8)).check((1, 1, 16, 16)), r"built for \(8, 8\) .* \(1, 1, 16, 16\)"),
        (lambda: Downsampling(2, filter="lanczos"), r"filter must be 'box' or 'bicubic'"),
        (lambda: Blur(torch.ones(3, 3), padding="zeros"), r"padding must be one of"),
        (lambda: Blur(torch.ones(9, 9))(torch.zeros(1, 1, 8, 8)), r"kernel 9x9 is larger than the image \(1, 1, 8, 8\)"),
        (lambda: Blur(torch.ones(2, 3, 3))(torch.zeros(1, 3, 8, 8)), r"kernel has 2 channels"),
        (lambda: Blur(torch.ones(3, 3), "reflect").singulars, r"has no SVD; use padding='circular'"),
        (lambda: Colorization()(torch.zeros(1, 1, 8, 8)), r"expects 3-channel images but the image is \(1, 1, 8, 8\)"),
        (lambda: MRI(torch.ones(8, 8))(torch.zeros(1, 1, 8, 6)), r"mask has shape \(1, 1, 8, 8\) but the image is \(1, 1, 8, 6\)"),
        (lambda: MRI(torch.ones(8, 8), complex_input=True)(torch.zeros(1, 3, 8, 8)), r"odd number of channels"),
        (lambda: MRI(torch.ones(8, 8)).x_shape(torch.zeros(1, 3, 8, 8)), r"\(B, 2C, H, W\)"),
        (lambda: MRI(-torch.ones(8, 8)), r"nonnegative"),
        (lambda: Tomography(10, 16)(torch.zeros(1, 1, 16, 12)), r"built for \(16, 16\) images but the image is \(1, 1, 16, 12\)"),
        (lambda: Tomography(10, 16).adjoint(torch.zeros(1, 1, 23, 9)), r"sinogram has shape \(1, 1, 23, 9\)"),
        (lambda: Identity()(torch.zeros(3, 8, 8)), r"\(B, C, H, W\), got shape \(3, 8, 8\)"),
        (lambda: random_mask((8, 8), missing=1.5), r"missing .* \[0, 1\], got 1.5"),
        (lambda: mri_mask((8, 8), acceleration=8, center_fraction=0.5), r"center_fraction=0.5"),
        (lambda: Identity().V(torch.zeros(1, 5)), r"does not know the image size"),
    ],
)
def test_errors_are_clear(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_vector_size_names_the_shapes() -> None:
    op = Identity()
    op(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"expects a tensor of shape \(B, 4\) .* got \(1, 5\)"):
        op.V(torch.zeros(1, 5))
