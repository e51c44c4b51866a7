"""The demo job: restore a held-out bundled image with the shipped default prior.

Simulates a measurement of scikit-image's ``camera`` (never seen in training),
restores it with ``invdiff.restore``, and writes the truth, measurement,
posterior mean, per-pixel standard deviation, the samples, a comparison figure
and ``metrics.json`` (PSNR/SSIM of the restoration and of the classical
baseline for the same task; LPIPS where torchvision's AlexNet weights are
present).

It also writes a damaged photo as a camera would deliver it, ``blurry.png`` (a
larger crop of ``camera`` blurred by a 'valid' convolution, noisy, 8-bit), and
its truth ``sharp.png``, for ``invdiff restore`` to restore as a user's file::

    invdiff restore blurry.png --task deblur --kernel gaussian:2 --ground-truth sharp.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..datasets import load_test_image
from ..metrics import lpips, lpips_available, psnr, ssim
from ..operators import Blur, Downsampling, Gaussian, Inpainting, gaussian_kernel, random_mask
from ..priors import load_prior
from ..restore import restore

DEMO_TASKS = ("deblur", "inpaint", "sr")
#: measurement noise per task when none is given (deblur: the benchmark's Gaussian-deblur setting)
DEMO_SIGMA_Y = {"deblur": 0.02, "inpaint": 0.01, "sr": 0.01}
#: Wiener balances tried for the oracle-tuned baseline (the one closest to the truth is kept)
WIENER_BALANCES = tuple(float(v) for v in np.logspace(-4, 0, 17))


def _save_png(path: Path, x: torch.Tensor) -> None:
    from skimage import io

    img = (x.detach().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    tmp = path.with_name(path.stem + ".tmp.png")
    io.imsave(str(tmp), img[..., 0] if img.shape[2] == 1 else img, check_contrast=False)
    tmp.replace(path)


def _baseline(task: str, y: torch.Tensor, op, x: torch.Tensor, mask: torch.Tensor | None,
              factor: int) -> tuple[str, torch.Tensor]:  # fmt: skip
    """The classical baseline for the task: oracle-tuned Wiener, biharmonic inpainting, bicubic interpolation."""
    if task == "deblur":
        # scikit-image's Wiener-Hunt deconvolution (periodic, like the circular blur), with the
        # balance that is best against the truth: an upper bound on what Wiener filtering reaches.
        from skimage.restoration import wiener

        img, kernel = y[0, 0].double().numpy(), op.kernel[0].double().numpy()
        outs = [torch.from_numpy(wiener(img, kernel, b, clip=False)).float()[None, None] for b in WIENER_BALANCES]
        best = max(outs, key=lambda o: float(psnr(o.clamp(0, 1), x)[0]))
        return "wiener", best.clamp(0, 1)
    if task == "inpaint":
        from skimage.restoration import inpaint_biharmonic

        img = y[0, 0].numpy().astype(np.float64)
        out = inpaint_biharmonic(img, (mask[0, 0] == 0).numpy())
        return "biharmonic", torch.from_numpy(out).float()[None, None]
    up = torch.nn.functional.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False)
    return "bicubic", up.clamp(0, 1)


#: the damaged photo ``run_demo`` writes for ``invdiff restore``: side, Gaussian blur std, noise std
PHOTO_SIZE, PHOTO_BLUR, PHOTO_NOISE = 256, 2.0, 0.01


def write_blurry_photo(output: str | Path, size: int = PHOTO_SIZE, seed: int = 0) -> tuple[Path, Path]:
    """``output/blurry.png`` and ``output/sharp.png``: a blurry photo as a camera makes it, and its truth.

    The centre ``size x size`` of ``camera`` (held out from training) is the truth; the photo is
    the 'valid' convolution of a crop larger by the kernel's radius on each side with a Gaussian
    of std ``PHOTO_BLUR``, plus noise of std ``PHOTO_NOISE``, rounded to 8 bits: not periodic,
    not padded, as a real blurry photo is.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    kernel = gaussian_kernel(PHOTO_BLUR)
    r = kernel.shape[0] // 2
    x = load_test_image("camera", channels=1, size=size + 2 * r)
    g = torch.Generator().manual_seed(seed)
    y = Gaussian(PHOTO_NOISE).sample(Blur(kernel, padding="valid")(x), generator=g)
    _save_png(out / "blurry.png", y)
    _save_png(out / "sharp.png", x[..., r:-r, r:-r])
    return out / "blurry.png", out / "sharp.png"


def run_demo(output: str | Path = "invdiff-demo", task: str = "deblur", method: str | None = None,
             steps: int | None = None, samples: int = 4, size: int = 128, sigma_y: float | None = None,
             seed: int = 0, prior: str = "natural-gray") -> dict:  # fmt: skip
    """Run the demo and return its metrics (also written to ``output/metrics.json``).

    ``task``: ``deblur`` (Gaussian blur of std 2 pixels, circular; noise 0.02 by default),
    ``inpaint`` (70% of the pixels missing) or ``sr`` (4x bicubic); noise 0.01 by default.
    """
    if task not in DEMO_TASKS:
        raise ValueError(f"unknown demo task {task!r}; choose one of {', '.join(DEMO_TASKS)}")
    sigma_y = DEMO_SIGMA_Y[task] if sigma_y is None else sigma_y
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    x = load_test_image("camera", channels=1, size=size)
    g = torch.Generator().manual_seed(seed)
    mask, factor = None, 4
    if task == "deblur":
        op = Blur(gaussian_kernel(2.0), padding="circular")
        method = method or "ddrm"
        what = "Gaussian deblurring (std 2 pixels, circular)"
    elif task == "inpaint":
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
    base_name, base = _baseline(task, y, op, x, mask, factor)

    _save_png(out / "truth.png", x)
    shown = base if task == "sr" else y  # a low-resolution measurement is shown upsampled
    _save_png(out / "measurement.png", shown)
    _save_png(out / "restored.png", result.mean)
    std = result.std / max(float(result.std.max()), 1e-8)
    _save_png(out / "std.png", std)
    for i in range(result.samples.shape[0]):
        _save_png(out / f"sample_{i}.png", result.samples[i])
    _save_png(out / f"baseline_{base_name}.png", base)
    figure = torch.cat([shown, base, result.mean, std, x], dim=-1)
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
    write_blurry_photo(out, seed=seed)
    metrics["blurry_photo"] = ("blurry.png: a real-photo style measurement for 'invdiff restore blurry.png --task deblur "
                               "--kernel gaussian:2 --ground-truth sharp.png'")  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
