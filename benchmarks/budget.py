"""Fitting the image suite's full plan into a time budget on the machine at hand.

The full protocol (three test images at full size, three seeds, every sampler at
its default and a reduced step count, deepinv's samplers at the same counts, TV
with 300 x 20 iterations) takes many hours on a 2-core CPU: DPS alone makes
1000 network calls with a backward pass per image.  ``fit`` predicts what a plan
costs here and now, then cuts the plan, in a fixed order, until the prediction
fits the budget:

1. one seed instead of three;
2. 256x256 centred crops instead of full images;
3. TV at 100 x 10 iterations instead of 300 x 20;
4. the default step counts above 20 halved, then quartered (never below the
   method's reduced count, which always runs);
5. two test images; default step counts at an eighth; 128x128 crops;
6. one test image; default step counts at a sixteenth.

Every cut is recorded in the plan's notes, and the tables' ``budget`` column says
per row what it runs below the full protocol, so no cut is silent.

The prediction: each sampler's network calls (counted by running it on a tiny
analytic-prior problem with the same step count, so the count is the sampler's
own, not a formula) times the network's measured time at each image size
(forward, or forward + backward for the gradient samplers), times a fixed
overhead factor; deepinv's samplers the same at their step counts; the classical
baselines timed on a 128x128 crop and scaled by pixels (TV by pixels x
iterations); the batch-scaling block.  The suite records the prediction next to
the measured total.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from invdiff import restore
from invdiff.datasets import load_test_image
from invdiff.priors import Prior
from invdiff.priors.analytic import GaussianPrior
from invdiff.cli.tasks import build_operator

from . import baselines, cost

#: the cuts, applied cumulatively in this order until the prediction fits (see the module docstring)
CUTS: tuple[tuple[str, Any], ...] = (
    ("seeds", 1), ("size", 256), ("tv", (100, 10)), ("steps", 1 / 2), ("steps", 1 / 4), ("images", 2),
    ("steps", 1 / 8), ("size", 128), ("images", 1), ("steps", 1 / 16),
)  # fmt: skip
#: network time per call is multiplied by this for the sampler's own work (measured overheads: 1.0-1.2)
OVERHEAD = 1.15
#: default step counts up to this stay whole under a step cut (a DDRM at 20 steps costs little)
KEEP_STEPS = 20


def scale_steps(full: dict[str, tuple[int, ...]], factor: float) -> dict[str, tuple[int, ...]]:
    """Each method's default count (the first) times ``factor``, kept above 20 and above its reduced count."""
    out = {}
    for method, counts in full.items():
        if factor >= 1 or not counts or counts[0] <= KEEP_STEPS:
            out[method] = counts
            continue
        default, rest = counts[0], counts[1:]
        floor = max(rest, default=1)
        new = max(floor, round(default * factor))
        out[method] = tuple(dict.fromkeys((new, *rest)))
    return out


def apply(plan: Any, cuts: Sequence[tuple[str, Any]]) -> Any:
    """``plan`` with ``cuts`` applied (step cuts scale ``plan``'s own counts), each named in its notes."""
    out = plan
    for kind, value in cuts:
        if kind == "seeds":
            out = replace(out, seeds=out.seeds[:value])
        elif kind == "size":
            out = replace(out, size=value)
        elif kind == "tv":
            out = replace(out, tv_iters=tuple(value))
        elif kind == "steps":
            out = replace(out, steps=scale_steps(plan.steps, value))
        elif kind == "images":
            out = replace(out, images=out.images[:value])
        else:
            raise ValueError(f"unknown cut {kind!r}")
    if not cuts:
        return out
    return replace(out, notes=(*plan.notes, "budget cuts: " + ", ".join(describe(cuts))))


def describe(cuts: Sequence[tuple[str, Any]]) -> list[str]:
    """The cuts in words, one per kind (a later cut of a kind replaces an earlier one)."""
    last: dict[str, Any] = {}
    for kind, value in cuts:
        last[kind] = value
    return [_describe(k, v) for k, v in last.items()]


def _describe(kind: str, value: Any) -> str:
    return {
        "seeds": lambda: f"{value} seed(s)",
        "size": lambda: f"{value}x{value} crops",
        "tv": lambda: f"TV {value[0]}x{value[1]} iterations",
        "steps": lambda: f"default steps above {KEEP_STEPS} x{value:g}",
        "images": lambda: f"{value} image(s)",
    }[kind]()


def nfe_counts(plan: Any) -> dict[tuple[str, int], int]:
    """Network calls of each invdiff sampler at each step count of ``plan``, counted by running it.

    A ``GaussianPrior`` on 1x16x16 with random inpainting (an operator every sampler
    supports) costs microseconds per call, so this takes about a second.
    """
    prior = GaussianPrior(0.5, torch.full((1, 16, 16), 0.04), (1, 16, 16), data_range=(0.0, 1.0))
    op = build_operator("inpaint", (1, 1, 16, 16), {"random_mask": 0.5}, seed=0)
    y = op(torch.full((1, 1, 16, 16), 0.5))
    out = {}
    for method, counts in plan.steps.items():
        for k in counts:
            out[method, k] = restore(y, op, prior, method=method, steps=k, sigma_y=0.02, seed=0).nfe
    return out


@functools.lru_cache(maxsize=None)
def _shape(image: str, channels: int, size: int | None) -> tuple[int, ...]:
    """The shape of a test image as the suite loads it (decoded once per image and size)."""
    return tuple(load_test_image(image, channels=channels, size=size).shape)


class Predictor:
    """Predicted seconds of an image-suite plan on this machine, from timings taken once and cached."""

    def __init__(self, prior: Prior, device: torch.device | str, tasks: Sequence[Any],
                 measure: Callable[[Any, Tensor, float, int], Tensor], sigma_y: float,
                 log: Callable[[str], None] = lambda s: None) -> None:  # fmt: skip
        self.prior, self.device, self.tasks, self.measure, self.sigma_y = prior, torch.device(device), tasks, measure, sigma_y
        self.log = log
        self._net: dict[tuple[tuple[int, ...], bool], float] = {}
        self._nfe: dict[tuple[str, int], int] = {}
        self._classical: dict[str, tuple[float, float]] | None = None

    def t_net(self, shape: tuple[int, ...], backward: bool) -> float:
        """Seconds of one network call (and its backward pass) on a batch of ``shape``, measured once."""
        key = (tuple(shape), backward)
        if key not in self._net:
            self._net[key] = cost.time_network(self.prior, shape, self.device, reps=1, backward=backward)
        return self._net[key]

    def nfe(self, plan: Any) -> dict[tuple[str, int], int]:
        missing = {m: tuple(k for k in ks if (m, k) not in self._nfe) for m, ks in plan.steps.items()}
        if any(missing.values()):
            self._nfe.update(nfe_counts(replace(plan, steps=missing)))
        return self._nfe

    def classical_rates(self) -> dict[str, tuple[float, float]]:
        """Per task: seconds per pixel of the non-TV baselines (oracle grids included), and of one TV
        inner iteration summed over its weight grid (seconds per pixel per outer x inner iteration)."""
        if self._classical is None:
            x = load_test_image("camera", channels=getattr(self.prior, "channels", 1), size=128)
            n = x[0, 0].numel()
            self._classical = {}
            for spec in self.tasks:
                op = spec.build(tuple(x.shape), 0)
                y = self.measure(op, x, self.sigma_y, 0)
                other = tv_unit = 0.0
                for name, b in baselines.baselines_for(op).items():
                    if name == "tv":
                        t1 = time.perf_counter()
                        b["fn"](op, y, b["lambdas"][0], 20, 10)
                        tv_unit = (time.perf_counter() - t1) / (n * 200) * len(b["lambdas"])
                        continue
                    lams = b["lambdas"] or (None,)
                    t1 = time.perf_counter()
                    for lam in lams:
                        b["fn"](op, y, lam)
                    other += (time.perf_counter() - t1) / n
                self._classical[spec.name] = (other, tv_unit)
        return self._classical

    def predict(self, plan: Any, deepinv_supports: Callable[[str, Any], bool]) -> float:
        """Predicted seconds of ``plan`` (samplers, deepinv, baselines, batch scaling)."""
        from invdiff.restore import check_method

        nfe = self.nfe(plan)
        rates = self.classical_rates()
        shapes = [_shape(i, getattr(self.prior, "channels", 1), plan.size) for i in plan.images]
        total = 0.0
        for spec in self.tasks:
            for shape in shapes:
                batch = (plan.samples, *shape[1:])
                op = spec.build(shape, 0)
                probe = torch.zeros(shape)
                y = op(probe)
                per_seed = 0.0
                for method, counts in plan.steps.items():
                    try:
                        check_method(method, op, y)
                    except ValueError:
                        continue
                    grad = method in cost.GRADIENT_METHODS
                    per_seed += sum(nfe[method, k] for k in counts) * self.t_net(batch, grad) * OVERHEAD
                for method in plan.deepinv:
                    if deepinv_supports(method, op):
                        grad = method in cost.GRADIENT_METHODS  # deepinv's DPS and PiGDM differentiate too
                        per_seed += sum(plan.steps.get(method, ())) * self.t_net(batch, grad) * OVERHEAD
                pixels = shape[-1] * shape[-2]
                other, tv_unit = rates[spec.name]
                per_seed += pixels * (other + tv_unit * plan.tv_iters[0] * plan.tv_iters[1])
                per_seed += 2 * self.t_net(batch, False) + 2 * self.t_net(batch, True)  # the floor measurement
                total += per_seed * len(plan.seeds)
        if plan.scaling is not None:
            method, k, counts = plan.scaling
            shape = shapes[0]
            total += sum(c * k * self.t_net((1, *shape[1:]), False) for c in counts) * OVERHEAD
        return total


def fit(plan: Any, predictor: Predictor, budget_seconds: float,
        deepinv_supports: Callable[[str, Any], bool]) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The first of ``plan`` and its cumulative cuts (``CUTS``) predicted to fit ``budget_seconds``.

    Returns the plan and a record: the budget, the cuts, every candidate's
    prediction, and the seconds spent timing and predicting (counted against the
    budget).  When even the last cut does not fit, the last is returned and the
    record says so.
    """
    t0 = time.perf_counter()
    tried: list[dict[str, Any]] = []
    for n in range(len(CUTS) + 1):
        cuts = CUTS[:n]
        chosen = apply(plan, cuts)
        seconds = predictor.predict(chosen, deepinv_supports)
        left = budget_seconds - (time.perf_counter() - t0)  # timing the machine spends the budget too
        tried.append({"cuts": describe(cuts), "predicted_seconds": seconds})
        predictor.log(f"budget: {n} cut(s), predicted {seconds / 60:.1f} min of {left / 60:.1f} min left")
        if seconds <= left:
            break
    record = {
        "budget_seconds": budget_seconds,
        "cuts": tried[-1]["cuts"],
        "predicted_seconds": seconds,
        "fits": seconds <= left,
        "candidates": tried,
        "fit_seconds": time.perf_counter() - t0,
    }
    return chosen, record
