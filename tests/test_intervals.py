"""Per-pixel intervals (``Result.interval``) and their calibration (``invdiff.calibrate``, ``invdiff.intervals``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from invdiff import Calibration, calibrate, restore
from invdiff.intervals import LEVELS, fit_scales, prior_id, quantile, sample_interval, scores
from invdiff.operators import BlindBlur, Inpainting, random_mask
from invdiff.priors import GaussianPrior

SHAPE = (1, 16, 16)
SIGMA_Y = 0.05
#: what an exact sampler's raw 90 % intervals from 8 draws cover on average: 0.9 (8 - 1) / (8 + 1)
EXACT_8 = 0.9 * 7 / 9


@pytest.fixture(scope="module")
def problem():
    prior = GaussianPrior.smooth(SHAPE)
    op = Inpainting(random_mask(SHAPE[1:], missing=0.5, generator=torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(5)
    cal = prior.sample(30, generator=g, dtype=torch.float32)
    test = prior.sample(30, generator=g, dtype=torch.float32)
    return prior, op, cal, test, g


@pytest.fixture(scope="module")
def calibration(problem):
    prior, op, cal, _, _ = problem
    return calibrate(cal, op, prior, method="ddrm", samples=8, sigma_y=SIGMA_Y, task="inpaint")


def _measure(op, x, g):
    ax = op(x)
    return ax + SIGMA_Y * torch.randn(ax.shape, generator=g)


# -- raw intervals ------------------------------------------------------------------------------


def test_quantile_matches_numpy():
    s = torch.randn(7, 3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for q in (0.0, 0.05, 0.5, 0.95, 1.0):
        np.testing.assert_allclose(quantile(s, q).numpy(), np.quantile(s.numpy(), q, axis=0), rtol=1e-12)


def test_sample_interval_orders_and_checks():
    s = torch.randn(9, 1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    lo, hi = sample_interval(s, 0.8)
    assert lo.shape == hi.shape == s.shape[1:] and (lo <= hi).all()
    lo50, hi50 = sample_interval(s, 0.5)
    assert (lo <= lo50).all() and (hi50 <= hi).all()
    for bad in (0, 1, 1.5, -0.1, "0.9", True, float("nan")):
        with pytest.raises(ValueError, match="number in \\(0, 1\\)"):
            sample_interval(s, bad)
    with pytest.raises(ValueError, match="at least 2 posterior samples"):
        sample_interval(s[:1], 0.9)


def test_result_interval_raw_and_one_sample(problem):
    prior, op, _, test, g = problem
    x = test[:1]
    y = _measure(op, x, g)
    r = restore(y, op, prior, method="ddrm", samples=6, sigma_y=SIGMA_Y)
    lo, hi = r.interval(0.9)
    ref_lo, ref_hi = (torch.from_numpy(np.quantile(r.samples.double().numpy(), q, axis=0)) for q in (0.05, 0.95))
    torch.testing.assert_close(lo.double(), ref_lo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hi.double(), ref_hi, rtol=1e-5, atol=1e-6)
    assert 0.0 <= r.coverage(x, 0.9) <= 1.0
    one = restore(y, op, prior, method="ddrm", samples=1, sigma_y=SIGMA_Y)
    with pytest.raises(ValueError, match="at least 2 posterior samples"):
        one.interval(0.9)
    with pytest.raises(ValueError, match="truth has shape"):
        r.coverage(x[..., :8], 0.9)


# -- conformal risk control ---------------------------------------------------------------------


def _brute_force_scale(image_scores, level):
    """The smallest candidate lambda (a score) whose corrected risk is within alpha, by enumeration."""
    n = len(image_scores)
    alpha = 1 - level
    for lam in sorted(torch.cat([s.reshape(-1) for s in image_scores]).tolist()):
        risk = sum(float((s > lam).double().mean()) for s in image_scores) / n
        if n / (n + 1) * risk + 1 / (n + 1) <= alpha + 1e-12:
            return lam
    return None


def test_fit_scales_matches_the_definition():
    g = torch.Generator().manual_seed(3)
    image_scores = [torch.rand(int(torch.randint(5, 30, (1,), generator=g)), generator=g) * (1 + i) for i in range(12)]
    fitted = fit_scales(image_scores, levels=(0.5, 0.7, 0.9, 0.92, 0.95))
    for level, lam in fitted.items():
        assert lam == pytest.approx(_brute_force_scale(image_scores, level)) if lam is not None else True
    assert fitted[0.95] is None  # 12 images cannot certify 0.95 (needs 19)
    assert fitted[0.9] is not None and fitted[0.5] <= fitted[0.7] <= fitted[0.9]


def test_fit_scales_rejects_bad_scores():
    with pytest.raises(ValueError, match="at least one image"):
        fit_scales([])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_scales([torch.tensor([1.0, float("nan")])])


def test_scores_floor():
    t = torch.zeros(1, 1, 2, 2)
    m = torch.tensor([[[[0.0, 0.01], [0.02, 0.0]]]])
    s = torch.tensor([[[[0.0, 0.0], [0.01, 0.1]]]])
    out = scores(t, m, s, floor=0.001)
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 10.0], [2.0, 0.0]]]], dtype=torch.float64))


def test_calibrated_intervals_cover_held_out_images(problem, calibration):
    """On an exact Gaussian problem, DDRM's raw 90 % intervals undercover; calibrated ones cover 0.88-0.95."""
    prior, op, _, test, g = problem
    raw, cal = [], []
    for i in range(test.shape[0]):
        x = test[i : i + 1]
        y = _measure(op, x, g)
        r = restore(y, op, prior, method="ddrm", samples=8, sigma_y=SIGMA_Y, seed=100 + i, calibration=calibration)
        cal.append(r.coverage(x, 0.9))
        lo, hi = sample_interval(r.samples, 0.9)
        raw.append(float(((x >= lo) & (x <= hi)).double().mean()))
    assert np.mean(raw) < EXACT_8 - 0.03  # narrower than even an exact sampler's 8-sample intervals
    assert 0.88 <= np.mean(cal) <= 0.95
    assert calibration.coverage[0.9] >= 0.9  # the corrected risk is within alpha on the calibration set too
    assert calibration.n_images == 30 and calibration.n_pixels == 30 * 256


def test_calibration_interval_is_mean_plus_minus_scale_std(problem, calibration):
    prior, op, _, test, g = problem
    y = _measure(op, test[:1], g)
    r = restore(y, op, prior, method="ddrm", samples=8, sigma_y=SIGMA_Y, calibration=calibration)
    lo, hi = r.interval(0.8)
    half = calibration.scale(0.8) * r.std.clamp_min(calibration.floor)
    torch.testing.assert_close(lo, r.mean - half)
    torch.testing.assert_close(hi, r.mean + half)
    assert calibration.scale(0.805) == calibration.scale(0.81)  # between grid levels: the next one up
    with pytest.raises(ValueError, match="needs at least 99"):
        calibration.scale(0.99)
    with pytest.raises(ValueError, match="number in \\(0, 1\\)"):
        calibration.scale(1.0)


def test_save_load_and_path(problem, calibration, tmp_path):
    prior, op, _, test, g = problem
    path = calibration.save(tmp_path / "cal.json")
    d = json.loads(path.read_text())
    assert d["format"] == "invdiff-calibration" and d["method"] == "ddrm" and d["samples"] == 8
    assert d["operator"] == "Inpainting" and d["task"] == "inpaint" and d["sigma_y"] == SIGMA_Y
    assert len(d["scales"]) == len(LEVELS) and d["prior"] == prior_id(prior)
    back = Calibration.load(path)
    assert back == calibration
    y = _measure(op, test[:1], g)
    r = restore(y, op, prior, method="ddrm", samples=8, sigma_y=SIGMA_Y, calibration=str(path))
    assert r.calibration == calibration and r.to_dict()["calibrated"] is True


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(method="dps"), "method 'ddrm'"),
        (dict(steps=10), "steps 20"),
        (dict(samples=4), "samples 8"),
        (dict(sigma_y=0.1), "sigma_y 0.05"),
        (dict(eta=0.5), "eta="),
        (dict(other_prior=True), "prior 'GaussianPrior:"),
        (dict(other_op=True), "operator 'Inpainting'"),
        (dict(samples=1), "at least 2 posterior samples"),
    ],
)
def test_calibration_for_another_run_is_refused(problem, calibration, change, match):
    prior, op, _, test, g = problem
    kw = dict(method="ddrm", samples=8, sigma_y=SIGMA_Y)
    if change.pop("other_prior", False):
        prior = GaussianPrior.smooth(SHAPE, length_scale=3.0)
    if change.pop("other_op", False):
        from invdiff.operators import Blur, gaussian_kernel

        op = Blur(gaussian_kernel(1.0, size=5), padding="circular")
    kw.update(change)
    y = _measure(op, test[:1], g)
    with pytest.raises(ValueError, match=match):
        restore(y, op, prior, calibration=calibration, **kw)


def test_bad_calibration_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Calibration.load(tmp_path / "none.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        Calibration.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"method": "ddrm"}))
    with pytest.raises(ValueError, match="not an invdiff calibration"):
        Calibration.load(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"format": "invdiff-calibration", "version": 1, "method": "ddrm"}))
    with pytest.raises(ValueError, match="incomplete or damaged"):
        Calibration.load(tmp_path / "c.json")


def test_calibrate_checks_its_input(problem):
    prior, op, cal, _, _ = problem
    with pytest.raises(ValueError, match="at least 2 posterior samples"):
        calibrate(cal[:3], op, prior, samples=1, sigma_y=SIGMA_Y)
    with pytest.raises(ValueError, match="2 operators for 3 images"):
        calibrate(cal[:3], [op, op], prior, sigma_y=SIGMA_Y)
    with pytest.raises(ValueError, match="at least one image"):
        calibrate([], op, prior, sigma_y=SIGMA_Y)
    few = calibrate(cal[:3], op, prior, samples=2, steps=5, sigma_y=SIGMA_Y)
    assert few.scales[0.9] is None and few.scales[0.5] is not None  # 3 images certify levels up to 0.75
    assert math.isclose(max(lv for lv, s in few.scales.items() if s is not None), 0.75)


def test_blind_blur_refuses_calibration(problem, calibration):
    prior = problem[0]
    with pytest.raises(ValueError, match="not available for a BlindBlur"):
        restore(torch.rand(1, 1, 16, 16), BlindBlur(kernel_size=5), prior, method="diffpir", sigma_y=0.01,
                calibration=calibration)  # fmt: skip


def test_restore_batch_keeps_the_calibration(problem, calibration):
    from invdiff.volume import restore_batch

    prior, op, _, test, g = problem
    y = torch.cat([_measure(op, test[i : i + 1], g) for i in range(3)])
    r = restore_batch(y, op, prior, batch_size=2, method="ddrm", samples=8, sigma_y=SIGMA_Y, calibration=calibration)
    assert r.calibration == calibration
    lo, hi = r.interval(0.9)
    torch.testing.assert_close(hi - lo, 2 * calibration.scale(0.9) * r.std.clamp_min(calibration.floor))
    assert set(calibration.raw_coverage) == {0.5, 0.8, 0.9, 0.95}
    assert calibration.raw_coverage[0.9] < EXACT_8 - 0.03  # DDRM-20's raw intervals are too narrow here


def test_nine_images_certify_ninety_percent():
    """The documented minimum holds exactly: n = 9 certifies 0.9 (1 - 0.9 is 0.0999... in floats)."""
    g = torch.Generator().manual_seed(0)
    fitted = fit_scales([torch.rand(50, generator=g) for _ in range(9)], levels=(0.8, 0.9, 0.91))
    assert fitted[0.9] is not None and fitted[0.8] is not None and fitted[0.91] is None
    four = fit_scales([torch.rand(50, generator=g) for _ in range(4)], levels=(0.8, 0.81))
    assert four[0.8] is not None and four[0.81] is None


def test_prior_id_tells_a_wrapper_from_its_inner_prior():
    from invdiff.priors import ChannelwisePrior, load_prior

    inner = load_prior("phantoms")
    assert prior_id(inner) == "phantoms"
    assert prior_id(ChannelwisePrior(inner, groups=2)) == "ChannelwisePrior[groups=2,phantoms]"
    assert prior_id(GaussianPrior.smooth(SHAPE)) == prior_id(GaussianPrior.smooth(SHAPE))
    assert prior_id(GaussianPrior.smooth(SHAPE)) != prior_id(GaussianPrior.smooth(SHAPE, length_scale=3.0))


def test_another_schedule_start_is_refused(problem, calibration):
    prior, op, _, test, g = problem
    assert calibration.sigma_max == pytest.approx(prior.sigma_max)
    y = _measure(op, test[:1], g)
    with pytest.raises(ValueError, match="schedule starting at sigma"):
        restore(y, op, prior, method="ddrm", samples=8, sigma_y=SIGMA_Y, sigma_max=1.0, calibration=calibration)
