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


def restore_one(path: Path, name: str, out: Path, *, task: str, task_options: dict[str, Any], prior,
                method: str, steps: int | None, sigma_y: float, samples: int, seed: int,
                ground_truth: Path | None, save_samples: bool, device: torch.device,
                callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                ) -> dict[str, Any]:  # fmt: skip
    """Restore one file into ``out``; returns its metrics row."""
    image = read_image(path)
    x = image.data.to(device)
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
    truth_path = _truth_for(name, ground_truth)
    truth = read_image(truth_path).data.to(device) if truth_path else x
    if truth.shape != x.shape:
        raise ValueError(f"ground truth {truth_path} has shape {tuple(truth.shape)} but {path} is {tuple(x.shape)}")

    # Pad to what the prior needs (reflect), simulate, restore, crop back.
    factor = getattr(prior, "factor", 1)
    if task == "sr":
        factor = factor * int(task_options.get("scale") or 4)
    xp, crop = pad_to_multiple(x, factor)
    s = file_seed(seed, name)
    op = build_operator(task, tuple(xp.shape), task_options, seed=s).to(device)
    g = torch.Generator(device=device).manual_seed(s)
    y = Gaussian(sigma_y).sample(op(xp), generator=g)
    result = restore(y, op, prior, method=method, steps=steps, sigma_y=sigma_y, samples=samples, seed=s,
                     callback=callback, **(knobs or {}))  # fmt: skip
    mean, std = crop(result.mean), crop(result.std)

    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "restored.png", mean.clamp(0, 1))
    std_max = float(std.max())
    write_image(out / "std.png", std / max(std_max, 1e-12))
    tmp = out / "measurement.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, y.cpu().numpy())
    os.replace(tmp, out / "measurement.npy")
    panels = [mean, std / max(std_max, 1e-12), truth]
    if y.shape == xp.shape:
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
        "psnr": float(psnr(mean.clamp(0, 1), truth)[0]), "ssim": float(ssim(mean.clamp(0, 1), truth)[0]),
        "truth": str(truth_path) if truth_path else "input",
    }  # fmt: skip
    if lpips_available() and min(x.shape[-2:]) >= 32:
        row["lpips"] = float(lpips(mean.clamp(0, 1), truth)[0])
    _write_json(out / "metrics.json", row)  # written last: marks the file finished
    return row


def restore_files(inputs: list[str], output: str | Path, *, task: str, task_options: dict[str, Any], prior,
                  method: str = "ddrm", steps: int | None = None, sigma_y: float = 0.01, samples: int = 4,
                  seed: int = 0, ground_truth: str | Path | None = None, overwrite: bool = False,
                  save_samples: bool = False, device: str | torch.device = "cpu",
                  on_file: Callable[[str, str, dict | None], None] | None = None,
                  callback: Callable[[dict], None] | None = None, knobs: dict[str, Any] | None = None,
                  ) -> BatchReport:  # fmt: skip
    """Restore every input file; see the module docstring.  ``on_file(name, status, row)`` reports progress."""
    t0 = time.time()
    files = find_inputs(inputs)
    names = _names(files)
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    gt = Path(ground_truth) if ground_truth is not None else None
    if gt is not None and not gt.exists():
        raise ValueError(f"--ground-truth {gt} does not exist")
    device = torch.device(device)
    prior = prior.to(device)
    _probe(files, task, task_options, method, prior)
    report = BatchReport()
    for path, name in zip(files, names):
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
                              save_samples=save_samples, device=device, callback=callback, knobs=knobs)  # fmt: skip
        except (ValueError, FileNotFoundError, OSError) as e:
            report.failed[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            if on_file:
                on_file(name, "failed", None)
            continue
        report.done.append(name)
        report.rows.append(row)
        if on_file:
            on_file(name, "done", row)
    report.seconds = time.time() - t0
    _write_run_metrics(out, report.rows)
    return report


def _probe(files: list[Path], task: str, task_options: dict[str, Any], method: str, prior) -> None:
    """Fail once, before any work, if the task's options or the method cannot work for these inputs.

    The operator is built for the first readable input (a mask or kernel that does
    not fit it, or a method the operator does not support, stops the run); files
    that cannot be read are left to the per-file loop, which reports them.
    """
    for path in files:
        try:
            x = read_image(path).data
        except (ValueError, FileNotFoundError, OSError):
            continue
        factor = getattr(prior, "factor", 1) * (int(task_options.get("scale") or 4) if task == "sr" else 1)
        xp, _ = pad_to_multiple(x[:1], factor)
        op = build_operator(task, tuple(xp.shape), task_options)
        with torch.no_grad():
            check_method(method, op, op(xp))
        return


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
