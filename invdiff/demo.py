"""The demo job: restore a held-out bundled image with the shipped default prior.

Simulates a measurement of scikit-image's ``camera`` (never seen in training),
restores it with ``invdiff.restore``, and writes the truth, measurement,
posterior mean, per-pixel standard deviation, the samples, a comparison figure
and ``metrics.json`` (PSNR/SSIM of the restoration and of the classical
baseline for the same task; LPIPS where torchvision's AlexNet weights are
present).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .datasets import load_test_image
from .metrics import lpips, lpips_available, psnr, ssim
from .operators import Downsampling, Gaussian, Inpainting, random_mask
from .priors import load_prior
from .restore import restore

DEMO_TASKS = ("inpaint", "sr")


def _save_png(path: Path, x: torch.Tensor) -> None:
    from skimage import io

    img = (x.detach().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    tmp = path.with_name(path.stem + ".tmp.png")
    io.imsave(str(tmp), img[..., 0] if img.shape[2] == 1 else img, check_contrast=False)
    tmp.replace(path)


def _baseline(task: str, y: torch.Tensor, mask: torch.Tensor | None, factor: int) -> tuple[str, torch.Tensor]:
    """The classical baseline for the task: biharmonic inpainting, bicubic interpolation."""
    if task == "inpaint":
        from skimage.restoration import inpaint_biharmonic

        img = y[0, 0].numpy().astype(np.float64)
        out = inpaint_biharmonic(img, (mask[0, 0] == 0).numpy())
        return "biharmonic", torch.from_numpy(out).float()[None, None]
    up = torch.nn.functional.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False)
    return "bicubic", up.clamp(0, 1)


def run_demo(output: str | Path = "invdiff-demo", task: str = "inpaint", method: str | None = None,
             steps: int | None = None, samples: int = 4, size: int = 128, sigma_y: float = 0.01,
             seed: int = 0, prior: str = "natural-gray") -> dict:  # fmt: skip
    """Run the demo and return its metrics (also written to ``output/metrics.json``)."""
    if task not in DEMO_TASKS:
        raise ValueError(f"unknown demo task {task!r}; choose one of {DEMO_TASKS}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    x = load_test_image("camera", channels=1, size=size)
    g = torch.Generator().manual_seed(seed)
    mask, factor = None, 4
    if task == "inpaint":
        mask = random_mask(tuple(x.shape), missing=0.7, generator=g)
        op = Inpainting(mask)
        method = method or "ddrm"
        what = "inpainting, 70% of pixels missing"
    else:
        op = Downsampling(factor, filter="bicubic", image_size=tuple(x.shape[-2:]))
        method = method or "ddrm"
        what = "4x super-resolution (bicubic)"
    y = Gaussian(sigma_y).sample(op(x), generator=g)

    p = load_prior(prior)
    t0 = time.time()
    result = restore(y, op, p, method=method, steps=steps, sigma_y=sigma_y, samples=samples, seed=seed)
    base_name, base = _baseline(task, y, mask, factor)

    _save_png(out / "truth.png", x)
    _save_png(out / "measurement.png", y if task == "inpaint" else base)
    _save_png(out / "restored.png", result.mean)
    std = result.std / max(float(result.std.max()), 1e-8)
    _save_png(out / "std.png", std)
    for i in range(result.samples.shape[0]):
        _save_png(out / f"sample_{i}.png", result.samples[i])
    _save_png(out / f"baseline_{base_name}.png", base)
    figure = torch.cat([(y if task == "inpaint" else base), base, result.mean, std, x], dim=-1)
    _save_png(out / "comparison.png", figure)

    metrics = {
        "image": f"skimage camera, centre {size}x{size} crop (held out from training)",
        "task": what,
        "sigma_y": sigma_y,
        "prior": prior,
        "method": method,
        "steps": result.steps,
        "samples": samples,
        "nfe": result.nfe,
        "seconds": round(time.time() - t0, 2),
        "restored": {"psnr": float(psnr(result.mean, x)[0]), "ssim": float(ssim(result.mean, x)[0])},
        base_name: {"psnr": float(psnr(base, x)[0]), "ssim": float(ssim(base, x)[0])},
        "mean_std": float(result.std.mean()),
        "figure": "comparison.png: measurement | " + base_name + " | restored (posterior mean) | std | truth",
    }
    if lpips_available():
        metrics["restored"]["lpips"] = float(lpips(result.mean, x)[0])
        metrics[base_name]["lpips"] = float(lpips(base, x)[0])
    else:
        metrics["lpips"] = "not computed: torchvision's AlexNet weights are not in the torch cache"
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
