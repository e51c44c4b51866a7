"""Image restoration with the shipped prior: tasks x methods x test images, against deepinv and classical baselines.

For every task (inpainting, deblurring, super-resolution, saturation) and every
held-out test image and seed, one measurement ``y = A(x) + sigma_y e`` is drawn
and restored by

* every invdiff sampler that supports the operator (``invdiff.restore`` with the
  shipped prior, at the step counts of the plan),
* deepinv's DDRM, DPS, DiffPIR and its PiGDM data fidelity inside
  ``PosteriorDiffusion``, on the same prior wrapped as a deepinv ``Denoiser``, the
  same operator, noise, float32 and seeds, at the step counts of the invdiff
  method of the same name,
* the classical baselines of ``baselines.py`` (oracle-tuned where they have a weight).

Every estimate is clipped to ``[0, 1]`` and scored by PSNR, SSIM and (where
torchvision's AlexNet weights are cached) LPIPS; each run records its NFE, wall
seconds, peak memory growth and overhead over the network floor (``cost.py``).
``markdown`` renders the tables, ``figures.py`` one grid per task.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invdiff import METHODS, restore
from invdiff.datasets import TEST_IMAGES, load_test_image
from invdiff.metrics import lpips, lpips_available, psnr, ssim
from invdiff.operators import Gaussian, Identity, Inpainting, Operator, Saturation, to_deepinv
from invdiff.priors import Prior
from invdiff.restore import check_method
from invdiff.cli.tasks import build_operator

from . import baselines, cost, figures, report

NAME = "images"
TITLE = "Image restoration with the shipped prior"
PRIOR = "natural-gray"
SIGMA_Y = 0.02  # measurement noise std (data units) of every task
FULL_SEEDS = (0, 1, 2)

#: deepinv's own default number of steps for the samplers compared (DPS: 1000 DDPM steps;
#: DDRM: ``linspace(1, 0, 100)``; DiffPIR: ``max_iter=100``; PiGDM as invdiff's, 100)
DEEPINV_DEFAULT_STEPS = {"ddrm": 100, "dps": 1000, "pigdm": 100, "diffpir": 100}


# -- tasks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark task: a name, a kind (for the baseline it is judged against) and its operator."""

    name: str
    kind: str  # "inpaint" | "deblur" | "sr" | "nonlinear" (keys of baselines.REFERENCE)
    description: str
    build: Callable[[tuple[int, ...], int], Operator]  # (image shape, seed) -> operator
    sigma_y: float = SIGMA_Y  # measurement noise std (data units)


def _motion_size(shape: Sequence[int]) -> int:
    """31 (the usual motion-blur kernel) or, on small images, the largest odd size up to half the side."""
    n = min(31, min(shape[-2:]) // 2)
    return n if n % 2 else n - 1


def _cli(task: str, options: Callable[[tuple[int, ...]], dict[str, Any]]) -> Callable[[tuple[int, ...], int], Operator]:
    return lambda shape, seed: build_operator(task, shape, options(shape), seed=seed)


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("inpaint-random", "inpaint", "70% of the pixels missing at random",
             _cli("inpaint", lambda s: {"random_mask": 0.7})),
    TaskSpec("inpaint-box", "inpaint", "a centred square of half the image side missing",
             _cli("inpaint", lambda s: {"box": min(s[-2:]) // 2})),
    TaskSpec("deblur-gaussian", "deblur", "Gaussian blur, std 2 pixels, circular",
             _cli("deblur", lambda s: {"kernel": "gaussian:2.0"})),
    TaskSpec("deblur-motion", "deblur", "motion blur, 31x31 kernel (smaller on small images), intensity 0.5, circular",
             _cli("deblur", lambda s: {"kernel": f"motion:{_motion_size(s)},0.5"})),
    TaskSpec("sr2-box", "sr", "x2 super-resolution, box filter", _cli("sr", lambda s: {"scale": 2, "filter": "box"})),
    TaskSpec("sr2-bicubic", "sr", "x2 super-resolution, bicubic filter",
             _cli("sr", lambda s: {"scale": 2, "filter": "bicubic"})),
    TaskSpec("sr4-box", "sr", "x4 super-resolution, box filter", _cli("sr", lambda s: {"scale": 4, "filter": "box"})),
    TaskSpec("sr4-bicubic", "sr", "x4 super-resolution, bicubic filter",
             _cli("sr", lambda s: {"scale": 4, "filter": "bicubic"})),
    TaskSpec("denoise", "denoise", "Gaussian denoising, noise std 0.1 (not 0.02)", lambda shape, seed: Identity(),
             sigma_y=0.1),
    TaskSpec("saturation", "nonlinear", "nonlinear: tanh sensor saturation, alpha 2",
             lambda shape, seed: Saturation(alpha=2.0)),
)  # fmt: skip


def measure(op: Operator, x: Tensor, sigma_y: float, seed: int) -> Tensor:
    """``y = A(x) + sigma_y e`` with ``e`` from ``seed`` (on observed pixels only for inpainting); float32.

    ``e`` is drawn on the CPU and moved, so a seed gives the same measurement on every device.
    """
    ax = op(x)
    gen = torch.Generator("cpu").manual_seed(10_000 + seed)
    e = torch.randn(ax.shape, generator=gen, dtype=ax.dtype, device="cpu").to(ax.device)
    if isinstance(op, Inpainting):
        e = e * op.mask.to(e)
    return (ax + sigma_y * e).float()


# -- plans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one run measures: images, crop size, seeds, posterior samples per image and step counts."""

    mode: str
    images: tuple[str, ...]
    size: int | None  # centred square crop side, None: full images
    seeds: tuple[int, ...]
    samples: int  # posterior samples per image (PSNR etc. of their mean)
    steps: dict[str, tuple[int, ...]]  # invdiff method -> step counts; deepinv runs the same counts
    deepinv: tuple[str, ...] = ("ddrm", "dps", "pigdm", "diffpir")
    tv_iters: tuple[int, int] = (100, 10)  # TV baseline: outer PGD iterations, inner TV-prox iterations
    tv_lambdas: tuple[float, ...] = baselines.TV_LAMBDAS
    scaling: tuple[str, int, tuple[int, ...]] | None = ("ddrm", 20, (1, 4, 16))  # method, steps, samples per call
    net_reps: int = 3  # repetitions of each t_net measurement (median)
    lpips: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    knobs: dict[str, dict[str, float]] = field(default_factory=dict)  # invdiff method -> knobs passed to restore


#: reduced step counts of the full mode (each method also runs at its default)
FULL_REDUCED = {"ddrm": 10, "pigdm": 20, "dps": 100, "score_ald": 100, "repaint": 50, "ddnm": 20, "diffpir": 20,
                "daps": 50}  # fmt: skip
#: quick mode (about 10 minutes on 2 CPU cores): DDRM at its default, the other samplers well below
#: theirs (stated per row); deepinv's DDRM and DPS at the same counts for the parity and speed rows
QUICK_STEPS = {"ddrm": (20,), "pigdm": (50,), "dps": (20,), "score_ald": (10,), "repaint": (10,), "ddnm": (50,),
               "diffpir": (50,), "daps": (10,)}  # fmt: skip
QUICK_DEEPINV = ("ddrm", "dps")


def plan_for(mode: str) -> Plan:
    """The plan of ``mode``: ``quick`` (one 128x128 crop, one seed, few steps) or ``full``."""
    if mode == "quick":
        return Plan("quick", ("camera",), 128, (0,), 1, dict(QUICK_STEPS), QUICK_DEEPINV, tv_iters=(100, 10),
                    scaling=("ddrm", 5, (1, 4, 16)))  # fmt: skip
    if mode == "full":
        steps = {m: (METHODS[m].steps, k) for m, k in FULL_REDUCED.items()}
        return Plan("full", TEST_IMAGES, None, FULL_SEEDS, 1, steps, tv_iters=(300, 20), net_reps=5)
    raise ValueError(f"mode must be quick or full, got {mode!r}")


def override(plan: Plan, steps: dict[str, int] | None = None, images: Sequence[str] | None = None,
             size: int | None = None, seeds: Sequence[int] | None = None,
             methods: Sequence[str] | None = None) -> Plan:  # fmt: skip
    """``plan`` with ``--steps``/``--images``/``--size``/``--seeds``/``--methods`` applied (each named in the tables)."""
    steps = dict(steps or {})
    unknown = [k for k in [*steps, *(methods or ())] if k not in METHODS]
    if unknown:
        raise ValueError(f"--steps names unknown method {unknown[0]!r}; known methods: {', '.join(METHODS)}")
    bad = [i for i in images or () if i not in TEST_IMAGES]
    if bad:
        raise ValueError(f"unknown test image {bad[0]!r}; choose from {', '.join(TEST_IMAGES)}")
    if size is not None and size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    new_steps = {**plan.steps, **{k: (v,) for k, v in steps.items()}}
    deepinv, notes = plan.deepinv, plan.notes + tuple(f"--steps {k}={v}" for k, v in steps.items())
    if methods:
        new_steps = {k: v for k, v in new_steps.items() if k in methods}
        deepinv = tuple(m for m in deepinv if m in methods)
        notes += (f"--methods {','.join(methods)}",)
    return Plan(
        plan.mode, tuple(images) if images else plan.images, size if size is not None else plan.size,
        tuple(seeds) if seeds else plan.seeds, plan.samples, new_steps, deepinv, plan.tv_iters,
        plan.tv_lambdas, plan.scaling, plan.net_reps, plan.lpips, notes, plan.knobs,
    )  # fmt: skip


# -- deepinv ----------------------------------------------------------------------------------


def deepinv_denoiser(prior: Prior) -> torch.nn.Module:
    """``prior.denoise`` as a deepinv ``Denoiser`` in [0, 1] data units; ``.calls`` counts its network calls."""
    import deepinv

    class PriorDenoiser(deepinv.models.Denoiser):
        """deepinv denoiser ``D(x, sigma)`` calling ``prior.denoise`` (sigma: float or ``(B,)`` in data units)."""

        def __init__(self, prior: Prior) -> None:
            super().__init__()
            self.prior = prior
            self.calls = 0

        def forward(self, x: Tensor, sigma: float | Tensor, *args: Any, **kwargs: Any) -> Tensor:
            self.calls += 1
            s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1)
            if s.numel() == 1:
                s = s.expand(x.shape[0])
            return self.prior.denoise(x, s).to(x.dtype)

    return PriorDenoiser(prior)


def svd_physics(op: Operator, x_shape: tuple[int, ...], sigma_y: float):
    """The SVD of an invdiff operator as a deepinv ``DecomposablePhysics`` with Gaussian noise ``sigma_y``.

    deepinv's DDRM (and PiGDM's exact inverse) need a decomposition whose
    coefficients are image-shaped: ``V^T x`` ``(B, N)`` is reshaped to the image,
    ``U^T y`` ``(B, M)`` is zero-padded to ``N`` (``M <= N`` for every operator
    here) and the singulars become the ``mask`` ``(1, C, H, W)``.  Operators with
    per-image singulars are refused.
    """
    import deepinv

    c_h_w = tuple(x_shape[1:])
    n = math.prod(c_h_w)
    with torch.no_grad():
        y0 = op(torch.zeros(x_shape, device=op_device(op)))  # the operator learns the image size
    s = op.singulars
    if s.dim() != 1:
        raise ValueError("svd_physics needs one set of singulars for the batch, got per-image singulars")
    m = s.numel()
    mask = torch.zeros(n, dtype=y0.dtype, device=y0.device)
    mask[:m] = s.to(mask)
    return deepinv.physics.DecomposablePhysics(
        U=lambda w: op.U(w.reshape(w.shape[0], -1)[:, :m]),
        U_adjoint=lambda y: op._pad(op.Ut(y), n).reshape(y.shape[0], *c_h_w),
        V=lambda z: op.V(z.reshape(z.shape[0], -1)),
        V_adjoint=lambda x: op.Vt(x).reshape(x.shape[0], *c_h_w),
        mask=mask.reshape(1, *c_h_w),
        noise_model=deepinv.physics.GaussianNoise(sigma_y),
        device=y0.device,
    )


def op_device(op: Operator) -> torch.device:
    """The device of an operator's buffers (the CPU when it has none)."""
    for t in (*op.buffers(), *op.parameters()):
        return t.device
    return torch.device("cpu")


def deepinv_supports(method: str, op: Operator) -> bool:
    """deepinv's DDRM and PiGDM need an SVD here, DiffPIR a linear operator, DPS anything differentiable."""
    if method in ("ddrm", "pigdm"):
        return bool(getattr(op, "has_svd", False))
    if method == "diffpir":
        return bool(getattr(op, "linear", False))
    return method == "dps"


def run_deepinv(method: str, prior: Prior, op: Operator, y: Tensor, x_shape: tuple[int, ...], sigma_y: float,
                steps: int, seed: int) -> tuple[Tensor, int]:  # fmt: skip
    """One posterior sample ``(B, C, H, W)`` from deepinv's ``method`` and its number of denoiser calls.

    Each runs ``steps`` network calls, like invdiff's sampler at ``steps``.  DDRM:
    ``sigmas = linspace(1, 0, steps)`` (deepinv's default schedule with ``steps``
    levels); DPS: ``DPS(num_steps=steps + 1)`` (time points ``1 .. 0``), VP
    schedule, DDPM solver, its default weight; PiGDM: ``PosteriorDiffusion`` with
    ``PiGDMDataFidelity`` on the VP SDE, DDPM solver, the same ``steps + 1`` time
    points; DiffPIR: ``max_iter=steps``,
    ``L2`` data fidelity, its default ``lambda_`` and ``zeta``.  Solvers run in
    float32 like invdiff; randomness from ``seed`` (global RNG forked for the
    samplers that draw from it).
    """
    import deepinv

    den = deepinv_denoiser(prior)
    device, dtype = y.device, y.dtype
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        if method == "ddrm":
            model = deepinv.sampling.DDRM(den, sigmas=np.linspace(1, 0, steps))
            x = model(y, svd_physics(op, x_shape, sigma_y))
        elif method == "dps":
            rng = torch.Generator(device).manual_seed(seed)
            # num_steps counts time points, the last one t = 0 without a network call: steps + 1 of them
            model = deepinv.sampling.DPS(den, num_steps=steps + 1, device=device, dtype=dtype, rng=rng)
            x = model(y, to_deepinv(op, Gaussian(sigma_y)), x_init=tuple(x_shape))
        elif method == "pigdm":
            rng = torch.Generator(device).manual_seed(seed)
            times = torch.linspace(1, 0, steps + 1, device=device, dtype=dtype)  # steps network calls, as DPS
            solver = deepinv.sampling.DDPMSolver(timesteps=times,
                                                 rng=rng)  # fmt: skip
            model = deepinv.sampling.PosteriorDiffusion(
                data_fidelity=deepinv.sampling.PiGDMDataFidelity(), denoiser=den,
                sde=deepinv.sampling.VariancePreservingDiffusion(device=device, dtype=dtype), solver=solver,
                dtype=dtype, device=device,
            )  # fmt: skip
            x = model(y, svd_physics(op, x_shape, sigma_y), x_init=tuple(x_shape))
        elif method == "diffpir":
            model = deepinv.sampling.DiffPIR(den, deepinv.optim.data_fidelity.L2(), sigma=sigma_y, max_iter=steps,
                                             device=device)  # fmt: skip
            x = model(y, to_deepinv(op, Gaussian(sigma_y)))
        else:
            raise ValueError(f"no deepinv runner for {method!r}")
    return x.detach().to(dtype), den.calls


# -- one problem ------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Scorer:
    """PSNR, SSIM and (if possible) LPIPS of clipped estimates against one truth."""

    def __init__(self, x: Tensor, use_lpips: bool) -> None:
        self.x = x
        self.use_lpips = use_lpips

    def __call__(self, est: Tensor) -> dict[str, float | None]:
        est = est.clamp(0, 1).to(self.x)
        out: dict[str, float | None] = {"psnr": float(psnr(est, self.x)[0]), "ssim": float(ssim(est, self.x)[0])}
        out["lpips"] = float(lpips(est, self.x)[0]) if self.use_lpips else None
        return out


def _problem_rows(
    spec: TaskSpec, plan: Plan, prior: Prior, x: Tensor, image: str, seed: int, device: torch.device,
    use_lpips: bool, log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any], list[tuple[str, Tensor]]]:  # fmt: skip
    """Every method on one (task, image, seed): records keyed by row, the network floor, figure panels."""
    op = spec.build(tuple(x.shape), seed).to(device)
    x = x.to(device)
    y = measure(op, x, spec.sigma_y, seed)
    score = _Scorer(x, use_lpips)
    batch = (plan.samples, *x.shape[1:])
    floor = {
        "image": image, "seed": seed, "shape": list(x.shape), "batch": plan.samples,
        "t_fwd": cost.time_network(prior, batch, device, plan.net_reps),
        "t_fwd_bwd": cost.time_network(prior, batch, device, plan.net_reps, backward=True),
    }  # fmt: skip
    panels: list[tuple[str, Tensor]] = [("truth", x.cpu()), ("measurement", y.cpu())]
    records: list[dict[str, Any]] = []

    def add(family: str, method: str, steps: int | None, est: Tensor | None, nfe: int | None, seconds: float | None,
            mib: float | None, error: str | None = None, **extra: Any) -> None:  # fmt: skip
        rec: dict[str, Any] = {"family": family, "method": method, "steps": steps, "image": image, "seed": seed,
                               "nfe": nfe, "seconds": seconds, "peak_mib": mib, **extra}  # fmt: skip
        if error is not None:
            rec["error"] = error
            log(f"  {spec.name} {family} {method} {steps}: failed: {error}")
        else:
            assert est is not None
            rec.update(score(est))
            gradient = method in cost.GRADIENT_METHODS and family != "classical"
            rec["overhead"] = cost.overhead(seconds, nfe, floor["t_fwd_bwd"] if gradient else floor["t_fwd"])
            label = f"{family} {method}" + (f" {steps}" if steps else "")
            panels.append((f"{label}\n{rec['psnr']:.2f} dB", est.clamp(0, 1).cpu()))
            log(f"  {spec.name} {image} s{seed} {family} {method} {steps or ''}: {rec['psnr']:.2f} dB, "
                f"{seconds:.1f} s, NFE {nfe}")  # fmt: skip
        records.append(rec)

    # Classical baselines (on the CPU: scikit-image works on NumPy arrays).
    op_cpu, y_cpu, x_cpu = spec.build(tuple(x.shape), seed), y.cpu(), x.cpu()
    for name, b in baselines.baselines_for(op_cpu).items():
        try:
            t0 = time.perf_counter()
            if b["lambdas"] is None:
                est, lam, edge = b["fn"](op_cpu, y_cpu, None), None, None
            else:
                lambdas = plan.tv_lambdas if name == "tv" else b["lambdas"]
                fn = b["fn"]
                solve = (lambda lam: fn(op_cpu, y_cpu, lam, *plan.tv_iters)) if name == "tv" else \
                    (lambda lam: fn(op_cpu, y_cpu, lam))  # fmt: skip
                est, lam, edge = baselines.oracle(solve, lambdas, x_cpu)
            add("classical", name, None, est, None, time.perf_counter() - t0, None, lam=lam, lam_at_edge=edge)
        except Exception as e:  # a broken baseline is a result, not a reason to stop the benchmark
            add("classical", name, None, None, None, None, None, error=f"{type(e).__name__}: {e}")

    # invdiff samplers (those of the plan; all of them pixel-space samplers).
    for method in plan.steps:
        try:
            check_method(method, op, y)
        except ValueError:
            continue
        for k in plan.steps.get(method, ()):
            try:
                res, seconds, mib = cost.timed(
                    lambda: restore(y, op, prior, method=method, steps=k, sigma_y=spec.sigma_y, samples=plan.samples,
                                    seed=seed, **plan.knobs.get(method, {})), device)  # fmt: skip
                add("invdiff", method, k, res.mean, res.nfe, seconds, mib)
            except Exception as e:
                add("invdiff", method, k, None, None, None, None, error=f"{type(e).__name__}: {e}")

    # deepinv, at the step counts of the invdiff method of the same name.
    for method in plan.deepinv:
        if not deepinv_supports(method, op):
            continue
        for k in plan.steps.get(method, ()):
            try:
                yb = y.repeat(plan.samples, *([1] * (y.dim() - 1)))
                shape = (plan.samples, *x.shape[1:])
                (xs, nfe), seconds, mib = cost.timed(
                    lambda: run_deepinv(method, prior, op, yb, shape, spec.sigma_y, k, seed), device)  # fmt: skip
                add("deepinv", method, k, xs.mean(0, keepdim=True), nfe, seconds, mib)
            except Exception as e:
                add("deepinv", method, k, None, None, None, None, error=f"{type(e).__name__}: {e}")
    return records, floor, panels


# -- the suite --------------------------------------------------------------------------------


def _rows(task: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of one task grouped by (family, method, steps) into rows with means over images and seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["family"], r["method"], r["steps"]), []).append(r)
    rows = []
    for (family, method, steps), recs in groups.items():
        row: dict[str, Any] = {"task": task, "family": family, "method": method, "steps": steps, "runs": len(recs),
                               "records": recs}  # fmt: skip
        ok = [r for r in recs if "error" not in r]
        errors = [r["error"] for r in recs if "error" in r]
        if errors:
            row["error"] = errors[0]
        if ok:
            for key in ("psnr", "ssim", "seconds"):
                row[key] = statistics.fmean(r[key] for r in ok)
            lp = [r["lpips"] for r in ok if r.get("lpips") is not None]
            row["lpips"] = statistics.fmean(lp) if lp else None
            nfes = [r["nfe"] for r in ok if r["nfe"] is not None]
            row["nfe"] = max(nfes) if nfes else None
            ovh = [r["overhead"] for r in ok if r.get("overhead") is not None]
            row["overhead"] = statistics.median(ovh) if ovh else None
            mem = [r["peak_mib"] for r in ok if r.get("peak_mib") is not None]
            row["peak_mib"] = max(mem) if mem else None
            lams = [r["lam"] for r in ok if r.get("lam") is not None]
            row["lam_median"] = statistics.median(lams) if lams else None
            row["lam_at_edge"] = any(r.get("lam_at_edge") for r in ok)
            if errors:
                row.pop("error")
                row["partial_error"] = f"{len(errors)} of {len(recs)} runs failed: {errors[0]}"
        rows.append(row)
    return rows


def margins(rows: Sequence[dict[str, Any]], tasks: Sequence[TaskSpec],
            methods: Sequence[str] = ("ddrm", "dps", "pigdm")) -> list[dict[str, Any]]:  # fmt: skip
    """Per task: each of ``methods`` that ran (most steps run) and the best invdiff row against the task's
    classical baseline.

    The baseline is the better (by mean PSNR) of those the priors issue names for
    the task's kind (``baselines.REFERENCE``); ``best_classical`` is the best of all
    classical rows, TV included.
    """
    out = []
    for spec in tasks:
        task_rows = [r for r in rows if r["task"] == spec.name and "psnr" in r]
        refs = [r for r in task_rows if r["family"] == "classical" and r["method"] in baselines.REFERENCE[spec.kind]]
        if not refs:
            continue
        base = max(refs, key=lambda r: r["psnr"])
        classical = [r for r in task_rows if r["family"] == "classical"]
        best_classical = max(classical, key=lambda r: r["psnr"])
        ours = [r for r in task_rows if r["family"] == "invdiff"]
        entries = []
        for method in methods:
            cands = [r for r in ours if r["method"] == method]
            if cands:
                entries.append(max(cands, key=lambda r: r["steps"]))
        if ours:
            best = max(ours, key=lambda r: r["psnr"])
            entries.append({**best, "best": True})
        for r in entries:
            out.append({
                "task": spec.name, "method": r["method"], "steps": r["steps"], "best_invdiff": bool(r.get("best")),
                "psnr": r["psnr"], "ssim": r["ssim"], "baseline": base["method"], "baseline_psnr": base["psnr"],
                "baseline_ssim": base["ssim"], "margin_db": r["psnr"] - base["psnr"],
                "margin_ssim": r["ssim"] - base["ssim"], "best_classical": best_classical["method"],
                "best_classical_psnr": best_classical["psnr"],
            })  # fmt: skip
    return out


def run_suite(
    plan: Plan, prior: Prior, images: dict[str, Tensor], device: torch.device | str = "cpu",
    tasks: Sequence[TaskSpec] = TASKS, figures_dir: Path | None = None, log: Callable[[str], None] = _log,
    name: str = NAME, prior_name: str = PRIOR,
) -> dict[str, Any]:  # fmt: skip
    """Run ``plan`` on ``images`` (name -> ``(1, C, H, W)``) for ``tasks``; return every number (no files but figures)."""
    device = torch.device(device)
    prior = prior.to(device)
    use_lpips = plan.lpips and lpips_available("alex") and all(min(x.shape[-2:]) >= 31 for x in images.values())
    start = time.perf_counter()
    load_start = report.load_average()
    rows: list[dict[str, Any]] = []
    floors: dict[str, list[dict[str, Any]]] = {}
    figure_files: dict[str, str] = {}
    for spec in tasks:
        log(f"{spec.name}: {spec.description}")
        records, task_floors, first_panels = [], [], None
        for image, x in images.items():
            for seed in plan.seeds:
                recs, floor, panels = _problem_rows(spec, plan, prior, x, image, seed, device, use_lpips, log)
                records += recs
                task_floors.append(floor)
                first_panels = first_panels or panels
        rows += _rows(spec.name, records)
        floors[spec.name] = task_floors
        if figures_dir is not None and first_panels:
            path = figures.grid(first_panels, Path(figures_dir) / f"{name}-{spec.name}.png")
            figure_files[spec.name] = path.name

    # Batch scaling: samples per restore call, on the first task, image and seed (unless the plan has none).
    scaling = None
    if plan.scaling is not None:
        method, k, counts = plan.scaling
        spec, (image, x) = tasks[0], next(iter(images.items()))
        op = spec.build(tuple(x.shape), plan.seeds[0]).to(device)
        y = measure(op, x.to(device), spec.sigma_y, plan.seeds[0])
        log(f"batch scaling: {method} {k} steps, samples {counts}")
        rows_scaling = cost.batch_scaling(prior, op, y, spec.sigma_y, method, k, counts, seed=plan.seeds[0])
        scaling = {"task": spec.name, "image": image, "method": method, "steps": k, "rows": rows_scaling}

    return {
        "benchmark": name,
        "plan": {**asdict(plan), "images": list(plan.images), "seeds": list(plan.seeds)},
        "prior": prior_name,
        "prior_config": getattr(prior, "config", {}).get("training", {}),
        "sigma_y": SIGMA_Y,
        "tasks": [{"name": s.name, "kind": s.kind, "description": s.description, "sigma_y": s.sigma_y} for s in tasks],
        "image_shapes": {k: list(v.shape) for k, v in images.items()},
        "lpips": use_lpips,
        "machine": report.machine(device),
        "load_average": {"start": load_start, "end": report.load_average()},
        "rows": rows,
        "floors": floors,
        "margins": margins(rows, tasks),
        "dps_vs_deepinv": cost.speed_ratios(rows, "dps"),
        "pigdm_vs_deepinv": cost.speed_ratios(rows, "pigdm"),
        "scaling": scaling,
        "figures": figure_files,
        "total_seconds": time.perf_counter() - start,
    }


# -- report -----------------------------------------------------------------------------------


def _default_steps(family: str, method: str) -> int | None:
    if family == "invdiff":
        return METHODS[method].steps
    if family == "deepinv":
        return DEEPINV_DEFAULT_STEPS[method]
    return None


def budget_cell(row: dict[str, Any], data: dict[str, Any]) -> str:
    """What this row runs below the full protocol: steps, images, crop, seeds (empty when nothing)."""
    plan = data["plan"]
    parts = []
    default = _default_steps(row["family"], row["method"])
    if row["steps"] is not None and default is not None and row["steps"] < default:
        parts.append(f"{row['steps']}/{default} steps")
    if len(plan["images"]) < len(TEST_IMAGES):
        parts.append(f"{len(plan['images'])}/{len(TEST_IMAGES)} images")
    if plan["size"] is not None:
        parts.append(f"{plan['size']}px crop")
    if len(plan["seeds"]) < len(FULL_SEEDS):
        parts.append(f"{len(plan['seeds'])}/{len(FULL_SEEDS)} seeds")
    return "; ".join(parts)


def budget_text(data: dict[str, Any]) -> str:
    """What the time budget cut, and how its prediction compares with the measured total."""
    b = data["budget"]
    cuts = "; ".join(b["cuts"]) if b["cuts"] else "none: the whole plan fits"
    text = (f"Time budget: {b['budget_seconds'] / 60:.0f} min on this machine (`--budget-minutes`). Cuts, applied in "
            f"a fixed order until the predicted time fits: {cuts}. Predicted {b['predicted_seconds'] / 60:.1f} min "
            f"after {b['fit_seconds']:.0f} s of timing; measured {data['total_seconds'] / 60:.1f} min.")  # fmt: skip
    if not b["fits"]:
        text += " Even with every cut the prediction exceeds the budget."
    return text


def _note(row: dict[str, Any], plan: dict[str, Any]) -> str:
    if row["family"] == "classical":
        if row.get("lam_median") is None:
            return ""
        text = f"oracle weight {row['lam_median']:.2g}"
        if row["method"] == "tv":
            text += f", {plan['tv_iters'][0]} PGD iterations"
        return text + (" (edge of grid)" if row.get("lam_at_edge") else "")
    return row.get("partial_error", "")


def _mode_flag(data: dict[str, Any]) -> str:
    return "--quick" if data["plan"]["mode"] == "quick" else "--full"


def _steps_text(r: dict[str, Any]) -> str:
    return "—" if r["steps"] is None else str(r["steps"])


def headline(data: dict[str, Any]) -> str:
    """The README's benchmark block: margins per task and the DPS comparison with deepinv, from ``data``."""
    plan = data["plan"]
    lines = [
        f"Generated by `python -m benchmarks images {_mode_flag(data)}` ({plan['mode']} mode: "
        f"{', '.join(plan['images'])}, {'%dx%d crops' % (plan['size'], plan['size']) if plan['size'] else 'full size'}, "
        f"{len(plan['seeds'])} seed(s), sigma_y = {data['sigma_y']}; "
        f"{report.describe_machine(data['machine']).rstrip('.')}). "
        "Mean PSNR of the shipped `natural-gray` prior's samplers against the classical baseline of each task "
        "(biharmonic for inpainting, the best of BM3D deblurring, Wiener and Tikhonov, each with its oracle "
        "weight, for deblurring, BM3D with its oracle noise level for denoising, bicubic for super-resolution, "
        "the direct inverse for saturation); the bar is +1 dB. Steps below a method's default "
        "are marked `n/default`. Full tables, deepinv rows, timings and figures: "
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md).",
        "",
    ]
    if data.get("budget") and data["budget"]["cuts"]:
        lines[0] += f" Cut to fit {data['budget']['budget_seconds'] / 60:.0f} min: {'; '.join(data['budget']['cuts'])}."
    headers = ["task", "baseline", "DDRM", "DPS", "PiGDM", "best invdiff", "margin of best"]
    table = []
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for m in data["margins"]:
        by_task.setdefault(m["task"], {})["best" if m["best_invdiff"] else m["method"]] = m
    for task, ms in by_task.items():
        any_m = next(iter(ms.values()))

        def cell(key: str) -> str:
            m = ms.get(key)
            if m is None:
                return "—"
            d = METHODS[m["method"]].steps
            steps = f"{m['steps']}/{d}" if m["steps"] < d else str(m["steps"])
            name = f"{m['method']} " if key == "best" else ""
            return f"{name}{m['psnr']:.2f} dB ({m['margin_db']:+.2f}, {steps} steps)"

        best = ms.get("best")
        table.append([task, f"{any_m['baseline']} {any_m['baseline_psnr']:.2f} dB", cell("ddrm"), cell("dps"),
                      cell("pigdm"), cell("best"),
                      "—" if best is None else f"{best['margin_db']:+.2f} dB {'✓' if best['margin_db'] >= 1 else '✗'}"])  # fmt: skip
    lines.append(report.markdown_table(headers, table))
    dps = data["dps_vs_deepinv"]
    if dps:
        ratios = [d["speed_ratio"] for d in dps]
        diffs = [d["psnr_diff"] for d in dps]
        lines += ["", f"DPS against deepinv's DPS at equal steps ({dps[0]['steps']}) and float32 over {len(dps)} "
                  f"tasks: invdiff is {statistics.median(ratios):.2f}x as fast (median; target >= 1.25x) and "
                  f"{statistics.fmean(diffs):+.2f} dB in PSNR on average (target >= -0.2 dB)."]  # fmt: skip
    return "\n".join(lines)


def _train_steps(info: dict[str, Any]) -> str:
    """Training steps of a prior, the whole lineage's where it was fine-tuned from another."""
    if "total_steps" in info:
        return f"{info['total_steps']} in all, {info['steps_done']} in its last run"
    return str(info.get("steps_done", "n/a"))


def markdown(data: dict[str, Any], figure_prefix: str = "results/figures/") -> str:
    """The ``RESULTS.md`` section for one run of the image benchmark."""
    plan = data["plan"]
    load = data["load_average"]
    size = f"{plan['size']}x{plan['size']} centred crops" if plan["size"] else "full size"
    steps = ", ".join(f"{m} {'/'.join(map(str, k))}" for m, k in plan["steps"].items() if k)
    lp = "LPIPS (AlexNet)" if data["lpips"] else (
        "LPIPS: not computed — torchvision's AlexNet weights are not in the torch cache here (invdiff never "
        "downloads them), or the images are under 31 pixels")  # fmt: skip
    lines = [
        f"## {TITLE}" + ("" if data["prior"] == PRIOR else f": `{data['prior']}`"),
        "",
        f"Generated by `python -m benchmarks images {_mode_flag(data)}` ({plan['mode']} mode, "
        f"{data['total_seconds']:.0f} s in all). {report.describe_machine(data['machine'])} "
        f"Load average (1/5/15 min) {load['start']} at the start, {load['end']} at the end: timings on a shared "
        "machine are noisy.",
        "",
        f"Prior `{data['prior']}` (training steps: {_train_steps(data['prior_config'])}). Test images "
        f"{', '.join(plan['images'])} ({size}, {'gray' if data.get('channels', 1) == 1 else 'colour'}), seeds {', '.join(map(str, plan['seeds']))}, "
        f"sigma_y = {data['sigma_y']} Gaussian noise on every task but denoising (0.1); {plan['samples']} posterior sample(s) per "
        f"image and method (scores are those of their mean). Steps run: {steps}; deepinv's samplers run at the "
        "step counts of the invdiff sampler of the same name. Estimates are clipped to [0, 1] before scoring; "
        f"PSNR and SSIM (scikit-image) are means over images and seeds; {lp}. Oracle rows choose their "
        "regularisation weight per image by PSNR against the truth on a log grid: an upper bound for the "
        "classical method. Budget: what a row runs below the full protocol (default steps, the three test "
        "images at full size, three seeds). Overhead: seconds / (NFE x t_net), t_net the network's forward "
        "(forward + backward for DPS and PiGDM) at the same size and batch, measured before each problem. "
        "Peak MiB: growth of the process's resident memory (CPU) or of allocated CUDA memory during the call."
        + (f" Overrides: {', '.join(plan['notes'])}." if plan["notes"] else ""),
        "",
    ]
    if data.get("budget"):
        lines += [budget_text(data), ""]

    # Margins (priors issue).
    lines += ["### Margin over the classical baseline", "",
              "DDRM, DPS and PiGDM (at the most steps run) and the best invdiff row of each task against the "
              "task's baseline (biharmonic for inpainting, the better of oracle Wiener and oracle Tikhonov for "
              "deblurring, bicubic for super-resolution, the direct inverse for saturation). Bar: +1 dB mean "
              "PSNR (aim +1.5 dB). Best classical: the best of every classical row, TV included.", ""]  # fmt: skip
    headers = ["task", "method", "steps", "PSNR", "SSIM", "baseline", "baseline PSNR", "baseline SSIM",
               "margin (dB)", ">= 1 dB", "best classical"]  # fmt: skip
    table = []
    for m in data["margins"]:
        d = METHODS[m["method"]].steps
        steps_txt = f"{m['steps']} (default {d})" if m["steps"] < d else str(m["steps"])
        table.append([m["task"], ("best: " if m["best_invdiff"] else "") + m["method"], steps_txt,
                      f"{m['psnr']:.2f}", f"{m['ssim']:.3f}", m["baseline"], f"{m['baseline_psnr']:.2f}",
                      f"{m['baseline_ssim']:.3f}", f"{m['margin_db']:+.2f}", "yes" if m["margin_db"] >= 1 else "no",
                      f"{m['best_classical']} {m['best_classical_psnr']:.2f}"])  # fmt: skip
    lines += [report.markdown_table(headers, table), ""]

    # Cost floor and overheads.
    lines += ["### Cost floor and overheads", "",
              "t_net: median of the network's forward and forward + backward passes at each problem's size and "
              "batch (one per task below: the first image and seed).", ""]  # fmt: skip
    table = []
    for task, fl in data["floors"].items():
        f0 = fl[0]
        table.append([task, "x".join(map(str, f0["shape"][1:])), f0["batch"], f"{f0['t_fwd']:.3f}",
                      f"{f0['t_fwd_bwd']:.3f}", f"{f0['t_fwd_bwd'] / f0['t_fwd']:.2f}"])  # fmt: skip
    lines += [report.markdown_table(["task", "image", "batch", "t_fwd (s)", "t_fwd+bwd (s)", "ratio"], table), ""]
    lines += ["Overhead ratio per sampler, median and range over tasks (targets: <= 1.05 for gradient-free "
              "samplers, <= 1.10 for DPS and PiGDM against forward + backward).", ""]  # fmt: skip
    table = []
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in data["rows"]:
        if r["family"] != "classical" and r.get("overhead") is not None:
            groups.setdefault((r["family"], r["method"], r["steps"]), []).append(r["overhead"])
    for (family, method, k), vals in groups.items():
        grad = method in cost.GRADIENT_METHODS
        target = 1.10 if grad else 1.05
        med = statistics.median(vals)
        table.append([f"{family} {method}", k, "fwd+bwd" if grad else "fwd", f"{med:.2f}",
                      f"{min(vals):.2f}–{max(vals):.2f}", f"<= {target:.2f}" if family == "invdiff" else "—",
                      ("yes" if med <= target else "no") if family == "invdiff" else "—"])  # fmt: skip
    lines += [report.markdown_table(["sampler", "steps", "floor", "overhead (median)", "range", "target", "met"],
                                    table), ""]  # fmt: skip
    if any(method == "daps" for _, method, _ in groups):
        lines += ["DAPS's ratio also counts its Langevin steps on x0 (`langevin_steps`, 100 by default, per level), "
                  "each of which applies the operator and its adjoint but not the network: that work is part of the "
                  "algorithm, not overhead of the implementation, and it weighs most where the operator is an FFT "
                  "blur.", ""]  # fmt: skip

    # DPS and PiGDM against deepinv.
    for key, name in (("dps_vs_deepinv", "DPS"), ("pigdm_vs_deepinv", "PiGDM")):
        pairs = data[key]
        if not pairs:
            continue
        lines += [f"### {name} against deepinv's {name}", "",
                  "Same prior, operator, noise, seed, float32 and number of steps; speed ratio = deepinv seconds / "
                  "invdiff seconds." + (" Targets: >= 1.25x, PSNR at most 0.2 dB below." if name == "DPS" else ""),
                  ""]  # fmt: skip
        table = [[p["task"], p["steps"], f"{p['seconds_invdiff']:.2f}", f"{p['seconds_deepinv']:.2f}",
                  f"{p['speed_ratio']:.2f}", p["nfe_invdiff"], p["nfe_deepinv"], f"{p['psnr_invdiff']:.2f}",
                  f"{p['psnr_deepinv']:.2f}", f"{p['psnr_diff']:+.2f}"] for p in pairs]  # fmt: skip
        ratios = [p["speed_ratio"] for p in pairs]
        diffs = [p["psnr_diff"] for p in pairs]
        table.append(["median / mean", "", "", "", f"{statistics.median(ratios):.2f}", "", "", "", "",
                      f"{statistics.fmean(diffs):+.2f}"])  # fmt: skip
        lines += [report.markdown_table(["task", "steps", "s invdiff", "s deepinv", "speed ratio", "NFE invdiff",
                                         "NFE deepinv", "PSNR invdiff", "PSNR deepinv", "PSNR diff"], table), ""]  # fmt: skip

    # Batch scaling.
    sc = data["scaling"]
    if sc:
        lines += ["### Batch scaling", "",
                  f"`restore` drawing 1, 4 and 16 posterior samples in one call: {sc['method']}, {sc['steps']} steps, "
                  f"task {sc['task']}, image {sc['image']}.", ""]  # fmt: skip
        table = [[r["samples"], f"{r['seconds']:.2f}", f"{r['seconds_per_sample']:.3f}", r["nfe"],
                  report.fmt(r["peak_mib"])] for r in sc["rows"]]  # fmt: skip
        lines += [report.markdown_table(["samples", "seconds", "seconds per sample", "NFE", "peak MiB"], table), ""]

    # Per-task tables.
    lines += ["### Results per task", ""]
    headers = ["method", "steps", "NFE", "PSNR", "SSIM", "LPIPS", "s / image", "overhead", "peak MiB", "budget",
               "note"]  # fmt: skip
    for spec in data["tasks"]:
        task = spec["name"]
        lines += [f"#### {task}", "", f"{spec['description']}."]
        if task in data["figures"]:
            lines += ["", f"![{task}: truth, measurement, each method]({figure_prefix}{data['figures'][task]})"]
        lines.append("")
        table = []
        for r in (r for r in data["rows"] if r["task"] == task):
            name = f"{r['family']} {r['method']}"
            if "error" in r:
                table.append([name, _steps_text(r), "", f"failed: {r['error']}", "", "", "", "", "",
                              budget_cell(r, data), ""])  # fmt: skip
                continue
            table.append([name, _steps_text(r), report.fmt(r["nfe"]), f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
                          "n/a" if r["lpips"] is None else f"{r['lpips']:.3f}", f"{r['seconds']:.2f}",
                          "—" if r.get("overhead") is None else f"{r['overhead']:.2f}", report.fmt(r["peak_mib"]),
                          budget_cell(r, data), _note(r, plan)])  # fmt: skip
        lines += [report.markdown_table(headers, table), ""]
    return "\n".join(lines)


def run(mode: str = "quick", device: str = "cpu", steps: dict[str, int] | None = None,
        images: Sequence[str] | None = None, size: int | None = None, seeds: Sequence[int] | None = None,
        readme: bool = True, prior_name: str = PRIOR, methods: Sequence[str] | None = None,
        budget_minutes: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the benchmark with the shipped prior; write ``results/images.{json,md}``, figures, ``RESULTS.md``
    and the README's benchmark block; return all numbers.

    ``budget_minutes``: cut the plan (``budget.CUTS``, each cut named in the tables)
    until its predicted time on this machine fits; ``None`` or 0 runs the plan whole.
    """
    from invdiff.priors import load_prior

    from . import budget

    if budget_minutes is not None and budget_minutes < 0:
        raise ValueError(f"--budget-minutes must be positive (0: no budget), got {budget_minutes:g}")
    plan = override(plan_for(mode), steps, images, size, seeds, methods)
    prior = load_prior(prior_name).to(device)
    fitted = None
    if budget_minutes:
        predictor = budget.Predictor(prior, device, TASKS, measure, SIGMA_Y, log=_log)
        plan, fitted = budget.fit(plan, predictor, budget_minutes * 60, deepinv_supports)
    name = NAME if prior_name == PRIOR else f"{NAME}-{Path(prior_name).name}"
    imgs = {i: load_test_image(i, channels=prior.channels, size=plan.size) for i in plan.images}
    data = run_suite(plan, prior, imgs, device, figures_dir=report.RESULTS_DIR / "figures", name=name,
                     prior_name=prior_name)  # fmt: skip
    data["channels"] = prior.channels
    data["budget"] = fitted
    # JSON: drop nothing, but keep per-run records next to their row
    report.write_json(name, data)
    section = markdown(data)
    report.write_section(name, section)
    if readme and prior_name == PRIOR:
        report.update_readme(headline(data))
    print(section)
    return data
