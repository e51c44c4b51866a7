"""CT benchmark: sparse-view (30 views) and limited-angle (90 degrees) parallel-beam CT on held-out phantoms.

Images (64x64, values in [0, 1]): random-ellipse phantoms drawn with seeds the
training never uses (``invdiff.datasets.ellipse_phantom``; the ``phantoms`` prior
trains on phantoms of the same family drawn from its own seed) and scikit-image's
Shepp-Logan phantom resized to 64x64.  Measurements: ``y = A x + n`` with the
set-ups of ``invdiff.medical.ct.SETUPS`` and Gaussian noise of std 0.1 on line integrals
in pixel units (which reach about 40 for these images); the operator is
normalised to norm 1 (``invdiff.medical.ct.normalized``: ``y`` and the noise are divided
by ``||A||``, the posterior is unchanged), the units in which the samplers'
default step sizes are set.

Methods: filtered back-projection; TV-regularised least squares by PDHG with its
weight chosen on a separate validation phantom; and the diffusion samplers of
``invdiff.METHODS`` that suit CT: DDRM through the dense SVD (``TomographySVD``),
PiGDM with conjugate gradients, DPS and Score-ALD through the operator alone,
at their default knobs except DPS's step ``zeta = 1000 / steps``: the reference's
``zeta = 1`` is set for 1000 steps, and with fewer steps the same total guidance
needs proportionally longer ones (measured on Shepp-Logan, 30 views, 200 steps,
``natural-gray`` prior: 22.0 dB with ``zeta = 1``, 29.8 dB with 5).  Quick mode
runs fewer noise levels than the methods' defaults; the table says how many.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from invdiff import METHODS, restore
from invdiff.medical.ct import SETUPS, ct_operator, tv_reconstruction
from invdiff.samplers.dps import zeta_for_steps

from . import report
from .medical import (
    HELD_OUT_SEED,
    SIZE,
    TABLE_HEADERS,
    VALIDATION_SEED,
    Recorder,
    best_weight,
    describe_prior,
    finish,
    generated_by,
    phantom,
    prior_summary,
    table_rows,
    test_images,
)

NAME = "ct"
TITLE = "CT: sparse-view and limited-angle reconstruction"

SIGMA_Y = 0.1  # noise std on line integrals in pixel units (before normalisation)
TV_LAMBDAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
TV_ITERS = 500
MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "phantoms": 2,
        "setups": ("sparse-30", "limited-90"),
        "steps": {"ddrm": 20, "pigdm": 50, "dps": 200, "score_ald": 100},
    },
    "full": {
        "phantoms": 8,
        "setups": ("sparse-30", "sparse-60", "limited-90"),
        "steps": {m: METHODS[m].steps for m in ("ddrm", "pigdm", "dps", "score_ald")},
    },
}
SVD_CACHE = Path(__file__).resolve().parent / "results" / "tmp" / "svd"  # git-ignored


def measure(op, x: Tensor, seed: int) -> Tensor:
    """``A x + n`` with noise std ``SIGMA_Y`` in pixel units, i.e. ``SIGMA_Y * op.scale`` for a normalised ``op``."""
    g = torch.Generator().manual_seed(seed)
    ax = op(x)
    return ax + SIGMA_Y * op.scale * torch.randn(ax.shape, generator=g, dtype=ax.dtype).to(ax.device)


def choose_tv_lambda(setup: str, seed: int) -> tuple[float, dict[str, float]]:
    """The TV weight of ``TV_LAMBDAS`` with the best PSNR on the validation phantom."""
    op = ct_operator(SIZE, setup)
    x = phantom(VALIDATION_SEED)
    y = measure(op, x, seed + 1)
    return best_weight(lambda lam: tv_reconstruction(y, op, lam, iters=TV_ITERS), x, TV_LAMBDAS)


def run_setup(setup: str, x: Tensor, prior, mode: str, seed: int, device: torch.device) -> dict[str, Any]:
    """Every method on one set-up; returns ``{"rows": [...], "images": {method: x_hat}, ...}``."""
    steps = MODES[mode]["steps"]
    op = ct_operator(SIZE, setup).to(device)
    y = measure(op, x, seed)
    rec = Recorder(setup, x)
    rec.timed("fbp", lambda: op.fbp(y))
    lam, tried = choose_tv_lambda(setup, seed)
    rec.timed("tv", lambda: tv_reconstruction(y, op, lam, iters=TV_ITERS), lam=lam, lam_validation=tried,
              iters=TV_ITERS)  # fmt: skip

    t = time.perf_counter()
    op_svd = ct_operator(SIZE, setup, svd=True, cache_dir=SVD_CACHE).to(device)
    svd_seconds = time.perf_counter() - t
    for method in ("ddrm", "pigdm", "dps", "score_ald"):
        knobs = {"zeta": zeta_for_steps(steps[method])} if method == "dps" else {}
        r = restore(y, op_svd if method == "ddrm" else op, prior, method=method, steps=steps[method],
                    sigma_y=SIGMA_Y * op.scale, seed=seed, **knobs)  # fmt: skip
        rec.add(method, r.mean, r.seconds, steps=r.steps, default_steps=METHODS[method].steps, nfe=r.nfe, knobs=knobs)
    return {"setup": setup, "spec": SETUPS[setup], "rows": rec.rows, "images": rec.images, "measurement": y.cpu(),
            "svd_seconds": svd_seconds, "norm_a": 1.0 / op.scale, "rank": int((op_svd.s > 0).sum())}  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"## {TITLE}",
        "",
        generated_by(NAME, data),
        "",
        f"{SIZE}x{SIZE} images: Shepp-Logan (scikit-image) and {data['n_phantoms']} held-out random-ellipse phantoms "
        f"(seeds {HELD_OUT_SEED}..{HELD_OUT_SEED + data['n_phantoms'] - 1}); parallel beam, {data['n_detectors']} "
        f"detector bins, Gaussian noise of std {SIGMA_Y} on line integrals in pixel units, operator and data divided "
        f"by ||A||. Prior: {describe_prior(data['prior'])}. One posterior sample per image "
        f"(seed {data['seed']}). PSNR/SSIM on [0, 1] after clipping. TV: weight chosen from "
        f"{', '.join(f'{v:g}' for v in TV_LAMBDAS)} on a validation phantom (seed {VALIDATION_SEED}), "
        f"{TV_ITERS} PDHG iterations. DDRM uses the dense SVD, PiGDM conjugate gradients (20 per step); default "
        "knobs except DPS zeta = 1000 / steps (the reference's total guidance over its 1000 steps). Steps: noise "
        "levels run (method default in brackets); seconds: wall time for all images together.",
        "",
    ]
    lines += [report.markdown_table(TABLE_HEADERS, table_rows(data["setups"], lambda res: res["setup"])), ""]
    lines += [
        "Dense SVD of each geometry (`TomographySVD`, float64 `torch.linalg.svd`, cached on disk under "
        "`benchmarks/results/tmp/svd`): "
        + "; ".join(f"{r['setup']}: {r['spec']['angles']} views over {r['spec']['arc']:g} degrees, rank {r['rank']} "
                    f"of {SIZE * SIZE}, ||A|| = {r['norm_a']:.1f} in pixel units, SVD {r['svd_seconds']:.1f} s (computed, or read from the cache)"
                    for r in data["setups"])  # fmt: skip
        + ".",
        "",
        f"![CT reconstructions](results/{NAME}.png)",
    ]
    return "\n".join(lines)


def run(mode: str = "quick", device: str = "cpu", seed: int = 0, prior: str = "phantoms") -> dict[str, Any]:
    """Run the benchmark and write ``results/ct.json``, ``results/ct.md`` and ``results/ct.png``."""
    from invdiff.priors import load_prior

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    t0 = time.perf_counter()
    dev = torch.device(device)
    p = load_prior(prior).to(dev)
    x, names = test_images(MODES[mode]["phantoms"])
    x = x.to(dev)
    results = [run_setup(setup, x, p, mode, seed, dev) for setup in MODES[mode]["setups"]]
    data = {
        "mode": mode,
        "seed": seed,
        "size": SIZE,
        "sigma_y": SIGMA_Y,
        "n_phantoms": MODES[mode]["phantoms"],
        "n_detectors": ct_operator(SIZE).n_detectors,
        "images": names,
        "prior": prior_summary(prior, p),
        "setups": [{k: v for k, v in r.items() if k not in ("images", "measurement")} for r in results],
        "machine": report.machine(dev),
    }
    # the figure: Shepp-Logan and the first phantom
    return finish(NAME, data, results, x, names, markdown, t0, shown=[0, 1] if x.shape[0] > 1 else [0])
