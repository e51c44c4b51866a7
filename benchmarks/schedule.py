"""Where each sampler's noise schedule should start, measured on validation images.

The shipped priors are trained up to ``sigma = 40`` (data units), EDM's range,
and a Karras schedule from there puts most of a short run's steps far above
the noise levels where a restoration is decided.  This suite runs every pixel
sampler at the step count of the images benchmark's quick mode with the
schedule starting at several ``sigma_max`` and reports PSNR per start.  The
problems are crops of training photographs (``clock``, ``brick``), never the
test images the images benchmark scores, so choosing ``METHODS[m].sigma_max``
from this table does not tune on the test set.

``python -m benchmarks schedule [--quick | --full]`` writes
``results/schedule.json`` and ``results/schedule.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invdiff import METHODS, restore
from invdiff.datasets import skimage_image
from invdiff.metrics import psnr, ssim
from invdiff.priors import Prior, load_prior

from . import images, report

NAME = "schedule"
PRIOR = "natural-gray"
#: first noise levels tried (data units); ``None`` is the prior's own ``sigma_max``
STARTS: tuple[float | None, ...] = (2.0, 5.0, 10.0, None)
TASK_NAMES = ("inpaint-random", "inpaint-box", "deblur-gaussian", "sr4-bicubic")
#: posterior samples per problem (scores are those of their mean): quick one, full four
SAMPLES = {"quick": 1, "full": 4}
VALIDATION = ("clock", "brick")
FULL_VALIDATION = ("clock", "brick", "grass", "coins")


def validation_image(name: str, size: int) -> Tensor:
    """A centred ``size`` x ``size`` gray crop ``(1, 1, size, size)`` of a bundled training photograph."""
    img = skimage_image(name, 1)
    h, w = img.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"validation image {name!r} is {h}x{w}, smaller than the crop {size}")
    top, left = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(img[top : top + size, left : left + size, 0])
    return torch.from_numpy(crop).float()[None, None]


def sweep(
    prior: Prior, problems: dict[str, Tensor], methods: dict[str, int], starts: Sequence[float | None],
    tasks: Sequence[images.TaskSpec], seed: int = 0, log: Callable[[str], None] = print, samples: int = 1,
) -> list[dict[str, Any]]:  # fmt: skip
    """PSNR/SSIM of the mean of ``samples`` posterior samples for every (method, start) on every (task, image)."""
    rows: list[dict[str, Any]] = []
    for spec in tasks:
        for image, x in problems.items():
            op = spec.build(tuple(x.shape), seed)
            y = images.measure(op, x, images.SIGMA_Y, seed)
            for method, steps in methods.items():
                try:
                    images.check_method(method, op, y)
                except ValueError:
                    continue
                for start in starts:
                    t0 = time.perf_counter()
                    res = restore(y, op, prior, method=method, steps=steps, sigma_y=images.SIGMA_Y, seed=seed,
                                  samples=samples, sigma_max=prior.sigma_max if start is None else start)  # fmt: skip
                    est = res.mean.clamp(0, 1)
                    row = {"task": spec.name, "image": image, "method": method, "steps": steps,
                           "start": prior.sigma_max if start is None else start, "prior_start": start is None,
                           "samples": samples,
                           "psnr": float(psnr(est, x)[0]), "ssim": float(ssim(est, x)[0]),
                           "seconds": time.perf_counter() - t0}  # fmt: skip
                    rows.append(row)
                    log(f"  {spec.name} {image} {method} {steps} start {row['start']:g}: {row['psnr']:.2f} dB")
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and start: mean PSNR over every problem, and the best start (highest mean)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        starts = sorted({r["start"] for r in mine})
        means = {s: float(np.mean([r["psnr"] for r in mine if r["start"] == s])) for s in starts}
        best = max(means, key=means.__getitem__)
        prior_start = max(starts)
        out.append({"method": method, "steps": mine[0]["steps"], "problems": len(mine) // len(starts),
                    "mean_psnr": means, "best_start": best,
                    "gain_over_prior_start": means[best] - means[prior_start]})  # fmt: skip
    return out


def markdown(data: dict[str, Any]) -> str:
    """The ``## Schedule start`` section: mean PSNR per start, and per task."""
    starts = sorted({r["start"] for r in data["rows"]})
    head = ["method", "steps"] + [f"start {s:g}" for s in starts] + ["best", "gain over the prior's start (dB)",
                                                                     "default", "best - default (dB)"]
    table = []
    for s in data["summary"]:
        # JSON turns the float keys into strings
        means = {float(k): v for k, v in s["mean_psnr"].items()}
        cells = [f"**{means[k]:.2f}**" if k == float(s["best_start"]) else f"{means[k]:.2f}" for k in starts]
        default = METHODS[s["method"]].sigma_max or max(starts)
        lost = f"{means[float(s['best_start'])] - means[default]:+.2f}" if default in means else "—"
        table.append([s["method"], s["steps"], *cells, f"{s['best_start']:g}", f"{s['gain_over_prior_start']:+.2f}",
                      f"{default:g}", lost])  # fmt: skip
    per_task = []
    for task in dict.fromkeys(r["task"] for r in data["rows"]):
        for method in dict.fromkeys(r["method"] for r in data["rows"] if r["task"] == task):
            mine = [r for r in data["rows"] if r["task"] == task and r["method"] == method]
            per_task.append([task, method] + [
                f"{np.mean([r['psnr'] for r in mine if r['start'] == s]):.2f}" for s in starts])
    return "\n\n".join([
        "## Schedule start: PSNR against the first noise level (validation images)",
        f"Machine: {report.describe_machine(data['machine'])} Prior `{data['prior']}` (its own start: "
        f"{max(starts):g}); validation crops {data['size']}x{data['size']} of the training photographs "
        f"{', '.join(f'`{i}`' for i in data['images'])} (never the test images); sigma_y {images.SIGMA_Y}, seed "
        f"{data['seed']}, {_samples_text(data.get('samples', 1))}; each sampler at the step count of the images "
        "benchmark's quick mode. "
        f"Mean PSNR (dB) over {', '.join(data['tasks'])}; `best` is the highest mean. "
        "`default` is the start `restore` uses (`METHODS[m].sigma_max`, else the prior's own) and `best - default` "
        "what this sweep says it leaves: the defaults were set from this sweep when it last moved them (see "
        "`invdiff/methods.py`), and a default changes together with a rerun of the suites it feeds, never alone. "
        "Score-ALD keeps the prior's start: at 10 levels it is no restorer whatever the start.",
        report.markdown_table(head, table),
        "Per task (mean over the images):",
        report.markdown_table(["task", "method"] + [f"start {s:g}" for s in starts], per_task),
    ])


def _samples_text(n: int) -> str:
    return "one posterior sample" if n == 1 else f"the mean of {n} posterior samples"


def render() -> None:
    """Rewrite ``results/schedule.md`` from ``results/schedule.json`` (the same numbers; no sampling)."""
    import json

    data = json.loads((report.RESULTS_DIR / f"{NAME}.json").read_text(encoding="utf-8"))
    report.write_section(NAME, markdown(data))


def run(mode: str = "quick", device: str = "cpu", seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the sweep and write ``results/schedule.{json,md}``."""
    dev = torch.device(device)
    prior = load_prior(PRIOR).to(dev)
    names = VALIDATION if mode == "quick" else FULL_VALIDATION
    size = 128
    problems = {n: validation_image(n, size).to(dev) for n in names}
    methods = {m: ks[0] for m, ks in images.QUICK_STEPS.items()}
    tasks = [t for t in images.TASKS if t.name in TASK_NAMES]
    t0 = time.perf_counter()
    rows = sweep(prior, problems, methods, STARTS, tasks, seed=seed, log=log, samples=SAMPLES[mode])
    data = {"name": NAME, "mode": mode, "prior": PRIOR, "size": size, "images": list(names), "seed": seed,
            "samples": SAMPLES[mode],
            "tasks": list(TASK_NAMES), "machine": report.machine(dev), "seconds": time.perf_counter() - t0,
            "rows": rows, "summary": summary(rows)}  # fmt: skip
    report.write_json(NAME, data)
    report.write_section(NAME, markdown(data))
    return data
