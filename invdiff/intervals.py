"""Per-pixel intervals from posterior samples, and their calibration by conformal risk control.

Raw intervals (:func:`sample_interval`) are the samples' pixelwise quantiles: they
cover the truth at their nominal rate only if the sampler draws from the true
posterior and there are enough samples, and diffusion samplers are known not to
(``benchmarks/results/posterior.md``, ``calibration.md``).

A :class:`Calibration` replaces them by ``mean +- lambda * max(std, floor)``, with the
scale ``lambda`` fitted on images with known truth (:func:`fit_scales`, run by
:func:`invdiff.calibrate`) so that, on a new image restored the same way, the expected
fraction of pixels inside the interval is at least the nominal level.  The score is
``|x - mean| / max(std, floor)`` and the loss of one image at scale ``lambda`` is the
fraction of its pixels whose score exceeds ``lambda`` (non-increasing in ``lambda``,
bounded by 1), so conformal risk control (Angelopoulos, Bates, Fisch, Lei & Schuster,
"Conformal Risk Control", ICLR 2024, Theorem 1) gives the finite-sample guarantee
stated in :func:`fit_scales`.  It is a guarantee for the average pixel of an image, not
for each pixel nor for each region: hard regions (edges, large holes) can be covered
less often and easy ones more.  Split conformal prediction over pooled pixels would
claim more than it can: the pixels of one image are neither independent nor
exchangeable with a new image's; whole images are.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: the levels a calibration stores a scale for: 0.01, 0.02, ..., 0.99
LEVELS = tuple(round(0.01 * k, 2) for k in range(1, 100))

#: what a calibration file says it is (its ``"format"``), and the version of its fields
FORMAT = "invdiff-calibration"
VERSION = 1

#: relative difference of sigma_y allowed between a calibration and the run it is applied to
SIGMA_Y_RTOL = 0.2

_PLAIN = (bool, int, float, str, type(None))


def check_level(level: Any) -> float:
    """``level`` as a float in (0, 1); raises ``ValueError`` with a one-line message otherwise."""
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < float(level) < 1:
        raise ValueError(f"interval level must be a number in (0, 1), e.g. 0.9 for 90 %, got {level!r}")
    return float(level)


def quantile(samples: Tensor, q: float) -> Tensor:
    """The ``q`` quantile over dim 0 with linear interpolation (numpy's default method).

    Written with ``sort`` because ``torch.quantile`` refuses inputs above 2^24 elements
    (16 samples of a 3x512x512 image already exceed it).
    """
    s = samples.sort(dim=0).values
    pos = q * (s.shape[0] - 1)
    i = min(int(math.floor(pos)), s.shape[0] - 1)
    j = min(i + 1, s.shape[0] - 1)
    return s[i] + (pos - i) * (s[j] - s[i])


def sample_interval(samples: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """Raw pixelwise interval: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``samples`` ``(S, ...)``."""
    level = check_level(level)
    if samples.shape[0] < 2:
        raise ValueError("an interval needs at least 2 posterior samples (one sample has no spread); pass samples=8")
    s = samples.to(torch.float64) if samples.dtype != torch.float64 else samples
    return quantile(s, (1 - level) / 2).to(samples.dtype), quantile(s, (1 + level) / 2).to(samples.dtype)


def bounds(mean: Tensor, std: Tensor, samples: Tensor, level: float,
           calibration: "Calibration | None" = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(lo, hi)``: ``calibration``'s ``mean -+ scale * std``, or without one the samples' quantiles.

    ``samples`` ``(S, ...)`` must have at least 2 entries either way: one sample has no spread.
    """
    if samples.shape[0] < 2:
        raise ValueError("an interval needs at least 2 posterior samples (one sample has no spread); "
                         "restore with samples=8 or more")  # fmt: skip
    if calibration is not None:
        return calibration.interval(mean, std, level)
    return sample_interval(samples, level)


def scores(truth: Tensor, mean: Tensor, std: Tensor, floor: float) -> Tensor:
    """Nonconformity ``|truth - mean| / max(std, floor)`` per pixel, float64, shaped like ``mean``."""
    if truth.shape != mean.shape:
        raise ValueError(f"truth has shape {tuple(truth.shape)} but the restoration {tuple(mean.shape)}")
    t, m, s = (a.to(torch.float64) for a in (truth, mean, std))
    return (t - m).abs() / s.clamp_min(floor)


def coverage(truth: Tensor, lo: Tensor, hi: Tensor) -> float:
    """The fraction of pixels with ``lo <= truth <= hi``."""
    inside = (truth >= lo) & (truth <= hi)
    return float(inside.to(torch.float64).mean())


def fit_scales(image_scores: list[Tensor], levels: tuple[float, ...] = LEVELS) -> dict[float, float | None]:
    """Conformal risk control: the smallest scale per level whose corrected calibration risk is within ``1 - level``.

    ``image_scores``: one tensor of scores (:func:`scores`) per calibration image.  For
    ``alpha = 1 - level`` and ``n`` images, the loss of image ``i`` at scale ``lambda`` is
    ``L_i(lambda)``, the fraction of its pixels with score above ``lambda``; the scale is

        ``lambda = inf { lambda : n / (n + 1) * mean_i L_i(lambda) + 1 / (n + 1) <= alpha }``.

    Guarantee (conformal risk control, Theorem 1, loss bounded by 1): if the ``n``
    calibration images and a new image, each with its measurement, noise and sampler
    draws, are exchangeable (drawn the same way, restored with the same method, steps,
    samples, knobs and prior), then the expected fraction of the new image's pixels inside
    ``mean +- lambda * max(std, floor)`` is at least ``level``.  The expectation is over
    the calibration set and the new image together; if the scores have no ties it is also
    at most ``level + 2 / (n + 1)`` (Theorem 2).  A level needs ``n >= 1 / alpha - 1``
    images (9 for 0.9, 19 for 0.95, 99 for 0.99); levels with fewer get ``None``.
    """
    n = len(image_scores)
    if n == 0:
        raise ValueError("calibration needs at least one image with its ground truth")
    flat, weights = [], []
    for s in image_scores:
        s = s.reshape(-1).to(torch.float64)
        if s.numel() == 0:
            raise ValueError("a calibration image has no pixels")
        if not torch.isfinite(s).all():
            raise ValueError("a calibration score is NaN or infinite: the truth or the restoration has NaN/inf pixels")
        flat.append(s)
        weights.append(torch.full_like(s, 1.0 / (n * s.numel())))
    order = torch.cat(flat).sort(descending=True)
    w = torch.cat(weights)[order.indices]
    cum = w.cumsum(0)  # cum[k - 1]: the risk when the k largest scores exceed lambda
    out: dict[float, float | None] = {}
    for level in levels:
        # mean_i L_i(lambda) <= ((n + 1) alpha - 1) / n, in exact rationals: 1 - 0.9 is 0.0999... in floats,
        # which would refuse 0.9 at exactly 9 images
        alpha = 1 - Fraction(level).limit_denominator(10**6)
        budget = ((n + 1) * alpha - 1) / n
        if budget < 0:
            out[level] = None
            continue
        slack = 1e-12 * float(alpha)  # the cumulative sum's rounding, far below one pixel's weight
        k = int(torch.searchsorted(cum, torch.tensor(float(budget) + slack, dtype=torch.float64), right=True))
        out[level] = float(order.values[min(k, order.values.numel() - 1)])
    return out


def prior_id(prior: nn.Module) -> str:
    """A short name for what a calibration was made with: the shipped name, else the class and a parameter hash."""
    inner = getattr(prior, "prior", None)  # the restore wrappers and ChannelwisePrior delegate to .prior
    if isinstance(inner, nn.Module):
        if type(prior).__name__.startswith("_Counting"):
            return prior_id(inner)
        extra = f"groups={prior.groups}," if hasattr(prior, "groups") else ""
        return f"{type(prior).__name__}[{extra}{prior_id(inner)}]"
    shipped = getattr(prior, "shipped", None)
    if shipped:
        return str(shipped)
    h = hashlib.sha1()
    for name, t in sorted(prior.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return f"{type(prior).__name__}:{h.hexdigest()[:12]}"


def _plain_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, _PLAIN) else repr(v) for k, v in sorted(knobs.items())}


@dataclass(frozen=True)
class Calibration:
    """Scales that turn a method's ``mean +- scale * std`` into intervals covering at their nominal level.

    Made by :func:`invdiff.calibrate` for one way of restoring (method, steps, samples,
    knobs, prior, operator kind, noise level); :meth:`check` refuses any other.  Saved as a
    small JSON (:meth:`save`, :meth:`load`).

    Attributes:
        scales: level (0.01 ... 0.99) -> scale, ``None`` where there were too few images.
        floor: the std floor of the scores (data units), so pixels the samples agree on exactly
            (measured pixels of noiseless inpainting) still get a width.
        coverage: per level, the mean coverage of the calibrated intervals on the calibration
            images themselves (at least the level, by construction).
        raw_coverage: for a few levels, the mean coverage of the raw sample intervals
            (:func:`sample_interval`) on the calibration images: how far off they were.
        sigma_max: the first noise level of the schedule the calibration images were restored with.
        knobs: the method's knobs, non-plain values as their ``repr`` (as in the JSON).
    """

    method: str
    steps: int
    samples: int
    prior: str
    operator: str
    sigma_y: float | None
    scales: dict[float, float | None]
    floor: float
    n_images: int
    n_pixels: int
    task: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    coverage: dict[float, float] = field(default_factory=dict)
    raw_coverage: dict[float, float] = field(default_factory=dict)
    sigma_max: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", _plain_knobs(self.knobs))  # as saved, so a loaded one compares alike

    def scale(self, level: float) -> float:
        """The scale for ``level``; a level between the stored ones takes the next one up (conservative)."""
        level = check_level(level)
        if level > LEVELS[-1] + 1e-12:
            raise ValueError(f"calibrated intervals go up to level {LEVELS[-1]}, got {level}")
        key = min(lv for lv in LEVELS if lv >= level - 1e-9)
        s = self.scales.get(key)
        if s is None:
            need = math.ceil(1 / (1 - Fraction(key).limit_denominator(10**6)) - 1)
            raise ValueError(f"the calibration has {self.n_images} images; level {key} needs at least {need}: "
                             "calibrate on more images or ask for a lower level")  # fmt: skip
        return float(s)

    def interval(self, mean: Tensor, std: Tensor, level: float) -> tuple[Tensor, Tensor]:
        """``mean -+ scale(level) * max(std, floor)``."""
        half = self.scale(level) * std.clamp_min(self.floor)
        return mean - half, mean + half

    def check(self, *, method: str, steps: int, samples: int, prior: str, operator: str, sigma_y: float | None,
              knobs: dict[str, Any] | None = None, task: str | None = None,
              sigma_max: float | None = None) -> None:  # fmt: skip
        """Raise a one-line ``ValueError`` if this calibration was made for another way of restoring.

        Compared: method, steps, samples, the prior (:func:`prior_id`), the operator's class (not its
        mask, kernel or factor: name the problem with ``task``), the task where both have one, the
        schedule's start, the knobs, and ``sigma_y`` within ``SIGMA_Y_RTOL``.
        """
        mine = {"method": self.method, "steps": self.steps, "samples": self.samples, "prior": self.prior,
                "operator": self.operator}  # fmt: skip
        theirs = {"method": method, "steps": steps, "samples": samples, "prior": prior, "operator": operator}
        self.check_task(task)
        for key, value in mine.items():
            if theirs[key] != value:
                raise ValueError(f"the calibration was made for {key} {value!r}, this run has {theirs[key]!r}: "
                                 f"calibrate for this {key} or run with the calibration's")  # fmt: skip
        if (self.sigma_y is None) != (sigma_y is None) or (
            self.sigma_y is not None and not math.isclose(self.sigma_y, sigma_y, rel_tol=SIGMA_Y_RTOL, abs_tol=1e-6)
        ):
            raise ValueError(f"the calibration was made for sigma_y {self.sigma_y}, this run has {sigma_y}: "
                             f"noise levels must agree within {SIGMA_Y_RTOL:.0%}; calibrate at this noise level")  # fmt: skip
        if self.sigma_max is not None and sigma_max is not None and not math.isclose(self.sigma_max, sigma_max,
                                                                                       rel_tol=1e-6):  # fmt: skip
            raise ValueError(f"the calibration was made with a schedule starting at sigma {self.sigma_max:g}, this run "
                             f"starts at {sigma_max:g}: pass sigma_max={self.sigma_max:g} or calibrate again")  # fmt: skip
        if knobs is not None:
            given = _plain_knobs(knobs)
            for key, value in self.knobs.items():
                if key in given and given[key] != value:
                    raise ValueError(f"the calibration was made with {key}={value!r}, this run has {given[key]!r}: "
                                     "calibrate with these knobs")  # fmt: skip

    def check_task(self, task: str | None) -> None:
        """Raise a one-line ``ValueError`` if both name a task and they differ."""
        if self.task is not None and task and task != self.task:
            raise ValueError(f"the calibration was made for task {self.task!r}, this run is {task!r}: "
                             "calibrate for this task")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``format``, ``version`` and every field (levels as ``"0.90"`` strings)."""
        d = asdict(self)
        d["scales"] = {f"{k:.2f}": v for k, v in self.scales.items()}
        d["coverage"] = {f"{k:.2f}": v for k, v in self.coverage.items()}
        d["raw_coverage"] = {f"{k:.2f}": v for k, v in self.raw_coverage.items()}
        d["knobs"] = _plain_knobs(self.knobs)
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        """Read :meth:`to_dict`'s form; a one-line ``ValueError`` for anything else."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("not an invdiff calibration (no \"format\": \"invdiff-calibration\"); "
                             "make one with invdiff.calibrate or 'invdiff calibrate'")  # fmt: skip
        if d.get("version") != VERSION:
            raise ValueError(f"calibration version {d.get('version')!r} is not {VERSION}; calibrate again")
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        try:
            d["scales"] = {round(float(k), 2): (None if v is None else float(v)) for k, v in d["scales"].items()}
            d["coverage"] = {round(float(k), 2): float(v) for k, v in d.get("coverage", {}).items()}
            d["raw_coverage"] = {round(float(k), 2): float(v) for k, v in d.get("raw_coverage", {}).items()}
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"calibration file is incomplete or damaged ({e}); calibrate again") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"calibration file {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"calibration file {path} is not JSON ({e.__class__.__name__}); "
                             "pass the .json that invdiff calibrate wrote") from None  # fmt: skip
        return cls.from_dict(d)
