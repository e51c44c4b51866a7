"""MRI benchmark: single- and multi-coil Cartesian MRI at 4x and 8x on held-out phantoms and Shepp-Logan.

Images (64x64, real, values in [0, 1]): scikit-image's Shepp-Logan phantom and
random-ellipse phantoms drawn with seeds the training never uses (the images of
the CT benchmark, ``benchmarks.medical.test_images``).  Masks: fastMRI-style random
column masks (``mri_mask``) at acceleration 4 with centre fraction 0.08 and at
8 with 0.04 (fastMRI's pairs), one mask per set-up, the same for every image.
Single coil: ``MRI`` (real image, exact SVD).  Multi-coil: ``MultiCoilMRI`` with
4 simulated birdcage coils whose maps are given to every method (at 64x64 the
calibration region is 3-5 columns, too narrow to estimate maps from; see
``operators/coils.py``).  Noise: Gaussian, std ``SIGMA_Y`` on each measured
k-space value (orthonormal FFT, so the same std per pixel of the zero-filled
image).

Methods: zero-filled (the adjoint ``A^T y``: the real part of the inverse FFT,
coil-combined with the maps); TV-regularised least squares
(``invdiff.medical.mri.tv_reconstruction``, FISTA) with its weight chosen on a separate
validation phantom; and the diffusion samplers DDRM (single coil only: it needs
the SVD), PiGDM (conjugate gradients for multi-coil), DPS and Score-ALD at
their default knobs except DPS's step ``zeta = 250 / steps``: the reference's
``zeta = 1`` is set for 1000 steps, and the total guidance was chosen on the
validation phantom (50 steps, ``natural-gray`` prior; PSNR for zeta = 20, 10, 5,
2.5: multi-4x 18.1, 25.3, 27.5, 25.5 dB; single-8x 13.8, 16.9, 18.9, 19.1 dB).
Quick mode runs fewer noise levels than the methods' defaults; the table says
how many.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invdiff import METHODS, restore
from invdiff.medical.mri import tv_reconstruction
from invdiff.operators import MRI, MultiCoilMRI, birdcage_sensitivities, mri_mask
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

NAME = "mri"
TITLE = "MRI: single- and multi-coil Cartesian reconstruction at 4x and 8x"

SIGMA_Y = 0.01  # std of the noise on each measured k-space value (image units)
COILS = 4
#: set-up -> (coils, acceleration, centre fraction)
SETUPS: dict[str, tuple[int, int, float]] = {
    "single-4x": (1, 4, 0.08),
    "single-8x": (1, 8, 0.04),
    "multi-4x": (COILS, 4, 0.08),
    "multi-8x": (COILS, 8, 0.04),
}
METHOD_ORDER = ("ddrm", "pigdm", "dps", "score_ald")
TV_LAMBDAS = (1e-3, 3e-3, 1e-2)
TV_ITERS = 100
DPS_GUIDANCE = 250.0  # zeta * steps (module docstring)
MODES: dict[str, dict[str, Any]] = {
    "quick": {"phantoms": 1, "setups": tuple(SETUPS), "steps": {"ddrm": 20, "pigdm": 30, "dps": 50, "score_ald": 20}},
    "full": {"phantoms": 8, "setups": tuple(SETUPS), "steps": {m: METHODS[m].steps for m in METHOD_ORDER}},
}


def operator(setup: str, seed: int) -> MRI | MultiCoilMRI:
    """The set-up's operator on ``SIZE x SIZE`` real images, its mask drawn from ``seed``."""
    coils, acceleration, center_fraction = SETUPS[setup]
    mask = mri_mask((SIZE, SIZE), acceleration, center_fraction, generator=torch.Generator().manual_seed(seed))
    if coils == 1:
        return MRI(mask)
    return MultiCoilMRI(mask, birdcage_sensitivities(coils, SIZE))


def measure(op: MRI | MultiCoilMRI, x: Tensor, seed: int) -> Tensor:
    """``y = M (F S x + n)``: noise of std ``SIGMA_Y`` on the measured k-space values only."""
    g = torch.Generator().manual_seed(seed)
    ax = op(x)
    mask = op.mask.to(ax)
    return ax + SIGMA_Y * mask * torch.randn(ax.shape, generator=g, dtype=ax.dtype).to(ax.device)


def choose_tv_lambda(setup: str, seed: int) -> tuple[float, dict[str, float]]:
    """The TV weight of ``TV_LAMBDAS`` with the best PSNR on the validation phantom."""
    op = operator(setup, seed)
    x = phantom(VALIDATION_SEED)
    y = measure(op, x, seed + 1)
    return best_weight(lambda lam: tv_reconstruction(y, op, lam, iters=TV_ITERS), x, TV_LAMBDAS)


def run_setup(setup: str, x: Tensor, prior, mode: str, seed: int, device: torch.device) -> dict[str, Any]:
    """Every method on one set-up; returns ``{"rows": [...], "images": {method: x_hat}, ...}``."""
    steps = MODES[mode]["steps"]
    op = operator(setup, seed).to(device)
    y = measure(op, x, seed)
    rec = Recorder(setup, x)
    rec.timed("zero-filled", lambda: op.adjoint(y))
    lam, tried = choose_tv_lambda(setup, seed)
    rec.timed("tv", lambda: tv_reconstruction(y, op, lam, iters=TV_ITERS), lam=lam, lam_validation=tried,
              iters=TV_ITERS)  # fmt: skip
    for method in METHOD_ORDER:
        if method == "ddrm" and not getattr(op, "has_svd", False):
            continue  # multi-coil: no SVD
        knobs = {"zeta": zeta_for_steps(steps[method], DPS_GUIDANCE)} if method == "dps" else {}
        r = restore(y, op, prior, method=method, steps=steps[method], sigma_y=SIGMA_Y, seed=seed, **knobs)
        rec.add(method, r.mean, r.seconds, steps=r.steps, default_steps=METHODS[method].steps, nfe=r.nfe, knobs=knobs)
        print(f"  {setup} {method}: PSNR {np.mean(rec.rows[-1]['psnr']):.2f} dB, {r.seconds:.0f} s", flush=True)
    coils, acceleration, center_fraction = SETUPS[setup]
    measured = float(op.mask[0, 0, 0].sum()) / SIZE
    return {"setup": setup, "coils": coils, "acceleration": acceleration, "center_fraction": center_fraction,
            "measured_fraction": measured, "rows": rec.rows, "images": rec.images}  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"## {TITLE}",
        "",
        generated_by(NAME, data),
        "",
        f"{SIZE}x{SIZE} real images: Shepp-Logan (scikit-image) and {data['n_phantoms']} held-out random-ellipse "
        f"phantom(s) (seeds {HELD_OUT_SEED}..{HELD_OUT_SEED + data['n_phantoms'] - 1}). fastMRI-style random column "
        "masks, one per set-up (acceleration 4 with centre fraction 0.08, 8 with 0.04; measured fraction in the "
        f"set-up column). Single coil: `MRI` (exact SVD). Multi-coil: `MultiCoilMRI`, {COILS} simulated birdcage "
        "coils, maps given. Gaussian noise of std "
        f"{SIGMA_Y} on each measured k-space value. Prior: {describe_prior(data['prior'])}. One posterior sample "
        "per image (seed "
        f"{data['seed']}). PSNR/SSIM on [0, 1] after clipping. Zero-filled: the adjoint `A^T y`. TV: weight chosen "
        f"from {', '.join(f'{v:g}' for v in TV_LAMBDAS)} on a validation phantom (seed {VALIDATION_SEED}), "
        f"{TV_ITERS} FISTA iterations. DDRM needs the SVD, so it runs on single coil only; PiGDM uses conjugate "
        f"gradients (20 per step) for multi-coil; default knobs except DPS zeta = {DPS_GUIDANCE:g} / steps (chosen on "
        "the validation phantom). Steps: noise levels "
        "run (method default in brackets); seconds: wall time for all images together.",
        "",
    ]
    rows = table_rows(data["setups"], lambda res: f"{res['setup']} ({res['measured_fraction']:.3f} measured)")
    lines += [report.markdown_table(TABLE_HEADERS, rows), "", f"![MRI reconstructions](results/{NAME}.png)"]
    return "\n".join(lines)


def run(mode: str = "quick", device: str = "cpu", seed: int = 0, prior: str = "phantoms") -> dict[str, Any]:
    """Run the benchmark and write ``results/mri.json``, ``results/mri.md`` and ``results/mri.png``."""
    from invdiff.priors import load_prior

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    t0 = time.perf_counter()
    dev = torch.device(device)
    p = load_prior(prior).to(dev)
    x, names = test_images(MODES[mode]["phantoms"])
    x = x.to(dev)
    results = []
    for setup in MODES[mode]["setups"]:
        print(f"{setup}:", flush=True)
        results.append(run_setup(setup, x, p, mode, seed, dev))
    data = {
        "mode": mode,
        "seed": seed,
        "size": SIZE,
        "sigma_y": SIGMA_Y,
        "n_phantoms": MODES[mode]["phantoms"],
        "images": names,
        "steps": MODES[mode]["steps"],
        "prior": prior_summary(prior, p),
        "setups": [{k: v for k, v in r.items() if k != "images"} for r in results],
        "machine": report.machine(dev),
    }
    return finish(NAME, data, results, x, names, markdown, t0)
