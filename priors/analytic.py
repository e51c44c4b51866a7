"""Analytic priors with exact denoisers: a Gaussian and a Gaussian mixture over images.

For ``x0 ~ N(m, S)`` and ``x = x0 + sigma n`` the denoiser is the Wiener filter
(Tweedie's formula for a Gaussian)::

    E[x0 | x] = m + S (S + sigma^2 I)^-1 (x - m) = m + Q diag(lam / (lam + sigma^2)) Q^T (x - m)

with ``S = Q diag(lam) Q^T`` factored once, so every ``sigma`` (scalar or one per
image) costs two matrix products.  A mixture ``sum_k pi_k N(m_k, S_k)`` has::

    E[x0 | x] = sum_k w_k(x) (m_k + S_k (S_k + sigma^2 I)^-1 (x - m_k)),
    w_k(x) proportional to pi_k N(x; m_k, S_k + sigma^2 I).

Because the posterior of either prior under a linear-Gaussian measurement is
known in closed form (``invdiff.exact``), samplers can be checked against it.

Images are flattened in ``(C, H, W)`` order to vectors of length ``N = C*H*W``.
Everything is stored and computed in float64; ``denoise`` answers in ``x``'s dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Prior, as_sigma

__all__ = ["GaussianPrior", "GaussianMixturePrior"]

_F64 = torch.float64


# -- parsing helpers ------------------------------------------------------------------------------


def _image_shape(shape: tuple[int, ...] | torch.Size | None, what: str) -> tuple[int, int, int]:
    if shape is None or len(shape) != 3 or any(int(d) < 1 for d in shape):
        raise ValueError(f"{what} must be an image shape (C, H, W), got {shape}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def _as_f64(t: Tensor | float, what: str) -> Tensor:
    t = torch.as_tensor(t)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{what} must be a real tensor, got dtype {t.dtype}")
    t = t.detach().to(_F64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf")
    return t


def _parse_means(
    mean: Tensor | float, shape: tuple[int, ...] | None, lead: tuple[int, ...], what: str
) -> tuple[Tensor, tuple[int, int, int]]:
    """``mean`` of shape ``(*lead, C, H, W)`` or ``(*lead, N)`` (with ``shape``) -> ``(*lead, N)``."""
    mean = _as_f64(mean, what)
    if mean.dim() == len(lead) + 3 and shape is None:
        shape = tuple(mean.shape[len(lead):])
    if shape is None:
        raise ValueError(f"{what} has shape {tuple(mean.shape)}: give shape=(C, H, W) for a flattened {what}")
    img = _image_shape(shape, "shape")
    n = math.prod(img)
    if mean.dim() == 0:
        return mean.expand(*lead, n).clone(), img
    if tuple(mean.shape) == (*lead, *img) or tuple(mean.shape) == (*lead, n):
        return mean.reshape(*lead, n).clone(), img
    raise ValueError(
        f"{what} has shape {tuple(mean.shape)} but the images are {img}: "
        f"give {(*lead, *img)} or {(*lead, n)}"
    )


def _factor_cov(
    cov: Tensor, img: tuple[int, int, int], lead: tuple[int, ...], what: str
) -> tuple[Tensor | None, Tensor]:
    """Full ``(*lead, N, N)`` or diagonal ``(*lead, N)`` / ``(*lead, C, H, W)`` covariance -> ``(Q, lam)``.

    ``Q`` is ``(*lead, N, N)`` orthogonal (``None`` for a diagonal covariance) and
    ``lam`` the ``(*lead, N)`` eigenvalues, clipped at 0 where rounding made them
    slightly negative.
    """
    dtype_in = torch.as_tensor(cov).dtype
    cov = _as_f64(cov, what)
    n = math.prod(img)
    if tuple(cov.shape) in ((*lead, n), (*lead, *img)):
        lam = cov.reshape(*lead, n)
        if (lam < 0).any():
            raise ValueError(f"{what} (a diagonal of variances) has negative entries, min {lam.min().item():.3g}")
        return None, lam.clone()
    if tuple(cov.shape) != (*lead, n, n):
        raise ValueError(
            f"{what} has shape {tuple(cov.shape)}: give a full {(*lead, n, n)} matrix "
            f"or a diagonal of shape {(*lead, n)} or {(*lead, *img)}"
        )
    scale = cov.abs().amax().clamp_min(1e-300)
    eps = torch.finfo(dtype_in).eps if dtype_in.is_floating_point else torch.finfo(_F64).eps
    if (cov - cov.mT).abs().amax() > 100 * eps * scale:
        raise ValueError(f"{what} is not symmetric (max |S - S^T| = {(cov - cov.mT).abs().amax().item():.3g})")
    lam, Q = torch.linalg.eigh(0.5 * (cov + cov.mT))
    # Rounding leaves eigenvalues of order N * eps * |S| on either side of 0: those count as 0.
    tol = n * eps * lam.abs().amax(-1, keepdim=True)
    if (lam < -tol).any():
        raise ValueError(
            f"{what} is not positive semi-definite: smallest eigenvalue {lam.min().item():.3g}"
        )
    return Q, lam.clamp_min(0)


def _noise_var(sigma: float | Tensor, xf: Tensor) -> Tensor:
    """``sigma`` (float or ``(B,)``) -> ``sigma^2`` as a ``(B, 1)`` float64 column, checked."""
    s = as_sigma(sigma, xf)
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"sigma must be finite and >= 0, got min {s.min().item():.3g}")
    return s**2


def _flatten(x: Tensor, img: tuple[int, int, int]) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, N)`` float64, checking the image shape."""
    if x.dim() != 4 or tuple(x.shape[1:]) != img:
        c, h, w = img
        raise ValueError(f"x has shape {tuple(x.shape)} but the prior is for images of shape (B, {c}, {h}, {w})")
    return x.reshape(x.shape[0], -1).to(_F64)


def _shrink(lam: Tensor, s2: Tensor) -> Tensor:
    """Wiener gains ``lam / (lam + sigma^2)``; 1 where both vanish (at ``sigma = 0``, ``E[x0 | x] = x``)."""
    den = lam + s2
    pos = den > 0
    return torch.where(pos, lam / torch.where(pos, den, torch.ones_like(den)), torch.ones_like(den))


def _draw(n: int, d: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``(n, d)`` standard normals from ``generator`` (on its device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(n, d, generator=generator, device=gen_device, dtype=_F64).to(device)


def _root(lam: Tensor, Q: Tensor) -> Tensor:
    """The symmetric square root ``Q diag(sqrt(lam)) Q^T`` ``(N, N)`` of ``Q diag(lam) Q^T``: unlike
    ``Q diag(sqrt(lam))`` it is the same whichever eigenvector signs and repeated-eigenvalue basis ``eigh`` gave."""
    r = (Q * lam.clamp_min(0).sqrt()) @ Q.mT
    return 0.5 * (r + r.mT)


def _default_sigmas(lam: Tensor, means: Tensor) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` from the data scale ``max(sqrt(max lam), max |m|)``.

    ``sigma_max = 20 * scale`` makes ``N(0, sigma_max^2 I)`` a close stand-in for
    the noisy marginal at the start of sampling (its covariance is at most
    ``1.0025 sigma_max^2 I`` and the mean is 1/20 of a standard deviation);
    ``sigma_min = 0.002 * scale`` as in EDM for unit-scale data.
    """
    scale = max(lam.max().sqrt().item(), means.abs().max().item(), 1e-12)
    return 0.002 * scale, 20.0 * scale


def _set_range(prior: Prior, data_range, sigma_min, sigma_max, lo_hi: tuple[float, float]) -> None:
    prior.sigma_min = float(sigma_min) if sigma_min is not None else lo_hi[0]
    prior.sigma_max = float(sigma_max) if sigma_max is not None else lo_hi[1]
    if not 0 < prior.sigma_min < prior.sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {prior.sigma_min} and {prior.sigma_max}")
    prior.data_range = (-math.inf, math.inf) if data_range is None else (float(data_range[0]), float(data_range[1]))


def _se_kernel(img: tuple[int, int, int], length_scale: float, variance: float, jitter: float) -> Tensor:
    """Squared-exponential covariance over pixel positions, channels independent: ``(N, N)``."""
    if length_scale <= 0 or variance <= 0 or jitter < 0:
        raise ValueError(
            f"need length_scale > 0, variance > 0, jitter >= 0; got {length_scale}, {variance}, {jitter}"
        )
    c, h, w = img
    hh, ww = torch.meshgrid(torch.arange(h, dtype=_F64), torch.arange(w, dtype=_F64), indexing="ij")
    p = torch.stack([hh.flatten(), ww.flatten()], dim=1)  # (H*W, 2)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)  # squared pixel distances
    k = variance * torch.exp(-d2 / (2 * length_scale**2))
    k = k + jitter * variance * torch.eye(h * w, dtype=_F64)
    return torch.kron(torch.eye(c, dtype=_F64), k)


# -- the priors -----------------------------------------------------------------------------------


class GaussianPrior(Prior):
    """``x0 ~ N(mean, cov)`` over ``(C, H, W)`` images, with the exact denoiser (Wiener filter).

    Args:
        mean: ``(C, H, W)``, or ``(N,)`` / a float together with ``shape``.
        cov: full ``(N, N)`` symmetric positive semi-definite matrix, or a diagonal of
            variances as ``(N,)`` or ``(C, H, W)``.
        shape: the image shape ``(C, H, W)`` when ``mean`` does not give it.
        data_range: ``(lo, hi)`` of clean data; default ``(-inf, inf)`` so samplers do not clip.
        sigma_min, sigma_max: noise range; default ``0.002`` and ``20`` times
            ``max(sqrt(largest eigenvalue), max |mean|)``.

    Buffers (float64): ``mean`` ``(N,)``; ``eigvals`` ``(N,)``; ``eigvecs`` ``(N, N)``
    (``None`` for a diagonal covariance).  ``cov`` gives the dense ``(N, N)`` matrix.
    """

    def __init__(
        self,
        mean: Tensor | float,
        cov: Tensor,
        shape: tuple[int, int, int] | None = None,
        *,
        data_range: tuple[float, float] | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ) -> None:
        super().__init__()
        m, self.shape = _parse_means(mean, shape, (), "mean")
        Q, lam = _factor_cov(cov, self.shape, (), "cov")
        self.register_buffer("mean", m)
        self.register_buffer("eigvals", lam)
        self.register_buffer("eigvecs", Q)
        _set_range(self, data_range, sigma_min, sigma_max, _default_sigmas(lam, m))

    @classmethod
    def smooth(
        cls,
        shape: tuple[int, int, int],
        length_scale: float = 2.0,
        variance: float = 0.04,
        mean: float | Tensor = 0.5,
        *,
        jitter: float = 1e-4,
        **kwargs,
    ) -> "GaussianPrior":
        """Stationary squared-exponential prior: ``cov[p, q] = variance * exp(-|p - q|^2 / (2 length_scale^2))``.

        Pixel positions ``p, q`` are ``(h, w)`` grid coordinates; channels are
        independent; ``jitter * variance`` on the diagonal keeps the covariance
        well conditioned (the kernel alone is numerically singular).
        """
        img = _image_shape(shape, "shape")
        return cls(mean, _se_kernel(img, length_scale, variance, jitter), img, **kwargs)

    @property
    def n(self) -> int:
        """Dimension ``N = C*H*W``."""
        return self.mean.shape[0]

    def data_mean(self) -> Tensor:
        """The prior's mean ``(C, H, W)``, float64."""
        return self.mean.reshape(self.shape)

    @property
    def cov(self) -> Tensor:
        """Dense ``(N, N)`` float64 covariance ``Q diag(lam) Q^T`` (as used by ``denoise``)."""
        if self.eigvecs is None:
            return torch.diag(self.eigvals)
        c = (self.eigvecs * self.eigvals) @ self.eigvecs.mT
        return 0.5 * (c + c.mT)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact ``E[x0 | x]``: ``x`` ``(B, C, H, W)``, ``sigma`` float or ``(B,)`` -> ``(B, C, H, W)``."""
        xf = _flatten(x, self.shape)
        s2 = _noise_var(sigma, xf)  # (B, 1)
        m = self.mean.to(xf)
        lam, Q = self.eigvals.to(xf), self.eigvecs
        gain = _shrink(lam, s2)  # (B, N): lam / (lam + sigma^2)
        if Q is None:
            x0 = m + gain * (xf - m)
        else:
            Q = Q.to(xf)
            # m + Q diag(gain) Q^T (x - m), rows of xf as vectors.
            x0 = m + (gain * ((xf - m) @ Q)) @ Q.mT
        return x0.reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """``log N(x; mean, cov + sigma^2 I)``, the noisy marginal: ``(B, C, H, W)`` -> ``(B,)``."""
        xf = _flatten(x, self.shape)
        var = self.eigvals.to(xf) + _noise_var(sigma, xf)  # (B, N)
        if (var <= 0).any():
            raise ValueError("log_prob needs sigma > 0 when the covariance is singular")
        z = xf - self.mean.to(xf)
        if self.eigvecs is not None:
            z = z @ self.eigvecs.to(xf)
        lp = -0.5 * (z**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return lp.to(x.dtype)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """``n`` draws ``mean + cov^(1/2) z`` -> ``(n, C, H, W)`` (float64 maths, ``dtype`` out).

        ``cov^(1/2)`` is the symmetric root ``Q diag(sqrt(lam)) Q^T``, which does not depend on the signs
        ``eigh`` gives the eigenvectors or on the basis it picks where eigenvalues repeat (a stationary
        covariance's do): a seed gives the same images on every machine, up to rounding.
        """
        z = _draw(n, self.n, generator, self.mean.device)
        lam, Q = self.eigvals.to(z), None if self.eigvecs is None else self.eigvecs.to(z)
        x = self.mean.to(z) + (z * lam.sqrt() if Q is None else z @ _root(lam, Q))
        return x.reshape(n, *self.shape).to(dtype or torch.get_default_dtype())

    def extra_repr(self) -> str:
        kind = "diagonal" if self.eigvecs is None else "full"
        return f"shape={self.shape}, cov={kind}, sigma_min={self.sigma_min:.3g}, sigma_max={self.sigma_max:.3g}"


class GaussianMixturePrior(Prior):
    """``x0 ~ sum_k pi_k N(m_k, S_k)`` over ``(C, H, W)`` images, with the exact denoiser.

    Args:
        weights: ``(K,)`` non-negative mixing weights (normalised to sum to 1).
        means: ``(K, C, H, W)``, or ``(K, N)`` together with ``shape``.
        covs: full ``(K, N, N)`` or diagonal ``(K, N)`` / ``(K, C, H, W)``.
        shape, data_range, sigma_min, sigma_max: as for ``GaussianPrior`` (the
            data scale is taken over all components).

    Buffers (float64): ``weights`` ``(K,)``, ``means`` ``(K, N)``, ``eigvals``
    ``(K, N)``, ``eigvecs`` ``(K, N, N)`` or ``None``.  ``covs`` gives ``(K, N, N)``.
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covs: Tensor,
        shape: tuple[int, int, int] | None = None,
        *,
        data_range: tuple[float, float] | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ) -> None:
        super().__init__()
        w = _as_f64(weights, "weights")
        if w.dim() != 1 or w.numel() < 1:
            raise ValueError(f"weights must have shape (K,), got {tuple(w.shape)}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
        k = w.shape[0]
        m, self.shape = _parse_means(means, shape, (k,), "means")
        Q, lam = _factor_cov(covs, self.shape, (k,), "covs")
        self.register_buffer("weights", w / w.sum())
        self.register_buffer("means", m)
        self.register_buffer("eigvals", lam)
        self.register_buffer("eigvecs", Q)
        _set_range(self, data_range, sigma_min, sigma_max, _default_sigmas(lam, m))

    @classmethod
    def smooth(
        cls,
        shape: tuple[int, int, int],
        levels: tuple[float, ...] = (0.3, 0.7),
        length_scale: float = 2.0,
        variance: float = 0.01,
        weights: Tensor | None = None,
        *,
        jitter: float = 1e-4,
        **kwargs,
    ) -> "GaussianMixturePrior":
        """One ``GaussianPrior.smooth`` component per grey level in ``levels`` (same covariance): a multimodal prior."""
        img = _image_shape(shape, "shape")
        k = len(levels)
        cov = _se_kernel(img, length_scale, variance, jitter)
        w = torch.full((k,), 1.0 / k, dtype=_F64) if weights is None else weights
        means = torch.tensor(levels, dtype=_F64)[:, None].expand(k, math.prod(img))
        return cls(w, means, cov.expand(k, -1, -1), img, **kwargs)

    @property
    def n(self) -> int:
        """Dimension ``N = C*H*W``."""
        return self.means.shape[1]

    def data_mean(self) -> Tensor:
        """The mixture's mean ``sum_k pi_k m_k``, ``(C, H, W)``, float64."""
        return (self.weights @ self.means).reshape(self.shape)

    @property
    def covs(self) -> Tensor:
        """Dense ``(K, N, N)`` float64 component covariances."""
        if self.eigvecs is None:
            return torch.diag_embed(self.eigvals)
        c = (self.eigvecs * self.eigvals[:, None, :]) @ self.eigvecs.mT
        return 0.5 * (c + c.mT)

    def _components(self, xf: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        """Log responsibilities ``(B, K)`` (unnormalised) and component posterior means ``(B, K, N)``."""
        m, lam = self.means.to(xf), self.eigvals.to(xf)
        Q = None if self.eigvecs is None else self.eigvecs.to(xf)
        u = xf[:, None, :] - m  # (B, K, N)
        z = u if Q is None else torch.einsum("bkn,knj->bkj", u, Q)  # Q_k^T (x - m_k)
        var = lam + s2[:, :, None]  # eigenvalues of S_k + sigma^2 I: (B, K, N)
        # log pi_k + log N(x; m_k, S_k + sigma^2 I), dropping the shared -N/2 log(2 pi).
        log_w = torch.log(self.weights.to(xf)) - 0.5 * (z**2 / var + torch.log(var)).sum(-1)
        # m_k + Q_k diag(lam / (lam + sigma^2)) Q_k^T (x - m_k)
        post = lam / var * z
        post = post if Q is None else torch.einsum("bkj,knj->bkn", post, Q)
        return log_w, m + post

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact ``E[x0 | x]``: ``x`` ``(B, C, H, W)``, ``sigma`` float or ``(B,)`` -> ``(B, C, H, W)``."""
        xf = _flatten(x, self.shape)
        s2 = _noise_var(sigma, xf)
        zero = s2 == 0
        # At sigma = 0, E[x0 | x] = x; use a harmless stand-in level there so nothing is 0/0.
        log_w, x0_k = self._components(xf, torch.where(zero, torch.ones_like(s2), s2))
        w = torch.softmax(log_w, dim=1)  # responsibilities w_k(x, sigma)
        x0 = torch.where(zero, xf, (w[:, :, None] * x0_k).sum(1))
        return x0.reshape(x.shape).to(x.dtype)

    def responsibilities(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``w_k(x, sigma) = P(component k | x)``: ``(B, C, H, W)`` -> ``(B, K)`` (``sigma`` > 0)."""
        xf = _flatten(x, self.shape)
        s2 = _noise_var(sigma, xf)
        return torch.softmax(self._components(xf, s2)[0], dim=1).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """``log sum_k pi_k N(x; m_k, S_k + sigma^2 I)``: ``(B, C, H, W)`` -> ``(B,)``."""
        xf = _flatten(x, self.shape)
        s2 = _noise_var(sigma, xf)
        if (self.eigvals.to(xf)[None] + s2[:, :, None] <= 0).any():
            raise ValueError("log_prob needs sigma > 0 when a covariance is singular")
        log_w, _ = self._components(xf, s2)
        return (torch.logsumexp(log_w, dim=1) - 0.5 * self.n * math.log(2 * math.pi)).to(x.dtype)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """``n`` draws: a component ``k ~ pi``, then ``m_k + S_k^(1/2) z`` -> ``(n, C, H, W)`` (the symmetric
        root, as ``GaussianPrior.sample``: the same images on every machine)."""
        device = self.means.device
        gen_device = generator.device if generator is not None else device
        k = torch.multinomial(self.weights.to(gen_device), n, replacement=True, generator=generator).to(device)
        z = _draw(n, self.n, generator, device)
        means, lam = self.means.to(z), self.eigvals.to(z)
        if self.eigvecs is None:
            x = means[k] + z * lam[k].sqrt()
        else:
            Q = self.eigvecs.to(z)
            x = torch.empty_like(z)
            for j in range(self.weights.shape[0]):  # one matrix product per component
                sel = k == j
                if sel.any():
                    x[sel] = means[j] + z[sel] @ _root(lam[j], Q[j])
        return x.reshape(n, *self.shape).to(dtype or torch.get_default_dtype())

    def extra_repr(self) -> str:
        kind = "diagonal" if self.eigvecs is None else "full"
        return (
            f"K={self.weights.shape[0]}, shape={self.shape}, covs={kind}, "
            f"sigma_min={self.sigma_min:.3g}, sigma_max={self.sigma_max:.3g}"
        )
