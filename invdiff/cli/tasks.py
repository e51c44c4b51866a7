"""The command line's tasks: a task name and its options -> a forward operator.

``TASKS`` is the only table that maps task names to operators.  A task's
options are plain JSON-able values (strings and numbers), so the same spec
that built an operator can be written beside a measurement as a sidecar and
rebuild it exactly (random masks and kernels are drawn from ``seed``).

Option syntax, as on the command line:

* inpaint: ``random_mask=0.7`` (fraction missing) | ``box=32`` (side of a
  centred missing square) | ``mask=FILE`` (nonzero = known);
* deblur: ``kernel=gaussian:2.0`` | ``kernel=motion:31,0.5`` (size, intensity)
  | ``kernel=FILE`` (an image or .npy, normalised to sum 1); ``padding``;
* sr: ``scale=4``, ``filter=bicubic|box``;
* mri: ``acceleration=4``, ``center_fraction=0.08``, ``mask_kind=random|equispaced``,
  ``coils=1`` (more: ``MultiCoilMRI`` with simulated birdcage sensitivities);
* ct: ``angles=30``, ``arc=180`` (degrees the views span; less is limited-angle CT),
  ``dose=I0`` (low-dose: Beer-Lambert photon counts with Poisson noise, ``I0`` per bin);
  without a dose the sinogram is divided by ``||A||`` (``invdiff.medical.ct.normalized``);
* denoise, colorize: no options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..operators import (
    MRI,
    Blur,
    Colorization,
    Downsampling,
    Identity,
    Inpainting,
    MultiCoilMRI,
    Operator,
    Tomography,
    birdcage_sensitivities,
    box_mask,
    gaussian_kernel,
    mask_from_image,
    motion_kernel,
    mri_mask,
    random_mask,
)


@dataclass(frozen=True)
class Task:
    """A task: builds its operator for an image shape ``(B, C, H, W)``."""

    build: Callable[[tuple[int, ...], dict[str, Any], torch.Generator], Operator]
    options: dict[str, Any]  # option -> default
    description: str


def _inpaint(shape: tuple[int, ...], opt: dict[str, Any], g: torch.Generator) -> Operator:
    given = [k for k in ("random_mask", "box", "mask") if opt[k] is not None]
    if len(given) > 1:
        raise ValueError(f"inpaint takes one of --random-mask, --box, --mask, got {', '.join(given)}")
    if opt["mask"] is not None:
        path = Path(opt["mask"])
        if not path.is_file():
            raise ValueError(f"mask file {path} not found")
        try:
            mask = mask_from_image(path, shape=shape[-2:])
        except ValueError as e:
            raise ValueError(f"mask {path}: {e}") from None
        return Inpainting(mask)
    if opt["box"] is not None:
        size = int(opt["box"])
        if not 0 < size < min(shape[-2:]):
            raise ValueError(f"--box {size} must be between 1 and the image side {min(shape[-2:])} - 1")
        return Inpainting(box_mask(shape[-2:], size))
    missing = 0.7 if opt["random_mask"] is None else float(opt["random_mask"])
    if not 0 <= missing < 1:
        raise ValueError(f"--random-mask is the fraction of missing pixels, in [0, 1), got {missing}")
    return Inpainting(random_mask(shape[-2:], missing=missing, generator=g))


def parse_kernel(spec: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``gaussian:SIGMA[,SIZE]`` | ``motion:SIZE,INTENSITY`` | a file (image or .npy) -> a 2-D kernel summing to 1."""
    name, _, args = spec.partition(":")
    try:
        values = [float(v) for v in args.split(",")] if args else []
    except ValueError:
        raise ValueError(f"kernel {spec!r}: parameters must be numbers, e.g. gaussian:2.0 or motion:31,0.5") from None
    if name == "gaussian":
        if not values or values[0] <= 0:
            raise ValueError(f"kernel {spec!r}: give a positive width, e.g. gaussian:2.0")
        return gaussian_kernel(values[0], int(values[1]) if len(values) > 1 else None)
    if name == "motion":
        if len(values) != 2 or values[0] < 3:
            raise ValueError(f"kernel {spec!r}: give size and intensity, e.g. motion:31,0.5")
        return motion_kernel(int(values[0]), values[1], generator=generator)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"kernel {spec!r} is neither gaussian:SIGMA, motion:SIZE,INTENSITY nor an existing file")
    if path.suffix.lower() == ".npy":
        k = np.load(path, allow_pickle=False)
    else:
        from skimage import io

        k = io.imread(path, as_gray=True)
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or not np.isfinite(k).all() or k.min() < 0 or k.sum() <= 0:
        raise ValueError(f"kernel file {path}: need a 2-D, finite, non-negative array with a positive sum")
    return torch.from_numpy(k / k.sum()).float()


def _deblur(shape: tuple[int, ...], opt: dict[str, Any], g: torch.Generator) -> Operator:
    kernel = parse_kernel(str(opt["kernel"]), generator=g)
    if kernel.shape[0] > shape[-2] or kernel.shape[1] > shape[-1]:
        raise ValueError(f"kernel of size {tuple(kernel.shape)} is larger than the image {tuple(shape[-2:])}")
    return Blur(kernel, padding=str(opt["padding"]))


def _sr(shape: tuple[int, ...], opt: dict[str, Any], g: torch.Generator) -> Operator:
    scale = int(opt["scale"])
    filt = str(opt["filter"])
    if filt not in ("box", "bicubic"):
        raise ValueError(f"--filter must be box or bicubic, got {filt!r}")
    h, w = shape[-2:]
    if scale < 2 or h % scale or w % scale:
        raise ValueError(f"--scale {scale}: the image sides {h}x{w} must be divisible by it (and it at least 2)")
    return Downsampling(scale, filter=filt, image_size=(h, w))


def _mri(shape: tuple[int, ...], opt: dict[str, Any], g: torch.Generator) -> Operator:
    acc = float(opt["acceleration"])
    if acc < 1:
        raise ValueError(f"--acceleration must be at least 1, got {acc}")
    mask = mri_mask(shape[-2:], acceleration=acc, center_fraction=float(opt["center_fraction"]),
                    kind=str(opt["mask_kind"]), generator=g)  # fmt: skip
    coils = int(opt["coils"])
    if coils < 1:
        raise ValueError(f"--coils must be a positive number of receive coils, got {coils}")
    if coils == 1:
        return MRI(mask)
    return MultiCoilMRI(mask, birdcage_sensitivities(coils, shape[-2:]))


def _ct(shape: tuple[int, ...], opt: dict[str, Any], g: torch.Generator) -> Operator:
    from ..medical.ct import normalized
    from ..operators import BeerLambert

    angles, arc = int(opt["angles"]), float(opt["arc"])
    if angles < 1:
        raise ValueError(f"--angles must be a positive number of views, got {angles}")
    if not 0 < arc <= 180:
        raise ValueError(f"--arc is the angular range of the views in degrees, in (0, 180], got {arc:g}")
    if shape[-2] != shape[-1]:
        raise ValueError(f"ct needs square images, got {shape[-2]}x{shape[-1]}; crop or pad first")
    op = Tomography(angles, image_size=shape[-1], arc=arc)
    if opt["dose"] is None:
        return normalized(op)  # line integrals / ||A||: sigma_y and step sizes as for the other tasks
    dose = float(opt["dose"])
    if not dose > 0:
        raise ValueError(f"--dose is the unattenuated photon count per detector bin and must be positive, got {dose:g}")
    return BeerLambert(op, I0=1.0)  # expected transmission; the counts' Poisson noise: measurement_noise


def _colorize(shape: tuple[int, ...], opt: dict[str, Any], g: torch.Generator) -> Operator:
    if shape[1] != 3:
        raise ValueError(f"colorize needs RGB images, got {shape[1]} channel(s)")
    return Colorization()


#: task name -> Task (the only place the CLI maps task names to operators)
TASKS: dict[str, Task] = {
    "inpaint": Task(_inpaint, {"random_mask": None, "box": None, "mask": None}, "fill in missing pixels"),
    "deblur": Task(_deblur, {"kernel": "gaussian:2.0", "padding": "circular"}, "remove a known blur"),
    "sr": Task(_sr, {"scale": 4, "filter": "bicubic"}, "super-resolution by an integer factor"),
    "denoise": Task(lambda s, o, g: Identity(), {}, "remove noise"),
    "colorize": Task(_colorize, {}, "gray to RGB"),
    "mri": Task(_mri, {"acceleration": 4, "center_fraction": 0.08, "mask_kind": "random", "coils": 1},
                "undersampled Cartesian MRI (single- or multi-coil)"),
    "ct": Task(_ct, {"angles": 30, "arc": 180.0, "dose": None}, "parallel-beam CT: sparse-view, limited-angle, low-dose"),
}


def build_operator(task: str, shape: tuple[int, ...], options: dict[str, Any] | None = None,
                   seed: int = 0) -> Operator:  # fmt: skip
    """The operator of ``task`` for images of ``shape`` (random parts drawn from ``seed``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    opt = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = set(opt) - set(TASKS[task].options)
    if unknown:
        valid = ", ".join(TASKS[task].options) or "none"
        raise ValueError(f"task {task} takes no option(s) {', '.join(sorted(unknown))}; its options: {valid}")
    g = torch.Generator().manual_seed(seed)
    op = TASKS[task].build(tuple(shape), {**TASKS[task].options, **opt}, g)
    op.check(tuple(shape))
    return op


def _same_operator(a: Operator, b: Operator) -> bool:
    """Same type, same plain attributes and equal buffers/parameters."""
    if type(a) is not type(b):
        return False
    va = {k: v for k, v in vars(a).items() if not k.startswith("_")}
    vb = {k: v for k, v in vars(b).items() if not k.startswith("_")}
    if va.keys() != vb.keys():
        return False
    for k, v in va.items():
        w = vb[k]
        if isinstance(v, torch.Tensor) or isinstance(w, torch.Tensor):
            if not (isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor) and v.shape == w.shape
                    and bool(torch.equal(v, w))):  # fmt: skip
                return False
        elif v != w:
            return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and bool(torch.equal(sa[k], sb[k])) for k in sa
    )


def stack_operators(ops: list[Operator]) -> Operator | None:
    """One operator for the images of ``ops`` stacked into one batch, or ``None`` if there is none.

    Identical operators (no random part, or the same mask/kernel file) stack as
    themselves; inpainting operators with different masks of one size stack into
    one with a mask per image.  Anything else (e.g. per-file random motion
    kernels) has no batched form here, and those files are restored one by one.
    """
    if all(_same_operator(ops[0], o) for o in ops[1:]):
        return ops[0]
    if all(type(o) is Inpainting for o in ops):
        masks = [o.mask for o in ops]
        if all(m.shape == masks[0].shape and m.shape[0] == 1 for m in masks):
            return Inpainting(torch.cat(masks))
    return None


def measurement_noise(op: Operator, sigma_y: float, options: dict[str, Any] | None = None) -> Any:
    """The noise model of a task's measurement: ``Gaussian(sigma_y)``, or for low-dose CT (``dose=I0``)
    ``Poisson(gain=1/I0)``, photon counts of the transmission ``y = k / I0`` (``invdiff.medical.ct.low_dose``)."""
    from ..operators import BeerLambert, Gaussian, Poisson

    dose = (options or {}).get("dose")
    if isinstance(op, BeerLambert) and dose is not None:
        return Poisson(gain=1.0 / float(dose))
    return Gaussian(sigma_y)


def operator_for(method: str, op: Operator) -> Operator:
    """``op`` as the method needs it: CT through its dense SVD for the methods that need an SVD (DDRM, DDNM)."""
    from ..methods import METHODS

    if isinstance(op, Tomography) and method in METHODS and "svd" in METHODS[method].needs:
        return op.svd()
    return op
