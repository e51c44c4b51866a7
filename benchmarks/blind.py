"""Blind deblurring: the kernel and the image of a blurry photo, against the ceiling, a guess and a classical method.

Each held-out test photo (gray; ``--full`` adds ``astronaut`` in colour, restored
with the RGB prior) is cropped and blurred by a known kernel as a
'valid' convolution (the blurry file shows the crop's interior), with Gaussian
noise.  Kernels (31x31 support): isotropic Gaussians (std 1.5 and 3), an
anisotropic Gaussian (stds 3 and 1, turned by 0.6 rad) and two random
camera-shake trajectories (``motion_kernel(31, 0.5)``, seeds 10 and 11).  Every
restoration runs the same sampler (DiffPIR, ``STEPS`` steps, one sample, the
true noise level) and is scored on the blurry file's region:

* ``ceiling``: non-blind, with the true kernel;
* ``guess``: non-blind, with a fixed ``gaussian:2`` (what the command line used
  to assume when no kernel was given);
* ``blind``: ``restore(y, BlindBlur(31, em_iters=0))``: the spectral Gaussian
  and straight-line fits, the line at a 0.5 px cross-section and the classical
  starts, scored by the spectral marginal
  likelihood; those within ``check_margin`` of the best score restored and the one
  whose restoration, blurred by it, lies nearest the photo kept, then the sampler
  (no EM rounds);
* ``blind+em4``: the default, ``BlindBlur(31)``: the same candidates and four EM
  rounds (a posterior sample given the kernel, the kernel given the sample) from
  the spectral (bent) arc fit turned towards the classical start, the same score
  and check, then the final run (with one sample, the chosen candidate's check run);
* ``classical``: the coarse-to-fine L0 kernel estimate alone (``classical_kernel``,
  written from Xu et al. 2013 / Pan et al. 2014) with BM3D deblurring of the
  mirror-padded file at the true noise std (Wiener-Hunt at a fixed balance 1e-2
  without the ``bm3d`` package).

``--validation`` runs, instead, the cases the EM rounds' start (the oriented
arc, then its bent form) was chosen on: three of the prior's training photos (``rocket``,
``chelsea``, ``stereo_motorcycle``) in gray at 192x192, two other camera shakes
(seeds 20 and 21) and noise 0.01 and 0.03; only the ceiling, the two blind
rows and ``hindsight``: every kernel ``blind+em4`` weighed (``Result.kernel_candidates``),
each run non-blind and scored against the truth, the best of them (what a
perfect choice among the candidates would reach; its seconds are those runs'),
written to ``blind-validation.*``.  Some earlier settings (the number of
EM rounds, the salient-edge threshold) were judged on the quick mode's cases
themselves (``invdiff.blind``'s docstrings say which).

Kernel error: ``kernel_ncc`` against the true kernel (1 = equal up to a shift).
Blind deblurring fixes the image only up to a translation, so every PSNR/SSIM is
taken at the integer shift (within +-3 pixels) that maximises PSNR, for every
method alike (Levin et al. 2009).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import invdiff
from invdiff.blind import classical_kernel, gaussian_family, kernel_ncc
from invdiff.datasets import TEST_IMAGES, load_test_image, photo_crop
from invdiff.metrics import psnr, ssim
from invdiff.operators import BlindBlur, Blur, gaussian_kernel, motion_kernel

from . import baselines, report

NAME = "blind"
TITLE = "Blind deblurring: estimated kernel and image against the true-kernel ceiling, a guess and L0 + BM3D"
SIZE = 31
STEPS = 20
#: (photos as (name, channels), crop side, noise levels) per mode; a colour photo runs the RGB prior
PLAN = {
    "quick": ((("camera", 1), ("astronaut", 1)), 192, (0.01, 0.03)),
    "full": ((("camera", 1), ("astronaut", 1), ("coffee", 1), ("astronaut", 3)), 256, (0.01, 0.02, 0.04)),
    "validation": ((("rocket", 1), ("chelsea", 1), ("stereo_motorcycle", 1)), 192, (0.01, 0.03)),
}
#: the rows a mode runs: the validation mode only what its choices compared
METHODS = {"validation": ("ceiling", "blind", "blind+em4", "hindsight")}
ALL_METHODS = ("ceiling", "guess", "blind", "blind+em4", "classical")

SHIFT = 3


def photo_label(name: str, channels: int) -> str:
    """A photo's name in the tables: ``astronaut`` in gray, ``astronaut (rgb)`` in colour."""
    return name if channels == 1 else f"{name} (rgb)"


def kernels(mode: str = "quick") -> dict[str, torch.Tensor]:
    if mode == "validation":
        return {f"motion v{s}": motion_kernel(SIZE, 0.5, generator=torch.Generator().manual_seed(s)) for s in (20, 21)}
    return {
        "gaussian 1.5": gaussian_kernel(1.5, SIZE),
        "gaussian 3": gaussian_kernel(3.0, SIZE),
        "anisotropic 3x1": gaussian_family(SIZE, 3.0, 1.0, 0.6).float(),
        "motion a": motion_kernel(SIZE, 0.5, generator=torch.Generator().manual_seed(10)),
        "motion b": motion_kernel(SIZE, 0.5, generator=torch.Generator().manual_seed(11)),
    }


def photo(name: str, channels: int, size: int) -> torch.Tensor:
    """A centred ``size`` crop ``(1, C, size, size)``: a held-out test image, or (validation) a bundled photo."""
    return load_test_image(name, channels, size=size) if name in TEST_IMAGES else photo_crop(name, channels, size)


def result_name(mode: str) -> str:
    """``blind``, or ``blind-validation`` for the validation mode's files and section."""
    return NAME if mode != "validation" else f"{NAME}-validation"


def aligned(est: torch.Tensor, truth: torch.Tensor, shift: int = SHIFT) -> dict[str, float]:
    """PSNR and SSIM at the integer shift (|dy|, |dx| <= shift) with the best PSNR, on the common interior."""
    best = None
    h, w = truth.shape[-2:]
    core = truth[..., shift : h - shift, shift : w - shift]
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            part = est[..., shift + dy : h - shift + dy, shift + dx : w - shift + dx].clamp(0, 1)
            p = float(psnr(part, core))
            if best is None or p > best[0]:
                best = (p, part)
    assert best is not None
    return {"psnr": best[0], "ssim": float(ssim(best[1], core))}


def classical(y: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L0 kernel estimate and BM3D deblurring (or Wiener-Hunt) of the mirror-padded file with it."""
    k, _ = classical_kernel(y[0], SIZE)
    pad = 2 * SIZE
    yp = F.pad(y, (pad,) * 4, mode="reflect")
    op = Blur(k, padding="circular")
    if baselines.bm3d_available():
        x = baselines.bm3d_deblur(op, yp, sigma)
    else:
        x = baselines.wiener(op, yp, 1e-2)
    return k, x[..., pad:-pad, pad:-pad]


def _shown(kernel: torch.Tensor) -> torch.Tensor:
    """A kernel as a figure panel: scaled to its maximum."""
    k = kernel.detach().float().cpu()
    return (k / k.max())[None, None]


def run(mode: str = "quick", device: str = "cpu", seed: int = 0, log=print) -> dict[str, Any]:
    photos, crop, noises = PLAN[mode]
    priors = {c: invdiff.priors.load_prior("natural-gray" if c == 1 else "natural-rgb", device=device)
              for c in sorted({c for _, c in photos})}  # fmt: skip
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    figure: list[tuple[str, torch.Tensor]] = []
    methods = METHODS.get(mode, ALL_METHODS)
    for photo_name, channels in photos:
        name = photo_label(photo_name, channels)
        prior = priors[channels]
        x = photo(photo_name, channels, crop + SIZE - 1).to(device)
        truth = x[..., SIZE // 2 : SIZE // 2 + crop, SIZE // 2 : SIZE // 2 + crop]
        for kname, k in kernels(mode).items():
            for sigma in noises:
                g = torch.Generator(device=device).manual_seed(seed)
                clean = Blur(k.to(device), padding="valid")(x)
                y = clean + sigma * torch.randn(clean.shape, generator=g, device=device)

                def nonblind(kernel: torch.Tensor) -> tuple[torch.Tensor, float]:
                    t = time.perf_counter()
                    r = invdiff.restore(y, Blur(kernel.to(device), padding="valid"), prior, method="diffpir",
                                        steps=STEPS, sigma_y=sigma, seed=seed, cg_iters=5)  # fmt: skip
                    return r.mean[..., SIZE // 2 : SIZE // 2 + crop, SIZE // 2 : SIZE // 2 + crop], time.perf_counter() - t

                case = {"image": name, "kernel": kname, "sigma_y": sigma}
                out: dict[str, tuple[torch.Tensor, float, torch.Tensor | None]] = {}
                choice: dict[str, str] = {}  # which candidate the blind rows' kernel is
                est, sec = nonblind(k)
                out["ceiling"] = (est, sec, k)
                if "guess" in methods:
                    est, sec = nonblind(gaussian_kernel(2.0, SIZE))
                    out["guess"] = (est, sec, gaussian_kernel(2.0, SIZE))
                for label, em in (("blind", 0), ("blind+em4", 4)):
                    t = time.perf_counter()
                    r = invdiff.restore(y, BlindBlur(SIZE, em_iters=em), prior, method="diffpir", steps=STEPS,
                                        sigma_y=sigma, seed=seed)  # fmt: skip
                    out[label] = (r.mean, time.perf_counter() - t, r.kernel[0])
                    choice[label] = r.kernel_choice[0]
                weighed: list[dict[str, Any]] = []
                if "hindsight" in methods:  # every candidate of the last blind row, run with the truth in view
                    t, best = time.perf_counter(), None
                    for cand, kc, score in r.kernel_candidates[0]:
                        # the chosen kernel's non-blind run is blind+em4's final run (same sampler, seed and crop)
                        est = out["blind+em4"][0] if cand == choice["blind+em4"] else nonblind(kc)[0]
                        p = aligned(est, truth)["psnr"]
                        weighed.append({"label": cand, "score": score, "misfit": r.kernel_misfits[0].get(cand),
                                        "kernel_ncc": kernel_ncc(kc, k), "psnr": p})  # fmt: skip
                        if best is None or p > best[0]:
                            best = (p, est, kc, cand)
                    assert best is not None
                    out["hindsight"] = (best[1], time.perf_counter() - t, best[2])
                    choice["hindsight"] = best[3]
                if "classical" in methods:
                    t = time.perf_counter()
                    kc, xc = classical(y, sigma)
                    out["classical"] = (xc, time.perf_counter() - t, kc)
                for method, (est, sec, kern) in out.items():
                    row = {**case, "method": method, **aligned(est, truth), "seconds": sec,
                           "kernel_ncc": kernel_ncc(kern, k) if kern is not None else None,
                           "choice": choice.get(method)}  # fmt: skip
                    if method == "hindsight":
                        row["candidates"] = weighed
                    rows.append(row)
                line = "  ".join(f"{r['method']} {r['psnr']:.2f} ({r['kernel_ncc']:.2f})" for r in rows[-len(out):])
                log(f"{name} {kname} sigma {sigma:g}: {line}")
                first = (photo_name, channels) == photos[0] and sigma == noises[0]
                if first and mode != "validation" and kname in ("gaussian 3", "motion a"):
                    figure += [(f"{kname}\nblurry file", y), (f"guess\n{rows[-4]['psnr']:.2f} dB", out["guess"][0]),
                               (f"classical\n{rows[-1]['psnr']:.2f} dB", out["classical"][0]),
                               (f"blind (em4)\n{rows[-2]['psnr']:.2f} dB", out["blind+em4"][0]),
                               (f"ceiling\n{rows[-5]['psnr']:.2f} dB", out["ceiling"][0]), ("truth", truth),
                               ("true kernel", _shown(k)),
                               (f"estimated kernel\nNCC {rows[-2]['kernel_ncc']:.2f}", _shown(out["blind+em4"][2]))]  # fmt: skip
    data = {"mode": mode, "steps": STEPS, "kernel_size": SIZE, "rows": rows, "summary": summary(rows),
            "total_seconds": time.perf_counter() - t_all, "machine": report.machine(device)}  # fmt: skip
    report.write_json(result_name(mode), data)
    if figure:
        from .figures import grid

        grid(figure, report.RESULTS_DIR / f"{NAME}.png", columns=8)
    if mode != "validation":
        data["clock"] = clock(device, seed, log)
        report.write_json(NAME, data)
    report.write_section(result_name(mode), markdown(data))
    return data


#: kernel support for scikit-image's clock_motion.png: its horizontal shake is about 50 pixels long
CLOCK_KERNEL = 61


def clock(device: str = "cpu", seed: int = 0, log=print) -> dict[str, Any]:
    """A real blurred photo, scikit-image's ``clock_motion.png`` (no ground truth), restored blind.

    As ``invdiff restore clock_motion.png --task deblur --kernel auto --kernel-size 61`` does
    (DiffPIR, 20 steps, 2 samples, noise estimated); writes ``results/blind-clock.png``:
    the photo, the restoration and the estimated kernel.
    """
    import skimage

    from invdiff.io import read_image

    from .figures import grid

    path = Path(skimage.__file__).parent / "data" / "clock_motion.png"
    y = read_image(path).data.to(device)
    prior = invdiff.priors.load_prior("natural-gray", device=device)
    t = time.perf_counter()
    r = invdiff.restore(y, BlindBlur(CLOCK_KERNEL), prior, method="diffpir", steps=STEPS, sigma_y="auto", samples=2,
                        seed=seed)  # fmt: skip
    seconds = time.perf_counter() - t
    k = r.kernel[0].cpu()
    visible = k >= 0.01 * k.max()  # the extent a reader sees: faint edges below 1 % of the peak left out
    rows, cols = torch.nonzero(visible.any(1))[:, 0], torch.nonzero(visible.any(0))[:, 0]
    extent = [int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)]
    grid([("clock_motion.png\n(real blur, no truth)", y), (f"invdiff, kernel auto\n{seconds:.0f} s", r.mean),
          (f"estimated kernel\n{extent[0]}x{extent[1]} px of {CLOCK_KERNEL}", _shown(k))],
         report.RESULTS_DIR / f"{NAME}-clock.png", columns=3)  # fmt: skip
    log(f"clock_motion.png: kernel extent {extent}, sigma_y {r.sigma_y:.4f}, {seconds:.0f} s")
    return {"seconds": seconds, "kernel_extent": extent, "sigma_y": r.sigma_y, "kernel_size": CLOCK_KERNEL}


def family(kname: str) -> str:
    return "motion" if kname.startswith("motion") else "gaussian"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean PSNR gap to the ceiling and mean kernel NCC per method and kernel family."""
    out = []
    ceiling = {(r["image"], r["kernel"], r["sigma_y"]): r["psnr"] for r in rows if r["method"] == "ceiling"}
    for fam in ("gaussian", "motion"):
        for method in ("blind+em4", "hindsight", "blind", "classical", "guess"):
            sel = [r for r in rows if r["method"] == method and family(r["kernel"]) == fam]
            if not sel:
                continue
            gaps = [r["psnr"] - ceiling[(r["image"], r["kernel"], r["sigma_y"])] for r in sel]
            out.append({"family": fam, "method": method, "gap_db": float(np.mean(gaps)),
                        "worst_gap_db": float(np.min(gaps)), "kernel_ncc": float(np.mean([r["kernel_ncc"] for r in sel])),
                        "seconds": float(np.mean([r["seconds"] for r in sel])), "cases": len(sel)})  # fmt: skip
    return out


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    validation = data["mode"] == "validation"
    photos = ("validation photos in gray (three of the prior's training photos, with other camera shakes: the cases "
              "the EM rounds' start was chosen on)" if validation
              else "test photos in gray (`(rgb)`: in colour, the RGB prior)")
    lines = [f"## {TITLE}" + (" (validation cases)" if validation else ""), "",
             f"`python -m benchmarks blind --{data['mode']}`: {photos}, "
             f"{SIZE}x{SIZE} kernel support, "
             f"DiffPIR with {data['steps']} steps and one sample for every diffusion row, PSNR/SSIM at the best "
             f"integer shift within {SHIFT} pixels (blind deblurring fixes the image up to a translation). "
             "Kernel NCC: normalised cross-correlation with the true kernel, maximised over shifts.", "",
             "Mean over images and noise levels, gap to the true-kernel ceiling (dB; worst case beside it):", ""]  # fmt: skip
    lines.append(report.markdown_table(
        ["kernels", "method", "gap to ceiling (dB)", "worst gap", "kernel NCC", "seconds", "cases"],
        [[s["family"], s["method"], round(s["gap_db"], 2), round(s["worst_gap_db"], 2), round(s["kernel_ncc"], 3),
          round(s["seconds"], 1), s["cases"]] for s in data["summary"]]))  # fmt: skip
    lines += ["", "Every case (PSNR dB / SSIM, kernel NCC in brackets):", ""]
    keys = sorted({(r["image"], r["kernel"], r["sigma_y"]) for r in rows}, key=lambda t: (t[0], t[1], t[2]))
    present = {r["method"] for r in rows}
    methods = [m for m in ("ceiling", "blind+em4", "hindsight", "blind", "classical", "guess") if m in present]
    table = []
    for key in keys:
        by = {r["method"]: r for r in rows if (r["image"], r["kernel"], r["sigma_y"]) == key}
        table.append([key[0], key[1], key[2]] + [
            None if m not in by else
            f"{by[m]['psnr']:.2f} / {by[m]['ssim']:.3f}" + ("" if m == "ceiling" else f" ({by[m]['kernel_ncc']:.2f})")
            for m in methods])  # fmt: skip
    lines.append(report.markdown_table(["image", "kernel", "sigma_y", *methods], table))
    if "hindsight" in present:
        lines += ["", "`hindsight`: every kernel `blind+em4` weighed (`Result.kernel_candidates`), each run non-blind "
                      "and scored against the truth, the best of them: what a perfect choice among the candidates "
                      "would reach (its seconds are those runs'). The gap between it and `blind+em4` is the choice's "
                      "own loss; the gap between it and the ceiling is the candidates'."]  # fmt: skip
    if data.get("clock"):
        c = data["clock"]
        lines += ["", f"A real blurred photo without ground truth, scikit-image's `clock_motion.png`, restored blind "
                      f"with a {c['kernel_size']}x{c['kernel_size']} support (DiffPIR, 20 steps, 2 samples): "
                      f"{c['seconds']:.0f} s; the kernel found spans {c['kernel_extent'][0]}x{c['kernel_extent'][1]} "
                      f"pixels (values above 1 % of its peak): `benchmarks/results/{NAME}-clock.png`."]  # fmt: skip
    figure = "" if validation else f"Figure: `benchmarks/results/{NAME}.png`. "
    machine = report.describe_machine(data["machine"]).rstrip(".")
    lines += ["", f"{figure}Total {data['total_seconds']:.0f} s on {machine}."]
    return "\n".join(lines)
