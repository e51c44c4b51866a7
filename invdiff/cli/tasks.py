"""The command line's tasks: a task name and its options -> a forward operator.

Two ways in: ``build_operator`` makes the operator that degrades a clean image
(``invdiff degrade``, ``invdiff restore --simulate``); ``measured_operator`` builds
it from a measurement a user has (the default of ``invdiff restore``).

``TASKS`` is the only table that maps task names to operators.  A task's
options are plain JSON-able values (strings and numbers), so the same spec
that built an operator can be written beside a measurement as a sidecar and
rebuild it exactly (random masks and kernels are drawn from ``seed``).

Option syntax, as on the command line:

* inpaint: ``random_mask=0.7`` (fraction missing) | ``box=32`` (side of a
  centred missing square) | ``mask=FILE`` (white/nonzero = the region to fill, as
  OpenCV, LaMa and diffusers read masks) | ``mask_known=FILE`` (nonzero = known);
* deblur: ``kernel=gaussian:2.0`` | ``kernel=motion:31,0.5`` (size, intensity)
  | ``kernel=FILE`` (an image or .npy, normalised to sum 1) | ``kernel=auto`` (a measured
  photo only: estimated with the image, ``BlindBlur(kernel_size)``, ``kernel_size`` odd,
  default 31); ``padding``;
* sr: ``scale=4``, ``filter=bicubic|box``;
* mri: ``acceleration=4``, ``center_fraction=0.08``, ``mask_kind=random|equispaced``,
  ``coils=1`` (more: ``MultiCoilMRI`` with simulated birdcage sensitivities);
* ct: ``angles=30``, ``arc=180`` (degrees the views span; less is limited-angle CT),
  ``dose=I0`` (low-dose: Beer-Lambert photon counts with Poisson noise, ``I0`` per bin);
  without a dose the sinogram is divided by ``||A||`` (``invdiff.medical.ct.normalized``);
  ``image_size`` for a measured sinogram (default: the largest image its detectors cover);
* denoise, colorize: no options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..operators import (
    MRI,
    BlindBlur,
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
    given = [k for k in ("random_mask", "box", "mask", "mask_known") if opt[k] is not None]
    if len(given) > 1:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"inpaint takes one of --random-mask, --box, --mask, --mask-known, got {flags}")
    for key, nonzero in (("mask", "fill"), ("mask_known", "known")):
        if opt[key] is not None:
            return Inpainting(read_mask(opt[key], shape[-2:], nonzero))
    if opt["box"] is not None:
        size = int(opt["box"])
        if not 0 < size < min(shape[-2:]):
            raise ValueError(f"--box {size} must be between 1 and the image side {min(shape[-2:])} - 1")
        return Inpainting(box_mask(shape[-2:], size))
    missing = 0.7 if opt["random_mask"] is None else float(opt["random_mask"])
    if not 0 <= missing < 1:
        raise ValueError(f"--random-mask is the fraction of missing pixels, in [0, 1), got {missing}")
    return Inpainting(random_mask(shape[-2:], missing=missing, generator=g))


def read_mask(file: str | Path, size: tuple[int, ...], nonzero: str = "fill") -> torch.Tensor:
    """The known-pixel mask ``(1, 1, H, W)`` of a mask image (``nonzero``: ``"fill"`` or ``"known"``), sized ``size``."""
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"mask file {path} not found")
    try:
        return mask_from_image(path, shape=tuple(size), nonzero=nonzero)
    except ValueError as e:
        raise ValueError(f"mask {path}: {e}") from None


#: ``--kernel auto``'s default ``--kernel-size``: the side of the support the blind estimate searches
BLIND_KERNEL_SIZE = 31
#: the text key ``kernel.png`` carries: the enlarged preview of an estimated kernel, not a kernel to read back
PREVIEW_KEY = "invdiff-kernel-preview"


def parse_kernel(spec: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``gaussian:SIGMA[,SIZE]`` | ``motion:SIZE,INTENSITY`` | a file (image or .npy) -> a 2-D kernel summing to 1."""
    if spec == "auto":
        raise ValueError("--kernel auto estimates the kernel of a real blurry photo; it has no kernel to blur with "
                         "(to make a measurement give one, e.g. --kernel gaussian:2.0)")  # fmt: skip
    name, _, args = spec.partition(":")
    if name in ("gaussian", "motion"):
        try:
            values = [float(v) for v in args.split(",")] if args else []
        except ValueError:
            raise ValueError(f"kernel {spec!r}: parameters must be numbers, e.g. gaussian:2.0 or motion:31,0.5"
                             ) from None  # fmt: skip
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
    return read_kernel(path)


def read_kernel(path: Path) -> torch.Tensor:
    """The 2-D kernel in an image or ``.npy`` file, normalised to sum 1; a one-line error naming the file otherwise."""
    try:
        if path.suffix.lower() == ".npy":
            k = np.load(path, allow_pickle=False)
        else:
            from PIL import Image as PILImage
            from skimage import io

            with PILImage.open(path) as im:
                if PREVIEW_KEY in getattr(im, "text", {}):
                    raise ValueError(f"kernel file {path} is the enlarged preview of an estimated kernel; pass the "
                                     f"kernel.npy beside it")  # fmt: skip
            k = io.imread(path, as_gray=True)
        k = np.asarray(k, dtype=np.float64)
    except ValueError as e:
        if str(e).startswith("kernel file"):
            raise
        raise ValueError(f"kernel file {path}: cannot read it as a kernel ({str(e).splitlines()[0]})") from None
    except (OSError, TypeError, EOFError) as e:
        raise ValueError(f"kernel file {path}: cannot read it as an image or .npy array ({e})") from None
    if k.ndim == 3 and k.shape[0] == 1:  # one kernel of a (B, K, K) batch, as Result.kernel holds them
        k = k[0]
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"kernel file {path}: need a 2-D array (rows x columns), got shape {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError(f"kernel file {path}: need a 2-D, finite, non-negative array; it has NaN or infinite values")
    if k.min() < 0:
        raise ValueError(f"kernel file {path}: need a 2-D, finite, non-negative array; its smallest value is "
                         f"{k.min():g}")  # fmt: skip
    if not k.sum() > 0:
        raise ValueError(f"kernel file {path}: need a 2-D, finite, non-negative array with a positive sum; "
                         f"it is all zero")  # fmt: skip
    return torch.from_numpy(k / k.sum()).float()


def _deblur(shape: tuple[int, ...], opt: dict[str, Any], g: torch.Generator) -> Operator:
    if opt.get("kernel_size") is not None:
        raise ValueError("--kernel-size is the support of --kernel auto, which estimates a real photo's kernel; "
                         "with --simulate give the kernel to blur with (e.g. --kernel gaussian:2.0)")  # fmt: skip
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

    if opt.get("image_size") is not None:
        raise ValueError("--image-size applies to measured sinograms; with --simulate the image's own size sets it")
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
    "inpaint": Task(_inpaint, {"random_mask": None, "box": None, "mask": None, "mask_known": None},
                    "fill in missing pixels"),
    "deblur": Task(_deblur, {"kernel": "gaussian:2.0", "padding": "circular", "kernel_size": None},
                   "remove a blur (known; or estimated: kernel=auto, measured photos)"),
    "sr": Task(_sr, {"scale": 4, "filter": "bicubic"}, "super-resolution by an integer factor"),
    "denoise": Task(lambda s, o, g: Identity(), {}, "remove noise"),
    "colorize": Task(_colorize, {}, "gray to RGB"),
    "mri": Task(_mri, {"acceleration": 4, "center_fraction": 0.08, "mask_kind": "random", "coils": 1},
                "undersampled Cartesian MRI (single- or multi-coil)"),
    "ct": Task(_ct, {"angles": 30, "arc": 180.0, "dose": None, "image_size": None},
               "parallel-beam CT: sparse-view, limited-angle, low-dose"),
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
    kernels, or ``BlindBlur``: each photo's kernel is its own) has no batched form
    here, and those files are restored one by one.
    """
    if any(isinstance(o, BlindBlur) for o in ops):
        return None
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


# ----------------------------------------------------------------------------- real measurements
# Without --simulate an input file *is* the measurement y.  Each task's operator is then built
# from y (not from a clean image): the blurry photo, the low-resolution photo, the damaged photo.

#: options that only make sense when invdiff makes the measurement itself (``--simulate``)
SIMULATION_ONLY: dict[str, tuple[str, ...]] = {
    "inpaint": ("random_mask", "box"),
    "ct": ("angles", "dose"),
}  # mri: a k-space .h5 uses its own mask; fully sampled k-space is undersampled by the mri options

#: what each task takes as a measured input (named in the errors about simulation-only options)
MEASURED_INPUT = {
    "deblur": "the blurry image and its kernel: --kernel gaussian:SIGMA, a kernel file, or --kernel auto (estimated)",
    "sr": "the low-resolution image; the output is --scale times its size",
    "inpaint": "the damaged image, with --mask FILE (white = fill), --mask-known FILE or an alpha channel",
    "denoise": "the noisy image",
    "colorize": "a gray image; the output is RGB",
    "ct": "a sinogram (.npy/.tif, detectors x views, as 'invdiff degrade --task ct' writes it)",
    "mri": "k-space in a fastMRI .h5 file",
}


@dataclass
class Measured:
    """A measured input made ready: ``y``, the operator whose range it lies in, and the output's region.

    ``crop`` maps a restored image (``op``'s domain) to the output; ``size`` is the output's ``(H, W)``.
    """

    y: torch.Tensor
    op: Operator
    crop: Callable[[torch.Tensor], torch.Tensor]
    size: tuple[int, int]
    options: dict[str, Any]


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t


def check_measured_options(task: str, options: dict[str, Any]) -> None:
    """A one-line error for options that only apply with ``--simulate``, and for a deblurring without its kernel."""
    wrong = [k for k in SIMULATION_ONLY.get(task, ()) if options.get(k) is not None]
    if task == "deblur":
        _check_measured_kernel(options)
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ValueError(f"{flags} only apply with --simulate (invdiff makes the measurement); a measured "
                         f"--task {task} input is {MEASURED_INPUT[task]}")  # fmt: skip


def _check_measured_kernel(options: dict[str, Any]) -> None:
    """A real photo's deblurring needs ``kernel``: a known one, or ``auto`` with an odd ``kernel_size`` >= 3."""
    kernel, size = options.get("kernel"), options.get("kernel_size")
    if kernel is None:
        raise ValueError("--task deblur on a real photo needs its blur: --kernel auto (estimate it; --kernel-size N "
                         "bounds its support, default 31), --kernel gaussian:SIGMA, or --kernel FILE (an image or .npy "
                         "of the kernel)")  # fmt: skip
    if str(kernel).startswith("motion:"):
        raise ValueError("--kernel motion:SIZE,INTENSITY draws a random kernel and only applies with --simulate; "
                         "for a real photo give the kernel (gaussian:SIGMA, a kernel image/.npy file) "
                         "or --kernel auto")  # fmt: skip
    if size is not None:
        if str(kernel) != "auto":
            raise ValueError(f"--kernel-size is the support of the estimated kernel and applies only with --kernel "
                             f"auto (the kernel {kernel} has its own size)")  # fmt: skip
        if isinstance(size, bool) or int(size) != size or size < 3 or size % 2 == 0:
            raise ValueError(f"--kernel-size must be an odd integer >= 3 (the kernel has a centre pixel), got {size}")


def measured_operator(task: str, y: torch.Tensor, options: dict[str, Any] | None = None,
                      alpha: torch.Tensor | None = None) -> Measured:  # fmt: skip
    """The operator of a measured input ``y`` ``(B, C, H, W)`` for ``task`` (see ``MEASURED_INPUT``).

    ``alpha``: the input's alpha channel ``(H, W)`` in ``[0, 1]``, if it had one: for
    ``inpaint`` its transparent and partly transparent pixels are the region to fill.

    * deblur: a 'valid' convolution (``Blur(kernel, padding="valid")``) from an image larger
      than the photo by the kernel's size less one: real photos are not periodic, and every
      measured pixel is a blur of pixels the model has, so no border artefact is forced.  The
      output is the photo's region of the restored image.  ``kernel=auto``: ``BlindBlur(kernel_size)``,
      whose kernel ``invdiff.restore`` estimates on the same 'valid' model and whose result is
      the photo's region already (the crop is the identity).
    * sr: ``Downsampling(scale)`` from an image ``scale`` times the input's size.
    * inpaint: ``Inpainting`` with the mask file's (or the alpha channel's) known pixels.
    * denoise: ``Identity``; colorize: ``Colorization`` from RGB to the gray input.
    * ct: ``normalized(Tomography)`` with the sinogram's views and detectors; ``arc``
      and ``image_size`` (default: the largest image the detectors cover) as options.
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "mri":
        raise ValueError("measured MRI inputs are k-space .h5 files (fastMRI layout); pass the .h5 file")
    check_measured_options(task, options)
    opt = {**TASKS[task].options, **options}
    b, c, h, w = y.shape
    if task == "deblur" and str(opt["kernel"]) == "auto":
        size = int(opt["kernel_size"] or BLIND_KERNEL_SIZE)
        if size > min(h, w):
            raise ValueError(f"--kernel-size {size} is larger than the image {h}x{w}; give a smaller odd --kernel-size "
                             f"(the blur's extent at most)")  # fmt: skip
        return Measured(y, BlindBlur(size), _whole, (h, w), {"kernel": "auto", "kernel_size": size})
    if task == "deblur":
        kernel = parse_kernel(str(opt["kernel"]))
        kh, kw = kernel.shape
        if kh > h or kw > w:
            raise ValueError(f"kernel of size {kh}x{kw} is larger than the image {h}x{w}")
        top, left = kh - 1 - kh // 2, kw - 1 - kw // 2
        return Measured(y, Blur(kernel, padding="valid"), lambda t: t[..., top : top + h, left : left + w], (h, w),
                        {"kernel": str(opt["kernel"]), "padding": "valid"})  # fmt: skip
    if task == "sr":
        scale, filt = int(opt["scale"]), str(opt["filter"])
        if scale < 2 or filt not in ("box", "bicubic"):
            raise ValueError(f"--scale must be an integer >= 2 and --filter box or bicubic, got {scale}, {filt!r}")
        return Measured(y, Downsampling(scale, filter=filt, image_size=(h * scale, w * scale)), _whole,
                        (h * scale, w * scale), {"scale": scale, "filter": filt})  # fmt: skip
    if task == "inpaint":
        if opt["mask"] is not None or opt["mask_known"] is not None:
            key = "mask" if opt["mask"] is not None else "mask_known"
            if opt["mask"] is not None and opt["mask_known"] is not None:
                raise ValueError("inpaint takes one of --mask (white = fill) and --mask-known, not both")
            known = read_mask(opt[key], (h, w), "fill" if key == "mask" else "known")
            used = {key: str(opt[key])}
        elif alpha is not None:
            # Only opaque pixels are known: the reader composites partly transparent ones on white.
            known = (alpha >= 1.0 - 1e-3).to(torch.float32)[None, None]
            used = {"mask": "alpha channel"}
        else:
            raise ValueError("inpaint needs the region to fill: --mask FILE (white = fill, sized like the image), "
                             "--mask-known FILE, or a PNG whose transparent pixels are the holes")  # fmt: skip
        if not bool(known.any()):
            raise ValueError("the mask leaves no known pixel; white marks the region to fill (use --mask-known "
                             "if white marks the known pixels)")  # fmt: skip
        known = known.to(y.device)
        return Measured(y * known, Inpainting(known), _whole, (h, w), used)
    if task == "denoise":
        return Measured(y, Identity(), _whole, (h, w), {})
    if task == "colorize":
        if c == 3:
            raise ValueError("colorize takes a gray image (one channel); this one is RGB already")
        if c != 1:
            raise ValueError(f"colorize takes a gray image (one channel), got {c} channels")
        return Measured(y, Colorization(), _whole, (h, w), {})
    # ct: a sinogram (B, C, detectors, views)
    from ..medical.ct import normalized

    if c != 1:
        raise ValueError(f"a CT sinogram has one channel (detectors x views), got {c}")
    n_det, views = h, w
    size = opt.get("image_size") or int(n_det / math.sqrt(2))
    size = int(size)
    if size < 2 or math.ceil(math.sqrt(2) * size) > n_det:
        raise ValueError(f"--image-size {size} does not fit {n_det} detector bins (at most {int(n_det / math.sqrt(2))})")
    arc = float(opt["arc"])
    if not 0 < arc <= 180:
        raise ValueError(f"--arc is the angular range of the views in degrees, in (0, 180], got {arc:g}")
    op = normalized(Tomography(views, image_size=size, n_detectors=n_det, arc=arc))
    return Measured(y, op, _whole, (size, size), {"arc": arc, "image_size": size, "views": views, "detectors": n_det})
