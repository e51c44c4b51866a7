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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .io import find_inputs, pad_to_multiple, read_image, write_image
from .metrics import lpips, lpips_available, psnr, ssim
from .operators import Gaussian
from .restore import check_method, restore
from .tasks import build_operator


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


def file_seed(seed: int, name: str) -> int:
    """A per-file seed that does not depend on the order of the inputs."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


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


def read_clean(path: Path, prior, device: torch.device | str = "cpu") -> torch.Tensor:
    """A clean input image ``(1, C, H, W)`` checked against what the prior models."""
    x = read_image(path).data.to(device)
    if x.shape[0] != 1:
        raise ValueError(f"{path}: holds {x.shape[0]} images/slices; give 2-D images (volumes come with the mri/ct tasks)")
    channels = getattr(prior, "channels", x.shape[1])
    if x.shape[1] != channels:
        raise ValueError(f"{path}: image has {x.shape[1]} channel(s) but the prior models {channels}; choose a "
                         f"{'gray' if channels == 1 else 'colour'} prior or convert the image")  # fmt: skip
    lo, hi = prior.data_range
    if math.isfinite(lo) and (float(x.min()) < lo - 1e-3 or float(x.max()) > hi + 1e-3):
        raise ValueError(f"{path}: values span [{float(x.min()):.3g}, {float(x.max()):.3g}] but the prior models "
                         f"[{lo:g}, {hi:g}]; rescale the data first")  # fmt: skip
    return x


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
    y = Gaussian(sigma_y).sample(op(xp), generator=g)
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


def restore_one(path: Path, name: str, out: Path, *, task: str, task_options: dict[str, Any], prior,
                method: str, steps: int | None, sigma_y: float, samples: int, seed: int,
                ground_truth: Path | None, save_samples: bool, device: torch.device, measured: bool = False,
                callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                ) -> dict[str, Any]:  # fmt: skip
    """Restore one file into ``out``; returns its metrics row.

    ``measured``: ``path`` is a measurement written by ``invdiff degrade`` (its
    sidecar gives the task, options, seed and ``sigma_y``); otherwise ``path`` is
    a clean image whose measurement is simulated.
    """
    truth_path = _truth_for(name, ground_truth)
    truth = read_image(truth_path).data.to(device) if truth_path else None
    if measured:
        y, op, crop, sidecar = load_measurement(path, device)
        task, task_options, sigma_y, s = sidecar["task"], sidecar["options"], sidecar["sigma_y"], sidecar["seed"]
    else:
        x = read_clean(path, prior, device)
        y, op, crop, sidecar = simulate(x, name, task=task, task_options=task_options, prior=prior,
                                        sigma_y=sigma_y, seed=seed)  # fmt: skip
        s = sidecar["seed"]
        truth = x if truth is None else truth
    h, w = sidecar["original_size"]
    if truth is not None and tuple(truth.shape[-2:]) != (h, w):
        raise ValueError(f"ground truth {truth_path} is {tuple(truth.shape[-2:])} but the image is {(h, w)}")
    result = restore(y, op, prior, method=method, steps=steps, sigma_y=sigma_y, samples=samples, seed=s,
                     callback=callback, **(knobs or {}))  # fmt: skip
    mean, std = crop(result.mean), crop(result.std)

    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "restored.png", mean.clamp(0, 1))
    std_max = float(std.max())
    write_image(out / "std.png", std / max(std_max, 1e-12))
    _save_npy(out / "measurement.npy", y)
    panels = [mean, std / max(std_max, 1e-12)] + ([truth] if truth is not None else [])
    if list(y.shape) == sidecar["image_shape"]:
        write_image(out / "measurement.png", crop(y).clamp(0, 1))
        panels.insert(0, crop(y))
    write_image(out / "comparison.png", torch.cat([p.clamp(0, 1) for p in panels], dim=-1))
    if save_samples:
        for k in range(result.samples.shape[0]):
            write_image(out / "samples" / f"sample_{k}.png", crop(result.samples[k]).clamp(0, 1))

    row: dict[str, Any] = {
        "name": name, "input": str(path), "task": task, "method": method, "steps": result.steps,
        "samples": samples, "sigma_y": sigma_y, "nfe": result.nfe, "seconds": round(result.seconds, 3),
        "std_max": std_max, "std_mean": float(std.mean()),
        "truth": str(truth_path) if truth_path else ("none" if measured else "input"),
    }  # fmt: skip
    if truth is not None:
        row["psnr"] = float(psnr(mean.clamp(0, 1), truth)[0])
        row["ssim"] = float(ssim(mean.clamp(0, 1), truth)[0])
        if lpips_available() and min(h, w) >= 32:
            row["lpips"] = float(lpips(mean.clamp(0, 1), truth)[0])
    _write_json(out / "metrics.json", row)  # written last: marks the file finished
    return row


def restore_files(inputs: list[str], output: str | Path, *, task: str, task_options: dict[str, Any], prior,
                  method: str = "ddrm", steps: int | None = None, sigma_y: float = 0.01, samples: int = 4,
                  seed: int = 0, ground_truth: str | Path | None = None, overwrite: bool = False,
                  save_samples: bool = False, device: str | torch.device = "cpu",
                  on_file: Callable[[str, str, dict | None], None] | None = None,
                  callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                  measured: bool = False) -> BatchReport:  # fmt: skip
    """Restore every input file; see the module docstring.  ``on_file(name, status, row)`` reports progress.

    ``measured``: inputs are ``.npy`` measurements from :func:`degrade_files` (task, options
    and ``sigma_y`` then come from each sidecar).
    """
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
    for path, name in list(zip(files, names))[rank::world]:
        folder = out / name
        done_marker = folder / "metrics.json"
        if done_marker.is_file() and not overwrite:
            report.skipped.append(name)
            report.rows.append(json.loads(done_marker.read_text()))
            if on_file:
                on_file(name, "skipped", None)
            continue
        try:
            row = restore_one(path, name, folder, task=task, task_options=task_options, prior=prior, method=method,
                              steps=steps, sigma_y=sigma_y, samples=samples, seed=seed, ground_truth=gt,
                              save_samples=save_samples, device=device, measured=measured, callback=callback,
                              knobs=knobs)  # fmt: skip
        except (ValueError, FileNotFoundError, OSError) as e:
            report.failed[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            if on_file:
                on_file(name, "failed", None)
            continue
        report.done.append(name)
        report.rows.append(row)
        if on_file:
            on_file(name, "done", row)
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
        check_method(method, op, y)
        return


def degrade_files(inputs: list[str], output: str | Path, *, task: str, task_options: dict[str, Any], prior,
                  sigma_y: float = 0.01, seed: int = 0, overwrite: bool = False,
                  on_file: Callable[[str, str, dict | None], None] | None = None) -> BatchReport:  # fmt: skip
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
            x = read_clean(path, prior)
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
