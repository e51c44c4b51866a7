"""Restore many files: what ``invdiff restore`` runs.

For each input image: read it, simulate the measurement ``y = A(x) + noise``
with the task's operator (seeded per file, so re-runs measure the same ``y``),
restore with :func:`invdiff.restore`, and write into ``output/<name>/``:
``restored.png``, ``std.png`` (normalised to its maximum, the value in
``metrics.json``), ``measurement.npy`` (and ``.png`` when ``y`` is an image of
the same size), ``comparison.png`` (measurement | restored | std | truth), and
``samples/`` on request.  ``metrics.json`` in that folder marks the file as
finished; a re-run skips finished files unless ``overwrite``.  A file that
fails is reported and skipped; the others finish.  The run's ``metrics.csv``
and ``metrics.json`` gather every finished file of the inputs.
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
from ..io import Image, derived_series_uid, file_seed, find_inputs, pad_to_multiple, read_image, write_image
from ..metrics import lpips, lpips_available, psnr, ssim
from ..restore import check_method, restore
from .tasks import build_operator, measurement_noise, operator_for, stack_operators
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


SIDECAR_VERSION = 1


def read_clean(path: Path, prior, device: torch.device | str = "cpu",
               window: str | tuple[float, float] | None = None) -> torch.Tensor:  # fmt: skip
    """A clean input ``(S, C, H, W)`` checked against what the prior models (``S > 1``: a volume's slices)."""
    return read_clean_image(path, prior, device, window)[0]


def read_clean_image(path: Path, prior, device: torch.device | str = "cpu", window: str | tuple[float, float] | None
                     = None) -> tuple[torch.Tensor, Image, tuple[float, float] | None]:  # fmt: skip
    """``read_clean`` with the ``Image`` read and the HU window applied (``None`` if none).

    ``window`` (a name or ``(lo, hi)`` in HU, see ``invdiff.medical.ct``) maps values onto
    ``[0, 1]``, clipping; CT DICOM files get the ``ct`` window (-1000..1000 HU) by default.
    """
    image = read_image(path)
    x = image.data.to(device)
    if window is None and image.kind == "dicom" and str(getattr(image.meta["dataset"], "Modality", "")) == "CT":
        window = "ct"
    if window is not None:
        window = parse_window(window)
        x = hu_to_unit(x, window, clip=True)
    channels = getattr(prior, "channels", x.shape[1])
    if x.shape[1] != channels:
        fits = {1: "--prior natural-gray", 3: "--prior natural-rgb"}.get(x.shape[1], f"a {x.shape[1]}-channel prior")
        raise ValueError(f"{path}: image has {x.shape[1]} channel(s) but the prior models {channels}; use "
                         f"{fits} or convert the image")  # fmt: skip
    lo, hi = prior.data_range
    if math.isfinite(lo) and (float(x.min()) < lo - 1e-3 or float(x.max()) > hi + 1e-3):
        raise ValueError(f"{path}: values span [{float(x.min()):.3g}, {float(x.max()):.3g}] but the prior models "
                         f"[{lo:g}, {hi:g}]; rescale the data first (or map HU with --window)")  # fmt: skip
    return x, image, window


def simulate(x: torch.Tensor, name: str, *, task: str, task_options: dict[str, Any], prior, sigma_y: float,
             seed: int) -> tuple[torch.Tensor, Any, Callable, dict[str, Any]]:  # fmt: skip
    """Pad ``x`` to what the prior needs (reflect), build the task's operator and draw ``y = A(x) + noise``.

    Returns ``(y, op, crop, sidecar)``; the sidecar rebuilds ``op`` exactly (:func:`operator_from_sidecar`).
    """
    factor = getattr(prior, "factor", 1) * (int(task_options.get("scale") or 4) if task == "sr" else 1)
    xp, crop = pad_to_multiple(x, factor)
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
    if sidecar.get("invdiff_sidecar") != SIDECAR_VERSION:
        raise ValueError("not an invdiff measurement sidecar (write measurements with 'invdiff degrade')")
    op = build_operator(sidecar["task"], tuple(sidecar["image_shape"]), sidecar["options"], seed=sidecar["seed"])
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
    image: Image | None = None  # the clean input as read (to write DICOM/NIfTI outputs like it)
    window: tuple[float, float] | None = None  # HU window its values were mapped from

    @property
    def noise(self) -> Any:
        return measurement_noise(self.op, self.sigma_y, self.sidecar.get("options"))


def _prepare(path: Path, name: str, out: Path, *, task: str, task_options: dict[str, Any], prior, sigma_y: float,
             seed: int, ground_truth: Path | None, device: torch.device, measured: bool, method: str | None = None,
             window: str | tuple[float, float] | None = None) -> _Prepared:  # fmt: skip
    """Read (or simulate) the measurement of one file and check its ground truth."""
    truth_path = _truth_for(name, ground_truth)
    truth = read_image(truth_path).data.to(device) if truth_path else None
    image = None
    if measured:
        y, op, crop, sidecar = load_measurement(path, device)
        task, sigma_y = sidecar["task"], sidecar["sigma_y"]
    else:
        x, image, window = read_clean_image(path, prior, device, window)
        y, op, crop, sidecar = simulate(x, name, task=task, task_options=task_options, prior=prior,
                                        sigma_y=sigma_y, seed=seed)  # fmt: skip
        truth = x if truth is None else truth
    h, w = sidecar["original_size"]
    if truth is not None and tuple(truth.shape[-2:]) != (h, w):
        raise ValueError(f"ground truth {truth_path} is {tuple(truth.shape[-2:])} but the image is {(h, w)}")
    op = operator_for(method, op) if method else op
    return _Prepared(path, name, out, y, op, crop, sidecar, truth, truth_path, task, sigma_y, sidecar["seed"],
                     image, window)  # fmt: skip


def _finish(p: _Prepared, mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor, *, method: str,
            steps: int, nfe: int, seconds: float, save_samples: bool, measured: bool,
            batched: int = 1) -> dict[str, Any]:  # fmt: skip
    """Write one file's outputs (``samples``: ``(S, 1, C, H, W)``) and return its metrics row.

    A volume (several slices) is previewed by its middle slice in the PNGs; DICOM and
    NIfTI inputs also get ``restored.dcm`` / ``restored.nii.gz`` in their own form.
    """
    crop, truth, sidecar, out = p.crop, p.truth, p.sidecar, p.out
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
    if list(p.y.shape) == sidecar["image_shape"]:
        write_image(out / "measurement.png", view(crop(p.y)).clamp(0, 1))
        panels.insert(0, view(crop(p.y)))
    write_image(out / "comparison.png", torch.cat([q.clamp(0, 1) for q in panels], dim=-1))
    if save_samples:
        for k in range(samples.shape[0]):
            write_image(out / "samples" / f"sample_{k}.png", view(crop(samples[k])).clamp(0, 1))

    row: dict[str, Any] = {
        "name": p.name, "input": str(p.path), "task": p.task, "method": method, "steps": steps,
        "samples": int(samples.shape[0]), "sigma_y": p.sigma_y, "nfe": nfe, "seconds": round(seconds, 3),
        "std_max": std_max, "std_mean": float(std.mean()),
        "truth": str(p.truth_path) if p.truth_path else ("none" if measured else "input"),
    }  # fmt: skip
    if batched > 1:
        row["batched_with"] = batched  # seconds: the batch's time divided by its images
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


def restore_one(path: Path, name: str, out: Path, *, task: str, task_options: dict[str, Any], prior,
                method: str, steps: int | None, sigma_y: float, samples: int, seed: int,
                ground_truth: Path | None, save_samples: bool, device: torch.device, measured: bool = False,
                callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                window: str | tuple[float, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Restore one file into ``out``; returns its metrics row.

    ``measured``: ``path`` is a measurement written by ``invdiff degrade`` (its
    sidecar gives the task, options, seed and ``sigma_y``); otherwise ``path`` is
    a clean image whose measurement is simulated.
    """
    p = _prepare(path, name, out, task=task, task_options=task_options, prior=prior, sigma_y=sigma_y, seed=seed,
                 ground_truth=ground_truth, device=device, measured=measured, method=method, window=window)  # fmt: skip
    result = restore_batch(p.y, p.op, prior, batch_size=VOLUME_BATCH, method=method, steps=steps, sigma_y=p.sigma_y,
                           noise=p.noise, samples=samples, seed=p.seed, callback=callback, **(knobs or {}))  # fmt: skip
    return _finish(p, result.mean, result.std, result.samples, method=method, steps=result.steps, nfe=result.nfe,
                   seconds=result.seconds, save_samples=save_samples, measured=measured)  # fmt: skip


def _restore_group(group: list[_Prepared], *, prior, method: str, steps: int | None, samples: int,
                   save_samples: bool, measured: bool, callback, knobs) -> list[dict[str, Any]] | None:  # fmt: skip
    """Restore files whose operators stack into one batch in a single ``restore`` call; ``None`` if they don't."""
    op = stack_operators([p.op for p in group])
    if op is None or any(p.y.shape[0] != 1 for p in group):  # volumes go one by one, in chunks of slices
        return None
    y = torch.cat([p.y for p in group])
    result = restore(y, op, prior, method=method, steps=steps, sigma_y=group[0].sigma_y, noise=group[0].noise,
                     samples=samples, seed=group[0].seed, callback=callback, **(knobs or {}))  # fmt: skip
    n = len(group)
    return [
        _finish(p, result.mean[b : b + 1], result.std[b : b + 1], result.samples[:, b : b + 1], method=method,
                steps=result.steps, nfe=result.nfe, seconds=result.seconds / n, save_samples=save_samples,
                measured=measured, batched=n)  # fmt: skip
        for b, p in enumerate(group)
    ]


def restore_files(inputs: list[str], output: str | Path, *, task: str, task_options: dict[str, Any], prior,
                  method: str = "ddrm", steps: int | None = None, sigma_y: float = 0.01, samples: int = 4,
                  seed: int = 0, ground_truth: str | Path | None = None, overwrite: bool = False,
                  save_samples: bool = False, device: str | torch.device = "cpu",
                  on_file: Callable[[str, str, dict | None], None] | None = None,
                  callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                  measured: bool = False, batch_size: int = 1,
                  window: str | tuple[float, float] | None = None) -> BatchReport:  # fmt: skip
    """Restore every input file; see the module docstring.  ``on_file(name, status, row)`` reports progress.

    ``measured``: inputs are ``.npy`` measurements from :func:`degrade_files` (task, options
    and ``sigma_y`` then come from each sidecar).

    ``batch_size``: up to this many files go through one ``restore`` call when their
    measurements have one shape and their operators stack (:func:`~invdiff.cli.tasks.stack_operators`);
    the others are restored one by one.  A batch draws its noise from its first file's
    seed, so samples depend on ``batch_size``; each file's measurement does not.

    ``window``: HU window mapping the inputs' values onto ``[0, 1]`` (CT DICOM: ``ct`` by
    default); volumes (NIfTI, multi-frame DICOM) are restored slice by slice as batches.
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
    _probe(files, task, task_options, method, prior, measured)
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

    common = dict(prior=prior, method=method, steps=steps, samples=samples, save_samples=save_samples,
                  measured=measured, callback=callback, knobs=knobs)  # fmt: skip
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        if batch_size == 1:
            path, name = chunk[0]
            try:
                row = restore_one(path, name, out / name, task=task, task_options=task_options, prior=prior,
                                  method=method, steps=steps, sigma_y=sigma_y, samples=samples, seed=seed,
                                  ground_truth=gt, save_samples=save_samples, device=device, measured=measured,
                                  callback=callback, knobs=knobs, window=window)  # fmt: skip
            except (ValueError, FileNotFoundError, OSError) as e:
                failed(name, e)
                continue
            finished(name, row)
            continue
        # Prepare the chunk, then restore files of one measurement shape and noise level together.
        groups: dict[tuple, list[_Prepared]] = {}
        for path, name in chunk:
            try:
                p = _prepare(path, name, out / name, task=task, task_options=task_options, prior=prior,
                             sigma_y=sigma_y, seed=seed, ground_truth=gt, device=device, measured=measured,
                             method=method, window=window)  # fmt: skip
            except (ValueError, FileNotFoundError, OSError) as e:
                failed(name, e)
                continue
            groups.setdefault((tuple(p.y.shape), tuple(p.sidecar["image_shape"]), p.sigma_y, p.task), []).append(p)
        for group in groups.values():
            rows = None
            if len(group) > 1:
                try:
                    rows = _restore_group(group, **common)
                except (ValueError, OSError):
                    rows = None  # restore them one by one below, so each file's own error is reported
            if rows is not None:
                for p, row in zip(group, rows):
                    finished(p.name, row)
                continue
            for p in group:
                try:
                    result = restore_batch(p.y, p.op, prior, batch_size=VOLUME_BATCH, method=method, steps=steps,
                                           sigma_y=p.sigma_y, noise=p.noise, samples=samples, seed=p.seed,
                                           callback=callback, **(knobs or {}))  # fmt: skip
                    row = _finish(p, result.mean, result.std, result.samples, method=method, steps=result.steps,
                                  nfe=result.nfe, seconds=result.seconds, save_samples=save_samples,
                                  measured=measured)  # fmt: skip
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


def _probe(files: list[Path], task: str, task_options: dict[str, Any], method: str, prior,
           measured: bool = False) -> None:  # fmt: skip
    """Fail once, before any work, if the task's options or the method cannot work for these inputs.

    The operator is built for the first readable input (a mask or kernel that does
    not fit it, or a method the operator does not support, stops the run); files
    that cannot be read are left to the per-file loop, which reports them.
    """
    for path in files:
        try:
            if measured:
                y, op, _, _ = load_measurement(path)
            else:
                x = read_image(path).data
        except (ValueError, FileNotFoundError, OSError):
            continue
        if not measured:
            factor = getattr(prior, "factor", 1) * (int(task_options.get("scale") or 4) if task == "sr" else 1)
            xp, _ = pad_to_multiple(x[:1], factor)
            op = build_operator(task, tuple(xp.shape), task_options)
            with torch.no_grad():
                y = op(xp)
        op = operator_for(method, op)
        check_method(method, op, y)
        return


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
            x = read_clean(path, prior, window=window)
            y, _, _, sidecar = simulate(x, name, task=task, task_options=task_options, prior=prior,
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
