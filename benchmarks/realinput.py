"""Real inputs: ``invdiff restore`` on damaged photo files against what a user would otherwise run.

Each held-out test photo (``invdiff.datasets.TEST_IMAGES``) is damaged into the
file a user has, an 8-bit PNG, and restored through the real-input path exactly
as the command line does (``python -m invdiff restore FILE --task T``, default
method, steps, samples and ``--sigma-y auto``), then scored against the truth:

* deblur: a Gaussian blur of std 2 as a 'valid' convolution of the photo (so the
  blurry file shows the truth's interior, the kernel's radius in from each side),
  Gaussian noise of std 0.01.  Baselines: BM3D deblurring (true noise std) with
  its periodic model on the file as it is, and, as a careful user runs them, on
  the file mirrored outward by two kernel sides (cropped back after): BM3D
  deblurring, Wiener-Hunt (periodic) and scikit-image's Richardson-Lucy (zero
  boundary).  Each method's RMSE in a 16-pixel band along the edges over its RMSE
  inside is reported (the real-input path's aim: at most 1.5).
* sr: 4x bicubic downsampling (``Downsampling(4, filter="bicubic")``), noise 0.01.
  Baseline: bicubic upscaling.
* inpaint: thick random scratches painted white, the mask file white where to
  fill.  Baseline: scikit-image's biharmonic inpainting.
* denoise: Gaussian noise of std 0.05.  Baselines: BM3D (CBM3D for RGB) with the
  true noise std and with scikit-image's ``estimate_sigma``.

The weights of Wiener (balance) and Richardson-Lucy (iterations) are chosen per
photo by PSNR against the truth over a grid: an oracle, an upper bound on what
they reach.  Every method runs in a process of its own (``ISOLATE``), so its
peak memory is that process's maximum resident set size; every output is
rounded to 8 bits, as saved, before it is scored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invdiff.datasets import load_test_image
from invdiff.io import read_image, write_image
from invdiff.metrics import psnr, ssim
from invdiff.operators import Blur, Downsampling, Identity, gaussian_kernel

from . import baselines, report

NAME = "realinput"
TITLE = "Real inputs: invdiff restore on damaged photo files against classical tools"
REPO = Path(__file__).resolve().parents[1]

#: (test photo, channels) per mode
PHOTOS = {"quick": (("camera", 1),), "full": (("camera", 1), ("astronaut", 3), ("coffee", 3))}
#: centred square crop per mode (None: the photo at full size)
CROP = {"quick": 256, "full": None}
TASKS = ("deblur", "sr", "inpaint", "denoise")
BLUR_STD = 2.0
DEBLUR_SIGMA = 0.01
SR_SCALE = 4
SR_SIGMA = 0.01
DENOISE_SIGMA = 0.05
#: fraction of the pixels the scratches cover (at least)
SCRATCH_FRACTION = 0.07
#: width of the edge band, and the largest band / interior RMSE ratio the real-input deblurring aims at
BAND = 16
BAND_LIMIT = 1.5
#: Richardson-Lucy iterations searched by the oracle
RL_ITERATIONS = (10, 20, 40, 80, 160, 320)
#: side of the crops in the figure
FIGURE_CROP = 160
#: ``invdiff restore --steps / --samples`` (None: the command's defaults)
STEPS: int | None = None
SAMPLES: int | None = None
#: run every method in a process of its own (peak RSS per process); False: in this process (RSS growth)
ISOLATE = True

KERNEL = f"gaussian:{BLUR_STD:g}"
#: baseline name -> what it is, for the tables
BASELINES = {
    "bm3d_deblur": "BM3D deblurring, periodic model on the file as it is, true noise std (bm3d)",
    "bm3d_deblur_padded": "BM3D deblurring of the mirror-padded file, true noise std (bm3d)",
    "wiener_padded": "Wiener-Hunt of the mirror-padded file, oracle balance (scikit-image)",
    "richardson_lucy_padded": "Richardson-Lucy of the mirror-padded file, oracle iterations (scikit-image)",
    "bicubic": "bicubic upscaling (torch)",
    "biharmonic": "biharmonic inpainting (scikit-image)",
    "bm3d_true": "BM3D / CBM3D, true noise std (bm3d)",
    "bm3d_estimated": "BM3D / CBM3D, noise std from skimage estimate_sigma (bm3d)",
}
TASK_BASELINES = {"deblur": ("bm3d_deblur", "bm3d_deblur_padded", "wiener_padded", "richardson_lucy_padded"),
                  "sr": ("bicubic",),
                  "inpaint": ("biharmonic",), "denoise": ("bm3d_true", "bm3d_estimated")}  # fmt: skip
NEEDS_BM3D = ("bm3d_deblur", "bm3d_deblur_padded", "bm3d_true", "bm3d_estimated")


@dataclass
class Case:
    """One damaged file: ``y`` (the file's pixels, ``(1, C, h, w)``), the truth its restoration is scored against."""

    photo: str
    task: str
    y: torch.Tensor
    truth: torch.Tensor
    sigma: float
    options: dict[str, Any] = field(default_factory=dict)
    mask: torch.Tensor | None = None  # (1, 1, H, W), 1 where the pixel is to be filled

    @property
    def name(self) -> str:
        return f"{self.photo}-{self.task}"


def eight_bit(x: torch.Tensor) -> torch.Tensor:
    """``x`` clipped to [0, 1] and rounded to 8 bits, as a PNG holds it."""
    return (x.clamp(0, 1) * 255).round() / 255


def photo(name: str, channels: int, crop: int | None) -> torch.Tensor:
    """A test photo ``(1, C, H, W)`` float64 in [0, 1] (a centred ``crop`` square, or whole)."""
    return load_test_image(name, channels, size=crop).double()


def scratches(h: int, w: int, seed: int, fraction: float = SCRATCH_FRACTION) -> torch.Tensor:
    """Thick random scratches ``(1, 1, h, w)``, 1 on them: wavy lines across the photo until ``fraction`` is covered."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(h, w) / 64))
    for _ in range(100):
        # a line through the photo at a random angle, bent at four points
        cy, cx, angle = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
        t = np.linspace(-1, 1, 5) * max(h, w) * rng.uniform(0.3, 0.8)
        bend = rng.normal(0, 0.03 * max(h, w), size=5)
        ys = cy + t * np.sin(angle) + bend * np.cos(angle)
        xs = cx + t * np.cos(angle) - bend * np.sin(angle)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=255, width=width, joint="curve")
        m = np.asarray(canvas) > 0
        if m.mean() >= fraction:
            break
    return torch.from_numpy(m.astype(np.float64))[None, None]


def damage(name: str, task: str, x: torch.Tensor, seed: int) -> Case:
    """The damaged file of ``task`` made from the photo ``x`` ``(1, C, H, W)``, with its truth."""
    s = seed + zlib.crc32(f"{name}-{task}".encode())
    g = torch.Generator().manual_seed(s)

    def noisy(a: torch.Tensor, sigma: float) -> torch.Tensor:
        return eight_bit(a + sigma * torch.randn(a.shape, generator=g, dtype=a.dtype))

    if task == "deblur":
        k = gaussian_kernel(BLUR_STD, dtype=torch.float64)
        r = k.shape[-1] // 2
        y = noisy(Blur(k, padding="valid")(x), DEBLUR_SIGMA)
        return Case(name, task, y, x[..., r:-r, r:-r], DEBLUR_SIGMA, {"kernel": KERNEL})
    if task == "sr":
        h, w = (n - n % SR_SCALE for n in x.shape[-2:])
        x = x[..., :h, :w]
        y = noisy(Downsampling(SR_SCALE, filter="bicubic", image_size=(h, w))(x), SR_SIGMA)
        return Case(name, task, y, x, SR_SIGMA, {"scale": SR_SCALE})
    if task == "inpaint":
        m = scratches(*x.shape[-2:], seed=s)
        return Case(name, task, x * (1 - m) + m, x, 0.0, {}, mask=m)
    if task == "denoise":
        return Case(name, task, noisy(x, DENOISE_SIGMA), x, DENOISE_SIGMA)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def band_ratio(est: torch.Tensor, truth: torch.Tensor, band: int = BAND) -> float:
    """RMSE in the ``band``-pixel frame along the edges over the RMSE inside it."""
    inner = torch.zeros(truth.shape[-2:], dtype=torch.bool)
    inner[band:-band, band:-band] = True
    err = (est - truth).pow(2).mean(dim=(0, 1))
    return float(err[~inner].mean().sqrt() / err[inner].mean().sqrt())


# ----------------------------------------------------------------------------- running the methods


def _isolated(argv: list[str], log: Path) -> tuple[float, float]:
    """Run ``argv`` from the repository root in a process of its own: ``(wall seconds, peak RSS in MiB)``."""
    t = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's maximum
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited with {proc.returncode}:\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def _in_process(fn) -> tuple[Any, float, float | None]:
    """``fn()`` in this process: its result, wall seconds and RSS growth in MiB."""
    from .cost import PeakMemory

    t = time.perf_counter()
    with PeakMemory("cpu") as mem:
        out = fn()
    return out, time.perf_counter() - t, mem.mib


def write_files(case: Case, folder: Path) -> dict[str, Path]:
    """The damaged file, the truth and (inpainting) the mask as 8-bit PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"input": folder / f"{case.name}.png", "truth": folder / f"{case.name}-truth.png"}
    write_image(files["input"], case.y)
    write_image(files["truth"], case.truth)
    if case.mask is not None:
        files["mask"] = folder / f"{case.name}-mask.png"
        write_image(files["mask"], case.mask)  # white = fill
    return files


#: the shipped priors by device, for runs in this process (``ISOLATE = False``)
_PRIORS: dict[str, Any] = {}


def run_invdiff(case: Case, files: dict[str, Path], out: Path, device: str, seed: int) -> dict[str, Any]:
    """``invdiff restore`` of the damaged file as a user runs it; the restored image and what the run reports."""
    options = dict(case.options, **({"mask": str(files["mask"])} if "mask" in files else {}))
    if ISOLATE:
        argv = [sys.executable, "-m", "invdiff", "restore", str(files["input"]), "--task", case.task, "-o", str(out),
                "--ground-truth", str(files["truth"]), "--device", device, "--seed", str(seed), "--overwrite", "-q"]  # fmt: skip
        for k, v in options.items():
            argv += ["--" + k.replace("_", "-"), str(v)]
        for flag, v in (("--steps", STEPS), ("--samples", SAMPLES)):
            argv += [flag, str(v)] if v is not None else []
        process_seconds, peak = _isolated(argv, out.parent / f"{case.name}-invdiff.log")
    else:
        from invdiff.cli.batch import PriorChoice, restore_files

        priors = _PRIORS.setdefault(device, PriorChoice(device=device))  # loaded once per run, as a batch would

        def call():
            return restore_files([str(files["input"])], out, task=case.task, task_options=options,
                                 prior=priors, steps=STEPS, samples=SAMPLES, seed=seed,
                                 sigma_y="auto", ground_truth=files["truth"], overwrite=True, device=device,
                                 simulate=False)  # fmt: skip

        rep, process_seconds, peak = _in_process(call)
        if rep.failed:
            raise RuntimeError(f"invdiff restore {case.name}: {rep.failed}")
    folder = out / case.name
    row = json.loads((folder / "metrics.json").read_text())
    est = read_image(folder / "restored.png").data.double()
    return {"estimate": est, "seconds": row["seconds"], "process_seconds": process_seconds, "peak_mib": peak,
            "setting": f"{row['method']}, {row['steps']} steps x {row['samples']} samples",
            "sampler": row["method"], "steps": row["steps"], "samples": row["samples"], "nfe": row["nfe"],
            "sigma_y": row["sigma_y"], "sigma_y_source": row.get("sigma_y_source")}  # fmt: skip


def baseline(job: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Run one baseline on a damaged file: ``(estimate (C, H, W), {"seconds", "setting", ...})``.

    ``job``: ``name`` (a ``BASELINES`` key), ``input``, ``truth`` (for the oracles),
    ``mask`` (inpainting), ``sigma`` (the true noise std).  ``seconds`` is the
    method's own time (for an oracle, the chosen setting's run), file reading excluded.
    """
    from skimage import restoration

    name = job["name"]
    y = read_image(job["input"]).data.double()
    truth = read_image(job["truth"]).data.double() if job.get("truth") else None
    img = y[0].permute(1, 2, 0).numpy()  # (H, W, C)
    rgb = img.shape[2] == 3
    info: dict[str, Any] = {}

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    if name.startswith(("bm3d_deblur", "wiener", "richardson_lucy")):
        k = gaussian_kernel(BLUR_STD, dtype=torch.float64)
        pad = 2 * k.shape[-1] if name.endswith("_padded") else 0
        yp = torch.nn.functional.pad(y, (pad,) * 4, mode="reflect") if pad else y
        op = Blur(k, padding="circular")

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[..., pad : t.shape[-2] - pad, pad : t.shape[-1] - pad]

        if name.startswith("bm3d_deblur"):
            est, seconds = timed(lambda: crop(baselines.bm3d_deblur(op, yp, job["sigma"])))
            info["setting"] = f"sigma {job['sigma']:g}" + (f", padded by {pad}" if pad else "")
        else:
            wiener = name.startswith("wiener")
            grid, what = (baselines.LAMBDAS, "balance {:.3g}") if wiener else (RL_ITERATIONS, "{} iterations")

            def solve(v: float) -> torch.Tensor:
                if wiener:
                    return crop(baselines.wiener(op, yp, v))
                a = yp[0].numpy()
                return crop(torch.from_numpy(np.stack([restoration.richardson_lucy(a[c], k.numpy(), num_iter=v)
                                                       for c in range(a.shape[0])]))[None])  # fmt: skip

            runs = {v: timed(lambda v=v: solve(v)) for v in grid}
            best = max(runs, key=lambda v: float(psnr(eight_bit(runs[v][0]), truth)[0]))
            est, seconds = runs[best]
            info |= {"setting": what.format(best) + f", padded by {pad}", "weight": best,
                     "grid_edge": best in (grid[0], grid[-1])}  # fmt: skip
    elif name == "bicubic":
        h, w = y.shape[-2:]
        op = Downsampling(SR_SCALE, filter="bicubic", image_size=(h * SR_SCALE, w * SR_SCALE))
        est, seconds = timed(lambda: baselines.bicubic(op, y))
        info["setting"] = f"x{SR_SCALE}"
    elif name == "biharmonic":
        hole = read_image(job["mask"]).data[0, 0].numpy() > 0.5
        out, seconds = timed(lambda: restoration.inpaint_biharmonic(img if rgb else img[..., 0], hole,
                                                                    channel_axis=-1 if rgb else None))  # fmt: skip
        est = torch.from_numpy(np.atleast_3d(out).transpose(2, 0, 1).copy())[None]
        info["setting"] = f"{hole.mean():.1%} of pixels filled"
    elif name in ("bm3d_true", "bm3d_estimated"):
        if name == "bm3d_true":
            sigma, t_sigma = job["sigma"], 0.0
        else:
            sigma, t_sigma = timed(lambda: float(restoration.estimate_sigma(img, average_sigmas=True,
                                                                             channel_axis=-1)))  # fmt: skip
        est, seconds = timed(lambda: baselines.bm3d_denoise(Identity(), y, sigma))
        seconds += t_sigma
        info |= {"setting": f"sigma {sigma:.4f}", "sigma": sigma}
    else:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    info["seconds"] = seconds
    return est[0].numpy(), info


def worker(job_path: str) -> None:
    """Run the baseline job in ``job_path`` (JSON) and write its estimate (``.npy``) and report (``.json``) beside it."""
    job = json.loads(Path(job_path).read_text())
    est, info = baseline(job)
    np.save(job["output"] + ".npy", est)
    Path(job["output"] + ".json").write_text(json.dumps(info))


def run_baseline(name: str, case: Case, files: dict[str, Path], folder: Path) -> dict[str, Any]:
    """One baseline on the damaged file, in its own process (``ISOLATE``): estimate, seconds and peak memory."""
    job = {"name": name, "input": str(files["input"]), "truth": str(files["truth"]), "sigma": case.sigma,
           "mask": str(files.get("mask", "")), "output": str(folder / f"{case.name}-{name}")}  # fmt: skip
    if ISOLATE:
        path = folder / f"{case.name}-{name}-job.json"
        path.write_text(json.dumps(job))
        code = "import sys; from benchmarks.realinput import worker; worker(sys.argv[1])"
        process_seconds, peak = _isolated([sys.executable, "-c", code, str(path)], folder / f"{case.name}-{name}.log")
        est, info = np.load(job["output"] + ".npy"), json.loads(Path(job["output"] + ".json").read_text())
    else:
        (est, info), process_seconds, peak = _in_process(lambda: baseline(job))
    return dict(info, estimate=torch.from_numpy(est)[None].double(), process_seconds=process_seconds, peak_mib=peak)


def floor_mib() -> float | None:
    """Peak RSS of a Python process that only imports torch, NumPy and scikit-image: every row's floor."""
    if not ISOLATE:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        code = "import torch, numpy, skimage.restoration"
        return _isolated([sys.executable, "-c", code], Path(tmp) / "floor.log")[1]


def score(est: torch.Tensor, case: Case) -> dict[str, Any]:
    """PSNR and SSIM of the 8-bit estimate against the truth; the edge band ratio for deblurring."""
    out = eight_bit(est)
    if out.shape != case.truth.shape:
        raise ValueError(f"{case.name}: output is {tuple(out.shape)} but the truth is {tuple(case.truth.shape)}")
    row = {"psnr": float(psnr(out, case.truth)[0]), "ssim": float(ssim(out, case.truth)[0])}
    if case.task == "deblur" and min(out.shape[-2:]) > 2 * BAND:
        row["band_ratio"] = band_ratio(out, case.truth)
    return row


def run_case(case: Case, folder: Path, device: str, seed: int, have_bm3d: bool,
             log=print) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:  # fmt: skip
    """Every method on one damaged file: its rows, and the estimates by method (for the figure)."""
    files = write_files(case, folder)
    common = {"photo": case.photo, "channels": case.y.shape[1], "task": case.task, "true_sigma": case.sigma,
              "input_size": list(case.y.shape[-2:]), "output_size": list(case.truth.shape[-2:])}  # fmt: skip
    rows, estimates = [], {}
    runs = [("invdiff", lambda: run_invdiff(case, files, folder / "invdiff", device, seed))]
    runs += [(b, lambda b=b: run_baseline(b, case, files, folder)) for b in TASK_BASELINES[case.task]
             if have_bm3d or b not in NEEDS_BM3D]  # fmt: skip
    for method, fn in runs:
        res = fn()
        estimates[method] = eight_bit(res.pop("estimate"))
        rows.append(dict(common, method=method, **score(estimates[method], case), **res))
        log(f"  {case.name:22s} {method:16s} {rows[-1]['psnr']:6.2f} dB  SSIM {rows[-1]['ssim']:.3f}  "
            f"{rows[-1]['seconds']:7.1f} s  ({rows[-1]['setting']})")
    if case.mask is not None:
        for r in rows:
            r["filled_fraction"] = float(case.mask.mean())
    return rows, estimates


def margins(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per photo and task: invdiff against the best baseline (by PSNR; SSIM against the best by SSIM)."""
    out = []
    for key in dict.fromkeys((r["photo"], r["task"]) for r in rows):
        mine = [r for r in rows if (r["photo"], r["task"]) == key]
        ours = next(r for r in mine if r["method"] == "invdiff")
        others = [r for r in mine if r["method"] != "invdiff"]
        if not others:
            continue
        best = max(others, key=lambda r: r["psnr"])
        best_ssim = max(others, key=lambda r: r["ssim"])
        out.append({"photo": key[0], "task": key[1], "invdiff_psnr": ours["psnr"], "invdiff_ssim": ours["ssim"],
                    "baseline": best["method"], "baseline_psnr": best["psnr"], "margin_db": ours["psnr"] - best["psnr"],
                    "baseline_ssim_method": best_ssim["method"], "margin_ssim": ours["ssim"] - best_ssim["ssim"],
                    "time_ratio": ours["seconds"] / max(best["seconds"], 1e-9),
                    "memory_ratio": (ours["peak_mib"] / best["peak_mib"]) if ours.get("peak_mib") and
                    best.get("peak_mib") else None})  # fmt: skip
    return out


def run(mode: str = "quick", device: str = "cpu", seed: int = 0, log=print) -> dict[str, Any]:
    """Run the benchmark; write ``results/realinput.{json,md,png}`` and ``RESULTS.md``; return all numbers."""
    if mode not in PHOTOS:
        raise ValueError(f"mode must be one of {', '.join(PHOTOS)}, got {mode!r}")
    t0 = time.perf_counter()
    have_bm3d = baselines.bm3d_available()
    rows: list[dict[str, Any]] = []
    panels: list[tuple[str, torch.Tensor]] = []
    with tempfile.TemporaryDirectory(prefix="invdiff-realinput-") as tmp:
        floor = floor_mib()
        for name, channels in PHOTOS[mode]:
            x = photo(name, channels, CROP[mode])
            for task in TASKS:
                case = damage(name, task, x, seed)
                case_rows, estimates = run_case(case, Path(tmp) / case.name, device, seed, have_bm3d, log)
                rows += case_rows
                panels += figure_row(case, case_rows, estimates)
    data = {"name": NAME, "mode": mode, "seed": seed, "device": device, "crop": CROP[mode],
            "photos": [f"{n} ({'gray' if c == 1 else 'RGB'})" for n, c in PHOTOS[mode]], "tasks": list(TASKS),
            "settings": {"blur_std": BLUR_STD, "deblur_sigma": DEBLUR_SIGMA, "sr_scale": SR_SCALE,
                         "sr_sigma": SR_SIGMA, "denoise_sigma": DENOISE_SIGMA, "scratch_fraction": SCRATCH_FRACTION,
                         "band": BAND, "band_limit": BAND_LIMIT, "rl_iterations": list(RL_ITERATIONS),
                         "wiener_balances": list(baselines.LAMBDAS), "steps": STEPS, "samples": SAMPLES,
                         "isolated": ISOLATE},
            "bm3d": have_bm3d, "baselines": BASELINES, "floor_mib": floor, "rows": rows, "margins": margins(rows),
            "total_seconds": time.perf_counter() - t0, "machine": report.machine(device)}  # fmt: skip
    report.write_json(NAME, data)
    from .figures import grid

    grid(panels, report.RESULTS_DIR / f"{NAME}.png", columns=4)
    report.write_section(NAME, markdown(data))
    return data


# ----------------------------------------------------------------------------- figure and markdown


def figure_row(case: Case, rows: list[dict[str, Any]], estimates: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """damaged | best baseline | invdiff | truth, cropped: the top-left corner for deblurring (the edge band), else the centre."""
    import torch.nn.functional as F

    h, w = case.truth.shape[-2:]
    c = min(FIGURE_CROP, h, w)
    top, left = (0, 0) if case.task == "deblur" else ((h - c) // 2, (w - c) // 2)
    y = case.y if case.y.shape[-2:] == (h, w) else F.interpolate(case.y, size=(h, w), mode="nearest")

    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[..., top : top + c, left : left + c]

    by = {r["method"]: r for r in rows}
    others = [r for r in rows if r["method"] != "invdiff"]
    out = [(f"{case.name}\ndamaged file", cut(y))]
    if others:
        b = max(others, key=lambda r: r["psnr"])
        out.append((f"{b['method']}\n{b['psnr']:.2f} dB", cut(estimates[b["method"]])))
    else:
        out.append(("no baseline", cut(torch.ones_like(case.truth))))
    out.append((f"invdiff ({by['invdiff']['sampler']})\n{by['invdiff']['psnr']:.2f} dB", cut(estimates["invdiff"])))
    out.append(("truth", cut(case.truth)))
    return out


def _mib(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def verdict(m: list[dict[str, Any]]) -> list[str]:
    """Where invdiff wins and where it does not, from the margins."""
    def cell(r: dict[str, Any]) -> str:
        other = "" if r["baseline_ssim_method"] == r["baseline"] else f" vs {r['baseline_ssim_method']}"
        return (f"{r['photo']} {r['task']} ({r['margin_db']:+.2f} dB vs {r['baseline']}, "
                f"SSIM {r['margin_ssim']:+.3f}{other})")  # fmt: skip

    wins = [cell(r) for r in m if r["margin_db"] > 0 and r["margin_ssim"] > 0]
    mixed = [cell(r) for r in m if (r["margin_db"] > 0) != (r["margin_ssim"] > 0)]
    losses = [cell(r) for r in m if r["margin_db"] <= 0 and r["margin_ssim"] <= 0]
    lines = [f"- **invdiff wins** (PSNR and SSIM): {'; '.join(wins) or 'nowhere'}.",
             f"- **mixed** (one of the two): {'; '.join(mixed) or 'nowhere'}.",
             f"- **invdiff loses** (PSNR and SSIM): {'; '.join(losses) or 'nowhere'}."]  # fmt: skip
    if m:
        ratios = [r["time_ratio"] for r in m]
        lines.append(f"- **time**: invdiff takes {min(ratios):.3g}x to {max(ratios):.3g}x the seconds of the "
                     "best baseline (method time, as in the table).")  # fmt: skip
        mem = [r["memory_ratio"] for r in m if r["memory_ratio"] is not None]
        if mem:
            lines.append(f"- **memory**: invdiff's process peaks at {min(mem):.3g}x to {max(mem):.3g}x the best "
                         "baseline's.")  # fmt: skip
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The ``## Real inputs`` section: every method per damaged file, the margins, where invdiff wins."""
    s = data["settings"]
    size = f"{data['crop']}x{data['crop']} centre crops" if data["crop"] else "full size"
    floor = (f" A Python process that only imports torch, NumPy and scikit-image peaks at {data['floor_mib']:.0f} MiB."
             if data.get("floor_mib") else "")  # fmt: skip
    memory = ("peak RSS: the maximum resident set size of the method's own process (`invdiff restore` or a "
              "script running the baseline)." + floor) if s["isolated"] else "peak: RSS growth in this process."
    lines = [
        f"## {TITLE}",
        "",
        f"Generated by `python -m benchmarks {NAME} --{data['mode']}` ({data['mode']} mode, "
        f"{data['total_seconds']:.0f} s in all). {report.describe_machine(data['machine'])}",
        "",
        f"Test photos {', '.join(data['photos'])} at {size}, damaged into 8-bit PNG files and restored by "
        "`invdiff restore FILE --task T` as a user runs it (the file is the measurement; default method, steps "
        "and samples; `--sigma-y auto`). deblur: Gaussian blur of std "
        f"{s['blur_std']:g} as a 'valid' convolution (the file is the truth's interior), noise std "
        f"{s['deblur_sigma']:g}, `--kernel {KERNEL}`; sr: {s['sr_scale']}x bicubic downsampling, noise "
        f"{s['sr_sigma']:g}; inpaint: random thick scratches painted white (at least {s['scratch_fraction']:.0%} "
        f"of the pixels), `--mask` white = fill; denoise: noise std {s['denoise_sigma']:g}. Every output is "
        "rounded to 8 bits and scored against the truth (PSNR in dB, SSIM). Wiener's balance and "
        "Richardson-Lucy's iterations are picked per photo against the truth (oracle: an upper bound). "
        "seconds: the method's own time (invdiff: sampling, as `metrics.json` reports it; an oracle: its chosen "
        "setting's run); process s: the whole process, start-up, prior loading and any oracle grid included; "
        f"{memory} band / interior: RMSE in the {s['band']}-pixel edge band over the RMSE inside "
        f"(the real-input deblurring aims at {s['band_limit']:g} at most).",
        "",
    ]
    if not data["bm3d"]:
        lines += ["BM3D rows are left out: the `bm3d` package (the `bench` extra, "
                  "`pip install 'invdiff[bench]'`) is not installed.", ""]  # fmt: skip
    headers = ["photo", "task", "method", "PSNR", "SSIM", "band / interior", "seconds", "process s", "peak RSS MiB",
               "setting"]  # fmt: skip
    table = []
    for r in data["rows"]:
        setting = r["setting"] + (f"; sigma_y {r['sigma_y']:.4f} (true {r['true_sigma']:g})"
                                  if r["method"] == "invdiff" else "")  # fmt: skip
        if r.get("grid_edge"):
            setting += " (grid edge)"
        table.append([r["photo"], r["task"], r["method"], f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
                      f"{r['band_ratio']:.2f}" if "band_ratio" in r else None, f"{r['seconds']:.1f}",
                      f"{r['process_seconds']:.1f}", _mib(r.get("peak_mib")), setting])  # fmt: skip
    lines += [report.markdown_table(headers, table), ""]
    lines += ["Baselines: " + "; ".join(f"`{k}`: {v}" for k, v in data["baselines"].items()) + ".", ""]
    m = data["margins"]
    headers = ["photo", "task", "invdiff PSNR", "best baseline", "its PSNR", "margin dB", "SSIM margin",
               "time ratio", "memory ratio"]  # fmt: skip
    lines += ["Margins: invdiff minus the best baseline (by PSNR; the SSIM margin against the best by SSIM); "
              "ratios: invdiff over that baseline.", ""]  # fmt: skip
    lines += [report.markdown_table(headers, [[r["photo"], r["task"], f"{r['invdiff_psnr']:.2f}", r["baseline"],
                                                f"{r['baseline_psnr']:.2f}", f"{r['margin_db']:+.2f}",
                                                f"{r['margin_ssim']:+.3f}", f"{r['time_ratio']:.3g}",
                                                None if r["memory_ratio"] is None else f"{r['memory_ratio']:.3g}"]
                                               for r in m]), ""]  # fmt: skip
    lines += ["Where invdiff wins and where it does not:", ""] + verdict(m) + [""]
    band = [r for r in data["rows"] if "band_ratio" in r]
    if band:
        cells = [f"{r['photo']} {r['method']} {r['band_ratio']:.2f} "
                 f"({'within' if r['band_ratio'] <= s['band_limit'] else 'over'})" for r in band]  # fmt: skip
        lines += [f"Deblurring edge band / interior RMSE (limit {s['band_limit']:g}): " + "; ".join(cells) + ".", ""]
    lines += ["colorize is left out: no classical tool restores colour to compare with.", "",
              f"![damaged file, best baseline, invdiff, truth](results/{NAME}.png)"]  # fmt: skip
    return "\n".join(lines)
