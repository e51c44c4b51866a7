"""Real time: seconds and peak memory per megapixel of the default method, and the memory predictions.

The default method (DDRM) restores photographs with the steps and samples that
``invdiff.memory.default_steps_samples`` chooses for them (about a minute each on the
2-core machine its constants come from): ``coffee`` (scikit-image) resized to each size,
gray and RGB, Gaussian blur of std 2 (circular, the command line's default kernel) and
Gaussian noise of std ``SIGMA_Y``; the prior is ``natural-gray`` or ``natural-rgb``.

Each case runs in a fresh Python process, so that the peak resident memory
(``getrusage`` high-water mark) is that case's alone and includes everything a
command would hold: torch, the prior, the operator and the sampler.  ``grow`` is
the peak above the process's size after loading the prior, and the per-megapixel
columns divide it (and the sampler's seconds) by the image's megapixels.  The
prediction (``invdiff.memory.estimate_memory``) is made in this process before the case
runs and compared with the measured peak.

CT: ``Tomography`` with 90 views over 90 degrees (limited angle) and DDRM through its
dense SVD (``op.svd()``, as the command line does), prior ``phantoms``: at 64x64 it is
run and measured (the SVD included); at 128x128 the prediction alone is reported,
with the one-line refusal ``check_memory`` gives under the default cap and the methods
it names.  Rows marked "predicted only" were not run.

Timings on a shared CPU are noisy: the load average before and after each case is recorded.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from invdiff.memory import (
    SECONDS_PER_MEGAPIXEL,
    check_memory,
    default_cap,
    default_steps_samples,
    estimate_memory,
    fitting_methods,
    format_bytes,
    machine_memory,
    predict_seconds,
)

from . import report

NAME = "realtime"
TITLE = "Real time: seconds and peak memory per megapixel of the default method"
METHOD = "ddrm"
SIGMA_Y = 0.02
KERNEL_STD = 2.0
CT_VIEWS, CT_ARC = 90, 90.0
#: (kind, height, width, channels); kind "photo" or "ct"
CASES = {
    "quick": (("photo", 256, 256, 1), ("photo", 480, 640, 1), ("photo", 256, 256, 3), ("photo", 480, 640, 3),
              ("photo", 600, 800, 3), ("ct", 64, 64, 1)),
    "full": (("photo", 256, 256, 1), ("photo", 480, 640, 1), ("photo", 768, 1024, 1), ("photo", 256, 256, 3),
             ("photo", 480, 640, 3), ("photo", 600, 800, 3), ("photo", 768, 1024, 3), ("ct", 64, 64, 1)),
}  # fmt: skip
#: cases that are predicted but not run: the reported ones (CT 128x128 with 90 views, RGB 427x640 with 4 samples)
PREDICTED_ONLY = (("ct", 128, 128, 1, None), ("photo", 427, 640, 3, 4))
ROOT = Path(__file__).resolve().parents[1]


def prior_name(kind: str, channels: int) -> str:
    return "phantoms" if kind == "ct" else ("natural-rgb" if channels == 3 else "natural-gray")


def photo(h: int, w: int, channels: int) -> torch.Tensor:
    """``coffee`` resized (anti-aliased) to ``h x w``: ``(1, C, h, w)`` in [0, 1]."""
    from skimage.transform import resize

    from invdiff.datasets import skimage_image

    img = resize(skimage_image("coffee", channels), (h, w), anti_aliasing=True)
    return torch.from_numpy(img.clip(0, 1)).float().permute(2, 0, 1)[None].contiguous()


def operator(kind: str, h: int, w: int):
    """The case's operator as the user has it (a bare ``Tomography`` for CT: ``op.svd()`` comes later)."""
    from invdiff.operators import Blur, Tomography, gaussian_kernel

    if kind == "ct":
        from invdiff.medical.ct import normalized

        return normalized(Tomography(CT_VIEWS, h, arc=CT_ARC))
    return Blur(gaussian_kernel(KERNEL_STD), padding="circular")


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this (fresh) process and measure it; ``spec``: kind, h, w, channels, steps, samples."""
    from invdiff import restore
    from invdiff.metrics import psnr
    from invdiff.priors import load_prior

    kind, h, w, c = spec["kind"], spec["h"], spec["w"], spec["channels"]
    rss_import = _rss()
    prior = load_prior(prior_name(kind, c))
    rss_prior = _rss()
    if kind == "ct":
        from benchmarks.medical import shepp_logan

        x = shepp_logan(h)
    else:
        x = photo(h, w, c)
    op = operator(kind, h, w)
    y = op(x) + SIGMA_Y * torch.randn(op(x).shape, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    svd_seconds = None
    if kind == "ct":
        op = op.svd()
        svd_seconds = time.perf_counter() - t0
    r = restore(y, op, prior, method=METHOD, steps=spec["steps"], sigma_y=SIGMA_Y, samples=spec["samples"], seed=0)
    wall = time.perf_counter() - t0
    return {"rss_import": rss_import, "rss_prior": rss_prior, "peak": _peak(), "seconds": r.seconds,
            "wall_seconds": wall, "svd_seconds": svd_seconds, "nfe": r.nfe, "torch_threads": torch.get_num_threads(),
            "psnr": float(psnr(r.mean.clamp(0, 1), x).mean())}  # fmt: skip


def run_case(spec: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """``child(spec)`` in a fresh interpreter; its JSON answer."""
    code = "import json, sys; from benchmarks.realtime import child; print(json.dumps(child(json.loads(sys.argv[1]))))"
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"case {spec} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def predict(kind: str, h: int, w: int, c: int, samples: int | None, priors: dict[str, Any]) -> dict[str, Any]:
    """The case's steps and samples (``default_steps_samples``), predicted seconds and memory."""
    prior = priors[prior_name(kind, c)]
    shape = (1, c, h, w)
    steps, auto_samples = default_steps_samples(METHOD, shape, prior)
    samples = auto_samples if samples is None else samples
    op = operator(kind, h, w)
    est = estimate_memory(METHOD, op, shape, prior, samples)
    row: dict[str, Any] = {
        "kind": kind, "h": h, "w": w, "channels": c, "prior": prior_name(kind, c), "steps": steps, "samples": samples,
        "megapixels": h * w / 1e6, "predicted_seconds": predict_seconds(METHOD, shape, prior, steps, samples),
        "predicted_peak": est.total, "predicted_parts": {k: getattr(est, k) for k in
                                                        ("process", "network", "working", "operator", "setup")},
        "predicted_note": est.note,
    }  # fmt: skip
    try:
        check_memory(METHOD, op, shape, prior, samples, cap=default_cap())
        row["refusal"] = None
    except ValueError as e:
        row["refusal"] = str(e)
        row["fits"] = fitting_methods(op, None, shape, prior, samples, cap=default_cap())
    return row


def run(mode: str = "quick", device: str = "cpu") -> dict[str, Any]:
    """Run the benchmark and write ``results/realtime.json`` and ``results/realtime.md``."""
    if torch.device(device).type != "cpu":
        raise ValueError("the realtime benchmark measures CPU time and resident memory; run it with --device cpu")
    from invdiff.priors import load_prior

    start = time.perf_counter()
    priors = {name: load_prior(name) for name in ("natural-gray", "natural-rgb", "phantoms")}
    rows = []
    for kind, h, w, c in CASES[mode]:
        row = predict(kind, h, w, c, None, priors)
        row["load_before"] = report.load_average()
        print(f"[realtime] {kind} {h}x{w}x{c}: {row['steps']} steps, {row['samples']} samples ...", flush=True)
        got = run_case({"kind": kind, "h": h, "w": w, "channels": c, "steps": row["steps"], "samples": row["samples"]})
        row.update(got)
        row["load_after"] = report.load_average()
        mp = row["megapixels"]
        row["grow"] = row["peak"] - row["rss_prior"]
        row["seconds_per_megapixel"] = row["seconds"] / mp
        row["grow_mib_per_megapixel"] = row["grow"] / 2**20 / mp
        row["seconds_per_megapixel_call"] = row["seconds"] / (mp * row["nfe"] * row["samples"])
        row["grow_mib_per_megapixel_sample"] = row["grow"] / 2**20 / (mp * row["samples"])
        row["predicted_over_measured"] = row["predicted_peak"] / row["peak"]
        print(f"[realtime]   {row['seconds']:.1f} s, peak {format_bytes(row['peak'])} "
              f"(predicted {format_bytes(row['predicted_peak'])})", flush=True)  # fmt: skip
        rows.append(row)
    predicted = [predict(kind, h, w, c, s, priors) for kind, h, w, c, s in PREDICTED_ONLY]
    data = {
        "name": NAME, "mode": mode, "method": METHOD, "sigma_y": SIGMA_Y, "kernel_std": KERNEL_STD,
        "machine": report.machine(device), "machine_memory": machine_memory(), "default_cap": default_cap(),
        "rows": rows, "predicted_only": predicted, "seconds_total": time.perf_counter() - start,
    }  # fmt: skip
    report.write_json(NAME, data)
    report.write_section(NAME, markdown(data))
    return data


def _case(r: dict[str, Any]) -> str:
    what = "CT" if r["kind"] == "ct" else ("RGB" if r["channels"] == 3 else "gray")
    return f"{what} {r['h']}x{r['w']}"


def markdown(data: dict[str, Any]) -> str:
    """The results section."""
    mib = 2**20
    lines = [f"## {TITLE}", ""]
    lines.append(f"Generated by `python -m benchmarks realtime --{data['mode']}` ({data['seconds_total']:.0f} s in all). "
                 f"{report.describe_machine(data['machine'])} Memory {format_bytes(data['machine_memory'])}, default cap "
                 f"{format_bytes(data['default_cap'])}.")  # fmt: skip
    lines += ["", f"DDRM with the steps and samples `default_steps_samples` chooses (a minute per image by its "
              f"model); photos: `coffee` resized, Gaussian blur std {data['kernel_std']:g}, noise {data['sigma_y']:g}; "
              f"CT: Shepp-Logan, {CT_VIEWS} views over {CT_ARC:g} degrees, the dense SVD included in the wall time. "
              "Each case in a fresh process: peak = resident high-water mark; grow = peak minus the process after "
              "loading the prior (~560 MiB of torch and weights); per megapixel: seconds of the sampler and grow "
              "divided by the image's megapixels (and by the network calls and samples: the time model's "
              f"`SECONDS_PER_MEGAPIXEL` = {SECONDS_PER_MEGAPIXEL:g} on an idle machine). Predicted: "
              "`invdiff.memory.estimate_memory` and `predict_seconds`, before the run. Seconds grow with the load "
              "average (other work on the 2 cores), shown per case.", ""]  # fmt: skip
    headers = ["case", "steps", "samples", "NFE", "seconds", "predicted s", "s / MP", "s / (MP call sample)",
               "peak MiB", "predicted MiB", "predicted / peak", "grow MiB / MP", "grow MiB / (MP sample)", "PSNR",
               "load before/after"]  # fmt: skip
    table = []
    for r in data["rows"]:
        secs = f"{r['seconds']:.1f}" + (f" (+ SVD {r['svd_seconds']:.1f})" if r.get("svd_seconds") else "")
        load = f"{(r['load_before'] or ['?'])[0]} / {(r['load_after'] or ['?'])[0]}"
        ct = r["kind"] == "ct"  # the dense SVD, not the image, sets CT's memory
        table.append([_case(r), r["steps"], r["samples"], r["nfe"], secs, f"{r['predicted_seconds']:.0f}",
                      f"{r['seconds_per_megapixel']:.0f}", f"{r['seconds_per_megapixel_call']:.1f}",
                      f"{r['peak'] / mib:.0f}", f"{r['predicted_peak'] / mib:.0f}", f"{r['predicted_over_measured']:.2f}",
                      None if ct else f"{r['grow_mib_per_megapixel']:.0f}",
                      None if ct else f"{r['grow_mib_per_megapixel_sample']:.0f}", f"{r['psnr']:.2f}", load])  # fmt: skip
    lines.append(report.markdown_table(headers, table))
    lines += ["", "Predicted only (not run):", ""]
    pred = []
    for r in data["predicted_only"]:
        verdict = "fits the default cap" if r["refusal"] is None else "refused: " + r["refusal"]
        pred.append([_case(r), r["steps"], r["samples"], f"{r['predicted_peak'] / mib:.0f}",
                     r["predicted_note"] or "—", verdict])  # fmt: skip
    lines.append(report.markdown_table(["case", "steps", "samples", "predicted MiB", "operator", "check_memory"], pred))
    return "\n".join(lines)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "quick")
