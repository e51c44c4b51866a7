"""Exact posteriors for the analytic priors, and scores for samples drawn against them.

With a linear measurement ``y = A x + sigma_y e`` (``A`` a dense ``(M, N)``
matrix, ``e ~ N(0, I)``) the posterior of a Gaussian prior ``N(m, S)`` is
Gaussian (Bishop, PRML, eq. 2.113-2.117, written in gain form)::

    K = A S A^T + sigma_y^2 I,   G = S A^T K^+,
    mean = m + G (y - A m),      cov = (I - G A) S (I - G A)^T + sigma_y^2 G G^T,

where the pseudo-inverse ``K^+`` keeps ``sigma_y = 0`` well defined and the
Joseph form of ``cov`` is symmetric positive semi-definite by construction.  A
Gaussian-mixture prior gives a Gaussian-mixture posterior: each component is
conditioned as above and re-weighted by its evidence ``N(y; A m_k, K_k)``.

All arrays are flattened: images ``(N,)`` in ``(C, H, W)`` order, measurements
``(M,)``; everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .priors import GaussianMixturePrior, GaussianPrior
from .priors.analytic import _root

__all__ = [
    "dense_matrix",
    "gaussian_posterior",
    "gmm_posterior",
    "wasserstein2_gaussian",
    "posterior_report",
    "sqrtm_psd",
]

_F64 = torch.float64


def dense_matrix(
    op: Callable[[Tensor], Tensor],
    x_shape: tuple[int, ...],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """The ``(M, N)`` float64 matrix of a linear ``op`` acting on images of shape ``x_shape``.

    Column ``j`` is ``op(e_j)`` flattened, ``e_j`` the ``j``-th basis image, applied
    ``batch_size`` columns at a time.  ``x_shape`` is ``(C, H, W)`` or ``(1, C, H, W)``;
    a complex output (k-space) is flattened as ``torch.view_as_real`` lays it out
    (real and imaginary parts interleaved).  The operator must treat every item of
    a batch the same way (one mask for the whole batch).
    """
    shape = tuple(int(d) for d in x_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"x_shape must be (C, H, W) or (1, C, H, W), got {tuple(x_shape)}")
    if not getattr(op, "linear", True):
        raise ValueError(f"{type(op).__name__} is not linear: it has no matrix")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = math.prod(shape)

    def flat(y: Tensor, b: int) -> Tensor:
        y = torch.view_as_real(y) if y.is_complex() else y
        return y.reshape(b, -1).to(_F64)

    with torch.no_grad():
        # An affine map would give a wrong matrix silently: insist on A(0) = 0.
        zero = flat(op(torch.zeros(1, *shape, dtype=_F64, device=device)), 1)
        if zero.abs().max() > 0:
            raise ValueError(f"op(0) is not 0 (max |op(0)| = {zero.abs().max().item():.3g}): op is not linear")
        cols = []
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(n, start + batch_size), device=device)
            e = torch.zeros(idx.numel(), n, dtype=_F64, device=device)
            e[torch.arange(idx.numel(), device=device), idx] = 1.0
            cols.append(flat(op(e.reshape(-1, *shape)), idx.numel()))
    return torch.cat(cols, dim=0).mT.contiguous()


def _check_system(A: Tensor, y: Tensor, sigma_y: float, n: int) -> tuple[Tensor, Tensor, float]:
    A = torch.as_tensor(A).detach().to(_F64)
    if A.dim() != 2 or A.shape[1] != n:
        raise ValueError(f"A has shape {tuple(A.shape)} but the prior has N = {n} pixels: give an (M, {n}) matrix")
    y = torch.as_tensor(y).detach().to(device=A.device, dtype=_F64).reshape(-1)
    if y.numel() != A.shape[0]:
        raise ValueError(f"y has {y.numel()} entries but A has M = {A.shape[0]} rows")
    sigma_y = float(sigma_y)
    if not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y must be finite and >= 0, got {sigma_y}")
    return A, y, sigma_y


def _condition(m: Tensor, S: Tensor, A: Tensor, y: Tensor, sigma_y: float) -> tuple[Tensor, Tensor, Tensor]:
    """Condition ``N(m, S)`` on ``y = A x + sigma_y e``: ``(mean (N,), cov (N, N), log N(y; A m, K))``.

    The evidence uses the pseudo-determinant and ``K^+`` on the range of ``K``
    when ``K`` is singular (``sigma_y = 0``).
    """
    n, mm = S.shape[0], A.shape[0]
    AS = A @ S  # (M, N)
    K = AS @ A.mT + sigma_y**2 * torch.eye(mm, dtype=_F64, device=A.device)
    e, P = torch.linalg.eigh(0.5 * (K + K.mT))
    # Eigenvalues below max(M, N) * eps * |K| are rounding noise: K^+ inverts the rest.
    keep = e > max(mm, n) * torch.finfo(_F64).eps * e.abs().max()
    inv_e = torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))
    r = y - A @ m  # innovation
    Pr = P.mT @ r
    G = (AS.mT @ P) * inv_e  # gain S A^T K^+ = G P^T, kept in K's eigenbasis: (N, M)
    mean = m + G @ Pr
    IGA = torch.eye(n, dtype=_F64, device=A.device) - G @ (P.mT @ A)
    cov = IGA @ S @ IGA.mT + sigma_y**2 * (G @ G.mT)  # Joseph form
    log_ev = -0.5 * ((Pr**2 * inv_e).sum() + torch.log(e[keep]).sum() + keep.sum() * math.log(2 * math.pi))
    return mean, 0.5 * (cov + cov.mT), log_ev


def gaussian_posterior(prior: GaussianPrior, A: Tensor, y: Tensor, sigma_y: float) -> tuple[Tensor, Tensor]:
    """Exact posterior ``p(x | y)`` of a ``GaussianPrior`` under ``y = A x + sigma_y e``.

    ``A``: ``(M, N)``; ``y``: ``M`` entries (any shape) -> ``mean (N,)``, ``cov (N, N)``, float64.
    """
    if not isinstance(prior, GaussianPrior):
        raise ValueError(f"gaussian_posterior needs a GaussianPrior, got {type(prior).__name__}")
    A, y, sigma_y = _check_system(A, y, sigma_y, prior.n)
    m, S = prior.mean.to(A), prior.cov.to(A)
    mean, cov, _ = _condition(m, S, A, y, sigma_y)
    return mean, cov


def gmm_posterior(
    prior: GaussianMixturePrior, A: Tensor, y: Tensor, sigma_y: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact posterior of a ``GaussianMixturePrior``: a mixture with weights ``~ pi_k N(y; A m_k, K_k)``.

    ``A``: ``(M, N)``; ``y``: ``M`` entries -> ``weights (K,)``, ``means (K, N)``, ``covs (K, N, N)``.
    """
    if not isinstance(prior, GaussianMixturePrior):
        raise ValueError(f"gmm_posterior needs a GaussianMixturePrior, got {type(prior).__name__}")
    A, y, sigma_y = _check_system(A, y, sigma_y, prior.n)
    covs = prior.covs.to(A)
    parts = [_condition(prior.means[k].to(A), covs[k], A, y, sigma_y) for k in range(covs.shape[0])]
    log_w = torch.log(prior.weights.to(A)) + torch.stack([p[2] for p in parts])
    return (
        torch.softmax(log_w, dim=0),
        torch.stack([p[0] for p in parts]),
        torch.stack([p[1] for p in parts]),
    )


def sqrtm_psd(C: Tensor) -> Tensor:
    """Symmetric square root ``(N, N)`` of a PSD matrix (negative rounding eigenvalues set to 0).

    ``m + z @ sqrtm_psd(C)`` draws ``N(m, C)`` the same way whichever eigenvector signs ``eigh`` returns.
    """
    lam, Q = torch.linalg.eigh(0.5 * (C + C.mT))
    return _root(lam, Q)  # the priors' draws use the same root


def wasserstein2_gaussian(m1: Tensor, C1: Tensor, m2: Tensor, C2: Tensor) -> float:
    """2-Wasserstein distance between ``N(m1, C1)`` and ``N(m2, C2)`` (Givens & Shortt 1984, Prop. 7).

    ``W2^2 = |m1 - m2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)``; means ``(N,)``,
    covariances ``(N, N)`` symmetric PSD (symmetrised here), computed in float64
    through eigendecompositions.
    """
    m1, m2 = (torch.as_tensor(v).detach().to(_F64).reshape(-1) for v in (m1, m2))
    C1, C2 = (torch.as_tensor(v).detach().to(device=m1.device, dtype=_F64) for v in (C1, C2))
    m2 = m2.to(m1.device)
    n = m1.numel()
    if m2.numel() != n or C1.shape != (n, n) or C2.shape != (n, n):
        raise ValueError(
            f"shapes do not match: means {n} and {m2.numel()} entries, covariances "
            f"{tuple(C1.shape)} and {tuple(C2.shape)}; need (N,), (N, N) twice"
        )
    r1 = sqrtm_psd(C1)
    cross = torch.linalg.eigvalsh(0.5 * ((r1 @ C2 @ r1) + (r1 @ C2 @ r1).mT)).clamp_min(0).sqrt().sum()
    w2sq = ((m1 - m2) ** 2).sum() + torch.trace(C1) + torch.trace(C2) - 2 * cross
    return math.sqrt(max(w2sq.item(), 0.0))


def posterior_report(samples: Tensor, mean: Tensor, cov: Tensor) -> dict[str, float]:
    """Compare ``S`` samples ``(S, N)`` or ``(S, C, H, W)`` with the exact Gaussian posterior ``N(mean, cov)``.

    Returns:
        ``mean_err_max_se``, ``mean_err_rms_se``: ``|sample mean - mean|`` in Monte-Carlo
            standard errors ``sqrt(cov_ii / S)``, max and rms over pixels (an exact
            sampler gives rms ~ 1 and max ~ sqrt(2 log N)).
        ``var_ratio_median``, ``var_ratio_min``, ``var_ratio_max``: sample variance over
            ``cov_ii`` (1 for an exact sampler, ``+- sqrt(2 / S)`` each).
        ``w2``: 2-Wasserstein distance between ``N(sample mean, sample cov)`` and the
            exact posterior (biased upwards by finite ``S``); ``w2_rel``: ``w2 / sqrt(tr cov)``.
        ``n_samples``.
    Pixels with (numerically) zero posterior variance, i.e. measured exactly, are
    left out of the per-pixel scores.
    """
    x = torch.as_tensor(samples).detach().to(_F64)
    mean = torch.as_tensor(mean).detach().to(device=x.device, dtype=_F64).reshape(-1)
    cov = torch.as_tensor(cov).detach().to(device=x.device, dtype=_F64)
    s = x.shape[0]
    x = x.reshape(s, -1)
    n = x.shape[1]
    if s < 2:
        raise ValueError(f"need at least 2 samples, got {s}")
    if mean.numel() != n or cov.shape != (n, n):
        raise ValueError(
            f"samples have N = {n} pixels but mean has {mean.numel()} entries and cov is {tuple(cov.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf")
    emp_mean = x.mean(0)
    emp_cov = torch.cov(x.mT)
    var = torch.diagonal(cov)
    ok = var > 1e-12 * var.max().clamp_min(1e-300)  # exactly measured pixels have no spread
    if not ok.any():
        raise ValueError("the posterior has no pixel with positive variance: nothing to score")
    z = ((emp_mean - mean)[ok] / (var[ok] / s).sqrt()).abs()
    ratio = torch.diagonal(emp_cov)[ok] / var[ok]
    w2 = wasserstein2_gaussian(emp_mean, emp_cov, mean, cov)
    return {
        "mean_err_max_se": z.max().item(),
        "mean_err_rms_se": z.pow(2).mean().sqrt().item(),
        "var_ratio_median": ratio.median().item(),
        "var_ratio_min": ratio.min().item(),
        "var_ratio_max": ratio.max().item(),
        "w2": w2,
        "w2_rel": w2 / math.sqrt(max(torch.trace(cov).item(), 1e-300)),
        "n_samples": float(s),
    }
