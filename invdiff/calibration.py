"""``calibrate``: fit the scales that make a method's per-pixel intervals cover at their nominal level.

See :mod:`invdiff.intervals` for the score, the conformal risk control behind the
scales and what the guarantee promises; this module runs the restorations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .intervals import LEVELS, Calibration, coverage, fit_scales, prior_id, sample_interval, scores
from .restore import restore

if TYPE_CHECKING:
    from .operators import Operator
    from .priors import Prior

#: the std floor of the scores, as a fraction of the prior's data range
FLOOR_FRACTION = 1e-3


def default_floor(prior: Prior) -> float:
    """``FLOOR_FRACTION`` of the prior's data range (of 1 for an unbounded prior), in data units."""
    lo, hi = getattr(prior, "data_range", (0.0, 1.0))
    span = float(hi) - float(lo)
    return FLOOR_FRACTION * (span if math.isfinite(span) else 1.0)


def calibrate(
    truth: Tensor | Sequence[Tensor],
    op: Operator | Sequence[Operator],
    prior: Prior,
    *,
    method: str = "ddrm",
    steps: int | None = None,
    samples: int = 8,
    sigma_y: float,
    y: Tensor | Sequence[Tensor] | None = None,
    seed: int = 0,
    task: str | None = None,
    floor: float | None = None,
    sigma_max: float | None = None,
    on_image: Callable[[int, int], None] | None = None,
    **knobs: Any,
) -> Calibration:
    """Restore calibration images with known truth and fit interval scales for this way of restoring.

    Each image is measured (``y = A(x) + sigma_y e``, seeded by ``seed``, unless ``y`` is
    given), restored by ``invdiff.restore`` with ``method``, ``steps``, ``samples``, the
    knobs and ``prior``, and scored per pixel by ``|x - mean| / max(std, floor)``; the scale
    for each level 0.01 ... 0.99 is fitted by conformal risk control
    (:func:`invdiff.intervals.fit_scales`).

    Guarantee: if the calibration images and a new image (with its measurement and noise)
    are exchangeable, i.e. drawn the same way, and the new image is restored with
    ``restore(..., calibration=...)`` under the same settings, the expected fraction of its
    pixels inside ``Result.interval(level)`` is at least ``level`` (and, without ties in the
    scores, at most ``level + 2 / (n + 1)``).  It holds on average over images, not for
    every image, pixel or region, and only for images like the calibration images: calibrate
    on the kind of images (and operators, noise levels) the restorations will see.  A level
    needs ``n >= 1 / (1 - level) - 1`` images (9 for 0.9).

    Args:
        truth: the clean images, ``(N, C, H, W)`` or a sequence of ``(1, C, H, W)`` (sizes may differ).
        op: one operator for every image, or one per image (all of one kind).
        y: the measurements, one per image, if they are not to be simulated.
        sigma_y: the measurement noise std (data units), used to simulate ``y`` and to restore.
        task: a name for the kind of problem (the command line's ``--task``), checked when applied.
        floor: the std floor (data units); default ``FLOOR_FRACTION`` of the prior's data range.
        on_image: called with ``(i, n)`` after each image is restored.
        **knobs: the method's knobs, passed to ``restore``.

    Returns:
        a :class:`~invdiff.intervals.Calibration`; save it with ``.save(path)``.
    """
    truths = [truth[i : i + 1] for i in range(truth.shape[0])] if isinstance(truth, Tensor) else list(truth)
    n = len(truths)
    if n == 0:
        raise ValueError("calibrate needs at least one image with its ground truth")
    ops = list(op) if isinstance(op, (list, tuple)) else [op] * n
    if len(ops) != n:
        raise ValueError(f"got {len(ops)} operators for {n} images; pass one operator or one per image")
    kinds = {type(o).__name__ for o in ops}
    if len(kinds) > 1:
        raise ValueError(f"the operators are of several kinds ({', '.join(sorted(kinds))}); calibrate each kind apart")
    ys = None
    if y is not None:
        ys = [y[i : i + 1] for i in range(y.shape[0])] if isinstance(y, Tensor) else list(y)
        if len(ys) != n:
            raise ValueError(f"got {len(ys)} measurements for {n} images; pass one per image")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"calibration needs at least 2 posterior samples per image, got {samples!r}; pass samples=8")
    if not (isinstance(sigma_y, (int, float)) and math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"sigma_y must be a number >= 0 (data units), got {sigma_y!r}")
    if floor is None:
        floor = default_floor(prior)
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor!r}")

    g = torch.Generator().manual_seed(seed)
    image_scores: list[Tensor] = []
    raw: list[dict[float, float]] = []
    first = None
    for i, (x, a) in enumerate(zip(truths, ops)):
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"calibration image {i} must be a (1, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")  # fmt: skip
        if ys is not None:
            yi = ys[i]
        else:
            with torch.no_grad():
                ax = a(x)
            yi = ax + sigma_y * torch.randn(ax.shape, generator=g, dtype=ax.dtype).to(ax.device)
        res = restore(yi, a, prior, method=method, steps=steps, sigma_y=sigma_y, samples=samples, seed=seed + 1 + i,
                      sigma_max=sigma_max, **knobs)  # fmt: skip
        first = first or res
        x = x.to(res.mean.device)
        image_scores.append(scores(x, res.mean, res.std, floor))
        raw.append(raw_coverages(x, res.samples))
        if on_image is not None:
            on_image(i, n)
    assert first is not None
    return from_scores(image_scores, raw, method=method, steps=first.steps, samples=samples, prior=prior_id(prior),
                       operator=kinds.pop(), sigma_y=first.sigma_y, floor=float(floor), task=task,
                       knobs=dict(first.knobs), sigma_max=first.sigma_max)  # fmt: skip


#: the levels whose raw sample-interval coverage a calibration records
RAW_LEVELS = (0.5, 0.8, 0.9, 0.95)


def raw_coverages(truth: Tensor, samples: Tensor) -> dict[float, float]:
    """Coverage of ``truth`` by the raw sample intervals (``samples`` ``(S, ...)``) at ``RAW_LEVELS``."""
    out = {}
    for level in RAW_LEVELS:
        lo, hi = sample_interval(samples, level)
        out[level] = coverage(truth.to(lo.dtype), lo, hi)
    return out


def from_scores(image_scores: list[Tensor], raw: list[dict[float, float]] | None = None, **meta: Any) -> Calibration:
    """A :class:`Calibration` from per-image scores (``invdiff.intervals.scores``) and what they were made with.

    ``raw``: per image, :func:`raw_coverages`; ``meta``: the ``Calibration`` fields that
    describe the run (method, steps, samples, prior, operator, sigma_y, floor, task, knobs).
    """
    n = len(image_scores)
    scales = fit_scales(image_scores)
    cov = {
        level: sum(float((sc <= s).to(torch.float64).mean()) for sc in image_scores) / n
        for level, s in scales.items()
        if s is not None
    }
    raw_cov = {level: sum(r[level] for r in raw) / len(raw) for level in RAW_LEVELS} if raw else {}
    return Calibration(scales=scales, n_images=n, n_pixels=sum(s.numel() for s in image_scores), coverage=cov,
                       raw_coverage=raw_cov, **meta)  # fmt: skip


__all__ = ["calibrate", "default_floor", "from_scores", "raw_coverages", "Calibration", "LEVELS", "RAW_LEVELS"]
