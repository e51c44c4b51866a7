"""``sigma_y="auto"``: the wavelet-MAD estimate of ``estimate_sigma_y`` against known noise, per degradation.

scikit-image photographs (centre 256x256 crops in [0, 1], gray and RGB) are
degraded, then Gaussian noise of known std ``sigma`` is added to the
measurement, and ``invdiff.noise_level.estimate_sigma_y(y, op)`` estimates it
back.  Degradations: none (denoising), Gaussian blur of std 2 (reflect padding)
and 3 (valid padding), 4x bicubic downsampling, inpainting with 50 % of the
pixels missing at random and with a missing 128x128 box, and JPEG: the noisy
image rounded to 8 bits and saved at quality 75 and 90 (Pillow's defaults,
4:2:0 chroma subsampling for RGB).

Besides ``sigma`` each row reports ``rms``, the root mean square of
``y - A(x)`` (for JPEG, of the decoded file against the clean photo, so
compression error included): the error the measurement really carries.
``sigma = 0`` reads the photograph itself: its own sensor and rounding noise
and the fine texture the wavelet takes for noise.
"""

from __future__ import annotations

import io
import statistics
import time
from typing import Any

import numpy as np
import torch

from invdiff.datasets import skimage_image
from invdiff.noise_level import QUANTISATION_SIGMA, estimate_sigma_y
from invdiff.operators import Blur, Downsampling, Identity, Inpainting, box_mask, gaussian_kernel, random_mask

from . import report

NAME = "noise_level"
TITLE = "Noise-level estimation (sigma_y=\"auto\")"
SIZE = 256
SIGMAS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
#: (scikit-image name, channels) per mode
IMAGES = {
    "quick": (("camera", 1), ("astronaut", 3)),
    "full": (("camera", 1), ("astronaut", 1), ("astronaut", 3), ("coffee", 3), ("chelsea", 3), ("rocket", 3)),
}
SEEDS = {"quick": (0,), "full": (0, 1, 2)}
#: degradation -> description, in table order
DEGRADATIONS = {
    "denoise": "none (denoising)",
    "blur2": "Gaussian blur std 2, reflect padding",
    "blur3": "Gaussian blur std 3, valid padding",
    "sr4": "4x bicubic downsampling",
    "inpaint_random": "inpainting, 50% random pixels missing",
    "inpaint_box": "inpainting, 128x128 box missing",
    "jpeg75": "JPEG quality 75 of the noisy image",
    "jpeg90": "JPEG quality 90 of the noisy image",
}


def crop(name: str, channels: int, size: int = SIZE) -> torch.Tensor:
    """The centre ``size x size`` crop of a scikit-image photograph, ``(1, C, size, size)`` float64 in [0, 1]."""
    img = skimage_image(name, channels)
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return torch.from_numpy(img[top : top + size, left : left + size]).permute(2, 0, 1)[None].double()


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x`` ``(1, C, H, W)`` rounded to 8 bits, saved as JPEG at ``quality`` with Pillow and read back."""
    from PIL import Image

    a = (x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = np.asarray(Image.open(buf), dtype=np.float64) / 255
    out = out[..., None] if out.ndim == 2 else out
    return torch.from_numpy(out).permute(2, 0, 1)[None]


def measure(kind: str, x: torch.Tensor, sigma: float, g: torch.Generator) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """``(y, op, A(x))`` for a degradation: the noisy measurement, the operator to pass, the noiseless one."""

    def noise(a: torch.Tensor) -> torch.Tensor:
        return a + sigma * torch.randn(a.shape, generator=g, dtype=a.dtype)

    if kind.startswith("jpeg"):
        y = jpeg(noise(x), int(kind[4:]))
        return y, None, x
    ops = {
        "denoise": lambda: Identity(),
        "blur2": lambda: Blur(gaussian_kernel(2.0, dtype=torch.float64), padding="reflect"),
        "blur3": lambda: Blur(gaussian_kernel(3.0, dtype=torch.float64), padding="valid"),
        "sr4": lambda: Downsampling(4, filter="bicubic", image_size=tuple(x.shape[-2:])),
        "inpaint_random": lambda: Inpainting(random_mask(tuple(x.shape), missing=0.5, generator=g)),
        "inpaint_box": lambda: Inpainting(box_mask(tuple(x.shape), 128)),
    }
    op = ops[kind]()
    ax = op(x)
    y = noise(ax)
    if isinstance(op, Inpainting):
        y = op.mask.to(y.dtype) * y  # zeros where unknown, as a masked photo arrives
    return y, op, ax


def run(mode: str = "quick", seed: int = 0, device: str = "cpu") -> dict:
    """Run the benchmark, write ``results/noise_level.{json,md}`` and ``RESULTS.md``; return all numbers.

    Estimation runs on the CPU (scikit-image); ``device`` is only recorded.
    """
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name, channels in IMAGES[mode]:
        x = crop(name, channels)
        for s in SEEDS[mode]:
            g = torch.Generator().manual_seed(seed + s)
            for kind in DEGRADATIONS:
                for sigma in SIGMAS:
                    y, op, ax = measure(kind, x, sigma, g)
                    err = y - ax
                    if isinstance(op, Inpainting):
                        err = err[op.mask.expand(y.shape) == 1]  # the known pixels carry the noise
                    rms = float(err.pow(2).mean().sqrt())
                    t = time.perf_counter()
                    est = estimate_sigma_y(y, op)
                    rows.append({"image": name, "channels": channels, "seed": seed + s, "degradation": kind,
                                 "sigma": sigma, "rms": rms, "estimate": est,
                                 "ratio": est / sigma if sigma > 0 else None,
                                 "seconds": time.perf_counter() - t})  # fmt: skip
        print(f"{name} ({channels} ch) done", flush=True)
    data = {"name": NAME, "mode": mode, "size": SIZE, "sigmas": list(SIGMAS), "seeds": [seed + s for s in SEEDS[mode]],
            "images": [f"{n} ({'gray' if c == 1 else 'RGB'})" for n, c in IMAGES[mode]],
            "degradations": DEGRADATIONS, "quantisation_floor": QUANTISATION_SIGMA, "rows": rows,
            "total_seconds": time.perf_counter() - t_all, "machine": report.machine("cpu")}  # fmt: skip
    report.write_json(NAME, data)
    report.write_section(NAME, markdown(data))
    return data


def _cell(values: list[float], digits: int = 3) -> str:
    """Median and range of ``values``: ``1.02 (0.98-1.05)``."""
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"{med:.{digits}g} ({lo:.{digits}g}–{hi:.{digits}g})" if len(values) > 1 else f"{med:.{digits}g}"


def markdown(data: dict[str, Any]) -> str:
    """The ``## Noise-level estimation`` section: estimate / sigma per degradation and noise level."""
    rows = data["rows"]
    sigmas = [s for s in data["sigmas"] if s > 0]
    n_cases = len(data["images"]) * len(data["seeds"])
    lines = [
        f"## {TITLE}",
        "",
        f"`estimate_sigma_y(y, op)` (wavelet MAD: scikit-image's `estimate_sigma`, hand-written Haar on fully known "
        f"2x2 blocks for inpainting) on centre {data['size']}x{data['size']} crops of "
        f"{', '.join(data['images'])}; seeds {', '.join(map(str, data['seeds']))} ({n_cases} cases per cell: "
        f"median (min–max)). Gaussian noise of std sigma is added after the degradation (before it for JPEG, "
        f"whose file is the measurement). {data['mode']} mode, {data['total_seconds']:.0f} s in all. "
        f"{report.describe_machine(data['machine'])}",
        "",
        "Estimate / sigma, the ratio:",
        "",
    ]
    headers = ["degradation", "photo alone (sigma = 0): estimate"] + [f"sigma = {s:g}" for s in sigmas]
    table = []
    for kind, what in data["degradations"].items():
        mine = [r for r in rows if r["degradation"] == kind]
        cells = [what, _cell([r["estimate"] for r in mine if r["sigma"] == 0], 2)]
        cells += [_cell([r["ratio"] for r in mine if r["sigma"] == s]) for s in sigmas]
        table.append(cells)
    lines += [report.markdown_table(headers, table), ""]
    lines += ["JPEG files carry more than the added noise: rms(y - x) / sigma, the compression error included "
              "(below 1 at large sigma for RGB: 4:2:0 chroma subsampling averages the colour noise):", ""]
    table = [[f"JPEG quality {k[4:]}"] + [_cell([r["rms"] / r["sigma"] for r in rows
                                                if r["degradation"] == k and r["sigma"] == s]) for s in sigmas]
             for k in ("jpeg75", "jpeg90")]  # fmt: skip
    lines += [report.markdown_table(["file"] + headers[2:], table), ""]
    lines += [
        f"Floor: {data['quantisation_floor']:.5f} = 1/255/sqrt(12), the rounding noise of an 8-bit file. "
        "At sigma = 0 a photograph reads its own sensor noise, rounding and the fine texture the wavelet takes "
        "for noise, not 0 (more after 4x downsampling, which packs texture into fewer pixels); that reading "
        "adds to small sigma, so denoising, inpainting and super-resolution overestimate small noise by an "
        "amount that depends on the photo. Blur removes the photo's noise and texture before the noise is "
        "added, so blurred measurements read true. JPEG quantises away the finest frequencies the wavelet "
        "reads, noise included, by an amount that depends on quality, content and noise level, so JPEG files "
        "read low. No correction is applied (`invdiff/noise_level.py`): neither bias is the same from one "
        "photo to the next; for JPEG files pass sigma_y by hand.",
        "",
    ]
    return "\n".join(lines)
