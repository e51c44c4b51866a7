"""``invdiff.restore`` and ``invdiff.METHODS``: validation, batching of samples, NFE, determinism."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

import invdiff
from invdiff import METHODS, Result, restore
from invdiff.operators import (
    MRI,
    Blur,
    Gaussian,
    Identity,
    Inpainting,
    Operator,
    PhaseRetrieval,
    Poisson,
    gaussian_kernel,
    mri_mask,
    random_mask,
)
from invdiff.priors import GaussianPrior, Prior

SHAPE = (1, 8, 8)


class SpyPrior(GaussianPrior):
    """A Gaussian prior that records the batch size of every ``denoise`` call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def denoise(self, x, sigma):
        self.batches.append(x.shape[0])
        return super().denoise(x, sigma)


class ParamPrior(Prior):
    """A prior with a learnable parameter, to test device/dtype checks."""

    def __init__(self, dtype):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=dtype))

    def denoise(self, x, sigma):
        return x * self.scale


class FixedShape(Operator):
    """Claims 8x8 images but crops them to 4x4: its output never matches an 8x8 ``y``."""

    def forward(self, x):
        return x[..., :4, :4]

    def x_shape(self, y):
        return (y.shape[0], y.shape[1], 8, 8)


class NoShape(Operator):
    """An operator that cannot tell the image shape from ``y`` (the base class default)."""

    def forward(self, x):
        return x


@pytest.fixture
def prior():
    return SpyPrior.smooth(SHAPE)


@pytest.fixture
def y():
    return torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0))


# -- validation: every error is a ValueError with a useful line, raised before any sampling ---------

ERRORS = [
    # (description, restore kwargs builder, expected message fragments)
    ("not a tensor", lambda y: dict(y=y.numpy(), op=Identity()), ["torch.Tensor", "ndarray"]),
    ("int dtype", lambda y: dict(y=(y * 10).long(), op=Identity()), ["float tensor", "torch.int64"]),
    ("3-D", lambda y: dict(y=y[0], op=Identity()), ["4-D (B, C, H, W)", "(1, 8, 8)"]),
    ("nan", lambda y: dict(y=torch.where(torch.arange(64).reshape(1, 1, 8, 8) < 3, float("nan"), y), op=Identity()),
     ["3 NaN or infinite", "out of 64"]),
    ("inf", lambda y: dict(y=torch.where(torch.arange(64).reshape(1, 1, 8, 8) == 5, float("inf"), y), op=Identity()),
     ["1 NaN or infinite"]),
    ("y vs op output", lambda y: dict(y=y, op=FixedShape()),
     ["y has shape (1, 1, 8, 8)", "FixedShape maps images of shape (1, 1, 8, 8) to (1, 1, 4, 4)"]),
    ("x_shape unknown", lambda y: dict(y=y, op=NoShape()),
     ["cannot infer the image shape"]),
    ("op.check", lambda y: dict(y=torch.rand(1, 1, 16, 16), op=Inpainting(torch.ones(8, 8))),
     ["mask has shape (1, 1, 8, 8)", "(1, 1, 16, 16)"]),
    ("unknown method", lambda y: dict(y=y, op=Identity(), method="ddpm"),
     ["unknown method 'ddpm'", "known methods: ddrm, dps, pigdm, score_ald, repaint, ddnm, diffpir, daps"]),
    ("needs svd", lambda y: dict(y=y, op=Blur(gaussian_kernel(1.0), padding="reflect"), method="ddrm"),
     ["'ddrm' needs an operator with an SVD", "Blur",
      "methods that work with this operator: dps, pigdm, score_ald, diffpir, daps"]),
    ("needs linear", lambda y: dict(y=y, op=PhaseRetrieval(), method="pigdm"),
     ["'pigdm' needs a linear operator", "PhaseRetrieval",
      "methods that work with this operator: dps, score_ald, daps"]),
    ("needs mask", lambda y: dict(y=y, op=Identity(), method="repaint"),
     ["'repaint' needs an inpainting operator", "Identity", "ddrm, dps"]),
    ("k-space mask is no pixel mask", lambda y: dict(y=MRI(mri_mask((1, 1, 8, 8)))(y), op=MRI(mri_mask((1, 1, 8, 8))),
                                                     method="repaint"),
     ["'repaint' needs an inpainting operator", "MRI"]),
    ("unknown knob", lambda y: dict(y=y, op=Identity(), method="ddrm", etaa=0.5),
     ["unknown knob 'etaa' for method 'ddrm'", "valid knobs: eta, eta_b"]),
    ("steps < 1", lambda y: dict(y=y, op=Identity(), steps=0), ["steps must be an integer >= 1, got 0"]),
    ("steps float", lambda y: dict(y=y, op=Identity(), steps=2.5), ["steps must be an integer >= 1, got 2.5"]),
    ("samples < 1", lambda y: dict(y=y, op=Identity(), samples=0), ["samples must be an integer >= 1, got 0"]),
    ("sigma_y missing", lambda y: dict(y=y, op=Identity(), sigma_y=None),
     ["pass sigma_y= (measurement noise std in data units; 0 for noiseless) or noise="]),
    ("sigma_y < 0", lambda y: dict(y=y, op=Identity(), sigma_y=-0.1), ["sigma_y must be a finite number >= 0", "-0.1"]),
    ("noise model to ddrm", lambda y: dict(y=y, op=Identity(), method="ddrm", sigma_y=None, noise=Poisson(0.1)),
     ["'ddrm' takes Gaussian noise only (sigma_y=), not Poisson", "accept noise models: dps, score_ald, daps"]),
    ("sigma_y vs Gaussian", lambda y: dict(y=y, op=Identity(), sigma_y=0.1, noise=Gaussian(0.05)),
     ["sigma_y=0.1 disagrees with noise=Gaussian(0.05)"]),
    ("sigma_max <= 0", lambda y: dict(y=y, op=Identity(), sigma_max=0.0),
     ["sigma_max must be a finite noise level above the prior's sigma_min", "got 0.0"]),
    ("sigma_max nan", lambda y: dict(y=y, op=Identity(), sigma_max=float("nan")), ["sigma_max must be", "nan"]),
]


@pytest.mark.parametrize("kwargs, fragments", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_validation_errors(prior, y, kwargs, fragments):
    kw = {"prior": prior, "sigma_y": 0.0, "steps": 2, **kwargs(y)}
    with pytest.raises(ValueError) as info:
        restore(**kw)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert prior.batches == [], "validation must happen before any denoiser call"


def test_prior_dtype_mismatch(y):
    p = ParamPrior(torch.float64)
    with pytest.raises(ValueError, match=r"prior is on cpu \(torch.float64\) but y is on cpu \(torch.float32\)"):
        restore(y, Identity(), p, sigma_y=0.0)
    # Buffers do not pin the dtype: the analytic prior keeps float64 buffers and serves float32 y.
    assert restore(y, Identity(), GaussianPrior.smooth(SHAPE), sigma_y=0.0, steps=2).mean.dtype == torch.float32


# -- the table -------------------------------------------------------------------------------------


def test_methods_table():
    assert set(METHODS) == {"ddrm", "dps", "pigdm", "score_ald", "repaint", "ddnm", "diffpir", "daps", "pnp_dm",
                            "latent_dps", "psld"}  # fmt: skip
    assert {k: m.steps for k, m in METHODS.items()} == {
        "ddrm": 20, "dps": 1000, "pigdm": 100, "score_ald": 500, "repaint": 250, "ddnm": 100, "diffpir": 100,
        "daps": 200, "pnp_dm": 40, "latent_dps": 1000, "psld": 1000,
    }
    for name, m in METHODS.items():
        params = inspect.signature(m.fn).parameters
        assert m.fn.__name__ == name
        assert m.noise_models == ("noise" in params), name
        assert m.needs <= {"svd", "linear", "mask", "latent"} and m.description
        assert all(p.default is not inspect.Parameter.empty for p in params.values()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY), name
    assert METHODS["ddrm"].knobs == {"eta": 0.85, "eta_b": 1.0, "nu_max": 1.0}
    assert METHODS["repaint"].knobs == {"jump_length": 10, "jump_n_sample": 10, "clip_x0": True}


def test_gaussian_noise_model_is_sigma_y(prior, y):
    a = restore(y, Identity(), prior, method="ddrm", steps=3, noise=Gaussian(0.05))
    b = restore(y, Identity(), prior, method="ddrm", steps=3, sigma_y=0.05)
    assert torch.equal(a.mean, b.mean)


# -- batching, NFE, determinism ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, steps, knobs, nfe",
    [
        ("ddrm", 5, {}, 5),
        ("repaint", 6, {"jump_length": 2, "jump_n_sample": 3}, 14),  # 6 + 2 * (3 - 1) * |{0, 2}|
        ("daps", 4, {"ode_steps": 2, "langevin_steps": 3}, 7),  # 3 levels x 2 ODE steps, 1 at the last (< 0.005)
        ("score_ald", 4, {"steps_per_level": 2}, 9),  # 4 x 2 + the final denoise
        ("pnp_dm", 4, {"inner_steps": 2}, 8),  # 4 iterations x 2 levels of the prior step
    ],
)
def test_samples_in_one_batch(method, steps, knobs, nfe):
    mask = random_mask((2, 1, 8, 8), 0.5, generator=torch.Generator().manual_seed(3))
    op = Inpainting(mask)
    y = op(torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(4)))
    for samples in (1, 3):
        p = SpyPrior.smooth(SHAPE)
        r = restore(y, op, p, method=method, steps=steps, sigma_y=0.01, samples=samples, **knobs)
        assert r.nfe == nfe == len(p.batches)
        assert set(p.batches) == {2 * samples}  # every call sees all samples of all images
        assert r.samples.shape == (samples, 2, *SHAPE)
        assert r.steps == steps and r.method == method


def test_seed_determinism(prior, y):
    op = Inpainting(random_mask((8, 8), 0.5, generator=torch.Generator().manual_seed(1)))
    y = op(y)

    def run(**kw):
        return restore(y, op, prior, method="ddnm", steps=4, sigma_y=0.02, samples=2, **kw).samples

    a, b, c = run(seed=7), run(seed=7), run(seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(a, run(generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(a[0], a[1])  # samples differ from one another


def test_mean_std_summary(prior, y):
    op = Inpainting(random_mask((8, 8), 0.5, generator=torch.Generator().manual_seed(1)))
    r = restore(op(y), op, prior, method="ddrm", steps=5, sigma_y=0.05, samples=4)
    assert isinstance(r, Result)
    assert r.mean.shape == r.std.shape == (1, *SHAPE)
    torch.testing.assert_close(r.mean, r.samples.mean(0))
    torch.testing.assert_close(r.std, r.samples.std(0, correction=1))
    assert (r.std > 0).all()
    one = restore(op(y), op, prior, method="ddrm", steps=5, sigma_y=0.05, samples=1)
    assert torch.equal(one.std, torch.zeros_like(one.mean))
    assert torch.equal(one.mean, one.samples[0])


def test_per_sample_masks_follow_their_image():
    """Sample k of image b saw mask b: RePaint with sigma_y = 0 returns y_b exactly on mask_b."""
    g = torch.Generator().manual_seed(5)
    mask = random_mask((3, 1, 8, 8), 0.5, generator=g)
    assert not torch.equal(mask[0], mask[1])
    op = Inpainting(mask)
    y = op(torch.rand(3, *SHAPE, generator=g) + 1.0)  # known pixels in [1, 2]
    r = restore(y, op, GaussianPrior.smooth(SHAPE), method="repaint", steps=6, sigma_y=0.0, samples=4,
                jump_length=2, jump_n_sample=2)
    for k in range(4):
        for b in range(3):
            assert torch.equal(r.samples[k, b] * mask[b], y[b])
            others = [c for c in range(3) if not torch.equal(mask[c], mask[b])]
            for c in others:  # another image's known pixels were not pasted in
                assert not torch.equal(r.samples[k, b] * mask[c], y[c])


def test_result_dict_callback_and_knobs(prior, y):
    seen = []
    r = restore(y, Identity(), prior, method="ddrm", steps=3, sigma_y=0.1, samples=2, eta=0.5,
                callback=lambda info: seen.append((info["i"], info["x"].shape)))
    assert [i for i, _ in seen] == [0, 1, 2] and all(s == (2, *SHAPE) for _, s in seen)
    assert r.knobs == {"eta": 0.5, "eta_b": 1.0, "nu_max": 1.0}
    d = r.to_dict()
    json.dumps(d)
    assert d["method"] == "ddrm" and d["steps"] == 3 and d["samples"] == 2 and d["nfe"] == 3
    assert d["shape"] == [1, *SHAPE] and d["seconds"] >= 0 and d["knobs"]["eta"] == 0.5


def test_no_grad_outside_samplers(prior, y):
    """restore runs under no_grad; DAPS's nonlinear data term enables gradients itself."""
    op = PhaseRetrieval()
    y = op(y)
    r = restore(y, op, GaussianPrior.smooth(SHAPE), method="daps", steps=3, sigma_y=0.05,
                ode_steps=1, langevin_steps=2)
    assert not r.mean.requires_grad and torch.isfinite(r.mean).all()


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, invdiff; print(sorted(m for m in ('deepinv', 'scipy', 'skimage', 'lpips') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(invdiff.restore) and np is not None


def test_sigma_max_starts_the_schedule_and_defaults_per_method(prior, y, monkeypatch):
    full = prior.sigmas(6)
    short = prior.sigmas(6, 0.5)
    assert short[0].item() == pytest.approx(0.5) and short[-1] == 0 and (short[:-1] > short[1:]).all()
    assert short[-2].item() == pytest.approx(full[-2].item())  # same sigma_min
    torch.testing.assert_close(prior.sigmas(6, 1e9), full)  # capped at the prior's own start
    seen = []
    cb = lambda d: seen.append(float(d["sigma"]))  # noqa: E731
    restore(y, Identity(), prior, method="ddnm", steps=4, sigma_y=0.1, sigma_max=0.5, callback=cb)
    assert seen[0] == pytest.approx(0.5)
    # None takes METHODS[m].sigma_max for a shipped prior, the prior's own start for any other;
    # a method without one starts at the prior's sigma_max
    monkeypatch.setitem(METHODS, "ddnm", METHODS["ddnm"].__class__(**{**METHODS["ddnm"].__dict__, "sigma_max": 0.3}))
    seen.clear()
    restore(y, Identity(), prior, method="ddnm", steps=4, sigma_y=0.1, callback=cb)
    assert seen[0] == pytest.approx(prior.sigma_max)  # not a shipped prior: never swept
    monkeypatch.setattr(prior, "shipped", "natural-gray", raising=False)
    seen.clear()
    restore(y, Identity(), prior, method="ddnm", steps=4, sigma_y=0.1, callback=cb)
    assert seen[0] == pytest.approx(0.3)
    monkeypatch.setitem(METHODS, "ddnm", METHODS["ddnm"].__class__(**{**METHODS["ddnm"].__dict__, "sigma_max": None}))
    seen.clear()
    restore(y, Identity(), prior, method="ddnm", steps=4, sigma_y=0.1, callback=cb)
    assert seen[0] == pytest.approx(prior.sigma_max)


def test_discrete_prior_schedule_can_start_lower():
    from invdiff.priors import DiscreteDDPMPrior

    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    prior = DiscreteDDPMPrior(lambda x, t: torch.zeros_like(x), abar, channels=1)
    s = prior.sigmas(10, 1.0)
    assert s[0].item() == pytest.approx(1.0, rel=1e-3) and s[-1] == 0 and (s[:-1] > s[1:]).all()
    assert s[-2].item() == pytest.approx(prior.sigmas(10)[-2].item())  # both end at timestep 0
