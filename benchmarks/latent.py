"""Latent against pixel diffusion: latent DPS and PSLD with ``latent-gray`` beside DPS with ``natural-gray``.

The held-out ``camera`` image (centre 128x128 crop, gray) is measured by two
tasks with Gaussian noise ``sigma_y = 0.01``: inpainting with 70 % of the pixels
missing (a random mask) and 4x bicubic super-resolution.  Each method restores
it at the same number of noise levels (``steps``) with one posterior sample and
the same seed; PSNR, SSIM and the sampler's wall time are reported, and the
autoencoder's reconstruction ``D(E(x))`` of the clean image, the best a latent
prior can reach, beside them.

Step sizes are the reference constants (DPS's ``zeta`` per task,
``invdiff.samplers.dps.DPS_ZETA``, also as latent DPS's ``zeta`` and PSLD's
``omega``; PSLD's ``gamma = 0.1``, DDIM ``eta = 0``), which were set for 1000
steps; at ``steps < 1000`` they are multiplied by ``zeta_scale`` (default
``1000 / steps``, keeping the summed guidance of the 1000-step runs), the same
factor for every method.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from invdiff import restore
from invdiff.datasets import load_test_image
from invdiff.metrics import psnr, ssim
from invdiff.operators import Downsampling, Gaussian, Inpainting, random_mask
from invdiff.priors import load_prior
from invdiff.samplers.dps import DPS_ZETA

from . import report

NAME = "latent"
TITLE = "Latent against pixel diffusion"
SIZE = 128
SIGMA_Y = 0.01
STEPS = {"quick": 100, "full": 1000}
#: method -> (prior, {task: knobs}) with the step sizes before ``zeta_scale``
RUNS: dict[str, tuple[str, dict[str, dict[str, float]]]] = {
    "dps": ("natural-gray", {"inpaint": {"zeta": DPS_ZETA["inpainting"]},
                             "sr": {"zeta": DPS_ZETA["super_resolution"]}}),
    "latent_dps": ("latent-gray", {"inpaint": {"zeta": DPS_ZETA["inpainting"]},
                                   "sr": {"zeta": DPS_ZETA["super_resolution"]}}),
    "psld": ("latent-gray", {"inpaint": {"omega": DPS_ZETA["inpainting"], "gamma": 0.1, "eta": 0.0},
                             "sr": {"omega": DPS_ZETA["super_resolution"], "gamma": 0.1, "eta": 0.0}}),
}  # fmt: skip
SCALED = ("zeta", "omega", "gamma")


def problems(x: torch.Tensor, seed: int) -> dict[str, tuple[str, Any, torch.Tensor]]:
    """Task name -> (description, operator, noisy measurement) for the image ``x``."""
    g = torch.Generator().manual_seed(seed)
    inpaint = Inpainting(random_mask(tuple(x.shape), missing=0.7, generator=g))
    sr = Downsampling(4, filter="bicubic", image_size=tuple(x.shape[-2:]))
    out = {}
    for name, what, op in (("inpaint", "inpainting, 70% missing", inpaint), ("sr", "4x bicubic super-resolution", sr)):
        out[name] = (what, op, Gaussian(SIGMA_Y).sample(op(x), generator=g))
    return out


def run(mode: str = "quick", steps: int | None = None, zeta_scale: float | None = None, seed: int = 0,
        methods: tuple[str, ...] = tuple(RUNS), device: str = "cpu") -> dict:  # fmt: skip
    """Run the benchmark, write ``results/latent.{json,md}`` and ``RESULTS.md``; return all numbers."""
    steps = steps or STEPS[mode]
    zeta_scale = zeta_scale if zeta_scale is not None else max(1.0, 1000 / steps)
    unknown = [m for m in methods if m not in RUNS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; this benchmark runs {', '.join(RUNS)}")
    x = load_test_image("camera", channels=1, size=SIZE).to(device)
    priors = {name: load_prior(name).to(device) for name in {RUNS[m][0] for m in methods}}
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ceiling = None
    if "latent-gray" in priors:
        lp = priors["latent-gray"]
        with torch.no_grad():
            rec = lp.decode(lp.encode(x))
        ceiling = {"psnr": float(psnr(rec, x)[0]), "ssim": float(ssim(rec, x)[0])}
    for task, (what, op, y) in problems(x.cpu(), seed).items():
        op, y = op.to(device), y.to(device)
        for method in methods:
            prior_name, knobs = RUNS[method]
            kn = {k: v * zeta_scale if k in SCALED else v for k, v in knobs[task].items()}
            r = restore(y, op, priors[prior_name], method=method, steps=steps, sigma_y=SIGMA_Y, seed=seed, **kn)
            est = r.mean.clamp(0, 1)
            rows.append({"task": task, "description": what, "method": method, "prior": prior_name, "steps": steps,
                         "knobs": kn, "psnr": float(psnr(est, x)[0]), "ssim": float(ssim(est, x)[0]),
                         "seconds": r.seconds, "nfe": r.nfe})  # fmt: skip
            print(f"{task:8s} {method:11s} PSNR {rows[-1]['psnr']:.2f} dB  SSIM {rows[-1]['ssim']:.3f}  "
                  f"{r.seconds:.1f} s", flush=True)  # fmt: skip
    data = {"name": NAME, "mode": mode, "image": f"camera, centre {SIZE}x{SIZE} crop, gray (held out)",
            "sigma_y": SIGMA_Y, "steps": steps, "zeta_scale": zeta_scale, "seed": seed,
            "autoencoder_reconstruction": ceiling, "rows": rows,
            "total_seconds": time.perf_counter() - t_all, "machine": report.machine(device)}  # fmt: skip
    report.write_json(NAME, data)
    report.write_section(NAME, markdown(data))
    return data


def markdown(data: dict[str, Any]) -> str:
    """The ``## Latent against pixel diffusion`` section."""
    lines = [
        f"## {TITLE}",
        "",
        f"{data['image']}, Gaussian noise sigma_y = {data['sigma_y']}, {data['steps']} noise levels for every "
        f"method, one posterior sample, seed {data['seed']}; reference step sizes times {data['zeta_scale']:g} "
        f"({data['mode']} mode, {data['total_seconds']:.0f} s in all). {report.describe_machine(data['machine'])}",
        "",
        "`dps` uses the pixel prior `natural-gray` (5.6M parameters); `latent_dps` and `psld` the latent prior "
        "`latent-gray` (KL autoencoder with downsampling 4 + latent U-Net). Seconds: sampler wall time.",
        "",
    ]
    if data.get("autoencoder_reconstruction"):
        c = data["autoencoder_reconstruction"]
        lines += [f"The autoencoder alone, D(E(x)) of the clean crop: PSNR {c['psnr']:.2f} dB, SSIM {c['ssim']:.3f} "
                  "(the best a restoration through this decoder can do).", ""]  # fmt: skip
    headers = ["task", "method", "prior", "knobs", "PSNR (dB)", "SSIM", "seconds"]
    rows = [[r["description"], r["method"], r["prior"], ", ".join(f"{k}={v:g}" for k, v in r["knobs"].items()),
             f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", f"{r['seconds']:.1f}"] for r in data["rows"]]  # fmt: skip
    lines += [report.markdown_table(headers, rows), ""]
    return "\n".join(lines)
