"""The image benchmark's parts: classical baselines against exact answers, deepinv bridges, cost tools, a tiny run."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is scripts in the checkout, not an installed package

from benchmarks import baselines, cost, images, report  # noqa: E402
from invdiff import METHODS  # noqa: E402
from invdiff.exact import dense_matrix  # noqa: E402
from invdiff.metrics import psnr  # noqa: E402
from invdiff.operators import Blur, Downsampling, Identity, Inpainting, Saturation, random_mask  # noqa: E402
from invdiff.priors import GaussianPrior  # noqa: E402

F64 = torch.float64


def _smooth(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """A smooth random image ``(1, 1, h, w)`` in [0, 1], float64."""
    prior = GaussianPrior.smooth((1, h, w), length_scale=3.0, variance=0.02, mean=0.5)
    return prior.sample(1, generator=torch.Generator().manual_seed(seed)).to(F64).clamp(0, 1)


def test_oracle_wiener_inverts_a_noiseless_asymmetric_circular_blur() -> None:
    # An asymmetric kernel: a flipped or shifted kernel would leave tens of dB on the table.
    k = torch.zeros(3, 3, dtype=F64)
    k[1, 1], k[1, 2], k[2, 1] = 0.7, 0.2, 0.1
    op = Blur(k, padding="circular")
    x = _smooth()
    y = op(x)
    est, lam, edge = baselines.oracle(lambda lam: baselines.wiener(op, y, lam), baselines.LAMBDAS, x)
    assert psnr(est, x).item() > 60
    assert lam == baselines.LAMBDAS[0] and edge  # noiseless: the smallest weight wins
    # with noise the oracle picks an interior weight and still beats the blurred image
    y_noisy = y + 0.02 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    est, lam, edge = baselines.oracle(lambda lam: baselines.wiener(op, y_noisy, lam), baselines.LAMBDAS, x)
    assert not edge
    assert psnr(est, x).item() > psnr(y_noisy.clamp(0, 1), x).item()


def test_bm3d_deblurring_uses_the_operator_s_blur_and_bm3d_denoises() -> None:
    pytest.importorskip("bm3d", reason="BM3D rows need the bench extra: pip install 'invdiff[bench]'")
    # An asymmetric kernel, as above: bm3d_deblurring's PSF convention must be the operator's.
    k = torch.zeros(5, 5, dtype=F64)
    k[2, 2], k[2, 3], k[2, 4], k[3, 2] = 0.4, 0.3, 0.2, 0.1
    op = Blur(k, padding="circular")
    x = _smooth(48, 48)
    g = torch.Generator().manual_seed(2)
    y = op(x) + 0.01 * torch.randn(x.shape, generator=g, dtype=F64)
    est = baselines.bm3d_deblur(op, y, 0.01).clamp(0, 1)
    flipped = baselines.bm3d_deblur(Blur(k.flip(-2, -1), padding="circular"), y, 0.01).clamp(0, 1)
    assert est.shape == x.shape and est.dtype == y.dtype
    assert psnr(est, x).item() > psnr(y.clamp(0, 1), x).item() + 5
    assert psnr(est, x).item() > psnr(flipped, x).item() + 3  # a flipped PSF would leave dB behind
    # Denoising: the identity operator; an RGB image goes through CBM3D, a gray one through BM3D.
    x3 = torch.cat([_smooth(48, 48, seed=s) for s in range(3)], dim=1)
    y3 = x3 + 0.1 * torch.randn(x3.shape, generator=g, dtype=F64)
    den = baselines.bm3d_denoise(Identity(), y3, 0.1).clamp(0, 1)
    assert den.shape == x3.shape and psnr(den, x3).item() > psnr(y3.clamp(0, 1), x3).item() + 8
    gray = baselines.bm3d_denoise(Identity(), y3[:, :1], 0.1).clamp(0, 1)
    assert gray.shape == (1, 1, 48, 48) and psnr(gray, x3[:, :1]).item() > psnr(y3[:, :1].clamp(0, 1), x3[:, :1]).item() + 8
    assert set(baselines.baselines_for(Identity())) >= {"bm3d"}
    assert {"bm3d", "wiener"} <= set(baselines.baselines_for(op))
    with pytest.raises(ValueError, match="odd kernel sides"):
        baselines.bm3d_deblur(Blur(torch.full((4, 4), 1 / 16, dtype=F64)), y, 0.01)


def test_tikhonov_matches_the_dense_ridge_solution() -> None:
    op = Downsampling(2, filter="bicubic")
    x = _smooth(8, 8)
    y = op(x) + 0.01 * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    A = dense_matrix(op, (1, 8, 8))
    lam = 0.03
    exact = torch.linalg.solve(A.T @ A + lam * torch.eye(64, dtype=F64), A.T @ y.reshape(-1))
    assert torch.allclose(baselines.tikhonov(op, y, lam).reshape(-1), exact, atol=1e-10)


def test_biharmonic_fills_a_smooth_image() -> None:
    ii, jj = torch.meshgrid(torch.arange(24, dtype=F64), torch.arange(24, dtype=F64), indexing="ij")
    x = (0.5 + 0.3 * torch.sin(ii / 5) * torch.cos(jj / 7))[None, None]
    op = Inpainting(random_mask((24, 24), missing=0.5, generator=torch.Generator().manual_seed(0)))
    est = baselines.biharmonic(op, op(x))
    assert psnr(est, x).item() > 50  # the masked image itself scores about 9 dB
    assert torch.equal(est * op.mask, x * op.mask)  # known pixels are kept


def test_bicubic_upsampling_is_aligned_with_box_downsampling() -> None:
    # Box averages of a ramp sit at the block centres; bicubic upsampling with half-pixel centres puts them
    # back there: no bias inside (a half-pixel shift would give 0.025), only torch's a = -0.75 cubic ripple.
    ii, jj = torch.meshgrid(torch.arange(16, dtype=F64), torch.arange(16, dtype=F64), indexing="ij")
    x = (0.1 + 0.03 * ii + 0.02 * jj)[None, None]
    op = Downsampling(2, filter="box")
    err = (baselines.bicubic(op, op(x)) - x)[..., 4:-4, 4:-4]
    assert abs(err.mean().item()) < 1e-9
    assert err.abs().max().item() < 0.006


def test_saturation_inverse_and_tv_denoising() -> None:
    x = _smooth(16, 16)
    op = Saturation(alpha=2.0)
    assert torch.allclose(baselines.saturation_inverse(op, op(x)), x, atol=1e-9)
    # TV on a noisy piecewise-constant image: the oracle weight removes most of the noise.
    sq = torch.full((1, 1, 32, 32), 0.2, dtype=torch.float32)
    sq[..., 8:24, 8:24] = 0.8
    noisy = sq + 0.1 * torch.randn(sq.shape, generator=torch.Generator().manual_seed(0))
    est, lam, _ = baselines.oracle(lambda lam: baselines.tv(Identity(), noisy, lam, 30, 20), baselines.TV_LAMBDAS, sq)
    assert psnr(est, sq).item() > psnr(noisy.clamp(0, 1), sq).item() + 6


def test_svd_physics_and_denoiser_wrapper_match_invdiff() -> None:
    pytest.importorskip("deepinv")
    x = _smooth(16, 16).float()
    for op in (Blur(torch.tensor([[0.1, 0.6, 0.3]]), padding="circular"), Downsampling(4, filter="bicubic")):
        y = op(x)
        physics = images.svd_physics(op, tuple(x.shape), 0.05)
        assert torch.allclose(physics.A(x), y, atol=1e-5)
        assert torch.allclose(physics.A_adjoint(y), op.adjoint(y), atol=1e-5)
        assert physics.noise_model.sigma == pytest.approx(0.05)
    prior = GaussianPrior.smooth((1, 16, 16))
    den = images.deepinv_denoiser(prior)
    xn = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(den(xn, 0.3), prior.denoise(xn, 0.3).float(), atol=1e-6)
    assert den.calls == 1


def test_peak_memory_sees_a_large_allocation() -> None:
    with cost.PeakMemory("cpu") as mem:
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB
        big += 1
    del big
    if mem.mib is None:
        pytest.skip("no /proc/self/statm here")
    assert 48 < mem.mib < 200
    assert cost.overhead(2.0, 10, 0.1) == pytest.approx(2.0)
    assert cost.overhead(2.0, 0, 0.1) is None


def test_plan_overrides_are_checked_and_recorded() -> None:
    plan = images.override(images.plan_for("quick"), steps={"dps": 50}, seeds=[0, 1])
    assert plan.steps["dps"] == (50,) and plan.seeds == (0, 1) and "--steps dps=50" in plan.notes
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        images.override(plan, steps={"nope": 3})
    with pytest.raises(ValueError, match="unknown test image"):
        images.override(plan, images=["lena"])
    full = images.plan_for("full")
    assert full.steps["dps"][0] == 1000 and full.size is None and len(full.seeds) == 3


def test_readme_block_is_replaced_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.README_BEGIN}\nold\n{report.README_END}\n\ntail\n", encoding="utf-8")
    assert report.update_readme("new table", readme)
    text = readme.read_text(encoding="utf-8")
    assert "new table" in text and "old" not in text and text.endswith("tail\n")
    assert not report.update_readme("x", tmp_path / "missing.md")


def test_suite_runs_end_to_end_on_a_tiny_problem(tmp_path: Path) -> None:
    pytest.importorskip("deepinv")
    prior = GaussianPrior.smooth((1, 16, 16), length_scale=2.0, variance=0.04, mean=0.5)
    x = prior.sample(1, generator=torch.Generator().manual_seed(0)).float().clamp(0, 1)
    plan = images.Plan("quick", ("camera",), 16, (0,), 1, {"ddrm": (2,), "dps": (2,), "pigdm": (2,)},
                       tv_iters=(3, 2), tv_lambdas=(1e-2, 1e-1), scaling=("ddrm", 2, (1, 2)), net_reps=1)  # fmt: skip
    tasks = [t for t in images.TASKS if t.name in ("inpaint-random", "saturation")]
    data = images.run_suite(plan, prior, {"camera": x}, tasks=tasks, figures_dir=tmp_path, log=lambda m: None)

    rows = {(r["task"], r["family"], r["method"]): r for r in data["rows"]}
    assert not [k for k, r in rows.items() if "error" in r]
    for key in [("inpaint-random", f, m) for f in ("invdiff", "deepinv") for m in ("ddrm", "dps", "pigdm")]:
        assert rows[key]["nfe"] == 2 and math.isfinite(rows[key]["psnr"])
    assert ("saturation", "invdiff", "ddrm") not in rows and ("saturation", "deepinv", "dps") in rows
    # the biharmonic row is the baseline computed directly on the same measurement
    op = images.TASKS[0].build((1, 1, 16, 16), 0)
    y = images.measure(op, x, images.SIGMA_Y, 0)
    direct = psnr(baselines.biharmonic(op, y).clamp(0, 1), x).item()
    assert rows[("inpaint-random", "classical", "biharmonic")]["psnr"] == pytest.approx(direct, abs=1e-9)
    margin = next(m for m in data["margins"] if m["task"] == "inpaint-random" and m["method"] == "ddrm")
    assert margin["margin_db"] == pytest.approx(rows[("inpaint-random", "invdiff", "ddrm")]["psnr"] - direct)
    assert [r["samples"] for r in data["scaling"]["rows"]] == [1, 2]
    assert len(data["dps_vs_deepinv"]) == 2 and data["load_average"]["start"] is not None

    md = images.markdown(data)
    assert "#### inpaint-random" in md and "2/1000 steps" in md and "1/3 seeds" in md
    assert "Time budget" not in md
    data["budget"] = {"budget_seconds": 600, "cuts": ["1 seed(s)"], "predicted_seconds": 420.0, "fits": True,
                      "fit_seconds": 12.0}  # fmt: skip
    assert "Cuts, applied in a fixed order until the predicted time fits: 1 seed(s)." in images.markdown(data)
    assert "Cut to fit 10 min: 1 seed(s)." in images.headline(data)
    assert "inpaint-random" in images.headline(data)
    assert (tmp_path / data["figures"]["saturation"]).stat().st_size > 1000
    json.dumps(report._jsonable(data))  # everything is JSON-able


def test_parity_runs_both_ddrms_on_the_same_noise_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepinv")
    from benchmarks import parity
    from invdiff.samplers import ddrm

    prior = GaussianPrior.smooth((1, 8, 8), length_scale=2.0, variance=0.04, mean=0.5)
    seen: dict[str, list[float]] = {"invdiff": [], "deepinv": []}
    key = {"who": "invdiff"}
    denoise = prior.denoise

    def spy(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        seen[key["who"]].append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return denoise(x, sigma)

    monkeypatch.setattr(prior, "denoise", spy)
    op = Inpainting(random_mask((8, 8), missing=0.5, generator=torch.Generator().manual_seed(0)))
    x = prior.sample(1, generator=torch.Generator().manual_seed(1)).float()
    y = op(x)
    ddrm(prior, op, y, parity.deepinv_levels(6, y.device), sigma_y=0.05, generator=torch.Generator().manual_seed(0))
    key["who"] = "deepinv"
    images.run_deepinv("ddrm", prior, op, y, (1, 1, 8, 8), 0.05, 6, 0)
    # deepinv makes one more call, at sigma 0, where the denoiser returns its input
    assert seen["deepinv"][:-1] == pytest.approx(seen["invdiff"]) and seen["deepinv"][-1] == 0.0
    assert len(seen["invdiff"]) == 5


def test_parity_and_priors_suites_render_tiny_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepinv")
    from benchmarks import parity, priors

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    plan = {"size": 16, "samples": 2, "ddrm_steps": 3, "dps_steps": 2, "dps_seeds": (0,), "exact_n": 32}
    exact = parity.exact_rows(plan, 0, lambda m: None)
    assert {(r["operator"], r["library"]) for r in exact} == {(o, lib) for o in ("inpainting", "blur")
                                                               for lib in ("invdiff", "deepinv")}  # fmt: skip
    prior = GaussianPrior.smooth((1, 16, 16), length_scale=2.0, variance=0.04, mean=0.5)
    x = prior.sample(1, generator=torch.Generator().manual_seed(0)).float().clamp(0, 1)
    rows = parity.ddrm_rows(prior, x, plan, 0, lambda m: None)
    assert len(rows) == 3 * len(parity.DDRM_TASKS) and all(math.isfinite(r["psnr_mean"]) for r in rows)
    dps = parity.dps_rows(prior, x, plan, 0, lambda m: None)
    assert all(r["nfe_invdiff"] == 2 for r in dps)
    data = {"mode": "quick", "seconds": 1.0, "machine": report.machine(), "deepinv_version": "x", "prior": "p",
            "seed": 0, "plan": plan, "exact": exact, "ddrm": rows, "dps": dps}  # fmt: skip
    md = parity.markdown(data)
    assert "inpaint-box" in md and "variance ratio" in md

    # priors: the phantoms rows are read from the CT suite's JSON, margins over FBP
    ct = {"mode": "quick", "images": ["shepp-logan", "phantom-0"], "machine": {"git_commit": "abc"},
          "setups": [{"setup": "sparse-30", "rows": [
              {"method": "fbp", "psnr": [20.0, 22.0], "ssim": [0.5, 0.6]},
              {"method": "ddrm", "psnr": [25.0, 26.0], "ssim": [0.8, 0.9], "steps": 20, "default_steps": 20}]}]}
    (tmp_path / "ct.json").write_text(json.dumps(ct), encoding="utf-8")
    ph = priors.phantom_rows()
    assert len(ph) == 1 and ph[0]["margin_db"] == pytest.approx(25.5 - 21.0) and ph[0]["baseline"] == "fbp"
    prior.channels = 1  # the shipped priors say how many channels they model
    monkeypatch.setattr(priors, "load_prior", lambda name: prior)
    tiny = {"size": 16, "images": {"natural-gray": ("camera", "coffee")}, "samples": 2,
            "steps": {"ddrm": 2, "pigdm": 2, "dps": 2}, "seeds": (0,)}  # fmt: skip
    block = priors.natural_rows("natural-gray", tiny, "cpu", lambda m: None)
    assert {m["task"] for m in block["margins"]} == set(priors.TASK_NAMES)
    assert all(m["steps"] == 2 for m in block["margins"])
    md = priors.markdown({"mode": "quick", "seconds": 1.0, "machine": report.machine(), "plan": tiny,
                          "natural": [block], "phantoms": ph, "overrides": {"images": "all", "methods": None}})
    assert "sparse-30" in md and "`natural-gray` on camera, coffee" in md and "--quick --images all`" in md
    # the per-image margins average back to the row's margin
    m = next(m for m in block["margins"] if m["method"] == "ddrm" and not m["best_invdiff"])
    per = dict(item.rsplit(" ", 1) for item in priors.per_image_margins(block["rows"], m).split(", "))
    assert set(per) == {"camera", "coffee"}
    assert sum(float(v) for v in per.values()) / 2 == pytest.approx(m["margin_db"], abs=0.01)
    assert "margin per image (dB)" in md
    # a sampler beyond DDRM, PiGDM and DPS (--methods ddnm) gets its own row per task
    one = {**tiny, "images": {"natural-gray": ("camera",)}, "steps": {"ddnm": 2}}
    extra = priors.natural_rows("natural-gray", one, "cpu", lambda m: None)
    md = priors.markdown({"mode": "quick", "seconds": 1.0, "machine": report.machine(), "plan": one,
                          "natural": [extra], "phantoms": [], "overrides": {"methods": ["ddnm"]}, "out": "priors-ddnm"})
    assert md.count("| ddnm | 2 (default 100) |") == len(priors.TASK_NAMES) and "--out priors-ddnm" in md
    # DPS below its 1000 steps runs with the reference's total guidance, zeta = 1000 / steps, and says so
    seen: list[dict] = []
    real_restore = images.restore
    monkeypatch.setattr(images, "restore", lambda *a, **k: seen.append(k) or real_restore(*a, **k))
    few = {**one, "steps": {"dps": 2}, "knobs": {"dps": {"zeta": priors.zeta_for_steps(2)}}}
    dps_block = priors.natural_rows("natural-gray", few, "cpu", lambda m: None)
    assert len(seen) == len(priors.TASK_NAMES) and all(k["method"] == "dps" and k["zeta"] == 500 for k in seen)
    md = priors.markdown({"mode": "quick", "seconds": 1.0, "machine": report.machine(), "plan": few,
                          "natural": [dps_block], "phantoms": [], "overrides": {"methods": ["dps"]}})
    assert "DPS zeta = 1000 / steps = 500" in md

    # overriding the plan: every test image, a subset of samplers; bad names fail before any run
    plan = priors.make_plan("quick", "all", ["ddrm", "pigdm"])
    assert plan["images"] == priors.IMAGES and set(plan["steps"]) == {"ddrm", "pigdm"}
    assert priors.PLANS["quick"]["images"]["natural-gray"] == ("camera",)  # the mode's own plan is untouched
    assert priors.make_plan("quick", ["camera"])["images"] == {"natural-gray": ("camera",), "natural-rgb": ()}
    with pytest.raises(ValueError, match="not a test image"):
        priors.make_plan("quick", ["brick"])
    with pytest.raises(ValueError, match="judged with"):
        priors.make_plan("quick", None, ["repaint"])
    extra = priors.make_plan("quick", "all", ["ddnm", "ddrm"])
    assert extra["steps"] == {"ddrm": 20, "ddnm": 100}  # an extra sampler runs at its default steps
    dps = priors.make_plan("quick", ["camera"], ["dps"], samples=1, steps={"dps": 1000})
    assert dps["steps"] == {"dps": 1000} and dps["samples"] == 1
    assert dps["knobs"] == {"dps": {"zeta": 1.0}}  # the reference's step at its own 1000 steps
    assert priors.make_plan("quick", None, ["dps"])["knobs"] == {"dps": {"zeta": 10.0}}  # 100 steps, same total
    assert priors.make_plan("quick", None, ["ddrm"])["knobs"] == {}
    with pytest.raises(ValueError, match="does not use"):
        priors.make_plan("quick", None, ["dps"], steps={"ddrm": 50})
    with pytest.raises(ValueError, match="at least 1 step"):
        priors.make_plan("quick", None, ["dps"], steps={"dps": 0})
    with pytest.raises(ValueError, match="at least 1"):
        priors.zeta_for_steps(0)
    with pytest.raises(ValueError, match="out must be"):
        priors.run("quick", out="../elsewhere")


def test_budget_cuts_the_full_plan_in_order_and_names_every_cut() -> None:
    from benchmarks import budget
    from invdiff.priors import Prior

    class Shrink(Prior):
        """A one-parameter denoiser: any size, differentiable, nearly free."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.9))

        def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
            return self.w * x

    # step counts: defaults above 20 scale, never below the reduced count, which stays
    full = {"ddrm": (20, 10), "dps": (1000, 100), "score_ald": (500, 100)}
    assert budget.scale_steps(full, 1 / 4) == {"ddrm": (20, 10), "dps": (250, 100), "score_ald": (125, 100)}
    assert budget.scale_steps(full, 1 / 8)["score_ald"] == (100,)
    assert budget.describe([("steps", 0.5), ("seeds", 1), ("steps", 0.25)]) == [
        "default steps above 20 x0.25", "1 seed(s)"]  # fmt: skip

    tasks = [t for t in images.TASKS if t.name in ("inpaint-random", "deblur-gaussian")]
    predictor = budget.Predictor(Shrink(), "cpu", tasks, images.measure, images.SIGMA_Y)
    plan = images.plan_for("full")
    whole, rec = budget.fit(plan, predictor, 1e9, images.deepinv_supports)
    assert whole == plan and rec["cuts"] == [] and rec["fits"]
    # the sampler's own network calls, counted: RePaint resamples, Score-ALD takes several steps per level
    nfe = predictor.nfe(plan)
    assert nfe["dps", 1000] == 1000 and nfe["repaint", 250] > 250 and nfe["score_ald", 500] > 500

    cut, rec = budget.fit(plan, predictor, 1e-3, images.deepinv_supports)
    assert not rec["fits"] and len(rec["candidates"]) == len(budget.CUTS) + 1
    assert cut.seeds == (0,) and cut.size == 128 and cut.images == ("camera",) and cut.tv_iters == (100, 10)
    assert cut.steps["dps"] == (100,) and cut.steps["ddrm"] == plan.steps["ddrm"]
    assert any(n.startswith("budget cuts: 1 seed(s), 128x128 crops") for n in cut.notes)
    predicted = [c["predicted_seconds"] for c in rec["candidates"]]
    assert predicted[-1] < predicted[0] and all(p > 0 for p in predicted)


def test_schedule_sweep_scores_posterior_means_per_start() -> None:
    from benchmarks import schedule

    prior = GaussianPrior.smooth((1, 16, 16), length_scale=2.0, variance=0.04, mean=0.5)
    x = prior.sample(1, generator=torch.Generator().manual_seed(0)).float().clamp(0, 1)
    tasks = [t for t in images.TASKS if t.name in ("inpaint-box", "sr4-bicubic")]
    rows = schedule.sweep(prior, {"toy": x}, {"ddrm": 3, "repaint": 2}, (1.0, None), tasks, samples=2,
                          log=lambda m: None)  # fmt: skip
    # RePaint needs a mask: it runs on the box only; every row is the mean of 2 samples
    assert sorted((r["task"], r["method"]) for r in rows if r["start"] == 1.0) == [
        ("inpaint-box", "ddrm"), ("inpaint-box", "repaint"), ("sr4-bicubic", "ddrm")]  # fmt: skip
    assert all(r["samples"] == 2 and math.isfinite(r["psnr"]) for r in rows)
    # the mean of 2 samples is what is scored: rerun one row by hand
    op = tasks[0].build(tuple(x.shape), 0)
    y = images.measure(op, x, images.SIGMA_Y, 0)
    from invdiff import restore

    res = restore(y, op, prior, method="ddrm", steps=3, sigma_y=images.SIGMA_Y, seed=0, samples=2, sigma_max=1.0)
    want = psnr(res.mean.clamp(0, 1), x).item()
    got = next(r for r in rows if r["task"] == "inpaint-box" and r["method"] == "ddrm" and r["start"] == 1.0)
    assert got["psnr"] == pytest.approx(want, abs=1e-9)
    summ = schedule.summary(rows)
    assert {s["method"] for s in summ} == {"ddrm", "repaint"} and summ[0]["problems"] == 2
    data = {"rows": rows, "summary": summ, "machine": report.machine(), "prior": "toy", "size": 16,
            "images": ["toy"], "seed": 0, "samples": 2, "tasks": [t.name for t in tasks]}  # fmt: skip
    md = schedule.markdown(data)
    assert "the mean of 2 posterior samples" in md
    # each method's row names the start restore uses; DDRM's (5) was not swept here, so no difference is claimed
    ddrm_row = next(line for line in md.splitlines() if line.startswith("| ddrm |"))
    assert ddrm_row.endswith(f"| {METHODS['ddrm'].sigma_max:g} | — |")


def test_realinput_restores_damaged_files_and_scores_them_against_the_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import realinput

    # the edge band's RMSE over the interior's, on a known error: 0.1 in the 16-pixel band, 0.05 inside
    truth = torch.zeros(1, 1, 40, 40, dtype=F64)
    est = torch.full_like(truth, 0.1)
    est[..., 16:-16, 16:-16] = 0.05
    assert realinput.band_ratio(est, truth) == pytest.approx(2.0)
    # the blurry file is the 'valid' blur of the photo, so its truth is the photo less the kernel's radius
    x = realinput.photo("camera", 1, 48)
    case = realinput.damage("camera", "deblur", x, 0)
    assert case.y.shape == case.truth.shape == (1, 1, 36, 36) and torch.equal(case.truth, x[..., 6:-6, 6:-6])
    assert torch.equal(case.y, realinput.eight_bit(case.y))
    assert realinput.scratches(48, 48, seed=1).mean() >= realinput.SCRATCH_FRACTION

    # the whole suite on a 48x48 crop, 2 steps, in this process, without BM3D (left out with a note), with a
    # Gaussian prior of any size standing in for the shipped U-Nets (the structure is tested, not the quality)
    from invdiff.priors import Prior

    class WhitePrior(Prior):
        channels = 1

        def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
            s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1)) ** 2
            return 0.5 + (x - 0.5) * 0.05 / (0.05 + s2)

    monkeypatch.setattr(realinput, "_PRIORS", {"cpu": WhitePrior()})
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")
    for name, value in {"CROP": {"quick": 48}, "STEPS": 2, "SAMPLES": 1, "ISOLATE": False, "FIGURE_CROP": 32,
                        "RL_ITERATIONS": (2, 4)}.items():  # fmt: skip
        monkeypatch.setattr(realinput, name, value)
    monkeypatch.setattr(realinput.baselines, "bm3d_available", lambda: False)
    data = realinput.run("quick", log=lambda message: None)
    methods = {(r["task"], r["method"]) for r in data["rows"]}
    assert methods == {("deblur", "invdiff"), ("deblur", "wiener_padded"), ("deblur", "richardson_lucy_padded"),
                       ("sr", "invdiff"), ("sr", "bicubic"), ("inpaint", "invdiff"), ("inpaint", "biharmonic"),
                       ("denoise", "invdiff")}  # fmt: skip
    for r in data["rows"]:
        assert math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 and r["seconds"] >= 0
        assert ("band_ratio" in r) == (r["task"] == "deblur")
    ours = {r["task"]: r for r in data["rows"] if r["method"] == "invdiff"}
    assert ours["sr"]["output_size"] == [48, 48] and ours["sr"]["input_size"] == [12, 12]
    assert all(r["steps"] == 2 and r["samples"] == 1 and r["sigma_y_source"] == "auto" for r in ours.values())
    # a margin per task with a baseline (denoising has none without BM3D): against the best by PSNR
    assert [m["task"] for m in data["margins"]] == ["deblur", "sr", "inpaint"]
    for m in data["margins"]:
        rivals = [r for r in data["rows"] if r["task"] == m["task"] and r["method"] != "invdiff"]
        best = max(rivals, key=lambda r: r["psnr"])
        assert m["baseline"] == best["method"]
        assert m["margin_db"] == pytest.approx(ours[m["task"]]["psnr"] - best["psnr"])
    md = (tmp_path / "realinput.md").read_text()
    assert "BM3D rows are left out" in md and "Where invdiff wins" in md
    assert sum(f"camera {t} (" in md for t in ("deblur", "sr", "inpaint")) == 3  # each task in the verdict
    assert json.loads((tmp_path / "realinput.json").read_text())["margins"] and (tmp_path / "realinput.png").is_file()


def test_calibration_suite_folds_and_scores_without_leaking_the_test_photo() -> None:
    """Leave-one-photo-out folds, the calibrated coverage of each fold's test images, and the rendered table."""
    from benchmarks import calibration

    groups = [p for p in calibration.PHOTOS for _ in range(12)]
    for test_photo, cal, test in calibration.folds("inpaint", groups):
        assert all(groups[i] == test_photo for i in test) and all(groups[i] != test_photo for i in cal)
        assert len(cal) == 24 and len(test) == 12
    g = torch.Generator().manual_seed(0)
    # half-normal scores of width 2 on every image: calibrated 90 % needs a scale near 2 * 1.645
    images = [{"group": p, "k": {2: {"scores": (2 * torch.randn(400, generator=g)).abs(), "std_floored": 0.01,
                                     "raw_coverage": 0.5, "raw_width": 0.02}}} for p in groups]  # fmt: skip
    rows = calibration.evaluate("inpaint", {"images": images, "ks": [2]})
    (row,) = rows
    assert row["raw_coverage"] == 0.5 and row["n_test"] == 36 and row["n_cal"] == 24
    assert 0.9 <= row["cal_coverage"] <= 0.97 and 3.0 < row["scale"] < 4.5
    assert row["cal_width"] == pytest.approx(2 * row["scale"] * 0.01, rel=0.05)
    data = {"mode": "quick", "level": 0.9, "crop": 64, "photos": list(calibration.PHOTOS),
            "problems": calibration.PROBLEMS, "samples": 2, "figure": None, "total_seconds": 60.0,
            "machine": report.machine("cpu"),
            "results": [{"problem": "inpaint", "method": "ddrm", "steps": 20, "seconds_per_image": 1.0,
                         "rows": rows}]}  # fmt: skip
    md = calibration.markdown(data)
    assert "| photos, 50 % of pixels missing at random" in md and "24 / 36" in md


def test_blind_suite_runs_a_gray_and_a_colour_photo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import blind

    from invdiff.operators import gaussian_kernel

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")  # the committed page stays as it is
    monkeypatch.setattr(blind, "PLAN", {"full": ((("camera", 1), ("astronaut", 3)), 20, (0.02,))})
    monkeypatch.setattr(blind, "SIZE", 5)
    monkeypatch.setattr(blind, "STEPS", 2)
    monkeypatch.setattr(blind, "kernels", lambda mode: {"gaussian 1": gaussian_kernel(1.0, 5)})
    monkeypatch.setattr(blind, "clock", lambda *a, **k: {})
    data = blind.run("full", log=lambda m: None)

    rows = data["rows"]
    assert {r["image"] for r in rows} == {"camera", "astronaut (rgb)"}
    methods = {"ceiling", "guess", "blind", "blind+em4", "classical"}
    for image in ("camera", "astronaut (rgb)"):
        sel = [r for r in rows if r["image"] == image]
        assert {r["method"] for r in sel} == methods and all(math.isfinite(r["psnr"]) for r in sel)
    assert [s["cases"] for s in data["summary"]] == [2] * 4  # both photos in every Gaussian-family row
    md = (tmp_path / "blind.md").read_text()
    assert "| astronaut (rgb) | gaussian 1 | 0.02 |" in md and "--full" in md


def test_blind_validation_mode_runs_the_tuning_cases_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--validation``: training photos and other shakes, the ceiling and the blind rows only, its own files."""
    from benchmarks import blind

    from invdiff.operators import motion_kernel

    assert set(blind.kernels("validation")) == {"motion v20", "motion v21"}
    assert not set(blind.PLAN["validation"][0]) & {(n, c) for n, c in blind.PLAN["quick"][0] + blind.PLAN["full"][0]}
    assert blind.photo("rocket", 1, 40).shape == (1, 1, 40, 40)
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(blind, "PLAN", {"validation": ((("rocket", 1),), 20, (0.02,))})
    monkeypatch.setattr(blind, "SIZE", 5)
    monkeypatch.setattr(blind, "STEPS", 2)
    monkeypatch.setattr(blind, "kernels", lambda mode: {"motion v1": motion_kernel(5, 0.5)})

    def no_clock(*a, **k):
        raise AssertionError("the validation mode restores no clock")

    monkeypatch.setattr(blind, "clock", no_clock)
    data = blind.run("validation", log=lambda m: None)
    assert {r["method"] for r in data["rows"]} == {"ceiling", "blind", "blind+em4", "hindsight"}
    assert [s["method"] for s in data["summary"]] == ["blind+em4", "hindsight", "blind"]
    (hind,) = [r for r in data["rows"] if r["method"] == "hindsight"]
    (em,) = [r for r in data["rows"] if r["method"] == "blind+em4"]
    best = max(hind["candidates"], key=lambda c: c["psnr"])
    assert hind["choice"] == best["label"] and hind["psnr"] == best["psnr"] >= em["psnr"] - 1e-9
    # the choice: of the candidates checked (restored), the least misfit; with none checked, the least score
    checked = [c for c in hind["candidates"] if c["misfit"] is not None]
    expected = min(checked, key=lambda c: c["misfit"]) if checked else min(hind["candidates"], key=lambda c: c["score"])
    assert em["choice"] == expected["label"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "blind-validation.json", "blind-validation.md"]
    md = (tmp_path / "blind-validation.md").read_text()
    assert "--validation" in md and "| image | kernel | sigma_y | ceiling | blind+em4 | hindsight | blind |" in md


def test_every_benchmark_s_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m benchmarks --help`` and each suite's ``--help`` print and exit 0 (a bare ``%`` in a help text
    made argparse raise instead)."""
    from benchmarks.__main__ import main, parser

    names = list(next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)
    assert "blind" in names and "calibration" in names
    for argv in (["--help"], *([n, "--help"] for n in names)):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0, argv
        assert "usage:" in capsys.readouterr().out
