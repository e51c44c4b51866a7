"""Half precision: float16 and bfloat16 through the samplers' numerics, every operator and ``restore``.

The rule under test (``restore``'s docstring): the sampler's state is in at least float32 (the
prior's parameter dtype, or ``y``'s for a parameter-free prior, widened from half to float32);
``Result.dtype`` names it.  A half-precision network runs in its own dtype
(``Result.network_dtype``) on inputs the prior casts to it, its answers cast back.  ``mean``,
``std``, ``samples`` come back in ``y``'s dtype.  Called directly on half tensors, the samplers'
sums, norms, conjugate gradients and FFTs run in float32.

Tolerances are max abs errors of a posterior mean of ``[0, 1]`` images (8x8, 10 levels,
2 samples) against float32 with the same seed; each is derived where it is set.  One
unit in the last place (ulp) at 1 is ``2^-7 = 0.0078`` in bfloat16 (8 significant bits)
and ``2^-10 = 0.00098`` in float16 (11 bits).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from invdiff import METHODS, restore
from invdiff.operators import (
    MRI,
    Blur,
    Colorization,
    Downsampling,
    Identity,
    Inpainting,
    MultiCoilMRI,
    PhaseRetrieval,
    Saturation,
    Tomography,
    TomographySVD,
    birdcage_sensitivities,
    gaussian_kernel,
    mri_mask,
    random_mask,
)
from invdiff.operators.fourier import fft2c, fourier_coords, fourier_image, ifft2c
from invdiff.priors import GaussianPrior, Prior, UNetConfig, UNetPrior
from invdiff.priors.base import to_network
from invdiff.restore import check_method
from invdiff.samplers.common import (
    bdot,
    conjugate_gradient,
    operator_norm,
    per_sample_norm,
    randn,
    ridge_adjoint_solve,
)
from invdiff.volume import restore_batch

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
HALF = [BF16, F16]
NAME = {BF16: "bfloat16", F16: "float16", F32: "float32"}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# -- the samplers' numerics --------------------------------------------------------------------------

# Solves on a 3x128x128 half input with lam = 1e3: before, p^T (A A^T + lam I) p ~ 1e3 * 49152 overflowed
# float16, CG's step became 0 and the relative error 1.0.  Now the solve runs in float32 and only the
# result is rounded: relative error of the order of one rounding, 2^-11 = 4.9e-4 (float16; 1.9e-4 seen)
# and 2^-8 = 3.9e-3 (bfloat16; 1.6e-3 for CG, 2.4e-3 through the circular blur's half-precision SVD).
SOLVE_RTOL = {F16: 1e-3, BF16: 8e-3}


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
@pytest.mark.parametrize("padding", ["reflect", "circular"])  # CG, and the SVD path
def test_ridge_solve_and_cg_do_not_overflow_in_half(dtype, padding):
    op = Blur(gaussian_kernel(1.0), padding=padding)
    v = torch.rand(2, 3, 128, 128, generator=gen(0)).to(dtype)
    ref = ridge_adjoint_solve(op, v.float(), 1e3)  # float32 on the same (rounded) values
    got = ridge_adjoint_solve(op, v, 1e3)
    assert got.dtype == dtype
    assert ((got.float() - ref).norm() / ref.norm()).item() < SOLVE_RTOL[dtype]

    def normal(q):
        return op(op.adjoint(q)) + 1e3 * q

    x = conjugate_gradient(normal, v)
    x_ref = conjugate_gradient(normal, v.float())
    assert x.dtype == dtype and torch.isfinite(x).all()
    assert ((x.float() - x_ref).norm() / x_ref.norm()).item() < SOLVE_RTOL[dtype]
    # a per-sample (B,) lam in half precision too
    lam = torch.tensor([1e3, 2e3], dtype=dtype)
    ref = ridge_adjoint_solve(op, v.float(), lam.float())
    got = ridge_adjoint_solve(op, v, lam)
    assert ((got.float() - ref).norm() / ref.norm()).item() < SOLVE_RTOL[dtype]


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
def test_reductions_accumulate_in_float32(dtype):
    x = torch.full((2, 3, 128, 128), 2.0, dtype=dtype)  # sum of squares 196608 > float16's 65504
    assert bdot(x, x).dtype == F32 and torch.equal(bdot(x, x), torch.full((2,), 196608.0))
    assert per_sample_norm(x).dtype == F32
    torch.testing.assert_close(per_sample_norm(x), torch.full((2,), 196608.0**0.5))
    norms = operator_norm(Blur(gaussian_kernel(1.0), padding="reflect"), x)
    assert norms.dtype == F32 and torch.isfinite(norms).all()
    torch.testing.assert_close(norms, operator_norm(Blur(gaussian_kernel(1.0), padding="reflect"), x.float()))
    # the same seed draws the same noise in every precision (rounded)
    z = randn((3, 40), gen(5), like=x)
    assert z.dtype == dtype and torch.equal(z, randn((3, 40), gen(5), like=x.float()).to(dtype))


def test_daps_called_directly_in_float16_keeps_its_gradients_finite_at_small_sigma_y():
    # 1 / s^2 with s = max(sigma_y, tau = 0.0035) is 80000: a residual above 0.82 (here y is brighter than
    # the prior expects) passes float16's 65504.  DAPS forms its Langevin step in float32, returns y's dtype.
    from invdiff.samplers.daps import daps

    op, prior, y = problem("sr_box")
    y = y + 1.0
    sigmas = prior.sigmas(4).double()
    kw = dict(sigma_y=0.002, langevin_steps=5, ode_steps=2)
    half = daps(prior, op, y.half(), sigmas, generator=gen(0), **kw)
    assert half.dtype == F16 and torch.isfinite(half).all()
    ref = daps(prior, op, y.half().float(), sigmas, generator=gen(0), **kw)
    assert max_err(half, ref) < 0.05


# -- every operator in half precision ------------------------------------------------------------------


def _operators() -> dict[str, tuple[nn.Module, tuple[int, int, int, int]]]:
    ct = Tomography(6, image_size=8, scale=0.125)
    mask = mri_mask((8, 8), acceleration=2, center_fraction=0.25, generator=gen(2))
    return {
        "inpainting": (Inpainting(random_mask((2, 1, 8, 8), missing=0.5, generator=gen(1))), (2, 1, 8, 8)),
        "blur": (Blur(gaussian_kernel(1.0, 5)), (2, 1, 8, 8)),
        "blur_reflect": (Blur(gaussian_kernel(1.0, 5), padding="reflect"), (2, 1, 8, 8)),
        "sr_box": (Downsampling(2), (2, 1, 8, 8)),
        "sr_bicubic": (Downsampling(2, filter="bicubic"), (2, 1, 8, 8)),
        "mri": (MRI(mask), (2, 1, 8, 8)),
        "mri_complex": (MRI(mask, complex_input=True), (2, 2, 8, 8)),
        "mri_multicoil": (MultiCoilMRI(mask, birdcage_sensitivities(3, (8, 8))), (2, 1, 8, 8)),
        "ct": (ct, (2, 1, 8, 8)),
        "ct_svd": (TomographySVD(ct), (2, 1, 8, 8)),
        "colorization": (Colorization(), (2, 3, 8, 8)),
        "identity": (Identity(), (2, 1, 8, 8)),
        "saturation": (Saturation(1.0), (2, 1, 8, 8)),
        "phase_retrieval": (PhaseRetrieval(1.0), (2, 1, 8, 8)),
    }


# An operator is a few sums and products (FFTs and CT line sums in float32): its half-precision output,
# compared with float32 on the same rounded input, is off by the output's rounding and a few more ulps.
# Four ulps of the output's scale: 4 * 2^-7 = 0.031 (bfloat16) and 4 * 2^-10 = 0.0039 (float16), relative.
OP_RTOL = {BF16: 4 * 2**-7, F16: 4 * 2**-10}


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
@pytest.mark.parametrize("name", list(_operators()))
def test_every_operator_runs_in_half_precision(name, dtype):
    op, shape = _operators()[name]
    x = torch.rand(shape, generator=gen(3)).to(dtype)

    def close(got, ref, what):
        assert got.dtype == dtype, f"{what} returned {got.dtype} for {dtype} input"
        assert max_err(got, ref) <= OP_RTOL[dtype] * max(ref.abs().max().item(), 1e-3), what

    y = op(x)
    close(y, op(x.float()), "forward")
    if op.linear:
        close(op.adjoint(y), op.adjoint(y.float()), "adjoint")
    if getattr(op, "has_svd", False):
        z = op.Vt(x)
        close(z, op.Vt(x.float()), "Vt")
        w = op.Ut(y)
        assert op.singulars.dtype == dtype
        # V and U use factors cached in the dtype of the last Vt / Ut; cross the dtypes on purpose
        z32, w32 = z.float(), w.float()
        op.Ut(y.float())
        close(op.V(z), op.V(z32), "V")
        close(op.U(w), op.U(w32), "U")
    if name == "ct":
        close(op.fbp(y), op.fbp(y.float()), "fbp")


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
def test_fft_helpers_upcast_and_cast_back(dtype):
    x = torch.rand(2, 8, 6, generator=gen(4)).to(dtype)
    assert fourier_coords(x).dtype == dtype and fourier_image(fourier_coords(x), (8, 6)).dtype == dtype
    assert max_err(fourier_image(fourier_coords(x), (8, 6)), x) <= 4 * OP_RTOL[dtype]
    k = fft2c(x)
    assert k.dtype == torch.complex64  # no half complex dtype to return (bfloat16 has none)
    torch.testing.assert_close(k, fft2c(x.float()))
    torch.testing.assert_close(ifft2c(k).real, x.float())


# -- restore: every method x operator x dtype ------------------------------------------------------------

PIXEL = [m for m in METHODS if m not in ("latent_dps", "psld")]
STEPS = 10
KNOBS = {  # fewer inner iterations keep every case in milliseconds
    "daps": dict(ode_steps=2, langevin_steps=5),
    "pnp_dm": dict(inner_steps=2, langevin_steps=5),
    "diffpir": dict(cg_iters=20),
    "score_ald": dict(steps_per_level=2),
    "repaint": dict(jump_length=2, jump_n_sample=2),
}
SOLVE_OPS = ["inpainting", "blur", "blur_reflect", "sr_box", "sr_bicubic", "mri", "ct", "ct_svd", "colorization",
             "saturation", "phase_retrieval"]  # fmt: skip


@functools.lru_cache(maxsize=None)
def problem(name: str) -> tuple[nn.Module, GaussianPrior, torch.Tensor]:
    op, shape = _operators()[name]
    prior = GaussianPrior.smooth(shape[1:], data_range=(0.0, 1.0))
    y = op(prior.sample(shape[0], generator=gen(3)).float())
    return op, prior, y + 0.05 * torch.randn(y.shape, generator=gen(4))


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in SOLVE_OPS:
        op, _, y = problem(name)
        for method in PIXEL:
            try:
                check_method(method, op, y)
            except ValueError:
                continue
            cases.append((method, name))
    return cases


CASES = _cases()


def run(method: str, name: str, y: torch.Tensor, prior: Prior | None = None):
    op, analytic, _ = problem(name)
    return restore(y, op, analytic if prior is None else prior, method=method, steps=STEPS, sigma_y=0.05,
                   samples=2, seed=0, **KNOBS.get(method, {}))  # fmt: skip


@functools.lru_cache(maxsize=None)
def reference(method: str, name: str, rounded_to: torch.dtype | None) -> torch.Tensor:
    """The float32 posterior mean for ``y`` (or ``y`` rounded to ``rounded_to``), same seed."""
    y = problem(name)[2]
    return run(method, name, y if rounded_to is None else y.to(rounded_to).float()).mean


def test_every_method_and_operator_kind_is_covered():
    assert {m for m, _ in CASES} == set(PIXEL)
    assert {n for _, n in CASES} == set(SOLVE_OPS)
    assert ("repaint", "inpainting") in CASES and ("ddrm", "ct_svd") in CASES and ("dps", "phase_retrieval") in CASES


# Half y, analytic prior: computed in float32.  The run is the float32 run on the rounded y exactly,
# rounded once at the end (checked with torch.equal).  Against float32 on the unrounded y the difference is
# y's rounding (relative 2^-9 bfloat16, 2^-12 float16) carried through the sampler, plus the output's
# rounding: 0.0076 (bfloat16) and 0.0015 (float16) at most over these cases; allowed 0.02 and 0.005.
ANALYTIC_TOL = {BF16: 0.02, F16: 0.005}


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
@pytest.mark.parametrize("method, name", CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_half_y_with_an_analytic_prior_computes_in_float32(method, name, dtype):
    y = problem(name)[2]
    r = run(method, name, y.to(dtype))
    assert r.dtype == "float32" and r.to_dict()["dtype"] == "float32"
    assert r.mean.dtype == r.std.dtype == r.samples.dtype == dtype
    assert torch.equal(r.mean, reference(method, name, dtype).to(dtype))
    assert max_err(r.mean, reference(method, name, None)) < ANALYTIC_TOL[dtype]


class HalfParamPrior(Prior):
    """The analytic prior's exact denoiser as a network in ``dtype`` (one unit parameter of it).

    Like the shipped priors, it casts its input to its parameter dtype, computes there and
    hands its answer back in the input's dtype.
    """

    casts_input = True

    def __init__(self, inner: GaussianPrior, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.unit = nn.Parameter(torch.ones((), dtype=dtype), requires_grad=False)
        self.sigma_min, self.sigma_max, self.data_range = inner.sigma_min, inner.sigma_max, inner.data_range

    def denoise(self, x, sigma):
        return (self.inner.denoise(to_network(x, self), sigma) * self.unit).to(x.dtype)

    def sigmas(self, steps, sigma_max=None):
        return self.inner.sigmas(steps, sigma_max)

    def data_mean(self):
        return self.inner.data_mean()


# Half y, half prior: the chain runs in float32 and only the (exact) denoiser in half, its input and its
# answer rounded at each call.  Against float32 on the same rounded y, over these cases at most 0.0068
# (bfloat16) and 0.0025 (float16) seen, the output's own rounding included; allowed 0.015 and 0.005.
# Score-ALD's Langevin chains, which re-linearise at each of their 20 steps, reach 0.026 (bfloat16, the
# nonlinear Saturation) and 0.0029 (float16); allowed 0.05 and 0.006.  When the whole chain ran in half,
# the errors were up to 0.025 / 0.0031, and 0.18 / 0.037 for Score-ALD on Saturation.
HALF_TOL = {BF16: 0.015, F16: 0.005}
HALF_TOL_LANGEVIN = {BF16: 0.05, F16: 0.006}


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
@pytest.mark.parametrize("method, name", CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_half_y_with_a_half_prior_runs_the_chain_in_float32(method, name, dtype):
    _, analytic, y = problem(name)
    r = run(method, name, y.to(dtype), HalfParamPrior(analytic, dtype))
    assert r.dtype == "float32" and r.network_dtype == NAME[dtype] and r.to_dict()["network_dtype"] == NAME[dtype]
    assert r.mean.dtype == dtype and torch.isfinite(r.samples).all()
    tol = (HALF_TOL_LANGEVIN if method == "score_ald" else HALF_TOL)[dtype]
    assert max_err(r.mean, reference(method, name, dtype)) < tol


# -- a trained-style prior: a small random-weight U-Net ---------------------------------------------------


def tiny_unet(dtype: torch.dtype = F32) -> UNetPrior:
    config = {"unet": UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4).to_dict()}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        prior = UNetPrior(config)
    g = gen(7)
    with torch.no_grad():  # the zero-initialised output layers would make the network trivial
        for p in prior.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return prior.to(dtype)


class PlainHalfPrior(HalfParamPrior):
    """A user's half-precision prior that does not cast: its network (a 1x1 convolution) takes only its dtype."""

    casts_input = False

    def denoise(self, x, sigma):
        w = self.unit.reshape(1, 1, 1, 1).expand(x.shape[1], 1, 1, 1)
        return torch.nn.functional.conv2d(self.inner.denoise(x, sigma), w, groups=x.shape[1])


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
def test_a_half_prior_that_does_not_cast_gets_its_dtype_from_restore(dtype):
    _, analytic, y = problem("blur")
    prior = PlainHalfPrior(analytic, dtype)
    assert not prior.casts_input and HalfParamPrior.casts_input
    with pytest.raises(RuntimeError):
        prior.denoise(y, 0.5)  # float32 into its half convolution
    r = run("ddrm", "blur", y.to(dtype), prior)
    assert r.dtype == "float32" and r.network_dtype == NAME[dtype] and torch.isfinite(r.samples).all()
    assert max_err(r.mean, reference("ddrm", "blur", dtype)) < HALF_TOL[dtype]


# -- 1000 levels: the schedule stays float64, the chain float32 ------------------------------------------

# DPS at its default 1000 levels on a 4x4 problem.  In bfloat16 a 1000-level schedule has repeated
# levels, which check_sigmas refuses; restore keeps it float64.  With an analytic prior and half y the
# run is float32's on the rounded y, exactly.  With the U-Net in half the network rounds its input and
# its answer at each of the 1000 calls; the EDM skip path and DPS's updates stay in float32, so the
# chain does not drift: over 3 seeds 0.0055-0.009 (bfloat16) and 0.0008-0.0015 (float16) from the
# float32 U-Net; allowed 0.03 and 0.005.  With the whole chain in half it was 0.10-0.14 and 0.018-0.080.
LONG_TOL = {BF16: 0.03, F16: 0.005}


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
def test_dps_with_1000_levels_in_half_precision(dtype):
    prior = GaussianPrior.smooth((1, 4, 4), data_range=(0.0, 1.0))
    if dtype == BF16:  # what casting the schedule to y's dtype did (float16 keeps this one decreasing)
        assert not (prior.sigmas(1000).to(dtype)[:-1].diff() < 0).all()
    op = Downsampling(2)
    y = op(prior.sample(1, generator=gen(0)).float()) + 0.05 * torch.randn(1, 1, 2, 2, generator=gen(1))
    y = y.to(dtype)
    ref = restore(y.float(), op, prior, method="dps", sigma_y=0.05, seed=0)
    assert ref.steps == 1000
    analytic = restore(y, op, prior, method="dps", sigma_y=0.05, seed=0)
    assert analytic.dtype == "float32" and torch.equal(analytic.mean, ref.mean.to(dtype))
    # a trained network in half against the same network in float32
    x = torch.rand(1, 1, 8, 8, generator=gen(0))
    y = (op(x) + 0.05 * torch.randn(1, 1, 4, 4, generator=gen(20))).to(dtype)
    ref = restore(y.float(), op, tiny_unet(), method="dps", sigma_y=0.05, seed=0)
    half = restore(y, op, tiny_unet(dtype), method="dps", sigma_y=0.05, seed=0)
    assert half.dtype == "float32" and half.network_dtype == NAME[dtype] and half.nfe == 1000
    assert max_err(half.mean, ref.mean) < LONG_TOL[dtype]


# DDRM and DPS, 5 levels, with the U-Net in half against the U-Net in float32 on the same rounded y.
# The network's own rounding (0.002-0.007 per call in bfloat16, 0.0005-0.0065 in float16, measured
# on its output) passes through 5 denoiser calls: over 3 seeds at most 0.0085 (bfloat16) and 0.0013
# (float16) seen; allowed 0.03 and 0.005.
UNET_TOL = {BF16: 0.03, F16: 0.005}


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
@pytest.mark.parametrize("method", ["ddrm", "dps"])
def test_unet_prior_in_half_and_in_float32_with_half_y(method, dtype):
    op = Downsampling(2)
    x = torch.rand(1, 1, 8, 8, generator=gen(8))
    y = (op(x) + 0.05 * torch.randn(1, 1, 4, 4, generator=gen(9))).to(dtype)
    kw = dict(method=method, steps=5, sigma_y=0.05, samples=2, seed=0)
    ref = restore(y.float(), op, tiny_unet(), **kw)
    # half y, float32 prior: computed in float32, returned in half
    mixed = restore(y, op, tiny_unet(), **kw)
    assert mixed.dtype == "float32" and mixed.mean.dtype == dtype
    assert torch.equal(mixed.mean, ref.mean.to(dtype))
    # half y, half prior: the chain in float32, the network in half
    half = restore(y, op, tiny_unet(dtype), **kw)
    assert half.dtype == "float32" and half.network_dtype == NAME[dtype]
    assert half.mean.dtype == dtype and torch.isfinite(half.samples).all()
    assert max_err(half.mean, ref.mean) < UNET_TOL[dtype]
    # float32 y, half prior: the same run, returned in float32
    up = restore(y.float(), op, tiny_unet(dtype), **kw)
    assert up.dtype == "float32" and up.network_dtype == NAME[dtype] and up.mean.dtype == F32
    assert torch.equal(up.mean.to(dtype), half.mean)


# -- restore's dtype rules ------------------------------------------------------------------------------


def test_float64_on_one_side_only_is_refused_with_the_old_message():
    op, prior, y = problem("sr_box")
    with pytest.raises(ValueError, match=r"prior is on cpu \(torch.float32\) but y is on cpu \(torch.float64\)"):
        restore(y.double(), op, HalfParamPrior(prior, F32), steps=2, sigma_y=0.05)
    with pytest.raises(ValueError, match=r"prior is on cpu \(torch.float64\) but y is on cpu \(torch.float16\)"):
        restore(y.half(), op, HalfParamPrior(prior, torch.float64), steps=2, sigma_y=0.05)
    # parameter-less priors follow y: float64 y computes in float64
    assert restore(y.double(), op, prior, steps=2, sigma_y=0.05).dtype == "float64"


def test_y_beyond_float16_range_is_refused_for_a_float16_prior():
    op, prior = Identity(), GaussianPrior.smooth((1, 4, 4))
    y = torch.full((1, 1, 4, 4), 1e5)
    with pytest.raises(ValueError, match=r"beyond torch.float16's largest value 6.55e\+04.*prior.float\(\)"):
        restore(y, op, HalfParamPrior(prior, F16), steps=2, sigma_y=0.05)
    # bfloat16 has float32's range: accepted
    assert restore(y, op, HalfParamPrior(prior, BF16), steps=2, sigma_y=0.05).network_dtype == "bfloat16"


@pytest.mark.parametrize("dtype", HALF, ids=NAME.get)
def test_restore_batch_keeps_the_compute_dtype(dtype):
    op, prior, y = problem("sr_box")
    r = restore_batch(y.to(dtype), op, prior, batch_size=1, method="ddrm", steps=3, sigma_y=0.05)
    assert r.dtype == "float32" and r.mean.dtype == dtype and r.mean.shape == (2, 1, 8, 8)
