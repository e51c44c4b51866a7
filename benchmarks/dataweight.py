"""DiffPIR's data weight ``lambda`` against the number of steps and the noise, on validation photos.

DiffPIR's data step weighs the measurement against the denoiser's estimate by
``rho_t = lambda sigma_y^2 / sigma_bar_t^2``; the reference's ``lambda = 7`` was
set for its 100 steps.  The command line runs DiffPIR on real photos' blur at
the steps a minute allows (20-45 on two cores), and ``--kernel auto`` at 20.
This suite restores crops of training photographs (never the test images) at
20 and 50 steps for several ``lambda`` and reports PSNR, so the default
(``invdiff.samplers.diffpir.default_lambda``) is chosen on validation data:

* ``deblur-valid-gaussian``, ``deblur-valid-motion``: a photo's blur as the
  command line models it, a 'valid' convolution with conjugate gradients
  (``VALID_BLUR_CG_ITERS``) in the data step; a Gaussian (std 2) and a
  camera-shake kernel (``motion_kernel(31, 0.5)``, seed 20), 31x31 support;
* ``deblur-gaussian`` (the same Gaussian, circular), ``inpaint-random``,
  ``sr4-bicubic``: the images benchmark's operators (exact data step through the SVD).

Noise std 0.01 and 0.03 (full: also 0.05), one posterior sample, seed 0.  The
JSON is written after every problem, and a rerun of the same mode keeps the rows
it finds there that its plan asks for (an interrupted sweep resumes).
``python -m benchmarks dataweight [--quick | --full]`` writes
``results/dataweight.{json,md}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from invdiff import restore
from invdiff.metrics import psnr
from invdiff.operators import Blur, gaussian_kernel, motion_kernel
from invdiff.priors import load_prior
from invdiff.samplers.diffpir import VALID_BLUR_CG_ITERS, default_lambda

from . import images, report
from .schedule import validation_image

NAME = "dataweight"
PRIOR = "natural-gray"
SIZE = 128
KERNEL = 31
LAMBDAS = (7.0, 14.0, 35.0, 70.0)
STEPS = (20, 50)
#: (validation photos, noise levels) per mode
PLAN = {"quick": (("clock", "rocket"), (0.01, 0.03)),
        "full": (("clock", "rocket", "brick", "chelsea", "coins"), (0.01, 0.03, 0.05))}  # fmt: skip
#: the images benchmark's tasks swept beside the 'valid' blurs (exact data step through the SVD)
SVD_TASKS = ("deblur-gaussian", "inpaint-random", "sr4-bicubic")


def problems(names: tuple[str, ...], sigmas: tuple[float, ...], seed: int = 0):
    """``(task, image, sigma_y, x, op, y, score_region)`` for every task, photo and noise level."""
    kernels = {"deblur-valid-gaussian": gaussian_kernel(2.0, KERNEL),
               "deblur-valid-motion": motion_kernel(KERNEL, 0.5, generator=torch.Generator().manual_seed(20))}
    svd_tasks = [t for t in images.TASKS if t.name in SVD_TASKS]
    m = KERNEL // 2
    for name in names:
        big = validation_image(name, SIZE + KERNEL - 1)
        small = big[..., m : m + SIZE, m : m + SIZE]
        for sigma in sigmas:
            for task, k in kernels.items():
                op = Blur(k, padding="valid")
                clean = op(big)
                gen = torch.Generator().manual_seed(10_000 + seed)
                y = clean + sigma * torch.randn(clean.shape, generator=gen)
                yield task, name, sigma, small, op, y, (m, m + SIZE)
            for spec in svd_tasks:
                op = spec.build(tuple(small.shape), seed)
                yield spec.name, name, sigma, small, op, images.measure(op, small, sigma, seed), None


def run(mode: str = "quick", device: str = "cpu", seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the sweep and write ``results/dataweight.{json,md}`` (resuming a sweep of the same plan)."""
    names, sigmas = PLAN[mode]
    dev = torch.device(device)
    prior = load_prior(PRIOR).to(dev)
    data = {"name": NAME, "mode": mode, "prior": PRIOR, "size": SIZE, "images": list(names), "sigmas": list(sigmas),
            "lambdas": list(LAMBDAS), "steps": list(STEPS), "seed": seed, "rows": [], "seconds": 0.0,
            "machine": report.machine(dev)}  # fmt: skip
    path = report.RESULTS_DIR / f"{NAME}.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        tasks = set(GROUPS["blur"]) | set(GROUPS["inpainting, SR"])
        if all(old.get(k) == data[k] for k in ("mode", "prior", "size", "seed")):  # an interrupted run of this mode
            data["rows"] = [r for r in old["rows"] if r["image"] in names and r["sigma_y"] in sigmas
                            and r["steps"] in STEPS and r["lambda"] in LAMBDAS and r["task"] in tasks]  # fmt: skip
            data["seconds"] = sum(r["seconds"] for r in data["rows"])
    done = {(r["task"], r["image"], r["sigma_y"], r["steps"], r["lambda"]) for r in data["rows"]}
    for task, name, sigma, x, op, y, region in problems(names, sigmas, seed):
        knobs = {"cg_iters": VALID_BLUR_CG_ITERS} if region is not None else {}
        for steps in STEPS:
            new = []
            for lam in LAMBDAS:
                if (task, name, sigma, steps, lam) in done:
                    continue
                t = time.perf_counter()
                r = restore(y.to(dev), op, prior, method="diffpir", steps=steps, sigma_y=sigma, seed=seed,
                            lambda_=lam, **knobs)  # fmt: skip
                est = r.mean.cpu()
                if region is not None:
                    est = est[..., region[0] : region[1], region[0] : region[1]]
                new.append({"task": task, "image": name, "sigma_y": sigma, "steps": steps, "lambda": lam,
                            "psnr": float(psnr(est.clamp(0, 1), x)[0]), "seconds": time.perf_counter() - t})
            if new:
                data["rows"] += new
                data["seconds"] += sum(r["seconds"] for r in new)
                data["machine"] = report.machine(dev)
                report.write_json(NAME, data)
                log(f"{task} {name} sigma {sigma:g} steps {steps}: "
                    + " ".join(f"{r['lambda']:g}:{r['psnr']:.2f}" for r in new))
    report.write_json(NAME, data)
    report.write_section(NAME, markdown(data))
    return data


def render() -> None:
    """Rewrite ``results/dataweight.md`` from ``results/dataweight.json`` (the same numbers; no sampling)."""
    data = json.loads((report.RESULTS_DIR / f"{NAME}.json").read_text(encoding="utf-8"))
    report.write_section(NAME, markdown(data))


def _mean(rows: list[dict[str, Any]], **match: Any) -> float:
    return float(np.mean([r["psnr"] for r in rows if all(r[k] == v for k, v in match.items())]))


#: the summary's groups: the blurs, whose data step lets noise through, and the rest
GROUPS = {"blur": ("deblur-valid-gaussian", "deblur-valid-motion", "deblur-gaussian"),
          "inpainting, SR": ("inpaint-random", "sr4-bicubic")}  # fmt: skip


def _default(group: str, steps: int) -> float:
    """``default_lambda`` for a task of ``group``."""
    return default_lambda(steps, Blur(gaussian_kernel(1.0, 3)) if group == "blur" else None)


def markdown(data: dict[str, Any]) -> str:
    """Mean PSNR per (task group, steps, noise) and lambda, per task beneath; the default's lambda marked."""
    rows, lams = data["rows"], data["lambdas"]
    head = ["tasks", "steps", "sigma_y"] + [f"lambda {v:g}" for v in lams] + ["best", "default", "best - default (dB)"]
    table = []
    for group, tasks in GROUPS.items():
        mine = [r for r in rows if r["task"] in tasks]
        for steps in data["steps"]:
            for sigma in data["sigmas"]:
                means = {v: _mean(mine, steps=steps, sigma_y=sigma, **{"lambda": v}) for v in lams}
                best = max(means, key=means.__getitem__)
                default = _default(group, steps)
                table.append([group, steps, sigma]
                             + [f"**{means[v]:.2f}**" if v == best else f"{means[v]:.2f}" for v in lams]
                             + [f"{best:g}", f"{default:g}",
                                f"{means[best] - means[default]:+.2f}" if default in means else "—"])  # fmt: skip
    per_task = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for steps in data["steps"]:
            for sigma in data["sigmas"]:
                per_task.append([task, steps, sigma] + [
                    f"{_mean(rows, task=task, steps=steps, sigma_y=sigma, **{'lambda': v}):.2f}" for v in lams])
    return "\n\n".join([
        "## DiffPIR's data weight: PSNR against lambda, steps and noise (validation images)",
        f"`python -m benchmarks dataweight --{data['mode']}`. Machine: {report.describe_machine(data['machine'])} "
        f"Prior `{data['prior']}`; {data['size']}x{data['size']} crops of the training photographs "
        f"{', '.join(f'`{i}`' for i in data['images'])} (never the test images); one posterior sample, seed "
        f"{data['seed']}; {data['seconds']:.0f} s of sampling in all (summed over its rows, a resumed run's included). Tasks: a 'valid' Gaussian (std 2) and "
        "camera-shake blur with conjugate gradients in the data step (as the command line runs a photo's blur), "
        "the same Gaussian blur circular (exact data step), 70% random inpainting and 4x bicubic "
        "super-resolution (exact data step). Mean PSNR (dB) over the tasks of each group and the photos; "
        "`default` is the weight `restore` uses (`invdiff.samplers.diffpir.default_lambda`: 7 x 100 / steps "
        "for a blur below 100 steps, else the reference's 7) and `best - default` what it leaves.",
        report.markdown_table(head, table),
        "Per task (mean over the photos):",
        report.markdown_table(["task", "steps", "sigma_y"] + [f"lambda {v:g}" for v in lams], per_task),
    ])
