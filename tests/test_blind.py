"""Blind deblurring (``invdiff.blind``, ``operators.BlindBlur``): the kernel step, the classical start, the API."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from skimage import data

import invdiff
from invdiff.blind import (
    CLASSICAL_VARIANTS,
    EM_MARGIN,
    SHARP_WIDTH,
    arc_kernel,
    bend_kernel,
    check_candidates,
    choose,
    centre_kernel,
    data_misfit,
    classical_kernel,
    clean_kernel,
    estimate_kernel,
    kernel_ncc,
    line_kernel,
    SpectralModel,
    estimate_blind,
    gaussian_family,
    methods_for_blind,
    orient,
    periodic_component,
    salient_edges,
    snap,
)
from invdiff.operators import BlindBlur, Blur, gaussian_kernel, motion_kernel


def _camera(size: int, top: int = 140, left: int = 180) -> torch.Tensor:
    return torch.from_numpy(data.camera()[top : top + size, left : left + size] / 255.0).float()[None, None]


def _blurred(kernel: torch.Tensor, size: int, sigma: float = 0.01, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = _camera(size + kernel.shape[-1] - 1)
    y = Blur(kernel, padding="valid")(x)
    return x, y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel", [gaussian_kernel(1.5, 15), motion_kernel(15, 0.5, torch.Generator().manual_seed(11))])
def test_estimate_kernel_from_the_sharp_image(kernel):
    x, y = _blurred(kernel, 120)
    raw = estimate_kernel(x[0], y[0], 15)
    assert raw.shape == (15, 15) and raw.min() >= 0 and abs(float(raw.sum()) - 1) < 1e-5
    k = clean_kernel(raw)
    assert k.shape == (15, 15) and k.min() >= 0 and abs(float(k.sum()) - 1) < 1e-5
    assert kernel_ncc(k, kernel) > 0.95
    # the same kernel, flipped, explains the data worse: the convolution convention is the operator's
    flipped = clean_kernel(estimate_kernel(x[0], y[0].flip(-1, -2), 15))
    assert kernel_ncc(flipped, kernel) < kernel_ncc(k, kernel)


def test_classical_start_finds_a_gaussian_and_no_blur_gives_a_near_delta():
    kernel = gaussian_kernel(1.5, 15)
    _, y = _blurred(kernel, 160)
    k, x = classical_kernel(y[0], 15)
    assert kernel_ncc(k, kernel) > 0.9
    assert x.shape == y[0].shape
    # a sharp image: the estimate concentrates at the centre instead of inventing a blur
    sharp = _camera(256, 100, 100) + 0.01 * torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    k0 = snap(classical_kernel(sharp[0], 15)[0])  # the start restore uses
    assert float(k0[6:9, 6:9].sum()) > 0.9  # where the Gaussian of std 1.5 holds 0.37


@pytest.mark.parametrize("kernel", [gaussian_kernel(1.5, 15), gaussian_family(15, 2.5, 1.0, 0.6).float()])
def test_spectral_model_fits_a_gaussian_blur(kernel):
    _, y = _blurred(kernel, 140)
    model = SpectralModel(y[0], 0.01)
    k, nll = model.fit_gaussian(15)
    assert k.shape == (15, 15) and k.min() >= 0 and abs(float(k.sum()) - 1) < 1e-5
    assert kernel_ncc(k, kernel) > 0.97
    assert int((k > 0).sum()) < 15 * 15  # tails cut at a thousandth of the peak: the support says how far it reaches
    assert abs(nll - model.nll(k)) < 1e-3  # the fit's score is the profiled score of its kernel
    n = 140 * 140 - 1  # every periodogram value but the mean's
    assert model.penalty(0) == 0 and abs(model.penalty(3) - 3 * math.log(n) / n) < 1e-15
    # the true kernel explains the spectrum better than no blur or a blur twice as wide
    delta = torch.zeros(15, 15)
    delta[7, 7] = 1
    assert model.nll(kernel) < model.nll(delta) and model.nll(kernel) < model.nll(gaussian_kernel(3.0, 15))


def test_spectral_model_fits_a_straight_shake():
    kernel = torch.zeros(15, 15)
    kernel[7, 2:13] = 1 / 11  # 11 pixels of horizontal motion
    _, y = _blurred(kernel, 140)
    model = SpectralModel(y[0], 0.01)
    k, nll = model.fit_line(15)
    assert k.shape == (15, 15) and k.min() >= 0 and abs(float(k.sum()) - 1) < 1e-5
    assert kernel_ncc(k, kernel) > 0.9
    assert nll < model.fit_gaussian(15)[1]  # the line explains a straight shake better than any Gaussian


def test_sharp_line_keeps_the_fits_length_and_angle_at_a_narrower_cross_section():
    t = torch.arange(21, dtype=torch.float64) - 10
    kernel = line_kernel(t, torch.tensor(10.0), torch.tensor(1.0), torch.tensor(0.9)).float()
    assert abs(float(kernel.sum()) - 1) < 1e-6 and kernel.min() >= 0
    _, y = _blurred(kernel, 160)
    model = SpectralModel(y[0], 0.01)
    line, nll = model.fit_line(21)
    assert kernel_ncc(line, kernel) > 0.95
    _, _, p = model._fit_line(21)
    assert float(torch.exp(p[2])) > SHARP_WIDTH  # the fit found a cross-section wider than the sharp one
    sharp, sharp_nll = model.fit_sharp_line(21)
    assert sharp.shape == (21, 21) and sharp.min() >= 0 and abs(float(sharp.sum()) - 1) < 1e-5
    assert abs(sharp_nll - model.nll(sharp)) < 1e-9 and sharp_nll > nll  # the fit's width explains the spectrum best
    narrow = line_kernel(t, torch.exp(p[0]), p[1], torch.tensor(SHARP_WIDTH, dtype=torch.float64)).float()
    assert kernel_ncc(sharp, narrow) > 0.999 and sharp.max() > line.max()  # same segment, narrower
    assert model.fit_sharp_line(21, width=5.0) is None  # no narrower than the fit: no candidate


def test_spectral_model_fits_a_bent_shake_up_to_its_reflection():
    t = torch.arange(21, dtype=torch.float64) - 10
    kernel = arc_kernel(t, torch.tensor(14.0), torch.tensor(0.4), torch.tensor(2.0), torch.tensor(0.6)).float()
    assert abs(float(kernel.sum()) - 1) < 1e-6 and kernel.min() >= 0
    flipped = centre_kernel(kernel.flip(-2, -1))
    assert kernel_ncc(kernel, flipped) < 0.8  # a bent kernel is not its own point reflection
    _, y = _blurred(kernel, 160)
    model = SpectralModel(y[0], 0.01)
    k, nll = model.fit_arc(21)
    assert k.shape == (21, 21) and k.min() >= 0 and abs(float(k.sum()) - 1) < 1e-5
    assert abs(nll - model.nll(k)) < 1e-3
    assert nll < model.fit_line(21)[1] - model.penalty(1)  # the bend explains the spectrum beyond its extra parameter
    # |K| sees the arc up to its reflection; a reference with a phase picks the side
    assert kernel_ncc(orient(k, kernel), kernel) > 0.9
    assert kernel_ncc(orient(k, flipped), flipped) > 0.9
    assert kernel_ncc(orient(k, flipped), kernel) < 0.8


def test_bend_kernel_is_the_arc_without_a_bend_and_fits_a_v_shaped_shake():
    t = torch.arange(21, dtype=torch.float64) - 10
    args = (torch.tensor(14.0), torch.tensor(0.4), torch.tensor(0.3), torch.tensor(0.6))
    assert torch.allclose(bend_kernel(t, *args, torch.tensor(0.0), torch.tensor(0.1)), arc_kernel(t, *args))
    # a V: two strokes of 8 pixels at right angles (a turn of pi / 2 in the middle)
    kernel = bend_kernel(t, torch.tensor(16.0), torch.tensor(0.3), torch.tensor(0.0), torch.tensor(0.6),
                         torch.tensor(math.pi / 2), torch.tensor(0.0)).float()  # fmt: skip
    assert abs(float(kernel.sum()) - 1) < 1e-6 and kernel.min() >= 0
    _, y = _blurred(kernel, 160)
    model = SpectralModel(y[0], 0.01)
    arc, arc_nll = model.fit_arc(21)
    k, nll = model.fit_bend(21)
    assert k.shape == (21, 21) and k.min() >= 0 and abs(float(k.sum()) - 1) < 1e-5
    assert abs(nll - model.nll(k)) < 1e-3
    assert nll < arc_nll - model.penalty(2)  # the corner explains the spectrum beyond its two parameters
    flipped = centre_kernel(k.flip(-2, -1))
    assert max(kernel_ncc(k, kernel), kernel_ncc(flipped, kernel)) > 0.9  # up to the point reflection
    assert max(kernel_ncc(arc, kernel), kernel_ncc(centre_kernel(arc.flip(-2, -1)), kernel)) < 0.9


def test_spectral_model_finds_no_blur_in_a_sharp_photo():
    sharp = _camera(160, 100, 100) + 0.01 * torch.randn(1, 1, 160, 160, generator=torch.Generator().manual_seed(0))
    k, _ = SpectralModel(sharp[0], 0.01).fit_gaussian(15)
    assert float(k[6:9, 6:9].sum()) > 0.9  # where a Gaussian of std 1.5 holds 0.37


def test_periodic_component_removes_the_border_cross():
    ramp = torch.linspace(0, 1, 64, dtype=torch.float64)[None, :].expand(48, 64) + 0.3
    p = periodic_component(ramp)
    axis = lambda u: float((torch.fft.fft2(u).abs() ** 2)[0, 1:].sum())  # noqa: E731  (the cross's row)
    assert axis(p) < 1e-3 * axis(ramp)  # a ramp: a jump of 1 between its last column and its first
    # the smooth part has mean zero: the periodic component keeps the image's mean
    assert abs(float(p.mean() - ramp.mean())) < 1e-9
    # and it leaves the rest of the spectrum: a texture on the ramp keeps its power at its frequency
    rows = torch.arange(48, dtype=torch.float64)[:, None]
    texture = 0.1 * torch.cos(2 * math.pi * 12 * rows / 48).expand(48, 64)
    spectrum = torch.fft.fft2(periodic_component(ramp + texture)).abs() ** 2
    expected = float((torch.fft.fft2(texture).abs() ** 2)[12, 0])
    assert abs(float(spectrum[12, 0]) / expected - 1) < 0.06  # 0.96: the smooth part takes a little of it


def test_spectral_model_takes_colour_at_its_channels_noise():
    kernel = gaussian_family(15, 2.5, 1.0, 0.6).float()
    rgb = torch.from_numpy(data.astronaut()[100:254, 150:304] / 255.0).float().permute(2, 0, 1)[None]
    y = Blur(kernel, padding="valid")(rgb)
    y = y + 0.02 * torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    model = SpectralModel(y[0], 0.02)
    assert abs(model.noise - 0.02**2 / 3) < 1e-12  # the mean of three channels' independent noise
    assert kernel_ncc(model.fit_gaussian(15)[0], kernel) > 0.95


def test_estimate_blind_returns_the_chosen_candidate(monkeypatch):
    kernel = gaussian_kernel(1.5, 15)
    _, y = _blurred(kernel, 120)
    prior = invdiff.priors.load_prior("natural-gray")
    started = []  # the kernel each E-step ran with

    def run(op):
        started.append(op.kernel.detach().cpu().reshape(15, 15))
        return invdiff.restore(y, op, prior, method="diffpir", steps=2, sigma_y=0.01)

    k, candidates, checked = estimate_blind(y, BlindBlur(15, em_iters=1, check_margin=0), run, 0.01)
    # EM started from the spectral (bent) arc, turned towards the classical estimate of best score
    model = SpectralModel(y[0], 0.01)
    best_classical = min((c for c in candidates if c[0].startswith("classical")), key=lambda c: c[2])[1]
    assert len(started) == 1 and torch.allclose(started[0], orient(model.fit_bend(15)[0], best_classical), atol=1e-6)
    classical = [label for label, _ in CLASSICAL_VARIANTS]
    assert classical[0] == "classical" and len(set(classical)) == len(classical) > 1
    sharp = ["line-sharp"] if model.fit_sharp_line(15) is not None else []  # where the line fit is wider
    assert [c[0] for c in candidates] == ["gaussian", "line", *sharp, *classical, "em1"] and checked == {}
    assert torch.equal(k, choose(candidates)[1])  # no check: the least score
    assert kernel_ncc(k, kernel) > 0.97
    # every score is the kernel's spectral NLL plus the charge for its free parameters
    for label, kernel_c, score in candidates:
        charge = score - model.nll(kernel_c)
        free_form = model.penalty(int((kernel_c > 0).sum()) - 1)
        fit = label in ("gaussian", "line", "line-sharp")
        allowed = [model.penalty(3)] + ([] if fit else [free_form])  # a fit, or snapped
        assert min(abs(charge - a) for a in allowed) < 1e-9
    # a given start replaces the default candidates, and is charged as a free-form kernel
    init = gaussian_kernel(2.0, 15)
    _, only, none0 = estimate_blind(y, BlindBlur(15, init=init, em_iters=0, check_margin=0), run, 0.01)
    assert [c[0] for c in only] == ["init"] and none0 == {}
    assert abs(only[0][2] - model.nll(init) - model.penalty(int((init > 0).sum()) - 1)) < 1e-9
    _, with_em, _ = estimate_blind(y, BlindBlur(15, init=init, em_iters=1, check_margin=0), run, 0.01)
    assert [c[0] for c in with_em] == ["init", "em1"]
    assert torch.allclose(started[-1], init / init.sum())  # a given start starts EM
    # without EM rounds the arc, which only starts them, is not fitted
    monkeypatch.setattr(SpectralModel, "_fit_arc", lambda *a: pytest.fail("an arc fitted without EM rounds"))
    _, no_em, none = estimate_blind(y, BlindBlur(15, em_iters=0, check_margin=0), run, 0.01)
    assert [c[0] for c in no_em] == ["gaussian", "line", *sharp, *classical] and none == {}
    # the check: the candidates within the margin of the least score restored, a round's kernel by its E-step's run
    monkeypatch.undo()
    started.clear()
    k, candidates, checked = estimate_blind(y, BlindBlur(15, em_iters=2, check_margin=1.0), run, 0.01)
    assert sorted(checked) == sorted(c[0] for c in candidates)  # a margin wide enough for all
    assert len(started) == 2 + len(candidates) - 1  # the rounds, then the checks (em1's run is round 2's)
    for label, (misfit, res) in checked.items():
        kc = next(c[1] for c in candidates if c[0] == label)
        assert misfit == pytest.approx(data_misfit(y, kc, res.mean))
    assert torch.equal(k, choose(candidates, misfits={c: m for c, (m, _) in checked.items()})[1])


def test_the_check_takes_the_restoration_nearest_the_photo():
    x = _camera(40)
    true = gaussian_kernel(1.5, 9)
    y = Blur(true, padding="valid")(x)
    wrong, other = gaussian_kernel(3.0, 9), motion_kernel(9, 0.5, torch.Generator().manual_seed(0))
    calls = []

    class Run:  # a restoration: the truth under the true kernel, a blurred image under the others
        def __init__(self, mean):
            self.mean = mean

    def run(op):
        k = op.kernel.detach().cpu().reshape(9, 9)
        calls.append(k)
        return Run(x if torch.allclose(k, true) else Blur(wrong, padding="reflect")(x))

    cands = [("gaussian", wrong, -8.0), ("line", true, -7.99), ("em1", other, -7.98), ("classical", true, -7.0)]
    checked = check_candidates(y, cands, run, 0.05, runs={"em1": Run(x)})
    assert sorted(checked) == ["em1", "gaussian", "line"]  # within 0.05 of the least score; "classical" not run
    assert len(calls) == 2  # em1's run was given
    assert checked["line"][0] == pytest.approx(0.0, abs=1e-6) and checked["gaussian"][0] > 0.01
    misfits = {c: m for c, (m, _) in checked.items()}
    assert choose(cands, misfits=misfits)[0] == "line"  # the nearest, though not the least score
    assert choose(cands)[0] == "gaussian"  # without misfits: the least score
    assert check_candidates(y, cands, run, 0.005) == {} and check_candidates(y, cands, run, 0) == {}
    assert len(calls) == 2  # one candidate in the margin: nothing to check, nothing run


def test_choose_takes_the_least_score_unless_an_em_round_sits_within_the_margin():
    k = {n: torch.full((3, 3), float(i)) for i, n in enumerate(("gaussian", "line", "classical", "em1", "em2"))}

    def cands(scores):
        return [(n, k[n], s) for n, s in scores.items()]

    fits = {"gaussian": -8.00, "line": -7.99, "classical": -7.90}
    assert choose(cands(fits))[0] == "gaussian"  # no rounds: the least score
    near = cands({**fits, "em1": -7.985, "em2": -7.99})  # both rounds within 0.02 of the least score
    assert EM_MARGIN == 0.0 and choose(near)[0] == "gaussian"  # the default: the least score
    assert choose(near, margin=0.02)[0] == "em2" and choose(near, margin=0.02)[1] is k["em2"]  # the better round
    far = cands({**fits, "em1": -7.97, "em2": -7.95})  # 0.03 above: the fit stays
    assert choose(far, margin=0.02)[0] == "gaussian" and choose(far, margin=0.05)[0] == "em1"
    best_round = cands({**fits, "em1": -8.1})
    assert choose(best_round)[0] == "em1"
    tie = cands({**fits, "em1": -8.0})  # a tie keeps the first candidate, as min() does
    assert choose(tie)[0] == "gaussian"
    init = [("init", k["line"], -8.0), ("em1", k["em1"], -7.99)]  # a given start and its round
    assert choose(init)[0] == "init" and choose(init, margin=0.02)[0] == "em1"
    with pytest.raises(ValueError, match="no kernel candidates"):
        choose([])


def test_salient_edges_keep_a_lone_edge_and_drop_thin_stripes():
    y = torch.zeros(1, 40, 80)
    y[:, :, 20:40] = 1.0  # a wide bar: two lone edges
    y[:, :, 50:] = (torch.arange(30) % 2).float()  # one-pixel stripes: gradients that cancel
    m = salient_edges(y)
    assert m.shape == y.shape and set(m.unique().tolist()) <= {0.0, 1.0}
    assert m[0, 20, 19] == 1 and m[0, 20, 39] == 1  # along the bar's edges
    assert m[0, 5:35, 55:75].sum() == 0  # inside the stripes
    assert m[0, 5:35, 25:35].sum() == 0  # flat: no gradient, r = 0
    assert salient_edges(y.expand(3, -1, -1)).shape == (3, 40, 80)


def test_kernel_helpers():
    k = torch.zeros(9, 9)
    k[1, 1], k[2, 2], k[8, 0] = 1.0, 1.0, 0.01
    c = clean_kernel(k)
    assert c[8, 0] == 0 and abs(float(c.sum()) - 1) < 1e-6  # below a tenth of the maximum
    m = centre_kernel(c)
    idx = torch.arange(9.0)
    assert abs(float((m.sum(1) * idx).sum()) - 4) <= 0.5 and abs(float((m.sum(0) * idx).sum()) - 4) <= 0.5
    g = gaussian_kernel(1.0, 9)
    assert kernel_ncc(g, torch.roll(g, 2, -1)) > 0.999  # shift-invariant
    assert kernel_ncc(g, gaussian_kernel(3.0, 9)) < 0.95


def test_restore_blind_returns_the_photo_and_its_kernel():
    kernel = gaussian_kernel(1.2, 9)
    _, y = _blurred(kernel, 40)
    prior = invdiff.priors.load_prior("natural-gray")
    wide = BlindBlur(9, em_iters=1, check_margin=1.0)  # every candidate checked
    res = invdiff.restore(torch.cat([y, y.flip(-1)]), wide, prior, method="diffpir", steps=3, sigma_y=0.01,
                          samples=2)  # fmt: skip
    per_run = invdiff.restore(y, Blur(kernel, padding="valid"), prior, method="diffpir", steps=3, sigma_y=0.01).nfe
    assert res.mean.shape == (2, 1, 40, 40) and res.samples.shape == (2, 2, 1, 40, 40)
    assert res.kernel.shape == (2, 9, 9)
    assert torch.allclose(res.kernel.sum((-1, -2)), torch.ones(2), atol=1e-5) and res.kernel.min() >= 0
    # per image: the E-step run, a check run for each of the 6 or 7 candidates (em1 has no run of its own: one
    # round) and the final run (2 samples: not a check's run)
    labels = {"gaussian", "line", "em1", *(label for label, _ in CLASSICAL_VARIANTS)}
    assert len(res.kernel_choice) == 2 and set(res.kernel_choice) <= labels | {"line-sharp"}
    assert len(res.kernel_candidates) == 2
    assert len(res.kernel_misfits) == 2
    for i, weighed in enumerate(res.kernel_candidates):  # every kernel weighed, and the one choose() takes
        image = (y if i == 0 else y.flip(-1))[0]
        sharp = {"line-sharp"} if SpectralModel(image, 0.01).fit_sharp_line(9) is not None else set()
        assert {label for label, _, _ in weighed} == labels | sharp
        assert set(res.kernel_misfits[i]) == labels | sharp
        label, k, _ = choose(weighed, misfits=res.kernel_misfits[i])
        assert label == res.kernel_choice[i] and torch.equal(k, res.kernel[i]) and k.shape == (9, 9)
    assert res.nfe == per_run * sum(2 + len(weighed) for weighed in res.kernel_candidates)
    # a given start with no EM rounds is returned as it is
    res0 = invdiff.restore(y, BlindBlur(9, init=kernel, em_iters=0), prior, method="diffpir", steps=2, sigma_y=0.01)
    assert torch.allclose(res0.kernel[0], kernel / kernel.sum())
    assert res0.kernel_choice == ["init"]
    # one sample: the chosen kernel's check run is the final run (the E-step and the checks, no final run)
    one = invdiff.restore(y, wide, prior, method="diffpir", steps=3, sigma_y=0.01, samples=1)
    assert one.nfe == (1 + len(one.kernel_candidates[0])) * per_run
    # no check: the E-step and the final run
    plain = invdiff.restore(y, BlindBlur(9, em_iters=1, check_margin=0), prior, method="diffpir", steps=3,
                            sigma_y=0.01, samples=1)  # fmt: skip
    assert plain.nfe == 2 * per_run and plain.kernel_misfits == [{}]


def test_blind_errors():
    prior = invdiff.priors.load_prior("natural-gray")
    y = torch.rand(1, 1, 24, 24)
    with pytest.raises(ValueError, match="diffpir"):
        invdiff.restore(y, BlindBlur(9), prior, method="ddrm", sigma_y=0.01)
    with pytest.raises(ValueError, match="needs sigma_y"):
        invdiff.restore(torch.rand(1, 1, 40, 40), BlindBlur(9), prior, method="diffpir")
    with pytest.raises(ValueError, match="larger than the image"):
        invdiff.restore(y, BlindBlur(31), prior, method="diffpir", sigma_y=0.01)
    for bad in (4, 1, 2.5, True):
        with pytest.raises(ValueError, match="odd integer"):
            BlindBlur(bad)
    with pytest.raises(ValueError, match="init must be"):
        BlindBlur(9, init=torch.ones(7, 7))
    for bad in (-0.1, float("nan"), True, "0.02"):
        with pytest.raises(ValueError, match="check_margin must be a number >= 0"):
            BlindBlur(9, check_margin=bad)
    with pytest.raises(ValueError, match="non-negative"):
        BlindBlur(3, init=-torch.ones(3, 3))
    with pytest.raises(ValueError, match="no kernel yet"):
        BlindBlur(9)(y)
    assert "diffpir" in methods_for_blind() and "ddrm" not in methods_for_blind()


def test_kernel_ncc_is_bounded():
    a = F.pad(torch.ones(1, 1), (4, 4, 4, 4))
    assert abs(kernel_ncc(a, a) - 1) < 1e-9


@pytest.mark.parametrize("padding", ["valid", "reflect"])
def test_large_kernels_blur_by_the_fft_exactly(padding):
    # kernels above FFT_KERNEL_PIXELS run by the FFT: the same numbers as conv2d, and an exact adjoint
    from invdiff.operators.blur import FFT_KERNEL_PIXELS

    k = motion_kernel(15, 0.7, torch.Generator().manual_seed(2)).double()
    assert k.numel() > FFT_KERNEL_PIXELS
    x = torch.rand(2, 3, 40, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = Blur(k, padding=padding)
    xp = x if padding == "valid" else F.pad(x, (7, 7, 7, 7), mode="reflect")
    direct = F.conv2d(xp.reshape(6, 1, *xp.shape[-2:]), k.flip(-1, -2)[None, None]).reshape(2, 3, *op(x).shape[-2:])
    assert torch.allclose(op(x), direct, atol=1e-12)
    r = torch.rand_like(direct)
    assert torch.allclose((op(x) * r).sum(), (x * op.adjoint(r)).sum(), rtol=1e-12)
    assert op(x.float()).dtype == torch.float32


def test_blind_kernel_size_is_bounded():
    with pytest.raises(ValueError, match="downscale"):
        BlindBlur(77)
    assert BlindBlur(75).kernel_size == 75
