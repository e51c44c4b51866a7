"""``restore``: validate a problem, draw posterior samples in one batch, summarise them."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .intervals import Calibration, bounds, coverage, prior_id
from .methods import METHODS, Method
from .operators.blur import BlindBlur, Blur
from .operators.embed import crop, embed
from .priors.base import Prior, parameter_dtype, to_network
from .priors.latent import LatentPrior
from .samplers.common import accumulation_dtype
from .samplers.repaint import inpainting_mask

if TYPE_CHECKING:
    from .operators import Operator

_NEED_WORDS = {
    "svd": "an operator with an SVD (has_svd)",
    "linear": "a linear operator (with an adjoint)",
    "mask": "an inpainting operator (x -> mask * x with a binary .mask)",
    "latent": "a latent prior",
}


_PLAIN = (bool, int, float, str, type(None))


@dataclass
class Result:
    """Posterior samples of ``restore`` and their pixelwise summary.

    Attributes:
        mean: ``(B, C, H, W)`` pixelwise mean over the samples.
        std: ``(B, C, H, W)`` pixelwise sample standard deviation (unbiased, divisor
            ``samples - 1``); zeros when ``samples == 1``.
        samples: ``(samples, B, C, H, W)``.
        nfe: denoiser calls per posterior sample; one batched call counts once, whatever
            the batch, so it does not grow with ``samples`` or ``B``.
        seconds: wall time of the sampler.
        method, steps: the method's name and its number of noise levels.
        knobs: every knob the sampler ran with (defaults and overrides).
        dtype: the dtype the sampler computed in, e.g. ``"float32"`` (see ``restore``);
            ``mean``, ``std`` and ``samples`` are in ``y``'s dtype whatever it was.
        network_dtype: the dtype the prior's network ran in (``"bfloat16"`` for a
            ``prior.to(torch.bfloat16)``); ``dtype`` for a prior without parameters.
        padded: ``(top, bottom, left, right)`` pixels the image was padded by for the prior
            (sides divisible by ``prior.factor``) and cropped off again; zeros when none.
        sigma_y: the Gaussian measurement-noise std the sampler ran with (data units): the
            given one, ``noise=Gaussian(s)``'s, or the estimate of ``sigma_y="auto"``;
            ``None`` when a non-Gaussian noise model (``noise=Poisson(...)``) set the likelihood.
        kernel: ``(B, K, K)`` the blur kernels estimated for ``op=BlindBlur(...)`` (centred,
            non-negative, summing to 1); ``None`` for every other operator.
        kernel_choice: for ``op=BlindBlur(...)``, which candidate each image's kernel is
            (``"gaussian"``, ``"line"``, ``"line-sharp"``, ``"classical"`` or one of its variants
            ``"classical-iters"``, ``"classical-gamma"``, ``"em1"``... or ``"init"``; see
            ``invdiff.blind.estimate_blind``); ``None`` for every other operator.
        kernel_candidates: for ``op=BlindBlur(...)``, per image, every kernel the choice weighed, as
            ``(label, kernel (K, K), score)``: the score is ``SpectralModel.nll`` plus the penalty for
            a free-form kernel's pixels; ``None`` for every other operator.
        kernel_misfits: for ``op=BlindBlur(...)``, per image, ``{label: misfit}`` for the candidates
            restored to check them (those within ``BlindBlur.check_margin`` of the least score):
            the RMS of the restoration blurred by the candidate, less the photo;
            ``invdiff.blind.choose`` took ``kernel_choice`` (the least misfit, or the least score
            where nothing was checked: an empty dict); ``None`` for every other operator.
        calibration: the :class:`~invdiff.intervals.Calibration` ``restore`` was given, which
            :meth:`interval` then applies; ``None`` for raw sample intervals.
        sigma_max: the first noise level of the schedule the sampler ran.
    """

    mean: Tensor
    std: Tensor
    samples: Tensor
    nfe: int
    seconds: float
    method: str
    steps: int
    knobs: dict[str, Any] = field(default_factory=dict)
    dtype: str = ""
    network_dtype: str = ""
    padded: tuple[int, int, int, int] = (0, 0, 0, 0)
    sigma_y: float | None = None
    kernel: Tensor | None = None
    kernel_choice: list[str] | None = None
    kernel_candidates: list[list[tuple[str, Tensor, float]]] | None = None
    kernel_misfits: list[dict[str, float]] | None = None
    calibration: Calibration | None = None
    sigma_max: float | None = None

    def interval(self, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Per-pixel ``(lo, hi)``, each ``(B, C, H, W)``, meant to hold the truth with probability ``level``.

        Without a calibration: the samples' ``(1 - level) / 2`` and ``(1 + level) / 2``
        quantiles, which cover at ``level`` only for an exact sampler with many samples (most
        diffusion samplers' are too narrow: ``benchmarks/results/calibration.md``).  With the
        calibration ``restore`` was given: ``mean -+ scale * max(std, floor)``, whose expected
        coverage of a new image's pixels is at least ``level`` (``invdiff.calibrate``).
        Needs at least 2 samples; ``level`` in (0, 1).
        """
        return bounds(self.mean, self.std, self.samples, level, self.calibration)

    def coverage(self, truth: Tensor, level: float = 0.9) -> float:
        """The fraction of ``truth``'s pixels inside :meth:`interval` at ``level`` (``truth`` shaped like ``mean``)."""
        if tuple(truth.shape) != tuple(self.mean.shape):
            raise ValueError(f"truth has shape {tuple(truth.shape)} but the restoration {tuple(self.mean.shape)}")
        lo, hi = self.interval(level)
        return coverage(truth.to(lo.dtype), lo, hi)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary without tensors."""
        return {
            "method": self.method,
            "steps": self.steps,
            "dtype": self.dtype,
            "network_dtype": self.network_dtype,
            "padded": list(self.padded),
            "sigma_y": self.sigma_y,
            "samples": self.samples.shape[0],
            "shape": list(self.mean.shape),
            "nfe": self.nfe,
            "seconds": self.seconds,
            "knobs": {k: v if isinstance(v, _PLAIN) else repr(v) for k, v in self.knobs.items()},
            "calibrated": self.calibration is not None,
        }


class _CountingPrior(Prior):
    """A prior that counts its ``denoise`` calls and delegates everything else."""

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior
        self.calls = 0

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.calls += 1
        if not getattr(self.prior, "casts_input", False):
            # a prior that does not cast for its network computes all of denoise in its dtype
            return self.prior.denoise(to_network(x, self.prior), sigma).to(x.dtype)
        return self.prior.denoise(x, sigma)

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        return self.prior.sigmas(steps, sigma_max)

    def clip(self, x0: Tensor) -> Tensor:
        return self.prior.clip(x0)

    def data_mean(self) -> Tensor | None:
        return self.prior.data_mean()

    @property
    def sigma_min(self) -> float:  # type: ignore[override]
        return self.prior.sigma_min

    @property
    def sigma_max(self) -> float:  # type: ignore[override]
        return self.prior.sigma_max

    @property
    def data_range(self) -> tuple[float, float]:  # type: ignore[override]
        return self.prior.data_range


class _CountingLatentPrior(_CountingPrior):
    """:class:`_CountingPrior` for a latent prior: counts latent ``denoise`` calls, delegates the autoencoder."""

    def encode(self, x: Tensor) -> Tensor:
        return self.prior.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.prior.decode(z)

    def latent_shape(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        return self.prior.latent_shape(x_shape)


def restore(
    y: Tensor,
    op: Operator,
    prior: Prior,
    method: str = "ddrm",
    steps: int | None = None,
    sigma_y: float | str | None = None,
    samples: int = 1,
    seed: int = 0,
    noise: Any | None = None,
    callback: Callable[[dict], None] | None = None,
    generator: torch.Generator | None = None,
    sigma_max: float | None = None,
    calibration: Calibration | str | None = None,
    **knobs: Any,
) -> Result:
    """Draw ``samples`` posterior samples of ``x`` given ``y = A(x) + noise`` in one batched run.

    Args:
        y: measurement ``(B, C, H, W)``, float, in data units.
        op: the forward operator ``A``.
        prior: the diffusion prior.
        method: a key of ``invdiff.METHODS``.
        steps: number of noise levels; ``None`` takes the method's default.
        sigma_max: first noise level of the schedule (data units; latent units for a latent
            prior), capped at the prior's own.  ``None`` takes the method's default
            (``METHODS[method].sigma_max``) for the shipped pixel priors it was chosen on
            (``load_prior("natural-gray")`` and the like), and the prior's own ``sigma_max``
            for every other prior (analytic priors, users' checkpoints, latent priors).
        sigma_y: measurement noise std in data units (0 for noiseless).  Required unless
            ``noise`` is given; a ``Gaussian`` noise model supplies it.  ``"auto"`` estimates
            it from ``y`` before sampling with ``invdiff.noise_level.estimate_sigma_y(y, op)``
            (wavelet MAD; image measurements only, not k-space or sinograms; Gaussian noise
            only, so not with ``noise=``); ``Result.sigma_y`` records the value used.
        samples: posterior samples per image, drawn together as a batch of ``samples * B``.
        seed: seeds a fresh ``torch.Generator`` on ``y``'s device unless ``generator`` is given.
        noise: a noise model (``Gaussian``, ``Poisson``) for methods that take one.
        callback: passed to the sampler, called with a dict per step.
        calibration: a :class:`~invdiff.intervals.Calibration` (or the path of its JSON) made by
            ``invdiff.calibrate`` for this method, steps, samples, knobs, prior, operator kind
            and noise level (a one-line ``ValueError`` otherwise); ``Result.interval`` then
            returns calibrated intervals.
        **knobs: the method's own keyword knobs (see ``METHODS[method].knobs``); one left unset or
            ``None`` whose default depends on the run is filled from ``METHODS[method].run_defaults``
            (DiffPIR's ``lambda_`` on a blur).

    Precision: the sampler's state, sums and solves are in ``Result.dtype``, at least float32:
    float64 for a float64 prior (or a parameter-free prior such as the analytic
    ``GaussianPrior`` with float64 ``y``), float32 otherwise, half-precision ``y`` and
    half-precision priors included.  The network runs in its own dtype,
    ``Result.network_dtype``: a prior in float16 or bfloat16 (``prior.half()``) gets its
    input in that dtype and hands its answer back in the sampler's (mixed precision, as
    EDM's and guided-diffusion's ``use_fp16``: the preconditioning's skip path and the
    update rules never round the chain to half precision, so a 1000-step chain does not
    drift).  ``y`` is cast to the sampler's dtype (operators follow their input's dtype),
    the noise levels stay float64 and reach the sampler as Python floats, and ``mean``,
    ``std`` and ``samples`` come back in ``y``'s dtype.  Any mix of float32, float16 and
    bfloat16 is accepted; float64 on one side only (a float64 prior with float32 ``y`` or
    the reverse) is refused as a likely mistake.

    Image size: any.  A prior whose network needs sides divisible by ``prior.factor`` (8 for
    the shipped U-Nets, 16 for ``latent-gray``) gets the problem on an image padded at the
    bottom and right to the next multiples: the operator is wrapped as
    ``operators.Embed(op, pad)`` (measures the original window; the border is unmeasured and
    left to the prior), an ``Inpainting`` gets its mask and ``y`` zero-padded (the border a
    hole), and mean, std and samples are cropped back to the image; ``Result.padded`` says
    by how much.  ``callback`` sees the padded images.  Sides already divisible run exactly
    as given.

    Returns:
        ``Result`` with mean, std, samples, nfe, timing, the compute dtype and the padding.
    """
    if isinstance(op, BlindBlur):  # the kernel is unknown: estimated with the image (invdiff.blind)
        _check_y(y)
        if calibration is not None:
            raise ValueError("calibrated intervals are not available for a BlindBlur (the kernel is estimated per "
                             "image); restore with the estimated kernel as a Blur to calibrate")  # fmt: skip
        return _restore_blind(y, op, prior, method, steps, sigma_y, samples, seed, generator, callback, sigma_max,
                             knobs, noise)  # fmt: skip
    # Validate everything before any sampling.
    _check_y(y)
    _check_devices(prior, op, y, generator)
    # The chain in at least float32; the network in its parameters' dtype (the chain's without any).
    y_dtype, net_dtype = y.dtype, parameter_dtype(prior)
    dtype = accumulation_dtype(net_dtype or y.dtype)
    net_dtype = net_dtype or dtype
    _check_range(y, net_dtype)
    y = y.to(dtype)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    m = METHODS[method]
    _check_prior_kind(method, m, prior)
    x_shape = _check_op(op, y)
    pad = _padding(prior, x_shape)
    if isinstance(prior, LatentPrior):
        prior.latent_shape(_padded_shape(x_shape, pad))  # the image must fit the autoencoder and latent U-Net
    _check_needs(method, m, op, y)
    valid = m.knobs
    unknown = [k for k in knobs if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown knob {unknown[0]!r} for method {method!r}; valid knobs: {', '.join(valid) or 'none'}"
        )
    steps = m.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    steps, samples = int(steps), int(samples)
    sigma_y, noise = _check_noise(method, m, sigma_y, noise, y, op)
    if m.run_defaults is not None:  # e.g. DiffPIR's weight on a blur: before embed hides the operator, in Result.knobs
        knobs = {**knobs, **{k: v for k, v in m.run_defaults(steps, op).items() if knobs.get(k) is None}}

    # Sides not divisible by the prior's factor: the same problem on a canvas padded at the bottom/right.
    if any(pad):
        y, op = embed(y, op, pad)

    # One batch of samples * B problems, sample-major: entry k * B + b is sample k of image b.
    y_rep = y.repeat(samples, 1, 1, 1)
    op_rep = op.repeat_batch(samples)
    if generator is None:
        generator = torch.Generator(device=y.device).manual_seed(seed)
    if sigma_max is None and getattr(prior, "shipped", None) is not None and not isinstance(prior, LatentPrior):
        sigma_max = m.sigma_max  # the method's start, chosen on the shipped priors
    # Noise levels stay float64 whatever y's dtype: a 1000-level schedule in bfloat16 is not decreasing.
    sigmas = prior.sigmas(steps, sigma_max).to(device=y.device, dtype=torch.float64)
    if calibration is not None:  # before any sampling
        calibration = _check_calibration(calibration, method, steps, samples, prior, op, sigma_y, noise,
                                         {**valid, **knobs}, float(sigmas[0]))  # fmt: skip
    counter = _CountingLatentPrior(prior) if isinstance(prior, LatentPrior) else _CountingPrior(prior)
    extra = {"noise": noise} if m.noise_models else {}

    start = time.perf_counter()
    with torch.no_grad():
        x = m.fn(
            counter, op_rep, y_rep, sigmas,
            sigma_y=sigma_y, generator=generator, callback=callback, **extra, **knobs,
        )
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - start

    # The summary over samples in at least float32, everything returned in y's dtype.
    xs = crop(x, pad).reshape(samples, *x_shape).to(accumulation_dtype(x.dtype))
    std = xs.std(dim=0) if samples > 1 else torch.zeros_like(xs[0])
    return Result(
        mean=xs.mean(dim=0).to(y_dtype),
        std=std.to(y_dtype),
        samples=xs.to(y_dtype),
        nfe=counter.calls,
        seconds=seconds,
        method=method,
        steps=steps,
        knobs={**valid, **knobs},
        dtype=str(dtype).removeprefix("torch."),
        network_dtype=str(net_dtype).removeprefix("torch."),
        padded=pad,
        sigma_y=sigma_y if noise is None else None,
        calibration=calibration,
        sigma_max=float(sigmas[0]),
    )


def _check_calibration(calibration: Calibration | str, method: str, steps: int, samples: int, prior: Prior,
                       op: Operator, sigma_y: float, noise: Any | None, knobs: dict[str, Any],
                       sigma_start: float) -> Calibration:  # fmt: skip
    """The calibration (loaded from a path), checked against this run; raises a one-line ``ValueError``."""
    from pathlib import Path

    if isinstance(calibration, (str, Path)):
        calibration = Calibration.load(calibration)
    if not isinstance(calibration, Calibration):
        raise ValueError(f"calibration must be an invdiff Calibration or the path of its JSON, "
                         f"got {type(calibration).__name__}")  # fmt: skip
    if samples < 2:
        raise ValueError("calibrated intervals need at least 2 posterior samples; pass the calibration's "
                         f"samples={calibration.samples}")  # fmt: skip
    calibration.check(method=method, steps=steps, samples=samples, prior=prior_id(prior), operator=type(op).__name__,
                      sigma_y=sigma_y if noise is None else None, knobs=knobs, sigma_max=sigma_start)  # fmt: skip
    return calibration


def _padding(prior: Prior, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` that make the image's sides multiples of ``prior.factor``.

    Bottom and right only: the image keeps its pixel grid aligned with the network's
    downsampling blocks from the top-left corner, as an image of divisible size would.
    """
    f = int(getattr(prior, "factor", 1) or 1)
    h, w = int(x_shape[-2]), int(x_shape[-1])
    return (0, -h % f, 0, -w % f)


def _padded_shape(x_shape: tuple[int, ...], pad: tuple[int, int, int, int]) -> tuple[int, ...]:
    top, bottom, left, right = pad
    return (*x_shape[:-2], x_shape[-2] + top + bottom, x_shape[-1] + left + right)


def _check_y(y: Any) -> None:
    if not isinstance(y, Tensor):
        raise ValueError(f"y must be a torch.Tensor of shape (B, C, H, W), got {type(y).__name__}")
    if not y.is_floating_point():
        raise ValueError(f"y must be a float tensor, got dtype {y.dtype}; convert it with y.float()")
    if y.dim() != 4:
        raise ValueError(
            f"y must be 4-D (B, C, H, W), got shape {tuple(y.shape)}; add dimensions with y[None] or y[None, None]"
        )
    bad = int((~torch.isfinite(y)).sum())
    if bad:
        raise ValueError(f"y has {bad} NaN or infinite values out of {y.numel()}; clean the measurement first")


def _check_op(op: Operator, y: Tensor) -> tuple[int, ...]:
    """The image shape for ``y``, checked against the operator; raises ``ValueError``."""
    try:
        x_shape = tuple(op.x_shape(y))
    except NotImplementedError as e:
        raise ValueError(str(e)) from None
    op.check(x_shape)
    with torch.no_grad():
        ay = op(torch.zeros(x_shape, device=y.device, dtype=y.dtype))
    if ay.shape != y.shape:
        raise ValueError(
            f"y has shape {tuple(y.shape)} but {type(op).__name__} maps images of shape {x_shape} "
            f"to {tuple(ay.shape)}"
        )
    return x_shape


def _offers(op: Operator, y: Tensor) -> set[str]:
    """Which of the method requirements the operator meets (``"mask"``: a pixel mask, not a k-space one)."""
    out = set()
    if getattr(op, "has_svd", False):
        out.add("svd")
    if getattr(op, "linear", False):
        out.add("linear")
    try:
        with torch.no_grad():
            inpainting_mask(op, y)
        out.add("mask")
    except ValueError:
        pass
    return out


def check_method(method: str, op: Operator, y: Tensor) -> None:
    """Raise a one-line ``ValueError`` if ``method`` is unknown or cannot run with ``op`` (measurement ``y``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_needs(method, METHODS[method], op, y)


def _check_prior_kind(method: str, m: Method, prior: Prior) -> None:
    """A latent method needs a :class:`LatentPrior` and a pixel method a pixel prior; raises ``ValueError``."""
    latent = isinstance(prior, LatentPrior)
    if ("latent" in m.needs) == latent:
        return
    same = [name for name, other in METHODS.items() if ("latent" in other.needs) == latent]
    if latent:
        raise ValueError(f"method {method!r} works on images but the prior is a latent prior (its denoiser works on "
                         f"latents); with a latent prior use {', '.join(same)}")  # fmt: skip
    raise ValueError(f"method {method!r} needs a latent prior (autoencoder + latent denoiser, e.g. "
                     f"load_prior('latent-gray')), but {type(prior).__name__} is a pixel prior; use {', '.join(same)}")  # fmt: skip


def _check_needs(method: str, m: Method, op: Operator, y: Tensor) -> None:
    offers = _offers(op, y)
    missing = sorted(m.needs - offers - {"latent"})
    if missing:
        kind = "latent" in m.needs  # suggest methods for the same kind of prior
        working = [name for name, other in METHODS.items()
                   if other.needs - {"latent"} <= offers and ("latent" in other.needs) == kind]  # fmt: skip
        raise ValueError(
            f"method {method!r} needs {_NEED_WORDS[missing[0]]}, which {type(op).__name__} is not; "
            f"methods that work with this operator: {', '.join(working)}"
        )


def _check_noise(
    method: str, m: Method, sigma_y: float | str | None, noise: Any | None, y: Tensor, op: Operator
) -> tuple[float, Any | None]:
    """Resolve ``sigma_y`` (estimated from ``y`` for ``"auto"``) and ``noise`` for the method; raises ``ValueError``."""
    if sigma_y is None and noise is None:
        raise ValueError(
            "pass sigma_y= (measurement noise std in data units; 0 for noiseless) or noise=, "
            "or sigma_y='auto' to estimate it from y"
        )
    if isinstance(sigma_y, str) and sigma_y == "auto":
        if noise is not None:
            raise ValueError(
                f"sigma_y='auto' estimates Gaussian noise and cannot be combined with "
                f"noise={type(noise).__name__}(...); drop one of them"
            )
        from .noise_level import estimate_sigma_y

        sigma_y = estimate_sigma_y(y, op)
    gaussian_sigma = None
    if noise is not None:
        from .operators.noise import Gaussian

        if isinstance(noise, Gaussian):
            gaussian_sigma = float(noise.sigma)
        elif not m.noise_models:
            takes = [name for name, other in METHODS.items() if other.noise_models]
            raise ValueError(
                f"method {method!r} takes Gaussian noise only (sigma_y=), not {type(noise).__name__}; "
                f"methods that accept noise models: {', '.join(takes)}"
            )
    if sigma_y is None:
        sigma_y = gaussian_sigma if gaussian_sigma is not None else 0.0
    if isinstance(sigma_y, Tensor):
        sigma_y = float(sigma_y)
    if not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite number >= 0 (data units) or 'auto', got {sigma_y!r}")
    if gaussian_sigma is not None and not math.isclose(sigma_y, gaussian_sigma, rel_tol=1e-6, abs_tol=1e-12):
        raise ValueError(f"sigma_y={sigma_y} disagrees with noise=Gaussian({gaussian_sigma}); pass one of them")
    if gaussian_sigma is not None:
        noise = None  # every sampler takes Gaussian noise as sigma_y
    return float(sigma_y), noise


def _placement(module: nn.Module) -> tuple[torch.device, torch.dtype | None] | None:
    """Device of a module's first parameter or buffer and dtype of its first floating parameter.

    Buffers set no dtype: analytic priors and operators may keep them in float64 and cast.
    """
    tensors = [*module.parameters(), *module.buffers()]
    if not tensors:
        return None
    floats = [p for p in module.parameters() if p.is_floating_point()]
    return tensors[0].device, floats[0].dtype if floats else None


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` count as the same device."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_range(y: Tensor, net_dtype: torch.dtype) -> None:
    """``ValueError`` if ``y`` does not fit the range of the dtype the prior's network runs in."""
    if not y.dtype.is_floating_point or torch.finfo(net_dtype).max >= torch.finfo(y.dtype).max:
        return
    if not torch.isfinite(y.to(net_dtype)).all():
        raise ValueError(
            f"y reaches {y.abs().max().item():.4g}, beyond {net_dtype}'s largest value "
            f"{torch.finfo(net_dtype).max:.4g}, and the prior's network runs in {net_dtype}; "
            "rescale y or use a float32 prior (prior.float())"
        )


def _check_devices(prior: Prior, op: Operator, y: Tensor, generator: torch.Generator | None) -> None:
    place = _placement(prior)
    if place is not None:
        device, dtype = place
        # float32, float16 and bfloat16 mix (restore casts y to the compute dtype); float64 on one side only does not.
        wide = dtype is not None and dtype != y.dtype and torch.float64 in (dtype, y.dtype)
        if not _same_device(device, y.device) or wide:
            raise ValueError(
                f"prior is on {device} ({dtype}) but y is on {y.device} ({y.dtype}); "
                f"move one, e.g. prior.to({str(y.device)!r}, {y.dtype})"
            )
    place = _placement(op) if isinstance(op, nn.Module) else None
    if place is not None and not _same_device(place[0], y.device):
        raise ValueError(f"operator is on {place[0]} but y is on {y.device}; move it with op.to(y.device)")
    if generator is not None and not _same_device(generator.device, y.device):
        raise ValueError(f"generator is on {generator.device} but y is on {y.device}; create it on y.device")


def _restore_blind(
    y: Tensor, blind: BlindBlur, prior: Prior, method: str, steps: int | None, sigma_y: float | str | None,
    samples: int, seed: int, generator: torch.Generator | None, callback: Callable[[dict], None] | None,
    sigma_max: float | None, knobs: dict[str, Any], noise: Any | None = None,
) -> Result:
    """``invdiff.restore`` for a ``BlindBlur``: kernel by EM per image, then the final non-blind run.

    Each image of the batch gets its own kernel.  The E-steps and the checks draw one
    sample with ``blind.em_steps`` steps (default: ``steps``); the final run draws
    ``samples`` with ``steps`` (the chosen candidate's check run is the final run where
    that is the same run: one sample, the same steps).  The result is the photo's region
    (``y``'s size), with ``Result.kernel`` ``(B, K, K)``; ``nfe`` and ``seconds`` count
    every run.
    """
    if noise is not None:
        raise ValueError("a BlindBlur takes Gaussian noise through sigma_y (a number or 'auto'), not noise=")
    from .blind import check_blind_method, estimate_blind
    from .samplers.diffpir import VALID_BLUR_CG_ITERS

    check_blind_method(method)
    size = blind.kernel_size
    b, c, h, w = y.shape
    if size > min(h, w):
        raise ValueError(f"kernel size {size} is larger than the image {h}x{w}; give a smaller --kernel-size")
    if method == "diffpir" and "cg_iters" not in knobs:
        knobs = {**knobs, "cg_iters": VALID_BLUR_CG_ITERS}
    if sigma_y is None:  # before the kernel's seconds of work, not after
        raise ValueError("a BlindBlur needs sigma_y= (measurement noise std in data units; 0 for noiseless), "
                         "or sigma_y='auto' to estimate it from y")  # fmt: skip
    if isinstance(sigma_y, str) and sigma_y == "auto":
        from .noise_level import estimate_sigma_y

        sigma_y = float(estimate_sigma_y(y))
    start = time.perf_counter()
    top = size - 1 - size // 2
    means, stds, draws, kernels, nfe, last = [], [], [], [], 0, None
    choices: list[str] = []
    weighed: list[list[tuple[str, Tensor, float]]] = []
    misfits: list[dict[str, float]] = []
    for i in range(b):
        yi = y[i : i + 1]

        def run(op: Blur, n: int = 1, s: int | None = blind.em_steps) -> Result:
            nonlocal nfe
            r = restore(yi, op, prior, method=method, steps=s if s is not None else steps, sigma_y=sigma_y,
                        samples=n, seed=seed + i, generator=generator, callback=callback, sigma_max=sigma_max,
                        **knobs)  # fmt: skip
            nfe += r.nfe  # every run counts: E-steps, checks and the final one
            return r

        k, candidates, checked = estimate_blind(yi, blind, run, float(sigma_y))
        label = next(label for label, kc, _ in candidates if kc is k)
        choices.append(label)
        weighed.append(candidates)  # (label, kernel on y's device, score), as estimate_blind weighed them
        misfits.append({c: m for c, (m, _) in checked.items()})
        if label in checked and samples == 1 and (blind.em_steps is None or blind.em_steps == steps):
            last = checked[label][1]  # the chosen kernel's check run is the final run
        else:
            last = run(Blur(k.to(y.device), padding="valid"), samples, steps)

        def region(t: Tensor) -> Tensor:
            return t[..., top : top + h, top : top + w]

        means.append(region(last.mean))
        stds.append(region(last.std))
        draws.append(region(last.samples))
        kernels.append(k.to(y.device))
    assert last is not None
    return Result(
        mean=torch.cat(means), std=torch.cat(stds), samples=torch.cat(draws, dim=1), nfe=nfe,
        seconds=time.perf_counter() - start, method=method, steps=last.steps, knobs=last.knobs, dtype=last.dtype,
        network_dtype=last.network_dtype, padded=last.padded, sigma_y=last.sigma_y, kernel=torch.stack(kernels),
        kernel_choice=choices, kernel_candidates=weighed, kernel_misfits=misfits,
    )
