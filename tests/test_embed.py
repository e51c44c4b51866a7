"""``operators.Embed`` / ``embed`` (an operator on a larger canvas) and ``restore`` on images of any size."""

from __future__ import annotations

import json

import pytest
import torch

from invdiff import METHODS, restore
from invdiff.operators import (
    Blur,
    Colorization,
    Downsampling,
    Embed,
    Inpainting,
    PhaseRetrieval,
    Saturation,
    embed,
    gaussian_kernel,
    random_mask,
)
from invdiff.operators.base import SVDOperator
from invdiff.operators.embed import crop
from invdiff.priors import load_prior, shipped_priors

F64 = torch.float64
PAD = (1, 2, 3, 0)  # top, bottom, left, right: uneven on purpose, one side empty


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# name -> (operator, inner image shape (B, C, H, W))
SVD_OPS = {
    "blur": lambda: (Blur(gaussian_kernel(1.0, 5, dtype=F64)), (2, 1, 8, 10)),
    "box": lambda: (Downsampling(2), (2, 3, 8, 10)),
    "bicubic": lambda: (Downsampling(2, "bicubic"), (2, 1, 8, 10)),
    "inpainting": lambda: (Inpainting(random_mask((2, 1, 8, 10), 0.5, generator=_gen(1))), (2, 3, 8, 10)),
    "colorization": lambda: (Colorization(3), (2, 3, 8, 10)),
}


def _problem(name: str) -> tuple[Embed, torch.Tensor, torch.Tensor]:
    """``(Embed(op, PAD), x on the padded canvas, a measurement-shaped v)`` in float64."""
    op, inner = SVD_OPS[name]()
    e = Embed(op, PAD)
    y = op(torch.rand(inner, generator=_gen(2), dtype=F64))
    x = torch.randn(e.x_shape(y), generator=_gen(3), dtype=F64)
    return e, x, torch.randn(y.shape, generator=_gen(4), dtype=F64)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


@pytest.mark.parametrize("name", SVD_OPS)
def test_adjoint_identity(name):
    """``<A' x, v> = <x, A'^T v>``, and the adjoint is zero on the border."""
    e, x, v = _problem(name)
    assert e.linear and e.has_svd
    assert x.shape[-2:] == (8 + 3, 10 + 3)
    at_v = e.adjoint(v)
    assert _dot(e(x), v) == pytest.approx(_dot(x, at_v), rel=1e-12)
    inner = torch.zeros_like(at_v, dtype=torch.bool)
    inner[..., 1:9, 3:13] = True
    assert (at_v[~inner] == 0).all()


@pytest.mark.parametrize("name", SVD_OPS)
def test_svd_round_trip(name):
    """``U diag(s) V^T x = A' x``; ``V`` and ``V^T`` are inverse and preserve norms; the border is null space."""
    e, x, _ = _problem(name)
    z = e.Vt(x)
    n, m = x[0].numel(), e.singulars.shape[-1]
    assert z.shape == (x.shape[0], n)
    torch.testing.assert_close(e.U(e._s(z) * z[:, :m]), e.op(crop(x, PAD)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(SVDOperator.forward(e, x), e(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.V(z), x, rtol=1e-12, atol=1e-12)
    w = torch.randn(z.shape, generator=_gen(5), dtype=F64)
    torch.testing.assert_close(e.Vt(e.V(w)), w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z.norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    # the border pixels are the last components, in the null space
    border = x.clone()
    border[..., 1:9, 3:13] = 0
    zb = e.Vt(border)
    assert (zb[:, : n - border[0].count_nonzero()] == 0).all()
    torch.testing.assert_close(e(x + border), e(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", SVD_OPS)
def test_pinv_and_solve(name):
    """``pinv`` and ``solve`` agree with the base class's SVD formulas and with forward/adjoint."""
    e, x, v = _problem(name)
    y = e(x)
    torch.testing.assert_close(e.pinv(y), SVDOperator.pinv(e, y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(e(e.pinv(y)), y, rtol=1e-8, atol=1e-8)
    u = e.solve(v, 2.0, 0.5)
    torch.testing.assert_close(2.0 * e(e.adjoint(u)) + 0.5 * u, v, rtol=1e-10, atol=1e-10)


def test_per_sample_masks_repeat_batch():
    op = Inpainting(random_mask((2, 1, 8, 10), 0.5, generator=_gen(1)))
    e = Embed(op, PAD)
    x = torch.rand(4, 1, 11, 13, generator=_gen(2))
    e2 = e.repeat_batch(2)
    assert isinstance(e2, Embed) and e2.op.mask.shape[0] == 4 and e2.pad == PAD
    torch.testing.assert_close(e2(x), op.repeat_batch(2)(crop(x, PAD)))
    e2.Vt(x)
    assert e2.singulars.shape == (4, 80)
    assert Embed(Blur(gaussian_kernel(1.0)), PAD).repeat_batch(3).pad == PAD


def test_linear_without_svd_and_nonlinear():
    blur = Blur(gaussian_kernel(1.0, 5, dtype=F64), padding="reflect")
    e = Embed(blur, PAD)
    x = torch.randn(1, 1, 11, 13, generator=_gen(0), dtype=F64)
    v = torch.randn(1, 1, 8, 10, generator=_gen(1), dtype=F64)
    assert e.linear and not e.has_svd and e.x_shape(v) == (1, 1, 11, 13)
    assert _dot(e(x), v) == pytest.approx(_dot(x, e.adjoint(v)), rel=1e-12)
    with pytest.raises(ValueError, match="Embed of Blur has no SVD"):
        e.Vt(x)

    for op in (PhaseRetrieval(), Saturation()):
        e = Embed(op, PAD)
        y = op(torch.rand(1, 1, 8, 10, generator=_gen(2)))
        assert not e.linear and not e.has_svd and e.x_shape(y) == (1, 1, 11, 13)
        x = torch.rand(1, 1, 11, 13, generator=_gen(3), requires_grad=True)
        torch.testing.assert_close(e(x), op(crop(x, PAD)))
        (g,) = torch.autograd.grad(e(x).sum(), x)
        assert (g[..., 1:9, 3:13] != 0).any() and g[..., 0, :].abs().sum() == 0
        with pytest.raises(ValueError, match="nonlinear and has no adjoint"):
            e.adjoint(y)


def test_embed_function_and_checks():
    y = torch.rand(2, 3, 8, 10, generator=_gen(0))
    mask = random_mask((2, 1, 8, 10), 0.5, generator=_gen(1))
    y2, op2 = embed(y, Inpainting(mask), PAD)
    assert type(op2) is Inpainting and y2.shape == (2, 3, 11, 13) and op2.mask.shape == (2, 1, 11, 13)
    assert torch.equal(crop(op2.mask, PAD), mask) and torch.equal(crop(y2, PAD), y)
    assert op2.mask.sum() == mask.sum() and y2.count_nonzero() == y.count_nonzero()  # zeros on the border
    # a row mask broadcasting over H is expanded before padding
    _, op3 = embed(y, Inpainting(torch.ones(1, 1, 1, 10)), PAD)
    assert op3.mask.shape == (1, 1, 11, 13) and op3.mask.sum() == 80

    blur = Blur(gaussian_kernel(1.0))
    y4, op4 = embed(y, blur, PAD)
    assert y4 is y and isinstance(op4, Embed) and op4.op is blur
    assert embed(y, blur, (0, 0, 0, 0)) == (y, blur)

    for bad in ((1, 2, 3), (1, -1, 0, 0), (0.5, 0, 0, 0), "abcd", 3):
        with pytest.raises(ValueError, match="pad must be four nonnegative integers"):
            Embed(blur, bad)
    with pytest.raises(ValueError, match="not larger than the pad"):
        op4.check((1, 3, 3, 13))
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 2"):
        Embed(Downsampling(2), PAD).check((1, 1, 12, 13))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["blur", "box", "inpainting"])
def test_half_precision(name, dtype):
    """In half precision: the input's dtype throughout, and float32's answer to a few ulps."""
    e, x, _ = _problem(name)
    x = x.float()
    ref_y, ref_z = e(x), e.Vt(x)
    xh = x.to(dtype)
    y, z = e(xh), e.Vt(xh)
    assert y.dtype == z.dtype == e.adjoint(y).dtype == e.V(z).dtype == dtype
    tol = 4 * torch.finfo(dtype).eps * float(x.abs().max())
    torch.testing.assert_close(y.float(), ref_y, rtol=0, atol=tol)
    torch.testing.assert_close(z.float(), ref_z, rtol=0, atol=tol)
    torch.testing.assert_close(e.V(z).float(), x, rtol=0, atol=2 * tol)


# -- restore on images of any size -------------------------------------------------------------

SIZE = (1, 1, 37, 45)  # not divisible by the U-Net's 8: padded to 40 x 48


@pytest.fixture(scope="module")
def prior():
    return load_prior("natural-gray")


@pytest.fixture(scope="module")
def image():
    return torch.rand(SIZE, generator=_gen(0))


@pytest.mark.parametrize("method", ["ddrm", "ddnm", "pigdm", "diffpir", "dps", "repaint"])
def test_restore_any_size(prior, image, method):
    op = Inpainting(random_mask(SIZE, 0.5, generator=_gen(1))) if method == "repaint" else Blur(gaussian_kernel(1.0))
    y = op(image)
    r = restore(y, op, prior, method=method, steps=2, samples=2, sigma_y=0.01)
    assert r.padded == (0, 3, 0, 3) and r.mean.shape == r.std.shape == SIZE and r.samples.shape == (2, *SIZE)
    assert torch.isfinite(r.samples).all() and (r.std > 0).any()
    assert json.loads(json.dumps(r.to_dict()))["padded"] == [0, 3, 0, 3]


def test_restore_any_size_is_consistent(prior):
    """Noiseless DDNM / DDRM on a padded canvas still reproduce ``y`` exactly through the original operator."""
    x = torch.rand(1, 1, 38, 46, generator=_gen(2))
    op = Downsampling(2)
    y = op(x)
    for method in ("ddnm", "ddrm"):
        r = restore(y, op, prior, method=method, steps=2, samples=2, sigma_y=0.0)
        assert r.padded == (0, 2, 0, 2) and r.mean.shape == x.shape
        for s in r.samples:
            torch.testing.assert_close(op(s), y, rtol=0, atol=1e-5)


def test_restore_divisible_is_unchanged(prior):
    """Sides divisible by the factor: no wrapper, the same numbers as the sampler called directly."""
    x = torch.rand(1, 1, 40, 48, generator=_gen(3))
    op = Blur(gaussian_kernel(1.0))
    y = op(x)
    r = restore(y, op, prior, method="ddrm", steps=2, samples=2, sigma_y=0.01, seed=7)
    assert r.padded == (0, 0, 0, 0) and r.to_dict()["padded"] == [0, 0, 0, 0]
    sigmas = prior.sigmas(2, METHODS["ddrm"].sigma_max).to(torch.float64)
    with torch.no_grad():
        direct = METHODS["ddrm"].fn(prior, op, y.repeat(2, 1, 1, 1), sigmas, sigma_y=0.01, generator=_gen(7))
    assert torch.equal(r.samples, direct.reshape(2, *y.shape))


@pytest.mark.skipif("latent-gray" not in shipped_priors(), reason="no shipped latent prior")
def test_restore_any_size_latent(image):
    """The latent prior needs sides divisible by 16 (autoencoder x latent U-Net): 37 x 45 -> 48 x 48."""
    op = Blur(gaussian_kernel(1.0))
    r = restore(op(image), op, load_prior("latent-gray"), method="latent_dps", steps=2, samples=2, sigma_y=0.01)
    assert r.padded == (0, 11, 0, 3) and r.mean.shape == SIZE and torch.isfinite(r.samples).all()
