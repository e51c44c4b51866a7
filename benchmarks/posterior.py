"""Distance to the exact posterior: every sampler against analytic priors on 8x8 images.

A ``GaussianPrior`` and a linear operator with Gaussian noise have a Gaussian
posterior ``N(mean, cov)`` in closed form (``invdiff.exact``).  Each method of
``invdiff.METHODS`` that supports the operator draws ``S`` samples in one
``restore`` call at its default number of noise levels, and the samples are scored
by ``posterior_report``: sample-mean error in Monte-Carlo standard errors, marginal
variance ratios and the 2-Wasserstein distance of the moment-matched Gaussian, and by
``coverage90``: how much of each exact marginal the samples' 90 % interval holds.
A row ``exact`` scores ``S`` i.i.d. draws of the exact posterior: the values a
perfect sampler reaches with the same ``S``.

A two-component ``GaussianMixturePrior`` with an inpainting operator has a
two-component posterior; ``y`` is measured from a grey image between the two
modes, its level chosen so that both posterior weights stay far from 0 and 1.
Each sample goes to the component of larger posterior log-density, and the split
is compared with the exact weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from invdiff import METHODS, restore
from invdiff.exact import dense_matrix, gaussian_posterior, gmm_posterior, posterior_report, sqrtm_psd
from invdiff.operators import Blur, Downsampling, Inpainting, Operator, gaussian_kernel, random_mask
from invdiff.priors import GaussianMixturePrior, GaussianPrior, Prior

from . import report

NAME = "posterior"
TITLE = "Distance to the exact posterior"

SHAPE = (1, 8, 8)  # (C, H, W)
SIGMA_Y = 0.05
SAMPLES = {"quick": 256, "full": 1000}
LEVELS = (0.3, 0.7)  # grey levels of the two mixture components
TARGET_WEIGHT = 0.3  # exact posterior weight of the first component in the bimodal case

_F64 = torch.float64


def make_operators(generator: torch.Generator) -> dict[str, Operator]:
    """The three measurement operators on ``SHAPE`` images, all with an SVD."""
    return {
        "inpainting": Inpainting(random_mask(SHAPE[1:], missing=0.5, generator=generator)),
        "blur": Blur(gaussian_kernel(1.0, size=5), padding="circular"),
        "downsampling": Downsampling(2, filter="box"),
    }


def offers(op: Operator) -> set[str]:
    """What ``op`` offers of the method requirements ``"svd"``, ``"linear"``, ``"mask"``."""
    out = set()
    if getattr(op, "has_svd", False):
        out.add("svd")
    if getattr(op, "linear", False):
        out.add("linear")
    if isinstance(op, Inpainting):
        out.add("mask")
    return out


def coverage90(samples: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Exact posterior mass inside each pixel's 90 % sample interval, averaged over pixels.

    For pixel ``i`` the interval ``[q05_i, q95_i]`` runs between the 5 % and 95 % quantiles of the
    ``S`` samples ``(S, N)`` or ``(S, C, H, W)`` (``torch.quantile``, linear interpolation), and its
    mass under the exact marginal ``N(mean_i, cov_ii)`` is ``Phi((q95_i - mean_i) / sd_i) -
    Phi((q05_i - mean_i) / sd_i)``.  0.90 is calibrated; i.i.d. draws of the posterior itself score
    about ``(0.95 (S - 1) - 0.05 (S - 1)) / (S + 1)`` (0.893 for ``S = 256``), the order statistics'
    expected mass.  Pixels with (numerically) zero posterior variance are left out, as in
    ``posterior_report``.
    """
    x = torch.as_tensor(samples).detach().to(_F64)
    x = x.reshape(x.shape[0], -1)
    mean = torch.as_tensor(mean).detach().to(_F64).reshape(-1)
    var = torch.diagonal(torch.as_tensor(cov).detach().to(_F64))
    ok = var > 1e-12 * var.max().clamp_min(1e-300)
    q = torch.quantile(x[:, ok], torch.tensor([0.05, 0.95], dtype=_F64), dim=0)  # (2, N_ok)
    normal = torch.distributions.Normal(mean[ok], var[ok].sqrt())
    return (normal.cdf(q[1]) - normal.cdf(q[0])).mean().item()


def gaussian_scores(samples: Tensor, mean: Tensor, cov: Tensor) -> dict[str, Any]:
    """``posterior_report`` and ``cover90`` (``coverage90``) of samples against the exact ``N(mean, cov)``."""
    return {**posterior_report(samples, mean, cov), "cover90": coverage90(samples, mean, cov)}


def measure(op: Operator, x: Tensor, generator: torch.Generator) -> Tensor:
    """``y = A x + sigma_y e`` in float32: ``x`` ``(1, C, H, W)`` -> ``y`` ``(1, ...)``."""
    ax = op(x)
    return (ax + SIGMA_Y * torch.randn(ax.shape, generator=generator, dtype=ax.dtype)).float()


def _steps_for(method: str, steps: dict[str, int]) -> tuple[int, str]:
    """The number of noise levels for ``method`` and a note when it is not the default."""
    default = METHODS[method].steps
    n = steps.get(method, default)
    return n, "" if n == default else f"{n} of default {default} (--steps)"


def _draw(
    method: str,
    op: Operator,
    prior: Prior,
    y: Tensor,
    n: int,
    seed: int,
    steps: dict[str, int],
    score: Callable[[Tensor], dict[str, Any]],
) -> dict[str, Any]:
    """One ``restore`` call of ``n`` samples, scored by ``score(samples (n, C, H, W))``; errors become a row."""
    k, note = _steps_for(method, steps)
    row: dict[str, Any] = {"method": method, "steps": k, "default_steps": METHODS[method].steps, "note": note}
    try:
        result = restore(y, op, prior, method=method, steps=k, sigma_y=SIGMA_Y, samples=n, seed=seed)
        row.update(nfe=result.nfe, seconds=result.seconds)
        row.update(score(result.samples[:, 0].cpu()))
    except Exception as e:  # a broken sampler is a result, not a reason to stop the benchmark
        row["error"] = f"{type(e).__name__}: {e}"
    return row


# -- Gaussian prior ---------------------------------------------------------------------------


def gaussian_problem(op: Operator, seed: int) -> tuple[GaussianPrior, Tensor, Tensor, Tensor, Tensor]:
    """The Gaussian problem of ``op``: prior, measurement ``y``, dense ``A`` and the exact posterior mean and cov.

    ``x`` is drawn from ``GaussianPrior.smooth(SHAPE)`` and measured with noise ``SIGMA_Y``,
    both from ``seed``; the posterior comes from the dense ``(M, N)`` matrix in float64 on the CPU.
    """
    g = torch.Generator().manual_seed(seed)
    prior = GaussianPrior.smooth(SHAPE)
    x = prior.sample(1, generator=g, dtype=torch.float32)
    y = measure(op, x, g)
    A = dense_matrix(op, SHAPE)
    mean, cov = gaussian_posterior(prior, A, y.double(), SIGMA_Y)
    return prior, y, A, mean, cov


def gaussian_case(name: str, op: Operator, n: int, seed: int, device: torch.device, steps: dict[str, int]) -> dict:
    """Score every method that supports ``op`` against the exact Gaussian posterior of one problem."""
    prior, y, A, mean, cov = gaussian_problem(op, seed)

    # Reference: i.i.d. draws of the exact posterior, what a perfect sampler scores with n samples.
    z = torch.randn(n, mean.numel(), generator=torch.Generator().manual_seed(seed + 1), dtype=_F64)
    exact = mean + z @ sqrtm_psd(cov)  # the symmetric root: the same draws on every CPU
    rows = [{"method": "exact", "steps": None, "nfe": None, "seconds": None, "note": "i.i.d. posterior draws",
             **gaussian_scores(exact, mean, cov)}]

    prior, op = prior.to(device), op.to(device)
    y = y.to(device)
    has = offers(op)
    for method, m in METHODS.items():
        if m.needs <= has:
            rows.append(_draw(method, op, prior, y, n, seed, steps, lambda s: gaussian_scores(s, mean, cov)))
    return {"operator": name, "op": repr(op), "m": A.shape[0], "trace_cov": torch.trace(cov).item(), "rows": rows}


# -- Gaussian-mixture prior -------------------------------------------------------------------


def component_log_density(x: Tensor, weights: Tensor, means: Tensor, covs: Tensor) -> Tensor:
    """``log w_k + log N(x; mean_k, cov_k)`` for samples ``x`` ``(S, N)`` -> ``(S, K)``, float64.

    Eigenvalues below ``1e-12`` of the largest are floored so a near-singular
    component covariance gives a finite (very negative) density off its support.
    """
    x = x.reshape(x.shape[0], -1).to(_F64)
    out = []
    for w, m, c in zip(weights, means, covs):
        lam, Q = torch.linalg.eigh(0.5 * (c + c.mT))
        lam = lam.clamp_min(1e-12 * lam.max())
        z = (x - m) @ Q
        out.append(torch.log(w) - 0.5 * ((z**2 / lam).sum(1) + torch.log(2 * math.pi * lam).sum()))
    return torch.stack(out, dim=1)


def split(x: Tensor, weights: Tensor, means: Tensor, covs: Tensor) -> dict[str, Any]:
    """Fraction of samples ``x`` ``(S, ...)`` in each posterior component and its error in binomial SEs."""
    s = x.shape[0]
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf")
    k = component_log_density(x, weights, means, covs).argmax(1)
    frac = torch.bincount(k, minlength=weights.numel()).to(_F64) / s
    se = (weights * (1 - weights) / s).sqrt()
    return {"fractions": frac.tolist(), "err_se": ((frac - weights) / se).tolist()}


def _weights_at(prior: GaussianMixturePrior, A: Tensor, op: Operator, level: float, e: Tensor) -> Tensor:
    """Exact posterior weights for ``y = A(level * 1) + sigma_y e``."""
    y = op(torch.full((1, *SHAPE), level, dtype=_F64)) + SIGMA_Y * e
    return gmm_posterior(prior, A, y, SIGMA_Y)[0]


def bimodal_case(op: Operator, n: int, seed: int, device: torch.device, steps: dict[str, int]) -> dict:
    """Mixture prior with two well-separated modes, inpainting, ``y`` between the modes: compare the splits."""
    g = torch.Generator().manual_seed(seed + 2)
    prior = GaussianMixturePrior.smooth(SHAPE, levels=LEVELS, variance=0.01)
    A = dense_matrix(op, SHAPE)
    e = torch.randn(op(torch.zeros(1, *SHAPE)).shape, generator=g, dtype=_F64)
    # The first weight falls as the grey level rises: bisect for the level giving TARGET_WEIGHT.
    lo, hi = min(LEVELS), max(LEVELS)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _weights_at(prior, A, op, mid, e)[0] > TARGET_WEIGHT else (lo, mid)
    level = 0.5 * (lo + hi)
    y = (op(torch.full((1, *SHAPE), level, dtype=_F64)) + SIGMA_Y * e).float()
    weights, means, covs = gmm_posterior(prior, A, y.double(), SIGMA_Y)

    # Reference: i.i.d. draws of the exact mixture posterior.
    gx = torch.Generator().manual_seed(seed + 1)
    comp = torch.multinomial(weights, n, replacement=True, generator=gx)
    z = torch.randn(n, means.shape[1], generator=gx, dtype=_F64)
    exact = torch.empty_like(z)
    for j in range(weights.numel()):
        exact[comp == j] = means[j] + z[comp == j] @ sqrtm_psd(covs[j])  # the symmetric root, as above
    rows = [{"method": "exact", "steps": None, "nfe": None, "seconds": None, "note": "i.i.d. posterior draws",
             **split(exact, weights, means, covs)}]

    prior, op = prior.to(device), op.to(device)
    y = y.to(device)
    has = offers(op)
    for method, m in METHODS.items():
        if m.needs <= has:
            rows.append(_draw(method, op, prior, y, n, seed, steps, lambda s: split(s, weights, means, covs)))
    return {
        "operator": "inpainting",
        "levels": list(LEVELS),
        "prior_weights": prior.weights.tolist(),
        "y_level": level,
        "exact_weights": weights.tolist(),
        "rows": rows,
    }


# -- report -----------------------------------------------------------------------------------


def _steps_cell(row: dict[str, Any]) -> str:
    if row["steps"] is None:
        return "—"
    return f"{row['steps']} (reduced from {row['default_steps']})" if row["note"] else str(row["steps"])


def markdown(data: dict[str, Any]) -> str:
    """The ``RESULTS.md`` section for one run."""
    n = data["samples"]
    lines = [
        f"## {TITLE}",
        "",
        f"Generated by `python -m benchmarks posterior{' --quick' if data['mode'] == 'quick' else ' --full'}` "
        f"({data['mode']} mode, {data['total_seconds']:.0f} s in all). {report.describe_machine(data['machine'])}",
        "",
        f"`GaussianPrior.smooth` on 1x8x8 (length scale 2, variance 0.04), sigma_y = {SIGMA_Y}, "
        f"S = {n} samples per method in one `restore` call, seed {data['seed']}, each method at its default "
        "number of noise levels unless the steps column says otherwise. Mean error: |sample mean - exact mean| "
        "in Monte-Carlo standard errors sqrt(cov_ii / S), rms and max over pixels (exact sampler: rms ~ 1, "
        f"max ~ {math.sqrt(2 * math.log(64)):.1f}). Variance ratio: sample over exact marginal variance, median "
        f"[min, max] (exact: 1 +- {math.sqrt(2 / n):.2f} each). W2: 2-Wasserstein distance between the "
        "moment-matched Gaussian of the samples and the exact posterior, and relative to sqrt(tr cov). "
        "Cover90: the exact marginal's mass inside each pixel's 90 % sample interval (the 5 % and 95 % "
        "quantiles of the S samples), averaged over pixels; 0.90 is calibrated, and S i.i.d. posterior draws "
        f"score {0.9 * (n - 1) / (n + 1):.3f} on average (the order statistics' expected mass). "
        "Row `exact`: S i.i.d. draws of the exact posterior, the finite-S floor of every score. "
        "Seconds: sampler wall time for all S samples.",
        "",
    ]
    headers = ["operator", "method", "steps", "NFE", "mean err rms (SE)", "mean err max (SE)",
               "var ratio median [min, max]", "W2", "W2 rel", "cover90", "seconds"]
    rows = []
    for case in data["gaussian"]:
        for r in case["rows"]:
            if "error" in r:
                rows.append([case["operator"], r["method"], _steps_cell(r), r.get("nfe"), f"failed: {r['error']}",
                             "", "", "", "", "", r.get("seconds")])
                continue
            ratio = f"{report.fmt(r['var_ratio_median'])} [{report.fmt(r['var_ratio_min'])}, " \
                    f"{report.fmt(r['var_ratio_max'])}]"
            rows.append([case["operator"], r["method"], _steps_cell(r), r["nfe"], r["mean_err_rms_se"],
                         r["mean_err_max_se"], ratio, r["w2"], r["w2_rel"], r.get("cover90"), r["seconds"]])
    lines += [report.markdown_table(headers, rows), ""]

    b = data["bimodal"]
    w = b["exact_weights"]
    lines += [
        "### Bimodal posterior",
        "",
        f"`GaussianMixturePrior.smooth` on 1x8x8 with grey levels {b['levels'][0]} and {b['levels'][1]} "
        f"(variance 0.01, prior weights {b['prior_weights'][0]:.2f} / {b['prior_weights'][1]:.2f}), the "
        f"inpainting operator above, y measured from the grey image at {b['y_level']:.4f} plus noise; "
        f"exact posterior weights {w[0]:.3f} / {w[1]:.3f}. Each sample goes to the component of larger "
        "posterior log-density; error: fraction minus exact weight in binomial standard errors "
        f"sqrt(w (1 - w) / S), S = {n}.",
        "",
    ]
    headers = ["method", "steps", "NFE", f"fraction in mode {b['levels'][0]}", f"fraction in mode {b['levels'][1]}",
               "error (SE)", "seconds"]
    rows = []
    for r in b["rows"]:
        if "error" in r:
            rows.append([r["method"], _steps_cell(r), r.get("nfe"), f"failed: {r['error']}", "", "", r.get("seconds")])
            continue
        rows.append([r["method"], _steps_cell(r), r["nfe"], r["fractions"][0], r["fractions"][1], r["err_se"][0],
                     r["seconds"]])
    rows.insert(0, ["exact weights", "—", "—", w[0], w[1], "—", "—"])
    lines += [report.markdown_table(headers, rows), ""]
    return "\n".join(lines)


def run(mode: str = "quick", device: str = "cpu", seed: int = 0, steps: dict[str, int] | None = None) -> dict:
    """Run the benchmark, write ``results/posterior.{json,md}`` and ``RESULTS.md``; return all numbers."""
    if mode not in SAMPLES:
        raise ValueError(f"mode must be one of {', '.join(SAMPLES)}, got {mode!r}")
    steps = dict(steps or {})
    unknown = [k for k in steps if k not in METHODS]
    if unknown:
        raise ValueError(f"--steps names unknown method {unknown[0]!r}; known methods: {', '.join(METHODS)}")
    dev = torch.device(device)
    n = SAMPLES[mode]
    start = time.perf_counter()
    ops = make_operators(torch.Generator().manual_seed(seed))
    gaussian = [gaussian_case(name, op, n, seed, dev, steps) for name, op in ops.items()]
    bimodal = bimodal_case(ops["inpainting"].cpu(), n, seed, dev, steps)
    data = {
        "benchmark": NAME,
        "mode": mode,
        "seed": seed,
        "samples": n,
        "sigma_y": SIGMA_Y,
        "shape": list(SHAPE),
        "steps_overrides": steps,
        "machine": report.machine(dev),
        "gaussian": gaussian,
        "bimodal": bimodal,
        "total_seconds": time.perf_counter() - start,
    }
    report.write_json(NAME, data)
    section = markdown(data)
    report.write_section(NAME, section)
    print(section)
    return data
