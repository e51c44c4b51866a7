"""The shipped priors against the classical baselines: the margins the priors are judged by.

For each shipped natural-image prior and each of its test images, the three
tasks the priors are judged on (random inpainting of 70% of the pixels, x4
bicubic super-resolution, Gaussian deblurring of std 2; noise 0.02 on each) are
restored by DDRM, PiGDM and DPS through ``invdiff.restore``, with the estimate
the posterior mean of several samples, and scored against the task's classical
baseline (biharmonic, bicubic, oracle Wiener/Tikhonov), TV alongside.  The
``phantoms`` prior is judged on CT (30 views) and MRI (4x): its rows are read
from the ``ct`` and ``mri`` suites' committed JSON, whose own runs they name.

It reuses the images suite's problem runner, so operators, noise, baselines and
scoring are the same as there.  ``python -m benchmarks priors [--quick | --full]``
writes ``results/priors.{json,md}`` and one figure per prior and task.  The quick
plan scores one crop per prior; ``--images all`` scores every test image with it
(the margins are then means over the images, and each is also given image by
image); ``--methods`` may also name DDNM and DiffPIR (run at their default
steps; ``--out priors-ddnm`` keeps them beside the main table); and
``--methods dps --samples 1 --steps dps=1000 --out priors-dps`` scores DPS at its
default steps beside them, one sample per image, since 1000 steps of a batch of 8
with a backward pass each are hours per image on a CPU.  Below 1000 steps DPS
runs with the reference's total guidance, ``zeta = 1000 / steps`` (``zeta_for_steps``),
so ``--methods dps --out priors-dps100`` scores the mean of 8 samples at 100 steps.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from invdiff import METHODS
from invdiff.datasets import load_test_image
from invdiff.priors import load_prior
from invdiff.samplers.dps import REFERENCE_STEPS, zeta_for_steps

from . import images, report

NAME = "priors"
TASK_NAMES = ("inpaint-random", "sr4-bicubic", "deblur-gaussian", "denoise")
#: the tasks of runs made before the denoising task and the BM3D baselines (their JSON has no ``task_names``)
EARLY_TASK_NAMES = ("inpaint-random", "sr4-bicubic", "deblur-gaussian")
METHOD_NAMES = ("ddrm", "pigdm", "dps")
#: samplers run only when ``--methods`` names them, at their default steps: the better linear-problem
#: samplers the priors can also be judged with
EXTRA_METHODS = ("ddnm", "diffpir")
#: the test images of each natural prior (gray versions of the colour ones for natural-gray)
IMAGES = {"natural-gray": ("camera", "astronaut", "coffee"), "natural-rgb": ("astronaut", "coffee")}
PLANS: dict[str, dict[str, Any]] = {
    "quick": {"size": 128, "images": {"natural-gray": ("camera",), "natural-rgb": ("astronaut",)}, "samples": 8,
              "steps": {"ddrm": 20, "pigdm": 100, "dps": 100}, "seeds": (0,)},
    "full": {"size": 256, "images": IMAGES, "samples": 8, "steps": {"ddrm": 20, "pigdm": 100, "dps": 1000},
             "seeds": (0, 1)},
}  # fmt: skip
#: phantoms: (suite, set-up) rows read from the medical suites
PHANTOM_SETUPS = (("ct", "sparse-30"), ("mri", "single-4x"))
PHANTOM_BASELINES = {"ct": "fbp", "mri": "zero-filled"}


def natural_rows(prior_name: str, plan: dict[str, Any], device: str, log: Callable[[str], None],
                 out: str = NAME) -> dict[str, Any]:  # fmt: skip
    """The images suite's runner on this prior's test images, the three tasks and methods, ``samples`` per image."""
    prior = load_prior(prior_name)
    run_plan = images.Plan(
        mode=f"priors-{plan['size']}", images=tuple(plan["images"][prior_name]), size=plan["size"],
        seeds=tuple(plan["seeds"]), samples=plan["samples"], steps={m: (k,) for m, k in plan["steps"].items()},
        deepinv=(), scaling=None, knobs=plan.get("knobs", {}),
    )  # fmt: skip
    imgs = {i: load_test_image(i, channels=prior.channels, size=run_plan.size) for i in run_plan.images}
    tasks = [t for t in images.TASKS if t.name in TASK_NAMES]
    data = images.run_suite(run_plan, prior, imgs, device, tasks=tasks, figures_dir=report.RESULTS_DIR / "figures",
                            log=log, name=f"{out}-{prior_name}", prior_name=prior_name)  # fmt: skip
    return {"prior": prior_name, "channels": prior.channels, "images": list(run_plan.images),
            "training": data["prior_config"], "margins": block_margins(data["rows"]), "rows": data["rows"],
            "figures": data["figures"], "seconds": data["total_seconds"]}  # fmt: skip


def block_margins(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The images suite's margins of one prior's rows, for every sampler the priors may run."""
    tasks = [t for t in images.TASKS if t.name in TASK_NAMES]
    return images.margins(rows, tasks, methods=("ddrm", "dps", "pigdm", *EXTRA_METHODS))


def phantom_rows() -> list[dict[str, Any]]:
    """DDRM, PiGDM and DPS against FBP / zero-filling from the committed ``ct`` and ``mri`` results."""
    out = []
    for suite, setup in PHANTOM_SETUPS:
        path = report.RESULTS_DIR / f"{suite}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        block = next((s for s in data["setups"] if s["setup"] == setup), None)
        if block is None:
            continue
        rows = {r["method"]: r for r in block["rows"]}
        base = rows[PHANTOM_BASELINES[suite]]
        tv = rows.get("tv")
        for method in METHOD_NAMES:
            r = rows.get(method)
            if r is None or "psnr" not in r:
                continue
            p, b = statistics.fmean(r["psnr"]), statistics.fmean(base["psnr"])
            out.append({"suite": suite, "setup": setup, "method": method, "steps": r.get("steps"),
                        "default_steps": r.get("default_steps"), "psnr": p, "ssim": statistics.fmean(r["ssim"]),
                        "baseline": PHANTOM_BASELINES[suite], "baseline_psnr": b,
                        "baseline_ssim": statistics.fmean(base["ssim"]), "margin_db": p - b,
                        "tv_psnr": statistics.fmean(tv["psnr"]) if tv else None, "images": data["images"],
                        "commit": data["machine"].get("git_commit"), "mode": data["mode"]})  # fmt: skip
    return out


def per_image_margins(rows: list[dict[str, Any]], margin: dict[str, Any]) -> str:
    """``camera +1.72, coffee +1.10``: one margin row's method minus its baseline, image by image (seeds averaged)."""

    def by_image(family: str, method: str, steps: int | None) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for r in rows:
            if (r["task"], r["family"], r["method"], r["steps"]) == (margin["task"], family, method, steps):
                for rec in r["records"]:
                    if "psnr" in rec:
                        out.setdefault(rec["image"], []).append(rec["psnr"])
        return out

    ours = by_image("invdiff", margin["method"], margin["steps"])
    base = by_image("classical", margin["baseline"], None)
    return ", ".join(f"{i} {statistics.fmean(v) - statistics.fmean(base[i]):+.2f}"
                     for i, v in ours.items() if i in base)  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    """The ``## Shipped priors`` section: margins per prior, task and method."""
    p = data["plan"]
    steps = ", ".join(f"{m} {k}" for m, k in p["steps"].items())
    zeta = (p.get("knobs") or {}).get("dps", {}).get("zeta")
    if zeta is not None:
        steps += f" (DPS zeta = {REFERENCE_STEPS} / steps = {zeta:g}, the reference's 1 at its 1000 steps)"
    over = data.get("overrides") or {}
    command = f"python -m benchmarks priors --{data['mode']}"
    if over.get("images") is not None:
        command += " --images " + (over["images"] if isinstance(over["images"], str) else ",".join(over["images"]))
    if over.get("methods") is not None:
        command += " --methods " + ",".join(over["methods"])
    if over.get("samples") is not None:
        command += f" --samples {over['samples']}"
    for m, k in (over.get("steps") or {}).items():
        command += f" --steps {m}={k}"
    out = data.get("out", NAME)
    if out != NAME:
        command += f" --out {out}"
    tasks = data.get("task_names", EARLY_TASK_NAMES)
    parts = [
        "## Shipped priors against the classical baselines"
        + ("" if out == NAME else f" (`{out}`: {', '.join(f'{m} at {k} steps' for m, k in p['steps'].items())})"),
        f"Generated by `{command}` ({data['seconds']:.0f} s). "
        f"{report.describe_machine(data['machine'])}",
        f"Tasks: {', '.join(tasks)} (the images suite's operators, sigma_y {images.SIGMA_Y}"
        + ("; denoising at 0.1). " if "denoise" in tasks else "). ") + "Each estimate is "
        + (f"the mean of {p['samples']} posterior samples (one batched `restore` call per image and seed)"
           if p["samples"] > 1 else "one posterior sample (one `restore` call per image and seed)") + "; steps: "
        f"{steps}; {p['size']}x{p['size']} centred crops; seeds {', '.join(map(str, p['seeds']))}. Baselines as in "
        + ("the images suite (biharmonic, bicubic, the best of oracle BM3D deblurring, Wiener and Tikhonov; oracle "
           "BM3D for denoising); `best classical` " if "task_names" in data else
           "the images suite (biharmonic, bicubic, the better of oracle Wiener and oracle Tikhonov); `best classical` ")
        + "includes oracle TV. Bar: +1 dB mean PSNR over the baseline (aim +1.5 dB).",
    ]
    for block in data["natural"]:
        t = block["training"]
        parts.append(f"### `{block['prior']}` on {', '.join(block['images'])} ({block['channels']} channel(s); "
                     f"{t.get('total_steps', t.get('steps_done', '?'))} training steps in all)")  # fmt: skip
        several = len(block["images"]) > 1
        table = []
        for m in block_margins(block["rows"]):  # derived from the rows, so results of older runs render alike
            if m["best_invdiff"]:
                continue
            default = METHODS[m["method"]].steps
            steps = m["steps"] if m["steps"] >= default else f"{m['steps']} (default {default})"
            line = [m["task"], m["method"], steps, f"{m['psnr']:.2f}", f"{m['ssim']:.3f}", m["baseline"],
                    f"{m['baseline_psnr']:.2f}", f"{m['baseline_ssim']:.3f}", f"{m['margin_db']:+.2f}",
                    "yes" if m["margin_db"] >= 1 else "no"]  # fmt: skip
            if several:
                line.append(per_image_margins(block["rows"], m))
            table.append([*line, f"{m['best_classical']} {m['best_classical_psnr']:.2f}"])
        head = ["task", "method", "steps", "PSNR", "SSIM", "baseline", "baseline PSNR", "baseline SSIM",
                "margin (dB)", ">= 1 dB"]  # fmt: skip
        parts.append(report.markdown_table([*head, *(["margin per image (dB)"] if several else []),
                                            "best classical"], table))  # fmt: skip
        figs = [f"[{task}](results/figures/{f})" for task, f in block["figures"].items()]
        if figs:
            parts.append("Figures (truth | measurement | each method): " + ", ".join(figs) + ".")
    if data["phantoms"] and data.get("out", NAME) == NAME:  # read from other suites: shown once, in ``priors``
        ph = data["phantoms"]
        parts.append("### `phantoms` on CT (30 views) and MRI (4x single-coil)")
        parts.append("Read from `results/ct.json` and `results/mri.json` (their runs: " + ", ".join(
            sorted({f"{r['suite']} {r['mode']} at commit {r['commit']}" for r in ph})) + "); one posterior sample per "
            "image there, Shepp-Logan and held-out phantoms; PSNR means over those images.")  # fmt: skip
        table = [[r["suite"], r["setup"], r["method"],
                  r["steps"] if r["steps"] == r["default_steps"] else f"{r['steps']} (default {r['default_steps']})",
                  f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
                  r["baseline"], f"{r['baseline_psnr']:.2f}", f"{r['margin_db']:+.2f}",
                  "yes" if r["margin_db"] >= 1 else "no", "—" if r["tv_psnr"] is None else f"{r['tv_psnr']:.2f}"]
                 for r in ph]  # fmt: skip
        parts.append(report.markdown_table(["suite", "set-up", "method", "steps", "PSNR", "SSIM", "baseline",
                                            "baseline PSNR", "margin (dB)", ">= 1 dB", "TV PSNR"], table))
    return "\n\n".join(parts)


def render(out: str = NAME) -> None:
    """Rewrite ``results/<out>.md`` from ``results/<out>.json`` (no sampling)."""
    data = json.loads((report.RESULTS_DIR / f"{out}.json").read_text(encoding="utf-8"))
    report.write_section(out, markdown(data))


def make_plan(mode: str, images: Sequence[str] | str | None = None, methods: Sequence[str] | None = None,
              samples: int | None = None, steps: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """The mode's plan, with ``images`` (names, or ``"all"``: every test image), ``methods``, ``samples`` per
    estimate and ``steps`` per method overriding it.

    Each prior is given the named images that are among its test images (a prior
    given none is not run); a name that is no prior's test image is an error, as
    is an unknown method: the run would otherwise score fewer than asked.
    """
    if mode not in PLANS:
        raise ValueError(f"mode must be quick or full, got {mode!r}")
    plan = {**PLANS[mode], "steps": dict(PLANS[mode]["steps"]), "images": dict(PLANS[mode]["images"])}
    if images is not None:
        if images == "all" or list(images) == ["all"]:
            plan["images"] = dict(IMAGES)
        else:
            known = {i for names in IMAGES.values() for i in names}
            bad = [i for i in images if i not in known]
            if bad or not images:
                raise ValueError(f"{', '.join(bad) or 'no image'} is not a test image of the natural priors (theirs: "
                                 f"{', '.join(sorted(known))}); pass some of those, or 'all'")  # fmt: skip
            plan["images"] = {prior: tuple(i for i in names if i in images) for prior, names in IMAGES.items()}
    if methods is not None:
        allowed = (*METHOD_NAMES, *EXTRA_METHODS)
        bad = [m for m in methods if m not in allowed]
        if bad or not methods:
            raise ValueError(f"the priors are judged with {', '.join(allowed)}; got {', '.join(methods) or 'none'}")
        plan["steps"] = {m: plan["steps"].get(m, METHODS[m].steps) for m in allowed if m in methods}
    for m, k in (steps or {}).items():
        if m not in plan["steps"]:
            raise ValueError(f"--steps names {m}, which this run does not use (it runs {', '.join(plan['steps'])})")
        if int(k) < 1:
            raise ValueError(f"--steps {m}={k}: a sampler needs at least 1 step")
        plan["steps"][m] = k
    if samples is not None:
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        plan["samples"] = samples
    # DPS below its 1000 steps keeps the reference's summed guidance, as in the ct suite.  At 100 steps, 8 samples,
    # on gray astronaut x4 SR: 24.12 / 24.13 / 24.11 dB for zeta 5 / 10 / 20, so the choice is not tuned.
    plan["knobs"] = {"dps": {"zeta": zeta_for_steps(plan["steps"]["dps"])}} if "dps" in plan["steps"] else {}
    return plan


def run(mode: str = "quick", device: str = "cpu", log: Callable[[str], None] = print,
        priors: tuple[str, ...] = ("natural-gray", "natural-rgb"), images: Sequence[str] | str | None = None,
        methods: Sequence[str] | None = None, samples: int | None = None, steps: dict[str, int] | None = None,
        out: str = NAME) -> dict[str, Any]:  # fmt: skip
    """Run the natural priors, read the phantoms rows, write ``results/<out>.{json,md}``.

    ``images``, ``methods``, ``samples`` and ``steps`` override the mode's plan
    (see :func:`make_plan`); the tables name what ran.  ``out`` other than
    ``priors`` keeps the committed ``priors`` results (e.g. a run of DPS at its
    default steps beside them).
    """
    if not out.startswith(NAME) or not out.replace("-", "").isalnum():
        raise ValueError(f"out must be 'priors' or start with 'priors-' (letters, digits, dashes), got {out!r}")
    plan = make_plan(mode, images, methods, samples, steps)
    t0 = time.perf_counter()
    natural = [natural_rows(name, plan, device, log, out) for name in priors if plan["images"].get(name)]
    data = {"name": NAME, "mode": mode, "plan": plan, "task_names": list(TASK_NAMES),
            "machine": report.machine(torch.device(device)),
            "natural": natural, "phantoms": phantom_rows(), "seconds": time.perf_counter() - t0,
            "out": out, "overrides": {"images": images if isinstance(images, str) or images is None else list(images),
                                      "methods": None if methods is None else list(methods), "samples": samples,
                                      "steps": steps or None}}  # fmt: skip
    report.write_json(out, data)
    report.write_section(out, markdown(data))
    return data
