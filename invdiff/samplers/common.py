"""Shared maths of the posterior samplers, written once and tested once.

Everything is in data space and variance-exploding form: a noisy image at level
``sigma`` is ``x = x0 + sigma * n``.  A DDPM timestep with cumulative product
``abar`` corresponds (DESIGN.md) to ``sqrt(abar) = 1 / sqrt(1 + sigma_m^2)``
with ``sigma_m = 2 sigma`` the level in the model's ``[-1, 1]`` units
(``vp_alpha_bar``); samplers whose reference code is written for such a model
use it to convert their constants, and nowhere else.

Shapes: images ``(B, C, H, W)``; ``(B,)`` per-sample scalars; ``(B, N)`` and
``(B, M)`` coordinates in an operator's right / left singular bases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..operators import Operator
from ..operators.noise import Gaussian
from ..priors import Prior

__all__ = [
    "HALF",
    "accumulation_dtype",
    "randn",
    "bdot",
    "per_sample_norm",
    "col",
    "check_sigmas",
    "check_sigma_y",
    "gaussian_noise_as_sigma_y",
    "require_svd",
    "require_linear",
    "emit",
    "vp_alpha_bar",
    "start_mean",
    "start_std",
    "initial_x",
    "initial_latent",
    "measurement_image",
    "ancestral_sigmas",
    "ancestral_step",
    "denoise_vjp",
    "linearize",
    "nll_grad_and_curvature",
    "conjugate_gradient",
    "ridge_adjoint_solve",
    "operator_norm",
]


# -- small helpers -------------------------------------------------------------------------------


#: the half-precision floating dtypes: their sums, norms and solves run in float32 (``accumulation_dtype``)
HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype that sums, norms, draws and linear solves run in for data of ``dtype``.

    float32 for float16 and bfloat16 (a sum of squares over a 3x128x128 image overflows
    float16's 65504, and bfloat16 keeps 8 significant bits), ``dtype`` itself otherwise.
    """
    return torch.float32 if dtype in HALF else dtype


def randn(shape: Sequence[int], generator: torch.Generator | None = None, *, like: Tensor) -> Tensor:
    """Standard normal draws of ``shape`` on ``like``'s device and dtype, from ``generator`` only.

    The draw happens on the generator's device (so a CPU generator serves a GPU
    sampler) and is then moved; without a generator it happens on ``like``'s device.
    For half-precision ``like`` the draw is made in float32 and rounded, so a seed
    gives the same noise in float32, bfloat16 and float16 (torch's own half draws
    take another path and differ).
    """
    device = generator.device if generator is not None else like.device
    z = torch.randn(tuple(shape), generator=generator, device=device, dtype=accumulation_dtype(like.dtype))
    return z.to(device=like.device, dtype=like.dtype)


def bdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ``<a_b, b_b>`` over all but the batch dimension: ``(B,)``.

    Accumulated, and returned, in ``accumulation_dtype`` of the inputs: float32 for
    half-precision inputs (``col`` casts it back where it scales a half tensor).
    """
    work = accumulation_dtype(torch.promote_types(a.dtype, b.dtype))
    return (a.to(work) * b.to(work)).flatten(1).sum(1)


def per_sample_norm(x: Tensor) -> Tensor:
    """Per-sample Euclidean norm ``||x_b||`` over all but the batch dimension: ``(B,)``.

    Its gradient at ``x_b = 0`` is 0 (not NaN).  Accumulated, and returned, in
    ``accumulation_dtype(x.dtype)``: float32 for half-precision ``x``.
    """
    return torch.linalg.vector_norm(x.flatten(1).to(accumulation_dtype(x.dtype)), dim=1)


def col(v: Tensor | float, like: Tensor) -> Tensor | float:
    """A float, a 0-d tensor or a ``(B,)`` tensor, broadcastable against ``like`` ``(B, ...)``."""
    if isinstance(v, Tensor) and v.dim() > 0:
        return v.to(like).reshape(-1, *([1] * (like.dim() - 1)))
    return v


def check_sigmas(sigmas: Tensor | Sequence[float]) -> list[float]:
    """Validate a noise schedule and return it as Python floats.

    ``sigmas`` must be 1-D with at least two entries, finite, strictly
    decreasing and end in 0 (``prior.sigmas(steps)``).
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D tensor of at least 2 noise levels ending in 0 (prior.sigmas(steps)), "
            f"got shape {tuple(s.shape)}"
        )
    if not torch.isfinite(s).all():
        raise ValueError("sigmas contains NaN or inf")
    if s[-1] != 0 or (s[:-1] <= 0).any():
        raise ValueError(
            f"sigmas must be positive and end in exactly 0 (got first {s[0].item():.4g}, last {s[-1].item():.4g}); "
            "use prior.sigmas(steps)"
        )
    if (s[1:] >= s[:-1]).any():
        raise ValueError("sigmas must be strictly decreasing (use prior.sigmas(steps))")
    return s.tolist()


def check_sigma_y(sigma_y: float) -> float:
    """``sigma_y`` as a float, rejecting negative or non-finite values."""
    sigma_y = float(sigma_y)
    if not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite number >= 0 (data units), got {sigma_y}")
    return sigma_y


def gaussian_noise_as_sigma_y(noise: object | None, sigma_y: float) -> tuple[object | None, float]:
    """Turn a ``Gaussian(s)`` noise model into ``sigma_y = s`` (and no noise model); others pass through.

    Raises ``ValueError`` if both are given and disagree.
    """
    if isinstance(noise, Gaussian):
        if sigma_y not in (0.0, noise.sigma):
            raise ValueError(f"sigma_y={sigma_y} disagrees with noise={noise!r}; give one of them")
        return None, float(noise.sigma)
    return noise, sigma_y


def require_svd(op: Operator, method: str) -> None:
    """Raise ``ValueError`` unless ``op`` exposes an SVD (``has_svd``)."""
    if not getattr(op, "has_svd", False):
        raise ValueError(
            f"{method} needs an operator with an SVD (Vt, V, Ut, U, singulars); {type(op).__name__} has none: "
            "use dps, pigdm, diffpir or score_ald instead"
        )


def require_linear(op: Operator, method: str) -> None:
    """Raise ``ValueError`` unless ``op`` is linear (has an adjoint)."""
    if not getattr(op, "linear", False):
        raise ValueError(
            f"{method} needs a linear operator with an adjoint; {type(op).__name__} is nonlinear: "
            "use dps or score_ald instead"
        )


def emit(
    callback: Callable[[dict], None] | None, i: int, sigma: float, sigma_next: float, x: Tensor, x0_hat: Tensor
) -> None:
    """Report one step: ``callback({"i", "sigma", "sigma_next", "x", "x0_hat"})`` if a callback is given."""
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "x0_hat": x0_hat})


def vp_alpha_bar(sigma: float) -> float:
    """DDPM ``abar`` of data-space level ``sigma``: ``1 / (1 + (2 sigma)^2)`` (DESIGN.md, ``sigma_m = 2 sigma``)."""
    return 1.0 / (1.0 + 4.0 * sigma**2)


# -- the start of the chain -------------------------------------------------------------------------


def _bounded(prior: Prior) -> tuple[float, float] | None:
    lo, hi = (float(v) for v in prior.data_range)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def start_mean(prior: Prior, shape: Sequence[int], *, like: Tensor) -> Tensor:
    """The centre of a chain's start ``x_T``, ``shape`` ``(B, C, H, W)`` on ``like``'s device and dtype.

    The references draw ``x_T ~ N(0, I)`` on ``[-1, 1]`` images: the middle of the data's
    range, ``(lo + hi) / 2`` for a prior with a finite ``data_range`` (0.5 for images in
    ``[0, 1]``).  An unbounded prior starts at its ``data_mean()`` where it knows one
    (the analytic priors), else at 0.
    """
    bounds = _bounded(prior)
    if bounds is not None:
        return torch.full(tuple(shape), 0.5 * (bounds[0] + bounds[1]), dtype=like.dtype, device=like.device)
    mean = prior.data_mean() if callable(getattr(prior, "data_mean", None)) else None
    if mean is None:
        return torch.zeros(tuple(shape), dtype=like.dtype, device=like.device)
    return mean.to(device=like.device, dtype=like.dtype).expand(tuple(shape)).clone()


def start_std(prior: Prior, sigma: float, *, vp: bool = True) -> float:
    """The spread of a chain's start at level ``sigma``: ``sqrt(sigma^2 + ((hi - lo) / 2)^2)``.

    That is the references' ``x_T ~ N(0, I)`` in VP units (``x_t = sqrt(abar) x0_m +
    sqrt(1 - abar) eps`` on ``[-1, 1]``) read in data units: ``x = 1/2 + x_T / (2 sqrt(abar))``
    with ``1 / abar = 1 + 4 sigma^2``, exact at every start level, truncated or not.  For a
    reference in VE form (``x_T = sigma_T n``: DAPS, EDM-style Langevin) pass ``vp=False``:
    ``sigma`` alone.  Unbounded priors: ``sigma``.
    """
    bounds = _bounded(prior)
    if bounds is None or not vp:
        return float(sigma)
    return math.sqrt(float(sigma) ** 2 + (0.5 * (bounds[1] - bounds[0])) ** 2)


def initial_x(
    prior: Prior, shape: Sequence[int], sigma: float, generator: torch.Generator | None, *, like: Tensor,
    vp: bool = True,
) -> Tensor:
    """``x_T = start_mean + start_std(sigma) * n``, ``n`` one standard normal draw of ``shape`` from ``generator``.

    For a prior on ``[0, 1]``, in VP units on ``[-1, 1]`` this is exactly the references'
    ``x_T = n`` (the same draw), so a transcription of a reference that shares the
    generator starts where the sampler starts (``tests/test_reference_parity.py``).
    """
    return start_mean(prior, shape, like=like) + start_std(prior, sigma, vp=vp) * randn(shape, generator, like=like)


def measurement_image(
    prior: Prior, op: Operator, y: Tensor, sigma_y: float, sigma: float, *, cg_iters: int = 50
) -> Tensor:
    """The measurement as an image, for a start at level ``sigma``: ``m + A^T (A A^T + lam I)^-1 (y - A m)``.

    ``m = start_mean`` fills what ``A`` does not measure (the references' ``A^+ y_m`` on ``[-1, 1]``
    is 0 there), and ``lam = sigma_y^2 / r^2`` with ``r^2 = sigma^2 / (1 + 4 sigma^2)`` (at least
    1e-6) regularises the inverse as PiGDM's guidance is at ``sigma``: a plain pseudoinverse
    divides the noise by singulars near zero (a Gaussian blur's reach 1e-8).
    """
    mid = start_mean(prior, op.x_shape(y), like=y)
    lam = max(sigma_y**2 * (1 + 4 * sigma**2) / sigma**2, 1e-6)
    return mid + ridge_adjoint_solve(op, y - op(mid), lam, cg_iters=cg_iters)


def initial_latent(
    prior: Prior, shape: Sequence[int], sigma: float, generator: torch.Generator | None, *, like: Tensor
) -> Tensor:
    """A latent chain's start ``z_T = m + sqrt(sigma^2 + 1) n``: the references' ``z_T ~ N(0, I)`` in VP units.

    Latents are the network's own units (``abar = 1 / (1 + sigma^2)``, no range map), so the
    VP draw ``n`` reads ``n / sqrt(abar)`` in VE form.  ``m`` is the latent denoiser's
    ``data_mean()`` where it knows one (analytic latent priors), else 0.
    """
    mean = prior.data_mean() if callable(getattr(prior, "data_mean", None)) else None
    z = math.sqrt(float(sigma) ** 2 + 1.0) * randn(shape, generator, like=like)
    return z if mean is None else z + mean.to(device=like.device, dtype=like.dtype)


# -- the reverse step ------------------------------------------------------------------------------


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split ``sigma_next`` into ``(sigma_down, sigma_up)`` with ``sigma_down^2 + sigma_up^2 = sigma_next^2``.

    ``sigma_up = min(sigma_next, eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma)``
    (k-diffusion's ``get_ancestral_step``).  In VE form this is exactly DDIM's
    ``sigma_t(eta)`` (Song et al. 2021, eq. 16) divided by ``sqrt(abar_{t-1})``:
    ``eta = 0`` is deterministic DDIM, ``eta = 1`` the DDPM posterior
    ``q(x_{t-1} | x_t, x0)`` (Ho et al. 2020, eq. 7).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if sigma_next <= 0:
        return 0.0, 0.0
    up = min(sigma_next, eta * sigma_next * math.sqrt(max(sigma**2 - sigma_next**2, 0.0)) / sigma)
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


def ancestral_step(
    x: Tensor,
    x0_hat: Tensor,
    sigma: float,
    sigma_next: float,
    eta: float = 1.0,
    noise: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One DDIM / ancestral step from level ``sigma`` to ``sigma_next`` in VE form (DDIM eq. 12).

    ``x_next = x0_hat + sigma_down * (x - x0_hat) / sigma + sigma_up * z`` with
    ``(sigma_down, sigma_up) = ancestral_sigmas(sigma, sigma_next, eta)`` and
    ``z = noise`` or a fresh draw from ``generator``.  Given the true ``x0`` in
    place of ``x0_hat`` it maps ``x0 + sigma n`` to ``x0 + sigma_next n'`` exactly,
    for every ``eta <= 1``.  ``x``, ``x0_hat``: ``(B, C, H, W)``.
    """
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    x_next = x0_hat + (sigma_down / sigma) * (x - x0_hat)
    if sigma_up > 0:
        z = noise if noise is not None else randn(x.shape, generator, like=x)
        x_next = x_next + sigma_up * z
    return x_next


# -- gradients through the denoiser and the operator -----------------------------------------------


def denoise_vjp(
    prior: Prior, x: Tensor, sigma: float | Tensor, loss_fn: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """One denoiser pass and the gradient of a per-sample loss of its output with respect to ``x``.

    ``loss_fn(x0_hat) -> (B,)``.  Returns ``(x0_hat, grad, loss)``, all detached,
    with ``grad = d sum_b loss_b / d x`` ``(B, C, H, W)``: sample ``b``'s gradient
    is that of its own loss (the denoiser treats samples independently).
    Exactly one call of ``prior.denoise``, run with gradients enabled even under
    ``torch.no_grad``.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        x0_hat = prior.denoise(x_in, sigma)
        if not x0_hat.requires_grad:
            raise ValueError(
                f"{type(prior).__name__}.denoise is not differentiable (its output has no gradient); "
                "this sampler needs a prior it can backpropagate through"
            )
        loss = loss_fn(x0_hat)
        if loss.shape != (x.shape[0],):
            raise ValueError(f"loss_fn must return one loss per sample, shape ({x.shape[0]},), got {tuple(loss.shape)}")
        (grad,) = torch.autograd.grad(loss.sum(), x_in, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    return x0_hat.detach(), grad.detach(), loss.detach()


def linearize(op: Operator, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``A(x)`` and the map ``v -> J_A(x)^T v`` (``op.adjoint`` for linear operators, autograd otherwise)."""
    if getattr(op, "linear", False):
        return op(x), op.adjoint
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        ax = op(x_in)

    def vjp(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(ax, x_in, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    return ax.detach(), vjp


def nll_grad_and_curvature(noise: object, y: Tensor, ax: Tensor) -> tuple[Tensor, Tensor]:
    """A separable noise model's ``g = d nll / d ax`` and a curvature bound ``h >= 0``, both like ``ax``.

    ``h`` is the larger of the second derivative ``d g_j / d ax_j`` (autograd
    through ``noise.grad``; the whole Hessian for a likelihood that factorises
    over measurements, as Gaussian and Poisson do) and the secant slope
    ``g_j / (ax_j - y_j)`` from the measurement.  The secant covers kinks and
    flat-then-steep regions (Poisson at ``ax <= 0``, where ``g`` is large and the
    second derivative 0), so a step ``alpha <= c / h`` cannot overshoot ``y``.
    For ``Gaussian(s)`` both are ``1 / s^2``.
    """
    with torch.enable_grad():
        a = ax.detach().requires_grad_(True)
        g = noise.grad(y, a)
        h = None
        if g.requires_grad:
            (h,) = torch.autograd.grad(g.sum(), a, allow_unused=True)
    g = g.detach()
    h = torch.zeros_like(ax) if h is None else h.detach().clamp_min(0)
    d = ax - y
    far = d.abs() > 1e-12
    secant = torch.where(far, g / torch.where(far, d, torch.ones_like(d)), torch.zeros_like(d)).clamp_min(0)
    return g, torch.maximum(h, secant)


# -- linear algebra --------------------------------------------------------------------------------



def spectral_measurement(
    op: Operator, y: Tensor, sigma_y: float, nu_max: float | None = None
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """DDRM's spectral view of ``y`` (Kawar et al. 2022, eq. 4): ``y_bar = Sigma^+ U^T y``, ``nu_i = sigma_y / s_i``.

    Returns ``(y_bar, nu, measured, m, n)``: ``y_bar`` and ``nu`` of shape ``(B, M)``
    (``nu = inf`` where ``s_i = 0``), the boolean mask ``s_i > 0``, and the
    dimensions ``M`` of the measurement and ``N`` of the image.  With ``nu_max``,
    components measured more noisily than that (``nu_i > nu_max``, i.e.
    ``s_i < sigma_y / nu_max``) count as unmeasured too.  ``y_bar`` and ``nu`` come in
    ``y``'s dtype, divided in float32 for half precision, where a component whose
    ``y_bar`` overflows (``s_i`` below about ``|w_i| / 65504`` in float16) counts as unmeasured.
    """
    if nu_max is not None and not nu_max > 0:
        raise ValueError(f"nu_max must be positive or None, got {nu_max}")
    w = op.Ut(y)  # (B, M)
    work = accumulation_dtype(w.dtype)
    s = op._s(w).to(work)
    measured = s > 0
    if nu_max is not None:
        measured = measured & (s * nu_max >= sigma_y)
    s_safe = torch.where(measured, s, torch.ones_like(s))
    y_bar = (w.to(work) / s_safe).to(w.dtype)
    if w.dtype in HALF:  # a component whose y_bar overflows the data's dtype counts as unmeasured
        measured = measured & torch.isfinite(y_bar)
    y_bar = torch.where(measured, y_bar, torch.zeros_like(y_bar))
    nu = torch.where(measured, sigma_y / s_safe, torch.full_like(s, float("inf"))).to(w.dtype)
    return y_bar, nu, measured, w.shape[1], op.n_in(y)

def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    iters: int = 50,
    tol: float = 1e-6,
) -> Tensor:
    """Solve ``M x = b`` for a symmetric positive (semi-)definite ``M``, one system per sample.

    ``apply(v) = M v`` acts on batches shaped like ``b`` (images or measurements);
    step sizes are per-sample scalars, and a sample stops updating once
    ``||r_b|| <= tol * ||b_b||``.  Hestenes-Stiefel CG (Nocedal & Wright, Alg. 5.2).
    For half-precision ``b`` the whole iteration runs in float32 (``apply`` sees
    float32 vectors: ``r^T r`` of a 3x128x128 image overflows float16) and the
    solution is returned in ``b``'s dtype.
    """
    dtype, work = b.dtype, accumulation_dtype(b.dtype)
    if work != dtype:
        x = conjugate_gradient(lambda v: apply(v).to(work), b.to(work), None if x0 is None else x0.to(work),
                               iters=iters, tol=tol)  # fmt: skip
        return x.to(dtype)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = bdot(r, r)
    stop = (tol**2) * bdot(b, b)
    for _ in range(iters):
        active = rs > stop
        if not bool(active.any()):
            break
        Ap = apply(p)
        pAp = bdot(p, Ap)
        ok = active & (pAp > 0)
        alpha = torch.where(ok, rs / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(rs))
        x = x + col(alpha, x) * p
        r = r - col(alpha, r) * Ap
        rs_new = bdot(r, r)
        beta = torch.where(ok, rs_new / torch.where(ok, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + col(beta, p) * p
        rs = torch.where(ok, rs_new, rs)
    return x


def ridge_adjoint_solve(
    op: Operator, v: Tensor, lam: float | Tensor, *, cg_iters: int = 50, tol: float = 1e-6
) -> Tensor:
    """``A^T (A A^T + lam I)^-1 v`` for a measurement-shaped ``v``, ``lam >= 0`` a float or ``(B,)``.

    With an SVD it is ``V diag(s / (s^2 + lam)) U^T v``, exact, with 0 on the
    components where ``s = 0`` (so ``lam = 0`` gives ``A^+ v``).  For other linear
    operators, conjugate gradients on ``op(op.adjoint(u)) + lam u = v`` in
    measurement space (``cg_iters`` iterations), then ``A^T u``.  Returns an image.
    Used by PiGDM's guidance and DiffPIR's data step, both of the form
    ``x + A^T (A A^T + lam I)^-1 (y - A x)``.

    Half-precision ``v``: the gains ``s / (s^2 + lam)`` are formed in float32 (``lam``
    may exceed float16's 65504) and applied in ``v``'s dtype between ``U^T`` and ``V``;
    conjugate gradients and ``A^T u`` run in float32.  The image comes back in ``v``'s dtype.
    """
    work = accumulation_dtype(v.dtype)
    if getattr(op, "has_svd", False):
        w = op.Ut(v)  # (B, M)
        s = op._s(w).to(work)
        lam_c = col(lam.to(work) if isinstance(lam, Tensor) else lam, s)
        den = s**2 + lam_c
        keep = (s != 0) & (den > 0)
        coef = torch.where(keep, s / torch.where(keep, den, torch.ones_like(den)), torch.zeros_like(s))
        return op.V(op._pad((coef * w.to(work)).to(v.dtype), op.n_in(v)))
    v_w = v.to(work)
    lam_c = col(lam.to(work) if isinstance(lam, Tensor) else lam, v_w)
    u = conjugate_gradient(lambda q: op(op.adjoint(q)) + lam_c * q, v_w, iters=cg_iters, tol=tol)
    return op.adjoint(u).to(v.dtype)


def operator_norm(op: Operator, x: Tensor, *, iters: int = 20) -> Tensor:
    """Per-sample spectral norm ``||A||`` (``||J_A(x)||`` for a nonlinear ``op``): ``(B,)``.

    Exact from the singulars for SVD operators; otherwise ``iters`` power
    iterations on ``A^T A`` (``J^T J`` at ``x`` through autograd), started from a
    fixed vector, which approach the norm from below.  Returned in
    ``accumulation_dtype(x.dtype)``; for half-precision ``x`` the power iterations run
    in float32 (``||A v||^2`` of a large image overflows float16).
    """
    work = accumulation_dtype(x.dtype)
    if getattr(op, "has_svd", False):
        return op._s(op.Vt(x)).abs().amax(dim=1).to(work)
    x = x.to(work)
    # A fixed, generic start vector (independent of any sampler's generator).
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    if getattr(op, "linear", False):
        normal = lambda q: op.adjoint(op(q))  # noqa: E731
    else:
        x0 = x.detach()

        def normal(q: Tensor) -> Tensor:
            with torch.enable_grad():
                _, jq = torch.autograd.functional.jvp(op, x0, q)
                _, jtjq = torch.autograd.functional.vjp(op, x0, jq)
            return jtjq

    est = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        v = v / col(per_sample_norm(v).clamp_min(torch.finfo(x.dtype).tiny), v)
        w = normal(v)
        est = bdot(v, w).clamp_min(0)  # Rayleigh quotient -> ||A||^2
        v = w
    return est.sqrt()
