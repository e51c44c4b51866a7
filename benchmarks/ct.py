"""CT benchmark: sparse-view (30 views) and limited-angle (90 degrees) parallel-beam CT on held-out phantoms.

Images (64x64, values in [0, 1]): random-ellipse phantoms drawn with seeds the
training never uses (``invdiff.datasets.ellipse_phantom``; the ``phantoms`` prior
trains on phantoms of the same family drawn from its own seed) and scikit-image's
Shepp-Logan phantom resized to 64x64.  Measurements: ``y = A x + n`` with the
set-ups of ``invdiff.ct.SETUPS`` and Gaussian noise of std 0.1 on line integrals
in pixel units (which reach about 40 for these images); the operator is
normalised to norm 1 (``invdiff.ct.normalized``: ``y`` and the noise are divided
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

import numpy as np
import torch
from torch import Tensor

from invdiff import METHODS, restore
from invdiff.ct import SETUPS, ct_operator, tv_reconstruction
from invdiff.datasets import ellipse_phantom
from invdiff.metrics import psnr, ssim

from . import report

NAME = "ct"
TITLE = "CT: sparse-view and limited-angle reconstruction"

SIZE = 64
SIGMA_Y = 0.1  # noise std on line integrals in pixel units (before normalisation)
HELD_OUT_SEED = 10_000  # phantom k is ellipse_phantom(SIZE, default_rng(HELD_OUT_SEED + k))
VALIDATION_SEED = 20_000  # the phantom TV's weight is chosen on
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


def shepp_logan(size: int = SIZE) -> Tensor:
    """scikit-image's Shepp-Logan phantom resized to ``size`` (anti-aliased): ``(1, 1, size, size)`` in [0, 1]."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    return torch.from_numpy(np.clip(img, 0, 1)).float()[None, None]


def phantom(seed: int, size: int = SIZE) -> Tensor:
    """One random-ellipse phantom ``(1, 1, size, size)`` from its own seed."""
    return torch.from_numpy(ellipse_phantom(size, np.random.default_rng(seed))[..., 0]).float()[None, None]


def test_images(n_phantoms: int) -> tuple[Tensor, list[str]]:
    """``(N, 1, SIZE, SIZE)``: Shepp-Logan first, then ``n_phantoms`` held-out phantoms."""
    images = [shepp_logan()] + [phantom(HELD_OUT_SEED + k) for k in range(n_phantoms)]
    names = ["shepp-logan"] + [f"phantom-{k}" for k in range(n_phantoms)]
    return torch.cat(images), names


def measure(op, x: Tensor, seed: int) -> Tensor:
    """``A x + n`` with noise std ``SIGMA_Y`` in pixel units, i.e. ``SIGMA_Y * op.scale`` for a normalised ``op``."""
    g = torch.Generator().manual_seed(seed)
    ax = op(x)
    return ax + SIGMA_Y * op.scale * torch.randn(ax.shape, generator=g, dtype=ax.dtype).to(ax.device)


def scores(x_hat: Tensor, x: Tensor) -> dict[str, list[float]]:
    """Per-image PSNR and SSIM of ``x_hat`` clipped to [0, 1]."""
    x_hat = x_hat.clamp(0, 1)
    return {"psnr": psnr(x_hat, x).tolist(), "ssim": ssim(x_hat, x).tolist()}


def choose_tv_lambda(setup: str, seed: int) -> tuple[float, dict[str, float]]:
    """The TV weight of ``TV_LAMBDAS`` with the best PSNR on the validation phantom."""
    op = ct_operator(SIZE, setup)
    x = phantom(VALIDATION_SEED)
    y = measure(op, x, seed + 1)
    found = {lam: float(psnr(tv_reconstruction(y, op, lam, iters=TV_ITERS).clamp(0, 1), x)[0]) for lam in TV_LAMBDAS}
    return max(found, key=found.get), found


def run_setup(setup: str, x: Tensor, prior, mode: str, seed: int, device: torch.device) -> dict[str, Any]:
    """Every method on one set-up; returns ``{"rows": [...], "images": {method: x_hat}, ...}``."""
    steps = MODES[mode]["steps"]
    op = ct_operator(SIZE, setup).to(device)
    y = measure(op, x, seed)
    rows: list[dict[str, Any]] = []
    images: dict[str, Tensor] = {}

    def add(method: str, x_hat: Tensor, seconds: float, **extra: Any) -> None:
        images[method] = x_hat.clamp(0, 1).cpu()
        rows.append({"setup": setup, "method": method, "seconds": seconds, **scores(x_hat, x), **extra})

    t = time.perf_counter()
    add("fbp", op.fbp(y), time.perf_counter() - t)
    lam, tried = choose_tv_lambda(setup, seed)
    t = time.perf_counter()
    add("tv", tv_reconstruction(y, op, lam, iters=TV_ITERS), time.perf_counter() - t, lam=lam, lam_validation=tried,
        iters=TV_ITERS)  # fmt: skip

    t = time.perf_counter()
    op_svd = ct_operator(SIZE, setup, svd=True, cache_dir=SVD_CACHE).to(device)
    svd_seconds = time.perf_counter() - t
    for method in ("ddrm", "pigdm", "dps", "score_ald"):
        knobs = {"zeta": 1000.0 / steps[method]} if method == "dps" else {}
        r = restore(y, op_svd if method == "ddrm" else op, prior, method=method, steps=steps[method],
                    sigma_y=SIGMA_Y * op.scale, seed=seed, **knobs)  # fmt: skip
        add(method, r.mean, r.seconds, steps=r.steps, default_steps=METHODS[method].steps, nfe=r.nfe, knobs=knobs)
    return {"setup": setup, "spec": SETUPS[setup], "rows": rows, "images": images, "measurement": y.cpu(),
            "svd_seconds": svd_seconds, "norm_a": 1.0 / op.scale, "rank": int((op_svd.s > 0).sum())}  # fmt: skip


def figure(results: list[dict[str, Any]], x: Tensor, names: list[str], path: Path) -> Path:
    """One row per (set-up, image) for Shepp-Logan and the first phantom; columns: truth and each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r["method"] for r in results[0]["rows"]]
    shown = [0, 1] if x.shape[0] > 1 else [0]
    rows = [(res, i) for res in results for i in shown]
    fig, axes = plt.subplots(len(rows), len(methods) + 1, figsize=(1.6 * (len(methods) + 1), 1.75 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, (res, i) in enumerate(rows):
        panels = [("truth", x[i, 0], None)]
        for row in res["rows"]:
            panels.append((row["method"], res["images"][row["method"]][i, 0], row["psnr"][i]))
        for c, (label, img, value) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=8)
            if value is not None:
                ax.text(1, 62, f"{value:.1f} dB", color="yellow", fontsize=6)
            if c == 0:
                ax.set_ylabel(f"{res['setup']}\n{names[i]}", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean(v: list[float]) -> float:
    return float(sum(v) / len(v))


def markdown(data: dict[str, Any]) -> str:
    prior = data["prior"]
    trained = f", {prior['steps_done']} training steps" if prior.get("steps_done") is not None else ""
    lines = [
        f"## {TITLE}",
        "",
        f"Generated by `python -m benchmarks ct --{data['mode']}"
        + (f" --prior {prior['name']}" if prior["name"] != "phantoms" else "")
        + f"` ({data['mode']} mode, {data['total_seconds']:.0f} s "
        f"in all). {report.describe_machine(data['machine'])}",
        "",
        f"{SIZE}x{SIZE} images: Shepp-Logan (scikit-image) and {data['n_phantoms']} held-out random-ellipse phantoms "
        f"(seeds {HELD_OUT_SEED}..{HELD_OUT_SEED + data['n_phantoms'] - 1}); parallel beam, {data['n_detectors']} "
        f"detector bins, Gaussian noise of std {SIGMA_Y} on line integrals in pixel units, operator and data divided "
        "by ||A||. Prior: "
        f"`{prior['name']}`, {prior['description']} ({prior['parameters'] / 1e6:.2f}M parameters{trained}). "
        "One posterior sample per image "
        f"(seed {data['seed']}). PSNR/SSIM on [0, 1] after clipping. TV: weight chosen from "
        f"{', '.join(f'{v:g}' for v in TV_LAMBDAS)} on a validation phantom (seed {VALIDATION_SEED}), "
        f"{TV_ITERS} PDHG iterations. DDRM uses the dense SVD, PiGDM conjugate gradients (20 per step); default "
        "knobs except DPS zeta = 1000 / steps (the reference's total guidance over its 1000 steps). Steps: noise "
        "levels run (method default in brackets); seconds: wall time for all images together.",
        "",
    ]
    headers = ["set-up", "method", "steps", "NFE", "PSNR Shepp-Logan", "PSNR phantoms", "SSIM Shepp-Logan",
               "SSIM phantoms", "seconds"]  # fmt: skip
    rows = []
    for res in data["setups"]:
        for row in res["rows"]:
            steps = "—" if "steps" not in row else (
                f"{row['steps']}" if row["steps"] == row["default_steps"] else f"{row['steps']} [{row['default_steps']}]"
            )
            rows.append([res["setup"], row["method"] + (f" (lambda {row['lam']:g})" if "lam" in row else ""), steps,
                         row.get("nfe"), row["psnr"][0], _mean(row["psnr"][1:]), row["ssim"][0],
                         _mean(row["ssim"][1:]), row["seconds"]])  # fmt: skip
    lines += [report.markdown_table(headers, rows), ""]
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
    from invdiff.priors import SHIPPED, load_prior

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    t0 = time.perf_counter()
    dev = torch.device(device)
    p = load_prior(prior).to(dev)
    x, names = test_images(MODES[mode]["phantoms"])
    x = x.to(dev)
    results = [run_setup(setup, x, p, mode, seed, dev) for setup in MODES[mode]["setups"]]
    config = getattr(p, "config", {}) or {}
    training = config.get("training", {}) if isinstance(config, dict) else {}
    data = {
        "mode": mode,
        "seed": seed,
        "size": SIZE,
        "sigma_y": SIGMA_Y,
        "n_phantoms": MODES[mode]["phantoms"],
        "n_detectors": ct_operator(SIZE).n_detectors,
        "images": names,
        "prior": {"name": prior, "description": SHIPPED.get(prior, "a prior folder"),
                  "parameters": sum(q.numel() for q in p.parameters()), "steps_done": training.get("steps_done")},
        "setups": [{k: v for k, v in r.items() if k not in ("images", "measurement")} for r in results],
        "machine": report.machine(dev),
    }
    report.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    figure(results, x.cpu(), names, report.RESULTS_DIR / f"{NAME}.png")
    data["total_seconds"] = time.perf_counter() - t0
    report.write_json(NAME, data)
    report.write_section(NAME, markdown(data))
    return data
