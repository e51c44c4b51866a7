"""Restore many files: what ``invdiff restore`` runs.

Each input is, by default, the measurement ``y`` itself (``simulate=False`` in
:func:`restore_files`): the blurry, low-resolution, damaged or noisy photo or the
sinogram a user has, with the operator of its task built from it
(:func:`invdiff.cli.tasks.measured_operator`) and, with ``sigma_y="auto"``, its noise
estimated; it is scored only against a ground truth given beside it.  In evaluation
mode (``simulate=True``) each input is a clean image: its measurement
``y = A(x) + noise`` is simulated with the task's operator (seeded per file, so
re-runs measure the same ``y``) and the restoration is scored against it.
``measured=True`` reads ``invdiff degrade``'s ``.npy`` measurements and sidecars.

Each file is restored with :func:`invdiff.restore` and written into
``output/<name>/``: ``restored.png``, ``std.png`` (normalised to its maximum, the
value in ``metrics.json``), ``measurement.npy`` (and ``.png`` when ``y`` is an image
of the output's size), ``comparison.png`` (measurement | restored | std | truth),
DICOM/NIfTI outputs for such inputs, ``samples/`` on request, and for a blur estimated
with the image (``--kernel auto``) ``kernel.npy`` (readable back by ``--kernel``) and
``kernel.png`` (a preview, enlarged).
``metrics.json`` in that folder marks the file as finished; a re-run skips finished
files unless ``overwrite``.  A file that fails is reported and skipped; the others
finish.  The run's ``metrics.csv`` and ``metrics.json`` gather every finished file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..medical.ct import hu_to_unit, parse_window, unit_to_hu
from ..blind import check_blind_method, methods_for_blind
from ..samplers.diffpir import VALID_BLUR_CG_ITERS
from ..io import Image, derived_series_uid, file_seed, find_inputs, pad_to_multiple, read_image, write_image
from ..intervals import Calibration, bounds, coverage, scores
from ..metrics import lpips, lpips_available, psnr, ssim
from ..restore import check_method, restore
from ..operators import BlindBlur, Blur, gaussian_kernel
from .tasks import PREVIEW_KEY, build_operator, measured_operator, measurement_noise, operator_for, stack_operators
from ..volume import restore_batch

#: slices of a volume (NIfTI, multi-frame DICOM) restored per sampler call
VOLUME_BATCH = 8


@dataclass
class BatchReport:
    """What a batch run did."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _names(files: list[Path]) -> list[str]:
    names = [f.name.split(".")[0] for f in files]
    seen: dict[str, Path] = {}
    for n, f in zip(names, files):
        if n in seen:
            raise ValueError(f"inputs {seen[n]} and {f} share the name {n!r}; outputs would collide - rename one")
        seen[n] = f
    return names


def _truth_for(name: str, ground_truth: Path | None) -> Path | None:
    if ground_truth is None:
        return None
    if ground_truth.is_file():
        return ground_truth
    matches = [p for p in find_inputs([ground_truth]) if p.name.split(".")[0] == name]
    if not matches:
        raise ValueError(f"no ground truth named {name}.* under {ground_truth}")
    return matches[0]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


#: version 2: ``mask`` files mean white = fill (version 1: nonzero = known, read as ``mask_known``)
SIDECAR_VERSION = 2


def read_clean(path: Path, prior, device: torch.device | str = "cpu",
               window: str | tuple[float, float] | None = None) -> torch.Tensor:  # fmt: skip
    """A clean input ``(S, C, H, W)`` checked against what the prior models (``S > 1``: a volume's slices)."""
    return read_clean_image(path, prior, device, window)[0]


def read_clean_image(path: Path, prior, device: torch.device | str = "cpu", window: str | tuple[float, float] | None
                     = None) -> tuple[torch.Tensor, Image, tuple[float, float] | None, bool]:  # fmt: skip
    """``read_clean`` with the ``Image`` read, its intensity mapping ``(lo, hi)`` (``None`` if none) and
    whether that mapping clips.

    Values reach the prior's ``[0, 1]`` as ``(v - lo) / (hi - lo)`` (see :func:`intensity_window`):
    CT in HU through ``window`` (a name or ``(lo, hi)``; CT DICOM: ``ct`` by default), clipped to
    it; scans in other units (MR DICOM, NIfTI) through robust percentiles, unclipped.
    """
    image = read_image(path)
    x, window, clip = to_unit(image, prior, window, device)
    channels = getattr(prior, "channels", x.shape[1])
    if x.shape[1] != channels:
        raise ValueError(f"{path}: image has {x.shape[1]} channel(s) but the prior models {channels}; use "
                         f"{_fitting_prior(x.shape[1])} or convert the image")  # fmt: skip
    return x, image, window, clip


def _fitting_prior(channels: int) -> str:
    return {1: "--prior natural-gray", 3: "--prior natural-rgb"}.get(channels, f"a {channels}-channel prior")


#: percentiles that map a scan in arbitrary units (MR, NIfTI) onto [0, 1]
PERCENTILES = (0.5, 99.5)


def intensity_window(image: Image, prior, window: str | tuple[float, float] | None = None
                     ) -> tuple[tuple[float, float] | None, bool]:  # fmt: skip
    """``((lo, hi), clip)``: the affine map ``(v - lo) / (hi - lo)`` that takes ``image`` onto the prior's range.

    * ``window`` given, or a CT DICOM or a NIfTI in HU (air below -500): HU through the
      window (``--window``, default ``ct``), clipped to it;
    * other DICOM and NIfTI scans (MR, PET, anything not in HU): the ``PERCENTILES`` of the
      values onto the prior's range, not clipped, so the map is undone exactly when the
      output is written back in the scan's units;
    * anything else (PNG, JPEG, TIFF, NPY): ``None``, read as it is.
    """
    x = image.data
    if window is None and image.kind == "dicom" and str(getattr(image.meta["dataset"], "Modality", "")) == "CT":
        window = "ct"
    if window is None and image.kind == "nifti" and float(torch.quantile(x.flatten()[::97].double(), 0.005)) < -500:
        window = "ct"  # a NIfTI CT in HU: air at -1000
    if window is not None:
        return parse_window(window), True
    lo, hi = prior.data_range
    if image.kind not in ("dicom", "nifti") or not (math.isfinite(lo) and math.isfinite(hi)):
        return None, False
    v = x.double().flatten()
    if v.numel() > 4_000_000:  # quantiles of a large volume from a regular subsample
        v = v[:: v.numel() // 4_000_000 + 1]
    p_lo, p_hi = (float(q) for q in torch.quantile(v, torch.tensor(PERCENTILES, dtype=v.dtype) / 100))
    if not p_hi > p_lo:
        p_lo, p_hi = float(v.min()), float(v.max())
    if not p_hi > p_lo:
        raise ValueError(f"{image.path}: every value is {p_lo:g}; there is nothing to restore")
    # the scan's [p_lo, p_hi] onto the prior's [lo, hi]
    span = (p_hi - p_lo) / (hi - lo)
    return (p_lo - lo * span, p_lo - lo * span + span), False


def to_unit(image: Image, prior, window: str | tuple[float, float] | None = None,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[float, float] | None, bool]:  # fmt: skip
    """``image`` in the prior's units, the ``(lo, hi)`` that maps it there (``None``: as read) and whether
    the map clips (:func:`intensity_window`); values outside the prior's range otherwise are an error."""
    x = image.data.to(device)
    mapping, clip = intensity_window(image, prior, window)
    if mapping is not None:
        x = hu_to_unit(x, mapping, clip=clip)
    lo, hi = prior.data_range
    if math.isfinite(lo) and (float(x.min()) < lo - 1e-3 or float(x.max()) > hi + 1e-3) and mapping is None:
        raise ValueError(f"{image.path}: values span [{float(x.min()):.3g}, {float(x.max()):.3g}] but the prior "
                         f"models [{lo:g}, {hi:g}]; rescale the data first (or map HU with --window)")  # fmt: skip
    return x, mapping, clip


def simulate_measurement(x: torch.Tensor, name: str, *, task: str, task_options: dict[str, Any], prior, sigma_y: float,
             seed: int) -> tuple[torch.Tensor, Any, Callable, dict[str, Any]]:  # fmt: skip
    """Pad ``x`` to what the task needs (reflect; SR: sides divisible by the scale), build the task's operator and
    draw ``y = A(x) + noise`` (``invdiff.restore`` pads to what the prior needs).

    Returns ``(y, op, crop, sidecar)``; the sidecar rebuilds ``op`` exactly (:func:`operator_from_sidecar`).
    """
    # Only SR needs a padded image (sides divisible by the scale); restore pads to the prior's factor.
    xp, crop = pad_to_multiple(x, int(task_options.get("scale") or 4) if task == "sr" else 1)
    s = file_seed(seed, name)
    op = build_operator(task, tuple(xp.shape), task_options, seed=s).to(x.device)
    g = torch.Generator(device=x.device).manual_seed(s)
    y = measurement_noise(op, sigma_y, task_options).sample(op(xp), generator=g)
    sidecar = {"invdiff_sidecar": SIDECAR_VERSION, "task": task, "options": task_options, "seed": s,
               "sigma_y": sigma_y, "image_shape": list(xp.shape), "original_size": list(x.shape[-2:]),
               "measurement_shape": list(y.shape), "torch": torch.__version__}  # fmt: skip
    return y, op, crop, sidecar


def operator_from_sidecar(sidecar: dict[str, Any], device: torch.device | str = "cpu"):
    """The operator and crop a sidecar describes."""
    version = sidecar.get("invdiff_sidecar")
    if version not in (1, SIDECAR_VERSION):
        raise ValueError("not an invdiff measurement sidecar (write measurements with 'invdiff degrade')")
    options = dict(sidecar["options"])
    if version == 1 and options.get("mask") is not None:  # version 1 mask files: nonzero = known
        options["mask_known"] = options.pop("mask")
    op = build_operator(sidecar["task"], tuple(sidecar["image_shape"]), options, seed=sidecar["seed"])
    h, w = sidecar["original_size"]
    return op.to(device), (lambda t: t[..., :h, :w])


def load_measurement(path: Path, device: torch.device | str = "cpu") -> tuple[torch.Tensor, Any, Callable, dict]:
    """A measurement ``.npy`` written by ``invdiff degrade`` and its operator, from the JSON sidecar beside it."""
    side = path.with_suffix(".json")
    if not side.is_file():
        raise ValueError(f"{path}: no sidecar {side.name} beside it; --measured inputs come from 'invdiff degrade'")
    try:
        sidecar = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{side}: not valid JSON ({e})") from None
    y = read_image(path).data.to(device)
    if list(y.shape) != sidecar.get("measurement_shape"):
        raise ValueError(f"{path}: measurement has shape {tuple(y.shape)} but its sidecar says "
                         f"{tuple(sidecar.get('measurement_shape') or ())}")  # fmt: skip
    op, crop = operator_from_sidecar(sidecar, device)
    return y, op, crop, sidecar


def _save_npy(path: Path, t: torch.Tensor) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, t.detach().cpu().numpy())
    os.replace(tmp, path)


@dataclass
class _Prepared:
    """One file made ready for restoration: its measurement, operator and what is needed to write it."""

    path: Path
    name: str
    out: Path
    y: torch.Tensor
    op: Any
    crop: Callable
    sidecar: dict[str, Any]
    truth: torch.Tensor | None
    truth_path: Path | None
    task: str
    sigma_y: float
    seed: int
    image: Image | None = None  # the input as read (to write DICOM/NIfTI outputs like it)
    window: tuple[float, float] | None = None  # (lo, hi): its values v were mapped to (v - lo) / (hi - lo)
    prior: Any = None  # the prior this file is restored with
    mode: str = "simulate"  # "real" (the file is y), "simulate" (y made from it) or "measured" (degrade's .npy)
    sigma_y_source: str = "given"  # "given" or "auto" (estimated from y)

    @property
    def noise(self) -> Any:
        return measurement_noise(self.op, self.sigma_y, self.sidecar.get("options"))


class PriorChoice:
    """The shipped prior that fits each input: ``natural-gray`` for gray images, ``natural-rgb`` for RGB.

    Loaded on first use and kept; ``names`` maps a channel count to a prior name.
    """

    def __init__(self, names: dict[int, str] | None = None, device: torch.device | str = "cpu") -> None:
        self.names = names or {1: "natural-gray", 3: "natural-rgb"}
        self.device = device
        self._loaded: dict[str, Any] = {}

    def for_channels(self, channels: int, task: str | None = None):
        """The prior for ``channels``-channel outputs of ``task`` (``phantoms`` for ct and mri)."""
        if task in ("ct", "mri"):
            name = "phantoms"
        elif channels in self.names:
            name = self.names[channels]
        else:
            raise ValueError(f"no shipped prior models {channels}-channel images; convert to gray or RGB, "
                             f"or pass --prior")  # fmt: skip
        if name not in self._loaded:
            from ..priors import load_prior

            self._loaded[name] = load_prior(name).to(self.device)
        return self._loaded[name]

    def to(self, device: torch.device | str) -> "PriorChoice":
        self.device = device
        self._loaded = {c: p.to(device) for c, p in self._loaded.items()}
        return self


def prior_for(prior, channels: int, path: Path | None = None, task: str | None = None):
    """The prior for ``task``'s outputs of ``channels``: chosen by :class:`PriorChoice`, or ``prior`` checked to fit."""
    if isinstance(prior, PriorChoice):
        return prior.for_channels(channels, task)
    have = getattr(prior, "channels", channels)
    if have != channels:
        where = f"{path}: " if path is not None else ""
        raise ValueError(f"{where}the output has {channels} channel(s) but the prior models {have}; use "
                         f"{_fitting_prior(channels)}")  # fmt: skip
    return prior


def _read_truth(path: Path, device, window: tuple[float, float] | None, clip: bool) -> torch.Tensor:
    truth = read_image(path).data.to(device)
    return hu_to_unit(truth, window, clip=clip) if window is not None else truth


def _prepare(path: Path, name: str, out: Path, *, task: str, task_options: dict[str, Any], prior,
             sigma_y: float | str, seed: int, ground_truth: Path | None, device: torch.device, measured: bool,
             method: str | None = None, window: str | tuple[float, float] | None = None,
             simulate: bool = True) -> _Prepared:  # fmt: skip
    """Read (or simulate) the measurement of one file and check its ground truth.

    ``measured``: a ``.npy`` from ``invdiff degrade`` with its sidecar; ``simulate``: a clean
    image to degrade; neither: the file is the measurement itself (:func:`_prepare_real`).
    """
    if not measured and not simulate:
        return _prepare_real(path, name, out, task=task, task_options=task_options, prior=prior, sigma_y=sigma_y,
                             seed=seed, ground_truth=ground_truth, device=device, method=method, window=window)  # fmt: skip
    if sigma_y == "auto":
        raise ValueError("--sigma-y auto estimates the noise of a real measurement; with --simulate or --measured "
                         "give the noise level (e.g. --sigma-y 0.01)")  # fmt: skip
    truth_path = _truth_for(name, ground_truth)
    truth = read_image(truth_path).data.to(device) if truth_path else None
    image = None
    if measured:
        y, op, crop, sidecar = load_measurement(path, device)
        task, sigma_y = sidecar["task"], sidecar["sigma_y"]
        prior = prior_for(prior, int(sidecar["image_shape"][1]), path, task)
    else:
        first = read_image(path)
        prior = prior_for(prior, first.data.shape[1], path, task)
        x, image, window, clip = read_clean_image(path, prior, device, window)
        y, op, crop, sidecar = simulate_measurement(x, name, task=task, task_options=task_options, prior=prior,
                                                    sigma_y=float(sigma_y), seed=seed)  # fmt: skip
        if truth is not None and window is not None:  # the truth in the units the input was restored in
            truth = _read_truth(truth_path, device, window, clip)
        truth = x if truth is None else truth
    h, w = sidecar["original_size"]
    if truth is not None and tuple(truth.shape[-2:]) != (h, w):
        raise ValueError(f"ground truth {truth_path} is {tuple(truth.shape[-2:])} but the image is {(h, w)}")
    op = operator_for(method, op) if method else op
    return _Prepared(path, name, out, y, op, crop, sidecar, truth, truth_path, task, float(sigma_y), sidecar["seed"],
                     image, window, prior, "measured" if measured else "simulate")  # fmt: skip


def _prepare_real(path: Path, name: str, out: Path, *, task: str, task_options: dict[str, Any], prior,
                  sigma_y: float | str, seed: int, ground_truth: Path | None, device: torch.device,
                  method: str | None = None, window: str | tuple[float, float] | None = None) -> _Prepared:  # fmt: skip
    """The file is the measurement ``y`` of ``task`` (``invdiff.cli.tasks.measured_operator``)."""
    from ..noise_level import estimate_sigma_y

    image = read_image(path)
    out_channels = 1 if task == "ct" else (3 if task == "colorize" else image.data.shape[1])
    chosen = prior_for(prior, out_channels, path, task)
    clip = False
    if task == "ct":  # a sinogram: line integrals as 'invdiff degrade --task ct' writes them, not an image
        if window is not None:
            raise ValueError("--window maps a CT image's HU; a sinogram is read as it is (line integrals / ||A||)")
        if image.kind not in ("npy", "npz", "tiff") or image.meta.get("scale", 1.0) != 1.0:
            raise ValueError(f"{path}: a sinogram must hold float line integrals (.npy, or a float .tif); "
                             f"8/16-bit images are not line integrals")  # fmt: skip
        y, mapping = image.data.to(device), None
    else:
        y, mapping, clip = to_unit(image, chosen, window, device)
    alpha = image.meta.get("alpha_mask")
    alpha = None if alpha is None else torch.from_numpy(alpha).to(device)
    m = measured_operator(task, y, task_options, alpha=alpha)
    source = "given"
    blind = isinstance(m.op, BlindBlur)
    if sigma_y == "auto":  # a blurry photo is an image whatever its kernel (estimate_sigma_y: blurred reads true)
        sigma_y, source = estimate_sigma_y(m.y, None if blind else m.op), "auto"
    op = operator_for(method, m.op) if method else m.op
    x_shape = blind_x_shape(m.op, m.y) if blind else tuple(m.op.x_shape(m.y))
    s = file_seed(seed, name)
    sidecar = {"task": task, "options": m.options, "seed": s, "sigma_y": float(sigma_y),
               "image_shape": list(x_shape), "original_size": list(m.size),
               "measurement_shape": list(m.y.shape)}  # fmt: skip
    truth_path = _truth_for(name, ground_truth)
    truth = None
    if truth_path is not None:
        truth = _read_truth(truth_path, device, mapping, clip)
        want = (m.y.shape[0], out_channels, *m.size)
        if tuple(truth.shape) != want:
            raise ValueError(f"ground truth {truth_path} is {tuple(truth.shape)} (slices, C, H, W) but the output is "
                             f"{want}")  # fmt: skip
    return _Prepared(path, name, out, m.y, op, m.crop, sidecar, truth, truth_path, task, float(sigma_y), s,
                     image, mapping, chosen, "real", source)  # fmt: skip


@dataclass(frozen=True)
class Interval:
    """``--interval LEVEL`` (and ``--calibration FILE``): which per-pixel bounds a run writes."""

    level: float
    calibration: Calibration | None = None
    source: str | None = None  # the calibration file, as given

    def bounds(self, mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``: calibrated ``mean -+ scale * std``, or the samples' quantiles (``samples`` ``(S, B, ...)``)."""
        return bounds(mean, std, samples, self.level, self.calibration)


def _finish(p: _Prepared, mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor, *, method: str,
            steps: int, nfe: int, seconds: float, save_samples: bool,
            batched: int = 1, kernel: torch.Tensor | None = None, kernel_choice: list[str] | None = None,
            kernel_misfits: list[dict[str, float]] | None = None,
            interval: Interval | None = None) -> dict[str, Any]:  # fmt: skip
    """Write one file's outputs (``samples``: ``(S, slices, C, H, W)``) and return its metrics row.

    A volume (several slices) is previewed by its middle slice in the PNGs; DICOM and
    NIfTI inputs also get ``restored.dcm`` / ``restored.nii.gz`` in their own form.
    ``kernel``: the estimated blur ``(S, K, K)`` of ``--kernel auto``, written as ``kernel.npy``
    and ``kernel.png`` (:func:`write_kernel`).  ``interval``: per-pixel bounds written as
    ``lo.npy`` / ``hi.npy`` (every slice, unclipped) and ``lo.png`` / ``hi.png`` (previews), their
    level, width and (with a truth) coverage in the metrics.
    """
    crop, truth, sidecar, out = p.crop, p.truth, p.sidecar, p.out
    bounds = interval.bounds(mean, std, samples) if interval is not None else None
    mean, std = crop(mean), crop(std)
    h, w = sidecar["original_size"]
    mid = mean.shape[0] // 2
    view = (lambda t: t[mid : mid + 1]) if mean.shape[0] > 1 else (lambda t: t)  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "restored.png", view(mean).clamp(0, 1))
    std_max = float(std.max())
    write_image(out / "std.png", view(std) / max(std_max, 1e-12))
    _save_npy(out / "measurement.npy", p.y)
    _write_like_input(p, mean, std)
    panels = [view(mean), view(std) / max(std_max, 1e-12)] + ([view(truth)] if truth is not None else [])
    shown = None  # the measurement as an image of the output's size, if it is one
    if p.mode == "real":
        shown = p.y if tuple(p.y.shape[-2:]) == (h, w) else None
    elif list(p.y.shape) == sidecar["image_shape"]:
        shown = crop(p.y)
    if shown is not None:
        write_image(out / "measurement.png", view(shown).clamp(0, 1))
        panels.insert(0, view(shown))
    c = mean.shape[1]
    write_image(out / "comparison.png", torch.cat([q.clamp(0, 1).expand(-1, c, -1, -1) for q in panels], dim=-1))
    if save_samples:
        for k in range(samples.shape[0]):
            write_image(out / "samples" / f"sample_{k}.png", view(crop(samples[k])).clamp(0, 1))

    row: dict[str, Any] = {
        "name": p.name, "input": str(p.path), "task": p.task, "method": method, "steps": steps,
        "samples": int(samples.shape[0]), "sigma_y": p.sigma_y, "nfe": nfe, "seconds": round(seconds, 3),
        "std_max": std_max, "std_mean": float(std.mean()),
        "truth": str(p.truth_path) if p.truth_path else ("input" if p.mode == "simulate" else "none"),
        "mode": p.mode, "sigma_y_source": p.sigma_y_source, "output_size": [h, w],
    }  # fmt: skip
    if p.window is not None:
        row["intensity_window"] = list(p.window)  # values v were restored as (v - lo) / (hi - lo)
    if p.task == "deblur" and "kernel" in (p.sidecar.get("options") or {}):
        row["kernel"] = str(p.sidecar["options"]["kernel"])
    if kernel is not None:
        write_kernel(out, kernel)
        row.update(kernel="auto", kernel_size=int(kernel.shape[-1]), kernel_file="kernel.npy",
                   kernel_preview="kernel.png")  # fmt: skip
        row["kernel_fills_support"] = fills_support(kernel)
        if kernel_choice:  # which candidate won, per slice (invdiff.blind.estimate_blind)
            row["kernel_choice"] = kernel_choice[0] if len(set(kernel_choice)) == 1 else kernel_choice
        if kernel_misfits is not None:  # the candidates checked by restoring them, and their misfits, per slice
            checked = [{c: round(m, 6) for c, m in mm.items()} for mm in kernel_misfits]
            row["kernel_misfits"] = checked[0] if len(checked) == 1 else checked
    if batched > 1:
        row["batched_with"] = batched  # seconds: the batch's time divided by its images
    if bounds is not None:
        lo, hi = crop(bounds[0]), crop(bounds[1])
        write_image(out / "lo.png", view(lo).clamp(0, 1))
        write_image(out / "hi.png", view(hi).clamp(0, 1))
        _save_npy(out / "lo.npy", lo)  # the bounds themselves, unclipped, every slice
        _save_npy(out / "hi.npy", hi)
        row.update(interval_level=interval.level, interval_calibrated=interval.calibration is not None,
                   interval_width_mean=float((hi - lo).mean()))  # fmt: skip
        if interval.calibration is not None:
            row["interval_scale"] = interval.calibration.scale(interval.level)
            row["calibration"] = interval.source
        if truth is not None:
            row["coverage"] = coverage(truth.to(lo.dtype), lo, hi)
    if truth is not None:  # a volume: PSNR over all its voxels, SSIM and LPIPS averaged over its slices
        row["psnr"] = float(psnr(mean.clamp(0, 1).reshape(1, 1, -1, w), truth.reshape(1, 1, -1, w))[0])
        row["ssim"] = float(ssim(mean.clamp(0, 1), truth).mean())
        if lpips_available() and min(h, w) >= 32:
            row["lpips"] = float(lpips(mean.clamp(0, 1), truth).mean())
    _write_json(out / "metrics.json", row)  # written last: marks the file finished
    return row


def _write_like_input(p: _Prepared, mean: torch.Tensor, std: torch.Tensor) -> None:
    """``restored.dcm`` / ``restored.nii.gz`` (and the std as ``std.nii.gz``) for DICOM / NIfTI inputs, in their units.

    Values go back through the HU window they were read with; a DICOM becomes a derived
    instance whose series UID is shared by every file restored from one source series into
    this output folder.
    """
    image = p.image
    if image is None or image.kind not in ("dicom", "nifti") or mean.shape[-2:] != image.data.shape[-2:]:
        return
    if p.window is not None:
        lo, hi = p.window
        mean, std = unit_to_hu(mean, p.window), std * (hi - lo)
    description = f"restored with invdiff ({p.task})"
    if image.kind == "dicom":
        series = derived_series_uid(image, str(p.out.parent.resolve()))
        write_image(p.out / "restored.dcm", mean, like=image, description=description, series_uid=series)
    else:
        write_image(p.out / "restored.nii.gz", mean, like=image)
        write_image(p.out / "std.nii.gz", std, like=image)


#: ``kernel.png`` is at least this many pixels wide (each kernel pixel a square of whole pixels)
KERNEL_PREVIEW_WIDTH = 200


def write_kernel(out: Path, kernel: torch.Tensor) -> None:
    """``out/kernel.npy``: the estimated kernel ``(K, K)`` (``(S, K, K)`` for a volume's slices), float32,
    summing to 1, readable back by ``--kernel``; ``out/kernel.png``: the kernel (a volume's middle
    slice's) scaled to its maximum and enlarged by whole pixels, 8-bit gray, a preview only."""
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    k = kernel.detach().float().cpu().numpy()
    _save_npy(out / "kernel.npy", torch.from_numpy(k[0] if k.shape[0] == 1 else k))
    shown = k[k.shape[0] // 2]
    scale = -(-KERNEL_PREVIEW_WIDTH // shown.shape[-1])
    gray = np.rint(255 * shown / max(float(shown.max()), 1e-30)).clip(0, 255).astype(np.uint8)
    big = np.kron(gray, np.ones((scale, scale), dtype=np.uint8))  # nearest neighbour: each tap a square
    info = PngInfo()
    info.add_text(PREVIEW_KEY, f"the estimated kernel scaled to its maximum and enlarged {scale}x; the kernel "
                               f"itself is kernel.npy")  # fmt: skip
    tmp = out / "kernel.png.tmp"
    PILImage.fromarray(big, mode="L").save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, out / "kernel.png")


def fills_support(kernel: torch.Tensor) -> bool:
    """Whether an estimated kernel ``(S, K, K)`` reaches within one pixel of its window's edges along an axis:
    the blur may be longer than ``--kernel-size`` (e.g. ``clock_motion.png``'s 40-pixel shake at 31)."""
    k = kernel.detach().float().cpu().sum(0)
    size = k.shape[-1]
    for profile in (k.sum(1), k.sum(0)):
        nz = torch.nonzero(profile > 0)[:, 0]
        if len(nz) and int(nz.max() - nz.min() + 1) >= size - 2:
            return True
    return False


def blind_x_shape(op: BlindBlur, y: torch.Tensor) -> tuple[int, ...]:
    """The image a ``BlindBlur``'s runs restore: the photo ``y`` larger by the kernel's size less one ('valid')."""
    b, c, h, w = y.shape
    return (b, c, h + op.kernel_size - 1, w + op.kernel_size - 1)


def pricing_operator(op: Any) -> Any:
    """The operator :func:`plan` predicts memory and time on: a ``BlindBlur``'s runs use
    ``Blur(kernel, padding="valid")`` with a kernel not yet known, priced as a Gaussian of its support."""
    if isinstance(op, BlindBlur):
        return Blur(gaussian_kernel(op.kernel_size / 6, op.kernel_size), padding="valid")
    return op


def _check_method(method: str, op: Any, y: torch.Tensor) -> None:
    """``check_method``, with ``BlindBlur`` (not an operator until its kernel is known) checked by its own list."""
    if isinstance(op, BlindBlur):
        check_blind_method(method)
    else:
        check_method(method, op, y)


def restore_one(path: Path, name: str, out: Path, *, task: str, task_options: dict[str, Any], prior,
                method: str | None, steps: int | None, sigma_y: float | str, samples: int | None, seed: int,
                ground_truth: Path | None, save_samples: bool, device: torch.device, measured: bool = False,
                callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                window: str | tuple[float, float] | None = None, simulate: bool = False,
                max_memory: int | None = None, interval: Interval | None = None) -> dict[str, Any]:  # fmt: skip
    """Restore one file into ``out``; returns its metrics row.

    ``measured``: ``path`` is a measurement written by ``invdiff degrade`` (its sidecar
    gives the task, options, seed and ``sigma_y``); ``simulate``: ``path`` is a clean image
    whose measurement is simulated; neither: ``path`` is the measurement itself.
    """
    p = _prepare(path, name, out, task=task, task_options=task_options, prior=prior, sigma_y=sigma_y, seed=seed,
                 ground_truth=ground_truth, device=device, measured=measured, method=None, window=window,
                 simulate=simulate)  # fmt: skip
    return _run(p, method=method, steps=steps, samples=samples, save_samples=save_samples, callback=callback,
                knobs=knobs, max_memory=max_memory, interval=interval)  # fmt: skip


def default_method(task: str, mode: str) -> str:
    """The method a task runs without ``--method``: DDRM, except DiffPIR for measured photos' deblurring.

    A real photo's blur is a 'valid' convolution (``measured_operator``), which has no SVD,
    so DDRM cannot run on it; DiffPIR needs only the operator and its adjoint.
    """
    return "diffpir" if (task == "deblur" and mode == "real") else "ddrm"


#: seconds a restoration without --steps/--samples aims at per image (``invdiff.memory.default_steps_samples``)
BUDGET_SECONDS = 60.0
#: sampler runs a blind deblur's kernel check adds, as planned (``BlindBlur.check_margin``), the EM rounds' reused
#: runs left out: 2.4 on average (0-5) on 20 camera-shake cases of the blind benchmark's photos (held-out and
#: validation), 2.5 (1-3) on the 12 cases of ``blind --validation``; with the ``line-sharp`` candidate 3.1 (1-4)
#: there.  A plan for the step budget, not a bound: where more are checked the run takes longer than planned
#: (left at 2: raising it shortens every blind run's steps; not measured yet)
CHECK_RUNS = 2


def _blind_single_runs(op: BlindBlur) -> int:
    """The single-sample runs a blind deblur plans before its final run: the EM rounds and ``CHECK_RUNS``."""
    return op.em_iters + (CHECK_RUNS if op.check_margin > 0 else 0)


def default_knobs(method: str, op: Any, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``knobs`` plus the defaults the command line adds: ``cg_iters`` for DiffPIR on a blur without an SVD."""
    from ..operators import Blur

    out = dict(knobs or {})
    if method == "diffpir" and isinstance(op, Blur) and not op.has_svd:
        out.setdefault("cg_iters", VALID_BLUR_CG_ITERS)
    return out


def plan(p: _Prepared, method: str | None, steps: int | None, samples: int | None,
         max_memory: int | None = None, knobs: dict[str, Any] | None = None, batch: int | None = None
         ) -> tuple[str, int, int, Any, dict[str, Any]]:  # fmt: skip
    """``(method, steps, samples, op, knobs)`` for one prepared file (or a group of ``batch`` stacked files).

    Without ``method`` the task's default runs (:func:`default_method`), or, when its
    predicted memory exceeds ``max_memory`` (default: half the machine's), the first method
    that fits (``invdiff.memory``); a method the user named that does not fit is a one-line
    error naming those that do.  Steps and samples not given are chosen so the restoration
    takes about a minute on a 2-core CPU (``invdiff.memory.default_steps_samples``).
    Memory is predicted for what one sampler call holds: a volume's chunk of
    ``VOLUME_BATCH`` slices, or the ``batch`` files of a group.  Nothing costly is built
    before the prediction passes (a CT operator's dense SVD is made only after it).

    A ``BlindBlur`` (``--kernel auto``) is priced as the 'valid' blur its runs use
    (:func:`pricing_operator`, one image at a time), and its single-sample runs before the
    final one share the minute with it: ``em_iters`` rounds and the checks' runs, counted as
    ``CHECK_RUNS`` (their number depends on the photo).
    """
    from ..memory import check_memory, default_cap, default_steps_samples, fitting_methods, predict_seconds

    cap = default_cap() if max_memory is None else int(max_memory)
    shape = tuple(p.sidecar["image_shape"])
    blind = isinstance(p.op, BlindBlur)
    n = 1 if blind else (batch or min(shape[0], VOLUME_BATCH))  # a blind batch is restored image by image
    x_shape, y = (n, *shape[1:]), p.y[: min(n, p.y.shape[0])]
    priced = pricing_operator(p.op)
    single_runs = _blind_single_runs(p.op) if blind else 0

    def auto(m: str) -> tuple[int, int, dict[str, Any]]:
        k = default_knobs(m, priced, knobs)
        budget = BUDGET_SECONDS
        a_steps, a_samples = default_steps_samples(m, x_shape, p.prior, budget, op=priced, knobs=k)
        for _ in range(3 if single_runs else 0):  # the EM's runs (1 sample each) and the final one in the minute
            runs = [a_samples] + [1] * single_runs
            total = sum(predict_seconds(m, x_shape, p.prior, a_steps, s, priced, k) for s in runs)
            if total <= 1.05 * BUDGET_SECONDS:
                break
            budget *= BUDGET_SECONDS / total
            a_steps, a_samples = default_steps_samples(m, x_shape, p.prior, budget, op=priced, knobs=k)
        return (a_steps if steps is None else steps), (a_samples if samples is None else samples), k

    chosen = method or default_method(p.task, p.mode)
    if blind:
        check_blind_method(chosen)
    n_steps, n_samples, k = auto(chosen)
    if method is None:
        fits = fitting_methods(priced, y, x_shape, p.prior, samples=n_samples, cap=cap)
        if blind:
            fits = [m for m in fits if m in methods_for_blind()]
        if fits and chosen not in fits:
            chosen = fits[0]
            n_steps, n_samples, k = auto(chosen)
    check_memory(chosen, priced, x_shape, p.prior, samples=n_samples, cap=cap)
    op = operator_for(chosen, p.op)  # a CT operator's dense SVD, for ddrm and ddnm, only now
    _check_method(chosen, op, p.y)
    return chosen, n_steps, n_samples, op, k


def _with_steps(callback: Callable[[dict], None] | None, steps: int, chunks: int = 1) -> Callable[[dict], None] | None:
    """``callback`` with the run's total steps in each report (``"steps"``): a volume restored in
    ``chunks`` sampler calls counts ``chunks * steps`` steps, its ``"i"`` continuing from chunk to chunk
    (a call beyond ``chunks``, as a blind deblur's checks may make, adds its steps to the total)."""
    if callback is None:
        return None
    state = {"chunk": 0, "last": -1}

    def report(info: dict) -> None:
        i = int(info["i"])
        if i < state["last"]:
            state["chunk"] += 1
        state["last"] = i
        callback({**info, "i": state["chunk"] * steps + i, "steps": steps * max(chunks, state["chunk"] + 1)})

    return report


def _check_calibrated_task(interval: Interval | None, task: str) -> None:
    """A file of another task than its calibration's (e.g. a --measured sidecar's) fails in one line."""
    if interval is not None and interval.calibration is not None:
        interval.calibration.check_task(task)


def _run(p: _Prepared, *, method: str | None, steps: int | None, samples: int | None, save_samples: bool,
         callback, knobs, max_memory: int | None = None, interval: Interval | None = None) -> dict[str, Any]:  # fmt: skip
    """Restore one prepared file (a volume in chunks of slices) and write it.

    ``BlindBlur``: one ``restore`` call, which estimates each slice's kernel and runs the
    sampler ``em_iters + 1`` times per slice and ``CHECK_RUNS`` more, about (the checks' runs
    depend on the photo); the progress counts the steps of every run, its total growing
    where more runs come.
    """
    _check_calibrated_task(interval, p.task)
    m, n_steps, n_samples, op, knobs = plan(p, method, steps, samples, max_memory, knobs)
    if isinstance(op, BlindBlur):
        runs = p.y.shape[0] * (_blind_single_runs(op) + 1)
        result = restore(p.y, op, p.prior, method=m, steps=n_steps, sigma_y=p.sigma_y, samples=n_samples,
                         seed=p.seed, callback=_with_steps(callback, n_steps, runs), **knobs)  # fmt: skip
        return _finish(p, result.mean, result.std, result.samples, method=m, steps=result.steps, nfe=result.nfe,
                       seconds=result.seconds, save_samples=save_samples, kernel=result.kernel,
                       kernel_choice=result.kernel_choice, kernel_misfits=result.kernel_misfits,
                       interval=interval)  # fmt: skip
    chunks = -(-p.y.shape[0] // VOLUME_BATCH)
    result = restore_batch(p.y, op, p.prior, batch_size=VOLUME_BATCH, method=m, steps=n_steps,
                           sigma_y=p.sigma_y, noise=p.noise, samples=n_samples, seed=p.seed,
                           callback=_with_steps(callback, n_steps, chunks),
                           calibration=interval.calibration if interval else None, **knobs)  # fmt: skip
    return _finish(p, result.mean, result.std, result.samples, method=m, steps=result.steps, nfe=result.nfe,
                   seconds=result.seconds, save_samples=save_samples, interval=interval)  # fmt: skip


def _restore_group(group: list[_Prepared], *, method: str | None, steps: int | None, samples: int | None,
                   save_samples: bool, callback, knobs, max_memory: int | None = None,
                   interval: Interval | None = None) -> list[dict[str, Any]] | None:  # fmt: skip
    """Restore files whose operators stack into one batch in a single ``restore`` call; ``None`` if they don't."""
    op = stack_operators([p.op for p in group])
    if op is None or any(p.y.shape[0] != 1 for p in group) or any(p.prior is not group[0].prior for p in group):
        return None  # volumes go one by one, in chunks of slices
    _check_calibrated_task(interval, group[0].task)
    m, n_steps, n_samples, _, knobs = plan(group[0], method, steps, samples, max_memory, knobs, batch=len(group))
    op = operator_for(m, op)
    y = torch.cat([p.y for p in group])
    result = restore(y, op, group[0].prior, method=m, steps=n_steps, sigma_y=group[0].sigma_y, noise=group[0].noise,
                     samples=n_samples, seed=group[0].seed, callback=_with_steps(callback, n_steps),
                     calibration=interval.calibration if interval else None, **knobs)  # fmt: skip
    n = len(group)
    return [
        _finish(p, result.mean[b : b + 1], result.std[b : b + 1], result.samples[:, b : b + 1], method=m,
                steps=result.steps, nfe=result.nfe, seconds=result.seconds / n, save_samples=save_samples,
                batched=n, interval=interval)  # fmt: skip
        for b, p in enumerate(group)
    ]


def restore_files(inputs: list[str], output: str | Path, *, task: str, task_options: dict[str, Any], prior,
                  method: str | None = None, steps: int | None = None, sigma_y: float | str = "auto",
                  samples: int | None = None, seed: int = 0, ground_truth: str | Path | None = None,
                  overwrite: bool = False, save_samples: bool = False, device: str | torch.device = "cpu",
                  on_file: Callable[[str, str, dict | None], None] | None = None,
                  callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                  measured: bool = False, batch_size: int = 1,
                  window: str | tuple[float, float] | None = None, simulate: bool = False,
                  max_memory: int | None = None, interval: Interval | None = None) -> BatchReport:  # fmt: skip
    """Restore every input file; see the module docstring.  ``on_file(name, status, row)`` reports progress.

    ``prior``: a prior, or a :class:`PriorChoice` that picks one per file by its channels.

    By default each input is the measurement itself (a blurry, small, damaged or noisy photo,
    a sinogram), scored only against ``ground_truth``; ``sigma_y="auto"`` (the default)
    estimates its noise.  ``simulate=True`` (evaluation): inputs are clean images, degraded
    by the task's operator with noise ``sigma_y`` (a number) and scored against themselves.
    ``measured``: inputs are ``.npy`` measurements from :func:`degrade_files` (task, options
    and ``sigma_y`` then come from each sidecar).

    ``method``, ``steps``, ``samples``: ``None`` picks them per file (:func:`plan`).

    ``batch_size``: up to this many files go through one ``restore`` call when their
    measurements have one shape and their operators stack (:func:`~invdiff.cli.tasks.stack_operators`);
    the others are restored one by one.  A batch draws its noise from its first file's
    seed, so samples depend on ``batch_size``; each file's measurement does not.

    ``window``: HU window mapping the inputs' values onto ``[0, 1]`` (CT DICOM: ``ct`` by
    default); volumes (NIfTI, multi-frame DICOM) are restored slice by slice as batches.

    ``interval``: write per-pixel bounds ``lo.png`` / ``hi.png`` at its level, raw sample
    quantiles or, with its calibration, calibrated ones (which ``restore`` checks against
    each file's run: method, steps, samples, prior, operator kind, noise level).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    t0 = time.time()
    files = find_inputs(inputs)
    names = _names(files)
    out = _writable(Path(output))
    rank, world, device = _distributed(torch.device(device))
    gt = Path(ground_truth) if ground_truth is not None else None
    if gt is not None and not gt.exists():
        raise ValueError(f"--ground-truth {gt} does not exist")
    prior = prior.to(device)
    _probe(files, task, task_options, method, prior, measured, simulate)
    report = BatchReport()
    # Under torchrun each rank takes every world-th file; rank 0 merges the run's metrics.
    pending: list[tuple[Path, str]] = []
    for path, name in list(zip(files, names))[rank::world]:
        done_marker = out / name / "metrics.json"
        if done_marker.is_file() and not overwrite:
            report.skipped.append(name)
            report.rows.append(json.loads(done_marker.read_text()))
            if on_file:
                on_file(name, "skipped", None)
        else:
            pending.append((path, name))

    def failed(name: str, e: Exception) -> None:
        report.failed[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
        if on_file:
            on_file(name, "failed", None)

    def finished(name: str, row: dict[str, Any]) -> None:
        report.done.append(name)
        report.rows.append(row)
        if on_file:
            on_file(name, "done", row)

    run = dict(method=method, steps=steps, samples=samples, save_samples=save_samples, callback=callback,
               knobs=knobs, max_memory=max_memory, interval=interval)  # fmt: skip
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        # Prepare the chunk, then restore files of one measurement shape and noise level together.
        groups: dict[tuple, list[_Prepared]] = {}
        for path, name in chunk:
            try:
                p = _prepare(path, name, out / name, task=task, task_options=task_options, prior=prior,
                             sigma_y=sigma_y, seed=seed, ground_truth=gt, device=device, measured=measured,
                             window=window, simulate=simulate)  # fmt: skip
            except (ValueError, FileNotFoundError, OSError) as e:
                failed(name, e)
                continue
            key = (tuple(p.y.shape), tuple(p.sidecar["image_shape"]), p.sigma_y, p.task, id(p.prior))
            groups.setdefault(key, []).append(p)
        for group in groups.values():
            rows = None
            if len(group) > 1:
                try:
                    rows = _restore_group(group, **run)
                except (ValueError, OSError):
                    rows = None  # restore them one by one below, so each file's own error is reported
            if rows is not None:
                for p, row in zip(group, rows):
                    finished(p.name, row)
                continue
            for p in group:
                try:
                    row = _run(p, **run)
                except (ValueError, FileNotFoundError, OSError) as e:
                    failed(p.name, e)
                    continue
                finished(p.name, row)
    if world > 1:
        report = _gather(report)
    report.seconds = time.time() - t0
    if rank == 0:
        order = {n: i for i, n in enumerate(names)}
        _write_run_metrics(out, sorted(report.rows, key=lambda r: order.get(r["name"], len(order))))
    if world > 1:
        # Leave together and close the group: a rank exiting with its peers still connected aborts.
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return report


def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` under ``torchrun`` (process group: nccl on GPU, gloo on CPU), else ``(0, 1, device)``.

    With ``--device cuda`` each rank uses ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _gather(report: BatchReport) -> BatchReport:
    """Merge every rank's report (all ranks get the merged one)."""
    import torch.distributed as dist

    parts: list[BatchReport | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, report)
    merged = BatchReport()
    for part in parts:
        merged.done += part.done
        merged.skipped += part.skipped
        merged.failed.update(part.failed)
        merged.rows += part.rows
    return merged


def _probe(files: list[Path], task: str, task_options: dict[str, Any], method: str | None, prior,
           measured: bool = False, simulate: bool = True) -> None:  # fmt: skip
    """Fail once, before any work, if the task's options or the method cannot work for these inputs.

    The operator is built for the first readable input (a mask or kernel that does
    not fit it, or a method the operator does not support, stops the run); files
    that cannot be read are left to the per-file loop, which reports them.
    """
    from .tasks import check_measured_options

    if not measured and not simulate:
        check_measured_options(task, task_options)
    for path in files:
        try:
            if measured:
                y, op, _, _ = load_measurement(path)
            else:
                image = read_image(path)
                x = image.data
        except (ValueError, FileNotFoundError, OSError):
            continue
        if not measured and not simulate:
            alpha = image.meta.get("alpha_mask")
            m = measured_operator(task, x[:1], task_options, alpha=None if alpha is None else torch.from_numpy(alpha))
            y, op = m.y, m.op
        elif not measured:
            xp, _ = pad_to_multiple(x[:1], int(task_options.get("scale") or 4) if task == "sr" else 1)
            op = build_operator(task, tuple(xp.shape), task_options)
            with torch.no_grad():
                y = op(xp)
        if method is not None:
            from ..methods import METHODS
            from ..operators import Tomography

            # a CT operator's dense SVD is built only after the memory check (plan)
            if not (isinstance(op, Tomography) and "svd" in METHODS.get(method, METHODS["ddrm"]).needs):
                _check_method(method, op, y)
        return


@dataclass
class CalibrationReport:
    """What :func:`calibrate_files` did: the calibration, and the files used, failed and why."""

    calibration: Calibration | None = None
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def calibrate_files(inputs: list[str], output: str | Path, *, task: str, task_options: dict[str, Any], prior,
                    method: str | None = None, steps: int | None = None, samples: int = 8, sigma_y: float = 0.01,
                    seed: int = 0, device: str | torch.device = "cpu", window: str | tuple[float, float] | None = None,
                    on_file: Callable[[str, str, dict | None], None] | None = None,
                    callback: Callable[[dict], None] | None = None) -> CalibrationReport:  # fmt: skip
    """Fit a calibration for ``task`` on clean images and save it as the JSON ``output``.

    Each input is degraded as ``restore --simulate`` degrades it (the task's operator, noise
    ``sigma_y``, per-file seeds), restored with ``method`` (default: the task's), ``steps``
    (default: the method's own), ``samples`` and the command line's default knobs, and
    scored against itself; :func:`invdiff.calibration.from_scores` fits the scales.  A file
    that fails is reported and left out; the others still make the calibration.  Each file
    is one calibration image, a volume's slices together.
    """
    from ..calibration import default_floor, from_scores, raw_coverages
    from ..intervals import prior_id
    from ..methods import METHODS

    t0 = time.time()
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"--samples must be at least 2 for intervals, got {samples!r}")
    files = find_inputs(inputs)
    names = _names(files)
    output = Path(output)
    if output.suffix.lower() != ".json":
        raise ValueError(f"--output {output} must name a .json file (the calibration)")
    _writable(output.parent if str(output.parent) else Path("."))
    device = torch.device(device)
    prior = prior.to(device)
    report = CalibrationReport()
    image_scores: list[torch.Tensor] = []
    raw: list[dict[float, float]] = []
    meta: dict[str, Any] | None = None
    for path, name in zip(files, names):
        try:
            p = _prepare(path, name, output.parent, task=task, task_options=task_options, prior=prior,
                         sigma_y=sigma_y, seed=seed, ground_truth=None, device=device, measured=False,
                         window=window, simulate=True)  # fmt: skip
            m = method or default_method(task, p.mode)
            n_steps = METHODS[m].steps if steps is None else steps
            op = operator_for(m, p.op)
            _check_method(m, op, p.y)
            knobs = default_knobs(m, op)
            run = dict(method=m, steps=n_steps, samples=samples, sigma_y=p.sigma_y, op=type(op).__name__,
                       prior=prior_id(p.prior), knobs=knobs)  # fmt: skip
            if meta is not None and any(run[k] != meta[k] for k in ("method", "op", "prior", "sigma_y")):
                raise ValueError(f"restored differently from the first file ({run['op']}, {run['prior']}); "
                                 "calibrate files of one kind together")  # fmt: skip
            result = restore_batch(p.y, op, p.prior, batch_size=VOLUME_BATCH, method=m, steps=n_steps,
                                   sigma_y=p.sigma_y, noise=p.noise, samples=samples, seed=p.seed,
                                   callback=_with_steps(callback, n_steps), **knobs)  # fmt: skip
            floor = default_floor(p.prior)
            mean, std, truth = p.crop(result.mean), p.crop(result.std), p.truth
            # One file is one calibration unit, a volume's slices together: slices of one scan are not
            # exchangeable with another scan's, files are.
            file_scores = scores(truth, mean, std, floor)
            file_raw = raw_coverages(truth, torch.stack([p.crop(t) for t in result.samples]))
        except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:  # RuntimeError: e.g. out of memory
            report.failed[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            if on_file:
                on_file(name, "failed", None)
            continue
        if meta is None:
            meta = {**run, "knobs": dict(result.knobs), "sigma_y_result": result.sigma_y, "floor": floor,
                    "sigma_max": result.sigma_max}  # fmt: skip
        image_scores.append(file_scores)
        raw.append(file_raw)
        report.done.append(name)
        if on_file:
            on_file(name, "done", None)
    report.seconds = time.time() - t0
    if not image_scores or meta is None:
        return report
    report.calibration = from_scores(image_scores, raw, method=meta["method"], steps=meta["steps"], samples=samples,
                                     prior=meta["prior"], operator=meta["op"], sigma_y=meta["sigma_y_result"],
                                     floor=meta["floor"], task=task, knobs=meta["knobs"],
                                     sigma_max=meta["sigma_max"])  # fmt: skip
    report.calibration.save(output)
    return report


def degrade_files(inputs: list[str], output: str | Path, *, task: str, task_options: dict[str, Any], prior,
                  sigma_y: float = 0.01, seed: int = 0, overwrite: bool = False,
                  on_file: Callable[[str, str, dict | None], None] | None = None,
                  window: str | tuple[float, float] | None = None) -> BatchReport:  # fmt: skip
    """Write ``output/<name>.npy`` (the measurement) and ``<name>.json`` (its operator) for every clean input."""
    t0 = time.time()
    files = find_inputs(inputs)
    names = _names(files)
    out = _writable(Path(output))
    report = BatchReport()
    for path, name in zip(files, names):
        if (out / f"{name}.json").is_file() and not overwrite:
            report.skipped.append(name)
            if on_file:
                on_file(name, "skipped", None)
            continue
        try:
            chosen = prior_for(prior, read_image(path).data.shape[1], path, task)
            x = read_clean(path, chosen, window=window)
            y, _, _, sidecar = simulate_measurement(x, name, task=task, task_options=task_options, prior=chosen,
                                                    sigma_y=sigma_y, seed=seed)  # fmt: skip
        except (ValueError, FileNotFoundError, OSError) as e:
            report.failed[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            if on_file:
                on_file(name, "failed", None)
            continue
        sidecar["source"] = str(path)
        _save_npy(out / f"{name}.npy", y)
        _write_json(out / f"{name}.json", sidecar)  # written last: marks the file finished
        report.done.append(name)
        if on_file:
            on_file(name, "done", None)
    report.seconds = time.time() - t0
    return report


def _writable(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # per process: torchrun ranks probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    return out


def _write_run_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    _write_json(out / "metrics.json", {"images": rows, "summary": summarise(rows)})
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = out / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "metrics.csv")


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric metric over the finished files."""
    summary: dict[str, float] = {"images": len(rows)}
    for k in ("psnr", "ssim", "lpips", "seconds", "nfe", "std_mean"):
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        if vals:
            summary[k] = sum(vals) / len(vals)
    return summary
