"""Interval coverage: raw sample intervals against calibrated ones, on images never used for calibration.

For each problem (natural photos: 50 % random inpainting and Gaussian deblurring with
``natural-gray``; phantoms: sparse-view CT and 4x single-coil MRI with ``phantoms``) and
method, every image is restored once with ``S`` posterior samples.  The first ``k`` of
them (``k = 2, 4, ...``; samples are independent chains, so any ``k`` of them are ``k``
samples) give, per image, the raw 90 % interval (the samples' 5 % and 95 % quantiles)
and the scores ``|x - mean| / max(std, floor)`` of ``invdiff.intervals``.

Splits: photos are 64x64 crops on a grid over camera, astronaut and coffee (gray), and
each photo in turn is the test set while the crops of the other two calibrate
(``invdiff.intervals.fit_scales``, conformal risk control): no test photo is ever seen
by its calibration.  Phantoms: held-out ellipse phantoms (seeds the ``phantoms`` prior
never trained on), the first ``n_cal`` calibrating and the rest testing.

Reported per problem, method and ``k``: the mean coverage over test images (the
fraction of each image's pixels inside its interval, averaged), the 10th percentile of
the per-image coverage (the guarantee is on the average, not per image), the mean
interval width, and the calibrated scale.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invdiff import restore
from invdiff.calibration import default_floor
from invdiff.datasets import skimage_image
from invdiff.intervals import coverage, fit_scales, sample_interval, scores
from invdiff.medical.ct import ct_operator
from invdiff.operators import Blur, Inpainting, MRI, gaussian_kernel, mri_mask, random_mask
from invdiff.priors import load_prior

from . import figures, report
from .medical import HELD_OUT_SEED, SIZE as PHANTOM_SIZE, phantom

NAME = "calibration"
TITLE = "Interval coverage: raw and calibrated"
LEVEL = 0.9
CROP = 64
PHOTOS = ("camera", "astronaut", "coffee")
SIGMA_Y = 0.02  # photos' measurement noise (data units)
CT_SIGMA_Y = 0.1  # on line integrals in pixel units, as the CT benchmark
MRI_SIGMA_Y = 0.01  # on measured k-space values, as the MRI benchmark
NOISE_SEED = 7_000  # offset of the measurement noise's seeds from the samplers'

MODES: dict[str, dict[str, Any]] = {
    "quick": {"crops": 30, "phantoms": (80, 20), "samples": 8,
              "methods": {"inpaint": ("ddrm",), "deblur": ("ddrm",), "ct": ("ddrm",), "mri": ("ddrm",)}},
    "full": {"crops": 60, "phantoms": (100, 50), "samples": 16,
             "methods": {"inpaint": ("ddrm", "pnp_dm", "pigdm"), "deblur": ("ddrm", "pnp_dm", "pigdm"),
                         "ct": ("ddrm", "pigdm"), "mri": ("ddrm", "pigdm")}},
}  # fmt: skip
#: steps per method (the METHODS defaults where affordable)
STEPS = {"ddrm": 20, "pigdm": 100, "pnp_dm": None}

PROBLEMS = {
    "inpaint": "photos, 50 % of pixels missing at random, sigma_y 0.02",
    "deblur": "photos, Gaussian blur std 2 (circular), sigma_y 0.02",
    "ct": "phantoms, sparse-view CT (30 views), noise 0.1 on line integrals",
    "mri": "phantoms, single-coil MRI 4x (8 % centre), noise 0.01 in k-space",
}


def photo_crops(n: int) -> list[tuple[str, Tensor]]:
    """``n`` 64x64 gray crops of each test photo on an even grid: ``[(photo, (1, 1, 64, 64))]``."""
    out = []
    for name in PHOTOS:
        img = torch.from_numpy(skimage_image(name, 1)[..., 0])
        h, w = img.shape
        rows, cols = (h - CROP) // CROP + 1, (w - CROP) // CROP + 1
        cells = [(r * CROP, c * CROP) for r in range(rows) for c in range(cols)]
        pick = np.linspace(0, len(cells) - 1, n).round().astype(int)
        out += [(name, img[i : i + CROP, j : j + CROP][None, None].contiguous()) for i, j in (cells[k] for k in pick)]
    return out


def problem(kind: str, mode: str):
    """``(images [(group, x)], operator for x -> (op, sigma_y), prior name)`` of one problem."""
    if kind in ("inpaint", "deblur"):
        crops = photo_crops(MODES[mode]["crops"])

        def make(i: int, x: Tensor):
            if kind == "inpaint":
                g = torch.Generator().manual_seed(1000 + i)
                return Inpainting(random_mask((CROP, CROP), missing=0.5, generator=g)), SIGMA_Y
            return Blur(gaussian_kernel(2.0), padding="circular"), SIGMA_Y

        return crops, make, "natural-gray"
    n_cal, n_test = MODES[mode]["phantoms"]
    images = [("cal" if k < n_cal else "test", phantom(HELD_OUT_SEED + 500 + k)) for k in range(n_cal + n_test)]
    if kind == "ct":
        from .ct import SVD_CACHE

        scale = ct_operator(PHANTOM_SIZE, "sparse-30").scale  # 1 / ||A||: the noise in normalised units
        op_svd = ct_operator(PHANTOM_SIZE, "sparse-30", svd=True, cache_dir=SVD_CACHE)
        return images, lambda i, x: (op_svd, CT_SIGMA_Y * scale), "phantoms"

    def make_mri(i: int, x: Tensor):
        g = torch.Generator().manual_seed(2000 + i)
        return MRI(mri_mask((PHANTOM_SIZE, PHANTOM_SIZE), 4, 0.08, generator=g)), MRI_SIGMA_Y

    return images, make_mri, "phantoms"


def measure(op, x: Tensor, sigma_y: float, seed: int) -> Tensor:
    ax = op(x)
    noise = sigma_y * torch.randn(ax.shape, generator=torch.Generator().manual_seed(seed), dtype=ax.dtype)
    if isinstance(op, MRI):
        noise = noise * op.mask.to(ax)  # noise on the measured k-space values only
    return ax + noise


def restore_all(kind: str, method: str, mode: str, seed: int) -> dict[str, Any]:
    """Restore every image of a problem with S samples; keep what the coverage needs per k."""
    images, make, prior_name = problem(kind, mode)
    prior = load_prior(prior_name)
    floor = default_floor(prior)
    S = MODES[mode]["samples"]
    ks = [k for k in (2, 4, 8, 16) if k <= S]
    per_image, seconds, nfe = [], 0.0, 0
    example = None
    for i, (group, x) in enumerate(images):
        op, sigma_y = make(i, x)
        y = measure(op, x, sigma_y, NOISE_SEED + seed + i)  # the noise's seed apart from the sampler's
        r = restore(y, op, prior, method=method, steps=STEPS[method], sigma_y=sigma_y, samples=S, seed=seed + i)
        seconds += r.seconds
        nfe = r.nfe
        entry: dict[str, Any] = {"group": group, "k": {}}
        for k in ks:
            s = r.samples[:k].double()
            mean, std = s.mean(0), s.std(0)
            lo, hi = sample_interval(s, LEVEL)
            entry["k"][k] = {
                "scores": scores(x, mean, std, floor).reshape(-1).float(),
                "std_floored": float(std.clamp_min(floor).mean()),
                "raw_coverage": coverage(x.double(), lo, hi),
                "raw_width": float((hi - lo).mean()),
            }
        texture = float(x.std())  # the figure shows the most textured test image (camera's, for photos)
        if (group == "test" or group == PHOTOS[0]) and (example is None or texture > example["texture"]):
            example = {"x": x, "mean": r.mean, "std": r.std, "y": y, "texture": texture}
        per_image.append(entry)
        if (i + 1) % 10 == 0:
            print(f"  {kind} {method}: {i + 1}/{len(images)} images, {seconds:.0f} s", flush=True)
    return {"images": per_image, "ks": ks, "seconds": seconds, "nfe": nfe, "floor": floor, "prior": prior_name,
            "steps": r.steps, "example": example}  # fmt: skip


def exact_sampler_coverage(k: int, level: float = LEVEL) -> float:
    """What raw intervals from ``k`` exact posterior draws cover on average: ``level (k - 1) / (k + 1)``.

    The interpolated quantiles sit at order-statistic positions ``(1 -+ level) / 2 * (k - 1)``, and the
    mass between the i-th and j-th of ``k`` draws is ``(j - i) / (k + 1)`` in expectation.
    """
    return level * (k - 1) / (k + 1)


def folds(kind: str, groups: list[str]) -> list[tuple[str, list[int], list[int]]]:
    """``(test name, calibration indices, test indices)``: leave one photo out, or the phantoms' fixed split."""
    idx = range(len(groups))
    if kind in ("inpaint", "deblur"):
        return [(p, [i for i in idx if groups[i] != p], [i for i in idx if groups[i] == p]) for p in PHOTOS]
    return [("phantoms", [i for i in idx if groups[i] == "cal"], [i for i in idx if groups[i] == "test"])]


def evaluate(kind: str, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Coverage rows per k (raw and calibrated on every fold, pooled over the folds' test images)."""
    groups = [e["group"] for e in run["images"]]
    rows = []
    for k in run["ks"]:
        raw_cov, cal_cov, raw_w, cal_w, scales, cov_levels = [], [], [], [], [], {0.8: [], 0.95: []}
        for _, cal, test in folds(kind, groups):
            fitted = fit_scales([run["images"][i]["k"][k]["scores"] for i in cal], levels=(0.8, LEVEL, 0.95))
            lam = fitted[LEVEL]
            if lam is None:
                raise ValueError(f"{len(cal)} calibration images cannot certify level {LEVEL}; use more images")
            scales.append(lam)
            for i in test:
                e = run["images"][i]["k"][k]
                raw_cov.append(e["raw_coverage"])
                raw_w.append(e["raw_width"])
                cal_cov.append(float((e["scores"] <= lam).double().mean()))
                cal_w.append(2 * lam * e["std_floored"])
                for lv in cov_levels:
                    if fitted[lv] is not None:
                        cov_levels[lv].append(float((e["scores"] <= fitted[lv]).double().mean()))
        n_cal = min(len(c) for _, c, _ in folds(kind, groups))
        rows.append({
            "samples": k, "raw_coverage": statistics.fmean(raw_cov), "raw_p10": float(np.percentile(raw_cov, 10)),
            "raw_width": statistics.fmean(raw_w), "cal_coverage": statistics.fmean(cal_cov),
            "cal_p10": float(np.percentile(cal_cov, 10)), "cal_width": statistics.fmean(cal_w),
            "scale": statistics.fmean(scales), "scales": scales, "n_test": len(cal_cov), "n_cal": n_cal,
            "exact_sampler": exact_sampler_coverage(k),
            "cal_coverage_0.8": statistics.fmean(cov_levels[0.8]) if cov_levels[0.8] else None,
            "cal_coverage_0.95": statistics.fmean(cov_levels[0.95]) if cov_levels[0.95] else None,
        })  # fmt: skip
    return rows


def figure(examples: list[tuple[str, dict[str, Any], float, float]]) -> str:
    """Truth, mean, |error| and the calibrated interval's width (same scale as the error) per problem.

    Each example is a test image of the first fold (camera for photos), with that fold's scale.
    """
    panels = []
    for label, ex, lam, floor in examples:
        err = (ex["x"] - ex["mean"]).abs()
        width = 2 * lam * ex["std"].clamp_min(floor)
        top = float(torch.quantile(torch.cat([err.flatten(), width.flatten() / 2]), 0.99))
        inside = (err <= width / 2).float()
        panels += [(f"{label}\ntruth", ex["x"]), ("mean", ex["mean"].clamp(0, 1)),
                   (f"|error|\n0 to {top:.3f}", err / top), ("half-width (90 %)\nsame scale", width / 2 / top),
                   (f"inside\n{float(inside.mean()):.2f} of pixels", inside)]  # fmt: skip
    path = figures.grid(panels, report.RESULTS_DIR / f"{NAME}.png", columns=5)
    return path.name


def run(mode: str = "quick", device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Run every problem and method of ``mode``; write ``results/calibration.{json,md,png}``."""
    t0 = time.perf_counter()
    results, examples = [], []
    for kind, methods in MODES[mode]["methods"].items():
        for method in methods:
            print(f"{kind} {method} ...", flush=True)
            r = restore_all(kind, method, mode, seed)
            rows = evaluate(kind, r)
            results.append({"problem": kind, "method": method, "steps": r["steps"], "nfe": r["nfe"],
                            "seconds_per_image": r["seconds"] / len(r["images"]), "n_images": len(r["images"]),
                            "prior": r["prior"], "floor": r["floor"], "rows": rows})  # fmt: skip
            if method == "ddrm" and r["example"] is not None:
                examples.append((f"{kind} ({method})", r["example"], rows[-1]["scales"][0], r["floor"]))
            last = rows[-1]
            print(f"  raw {last['raw_coverage']:.3f}, calibrated {last['cal_coverage']:.3f} (k={last['samples']})",
                  flush=True)
    fig = figure(examples) if examples else None
    data = {"name": NAME, "mode": mode, "level": LEVEL, "crop": CROP, "photos": list(PHOTOS), "problems": PROBLEMS,
            "samples": MODES[mode]["samples"], "results": results, "figure": fig,
            "total_seconds": time.perf_counter() - t0, "machine": report.machine(device)}  # fmt: skip
    report.write_json(NAME, data)
    report.write_section(NAME, markdown(data))
    return data


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"## {TITLE}",
        "",
        f"Nominal level {data['level']:.0%}. Photos: {data['crop']}x{data['crop']} gray crops of "
        f"{', '.join(data['photos'])}, leave-one-photo-out (each photo's crops are tested with a calibration fitted "
        "on the other two photos' crops). Phantoms: held-out ellipse phantoms, a fixed calibration / test split. "
        "Raw: the samples' 5 % and 95 % quantiles per pixel; with k samples even an exact sampler's cover only "
        "0.9 (k - 1) / (k + 1) on average (the exact sampler's column). Calibrated: `mean +- scale * max(std, floor)`, the "
        "scale by conformal risk control (`invdiff.calibrate`). Coverage: the fraction of a test image's pixels "
        "inside its interval, averaged over test images (p10: the 10th percentile over images); width: the mean "
        f"interval width in data units. {data['mode']} mode, {data['total_seconds'] / 60:.0f} min in all. "
        f"{report.describe_machine(data['machine'])}",
        "",
    ]
    headers = ["problem", "method", "samples", "exact sampler's raw", "raw coverage (p10)", "raw width",
               "calibrated coverage (p10)",
               "calibrated width", "scale", "cal / test images", "s / image"]  # fmt: skip
    table = []
    for res in data["results"]:
        for r in res["rows"]:
            table.append([
                data["problems"][res["problem"]], f"{res['method']} ({res['steps']} steps)", r["samples"],
                f"{r['exact_sampler']:.3f}", f"{r['raw_coverage']:.3f} ({r['raw_p10']:.2f})", f"{r['raw_width']:.3f}",
                f"{r['cal_coverage']:.3f} ({r['cal_p10']:.2f})", f"{r['cal_width']:.3f}", f"{r['scale']:.2f}",
                f"{r['n_cal']} / {r['n_test']}", f"{res['seconds_per_image']:.1f}",
            ])  # fmt: skip
    lines += [report.markdown_table(headers, table), ""]
    lines += ["Other levels, calibrated, with the most samples:", ""]
    table = [[data["problems"][res["problem"]], res["method"],
              report.fmt(res["rows"][-1]["cal_coverage_0.8"]), report.fmt(res["rows"][-1]["cal_coverage"]),
              report.fmt(res["rows"][-1]["cal_coverage_0.95"])] for res in data["results"]]  # fmt: skip
    lines += [report.markdown_table(["problem", "method", "nominal 0.80", "nominal 0.90", "nominal 0.95"], table), ""]
    if data.get("figure"):
        lines += [f"![error beside the calibrated interval](results/{data['figure']})", "",
                  "Per problem (one test image): truth, posterior mean, |error| and the calibrated 90 % half-width on "
                  "the same scale, and which pixels the interval holds.", ""]  # fmt: skip
    return "\n".join(lines)
