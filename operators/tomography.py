"""Parallel-beam tomography (Radon transform) with an exact adjoint, and filtered back-projection.

The projector is pixel-driven: for each angle ``theta`` the pixel centred at
``(u, v)`` (column and row coordinates about the image centre, ``v`` up) lands
on the detector at ``t = u cos(theta) + v sin(theta)`` and its value is split
between the two nearest detector bins by linear interpolation.  The forward is
an explicit scatter-add with these weights and the adjoint (back-projection)
the gather with the same weights, so ``<A x, y> = <x, A^T y>`` holds to float
precision.  Units: one pixel = one detector bin, so a projection approximates
the line integral in pixel units.  The sinogram is ``(B, C, n_detectors,
n_angles)`` as in scikit-image's ``radon``.

Views spread evenly over ``[0, arc)`` degrees: ``arc = 180`` is a full
parallel-beam scan (sparse-view CT with few views), ``arc < 180`` a
limited-angle scan with a missing wedge.  ``TomographySVD`` is the same
operator through a dense SVD, computed once per geometry, for the samplers
that need one (DDRM, DDNM) at small sizes.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import Tensor

from ._shape import ShapedSVDOperator, fmt, require_image
from .base import LinearOperator

#: half-precision dtypes: their sums over lines and matrix products run in float32
_HALF = (torch.float16, torch.bfloat16)


def _matmul(a: Tensor, m: Tensor) -> Tensor:
    """``a @ m`` in ``a``'s dtype, accumulated in float32 when ``a`` is half precision (``m`` cast to match)."""
    work = torch.float32 if a.dtype in _HALF else a.dtype
    return (a.to(work) @ m.to(work)).to(a.dtype)


class Tomography(LinearOperator):
    """Parallel-beam Radon transform: ``(B, C, H, W) -> (B, C, n_detectors, n_angles)``.

    Args:
        angles: number of views evenly spread over ``[0, arc)`` degrees, or a 1-D
            tensor of angles in degrees.
        image_size: ``H`` (square) or ``(H, W)``.
        n_detectors: detector bins; default ``ceil(sqrt(H^2 + W^2))`` so that
            every pixel is seen at every angle.
        arc: angular range in degrees of the evenly spread views: 180 for a full
            parallel-beam scan, less for limited-angle CT (e.g. 90); ignored when
            ``angles`` is a tensor.
        scale: factor on every line integral (the adjoint carries it too): the pixel
            size for physical units, or ``1 / ||A||`` for an operator of norm 1, the
            units in which the samplers' default step sizes are set
            (``invdiff.medical.ct.ct_operator`` normalises so).
    """

    angles: Tensor

    def __init__(
        self,
        angles: int | Tensor,
        image_size: int | tuple[int, int],
        n_detectors: int | None = None,
        arc: float = 180.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(angles, bool):
            raise ValueError(f"angles must be a number of views or a 1-D tensor of degrees, got {angles!r}")
        if isinstance(angles, int):
            if angles < 1:
                raise ValueError(f"angles must be a positive number of views, got {angles}")
            if not 0 < arc <= 180:
                raise ValueError(
                    f"arc is the angular range in degrees and must be in (0, 180] (parallel beams repeat "
                    f"after 180), got {arc}"
                )
            angles = torch.arange(angles, dtype=torch.float64) * (float(arc) / angles)
        angles = torch.as_tensor(angles, dtype=torch.float64)
        if angles.dim() != 1 or angles.numel() == 0:
            raise ValueError(f"angles must be an int or a 1-D tensor of degrees, got shape {fmt(angles.shape)}")
        if not torch.isfinite(angles).all():
            raise ValueError("angles contains NaN or inf")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.image_size = (int(h), int(w))
        self.n_detectors = int(n_detectors) if n_detectors is not None else math.ceil(math.hypot(h, w))
        if min(h, w) < 1 or self.n_detectors < 1:
            raise ValueError(f"image_size and n_detectors must be positive, got {(h, w)} and {self.n_detectors}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        self.scale = float(scale)
        self.register_buffer("angles", angles)
        self._geometry_cache: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    @property
    def n_angles(self) -> int:
        return self.angles.numel()

    @property
    def view_weights(self) -> Tensor:
        """``(n_angles,)`` angular width of each view in radians, the quadrature weights of the back-projection.

        Each view owns half the gap to its neighbours on the 180-degree circle of
        parallel-beam directions, each half capped at half the median gap, so the
        weights are ``pi / n`` for views evenly spread over 180 degrees and
        ``arc / n`` over a limited arc (the missing wedge gets no weight).
        """
        theta = torch.remainder(self.angles.detach().cpu().to(torch.float64), 180.0)
        if theta.numel() == 1:
            return torch.full((1,), math.pi, dtype=torch.float64)
        order = torch.argsort(theta)
        sorted_ = theta[order]
        gaps = torch.diff(torch.cat([sorted_, sorted_[:1] + 180.0]))  # gap to the next view, circularly
        cap = gaps.median()
        half = torch.minimum(gaps, cap) / 2
        width = half + torch.roll(half, 1)  # own half of the next gap + of the previous gap
        out = torch.empty_like(width)
        out[order] = width
        return torch.deg2rad(out)

    def geometry_key(self) -> str:
        """A hash of the geometry (angles, image size, detectors): equal keys mean equal matrices."""
        h = hashlib.sha256()
        h.update(self.angles.detach().cpu().to(torch.float64).numpy().tobytes())
        h.update(repr((self.image_size, self.n_detectors, self.scale)).encode())
        return h.hexdigest()[:24]

    def matrix(self) -> Tensor:
        """The dense ``(n_angles * n_detectors, H * W)`` float64 matrix of one channel.

        Rows are sinogram bins in the order ``angle * n_detectors + detector``,
        columns pixels in row-major order, so ``A @ x.flatten()`` equals
        ``forward(x)[0, 0].T.flatten()``.
        """
        h, w = self.image_size
        index_lo, index_hi, w_lo, w_hi = self._geometry(torch.float64, torch.device("cpu"))
        a = torch.zeros(self.n_angles * self.n_detectors, h * w, dtype=torch.float64)
        pixels = torch.arange(h * w).repeat(self.n_angles)
        a.index_put_((index_lo.reshape(-1), pixels), w_lo.reshape(-1), accumulate=True)
        a.index_put_((index_hi.reshape(-1), pixels), w_hi.reshape(-1), accumulate=True)
        return a * self.scale

    def svd(self, rtol: float = 1e-5, cache_dir: str | Path | None = None) -> "TomographySVD":
        """This geometry as an SVD operator (dense SVD, see ``TomographySVD``)."""
        return TomographySVD(self, rtol=rtol, cache_dir=cache_dir)

    def _apply(self, fn, *args, **kwargs):
        self._geometry_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # -- shapes --------------------------------------------------------------
    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "Tomography")
        if tuple(shape[2:]) != self.image_size:
            raise ValueError(f"Tomography was built for {fmt(self.image_size)} images but the image is {fmt(shape)}")

    def _check_y(self, y: Tensor) -> None:
        shape = require_image(y.shape, "Tomography")
        if tuple(shape[2:]) != (self.n_detectors, self.n_angles):
            raise ValueError(
                f"sinogram has shape {fmt(shape)} but this Tomography gives "
                f"(B, C, {self.n_detectors}, {self.n_angles}) (n_detectors, n_angles)"
            )

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        self._check_y(y)
        return (y.shape[0], y.shape[1], *self.image_size)

    # -- geometry ------------------------------------------------------------
    def _geometry(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(index_lo, index_hi, weight_lo, weight_hi)``, each ``(A, H*W)``: flat sinogram bins and weights."""
        key = (dtype, device)
        if key not in self._geometry_cache:
            h, w = self.image_size
            d = self.n_detectors
            theta = torch.deg2rad(self.angles.to(device=device, dtype=torch.float64))
            u = (torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2).repeat(h)
            v = ((h - 1) / 2 - torch.arange(h, device=device, dtype=torch.float64)).repeat_interleave(w)
            # detector position in bins (0 .. d - 1 at the bin centres)
            t = torch.cos(theta)[:, None] * u + torch.sin(theta)[:, None] * v + (d - 1) / 2
            lo = t.floor()
            frac = t - lo
            lo = lo.long()
            hi = lo + 1
            # linear interpolation weights, zero for bins off the detector
            w_lo = torch.where((lo >= 0) & (lo < d), 1 - frac, torch.zeros_like(frac))
            w_hi = torch.where((hi >= 0) & (hi < d), frac, torch.zeros_like(frac))
            row = torch.arange(self.n_angles, device=device)[:, None] * d
            self._geometry_cache[key] = (
                row + lo.clamp(0, d - 1),
                row + hi.clamp(0, d - 1),
                w_lo.to(dtype),
                w_hi.to(dtype),
            )
        return self._geometry_cache[key]

    # -- operator --------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Radon transform (Kak & Slaney 1988, eq. 3.1), pixel-driven with linear interpolation.

        Half-precision ``x`` is summed in float32 (each bin adds up a whole line of
        pixels) and the sinogram returned in ``x``'s dtype.
        """
        self.check(x.shape)
        if x.dtype in _HALF:
            return self.forward(x.float()).to(x.dtype)
        b, c, h, w = x.shape
        index_lo, index_hi, w_lo, w_hi = self._geometry(x.dtype, x.device)
        a, d = self.n_angles, self.n_detectors
        xf = x.reshape(b * c, 1, h * w)
        # each pixel splats onto its two nearest bins, at every angle
        sino = x.new_zeros(b * c, a * d)
        sino = sino.index_add(1, index_lo.reshape(-1), (xf * w_lo).reshape(b * c, -1))
        sino = sino.index_add(1, index_hi.reshape(-1), (xf * w_hi).reshape(b * c, -1))
        sino = sino.reshape(b, c, a, d).transpose(-1, -2)
        return sino * self.scale if self.scale != 1.0 else sino

    def adjoint(self, y: Tensor) -> Tensor:
        """Back-projection, the exact transpose of ``forward``: gather with the same weights (summed in float32 for half ``y``)."""
        self._check_y(y)
        if y.dtype in _HALF:
            return self.adjoint(y.float()).to(y.dtype)
        b, c = y.shape[:2]
        h, w = self.image_size
        index_lo, index_hi, w_lo, w_hi = self._geometry(y.dtype, y.device)
        a, d = self.n_angles, self.n_detectors
        yf = y.transpose(-1, -2).reshape(b * c, a * d)
        g_lo = yf.index_select(1, index_lo.reshape(-1)).reshape(b * c, a, h * w)
        g_hi = yf.index_select(1, index_hi.reshape(-1)).reshape(b * c, a, h * w)
        x = (g_lo * w_lo + g_hi * w_hi).sum(dim=1).reshape(b, c, h, w)
        return x * self.scale if self.scale != 1.0 else x

    def fbp(self, y: Tensor) -> Tensor:
        """Filtered back-projection (Kak & Slaney 1988, eq. 3.61): ramp-filtered sinogram, back-projected.

        The ramp filter is the band-limited one sampled in space (Kak & Slaney
        eq. 3.73: ``h[0] = 1/4``, ``h[n] = -1/(pi n)^2`` for odd ``n``, else 0),
        applied with zero padding; the back-projection sums over the views with
        their angular widths ``view_weights`` (``pi / n_angles`` for views evenly
        spread over 180 degrees).  For a limited arc this is the plain FBP of the
        measured views, with the missing-wedge streaks that come with it.
        Half-precision ``y`` is filtered in float32 (no half FFT on the CPU) and the
        image returned in ``y``'s dtype.
        """
        self._check_y(y)
        if y.dtype in _HALF:
            return self.fbp(y.float()).to(y.dtype)
        d = self.n_detectors
        size = max(64, 1 << (2 * d - 1).bit_length())
        n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)]).to(torch.float64)
        h = torch.zeros(size, dtype=torch.float64)
        h[0] = 0.25
        h[1::2] = -1.0 / (math.pi * n) ** 2
        ramp = 2 * torch.fft.fft(h).real
        q = torch.fft.fft(y.transpose(-1, -2), n=size, dim=-1) * ramp.to(device=y.device, dtype=y.dtype)
        filtered = torch.fft.ifft(q, dim=-1).real[..., :d].transpose(-1, -2)
        # the factor 2 in the ramp pairs with the 1/2 here: each view weighs half its angular width
        # (a scale divides out twice: once from the data, once from the back-projection)
        rec = self.adjoint(filtered * (self.view_weights / 2).to(device=y.device, dtype=y.dtype))
        return rec / self.scale**2 if self.scale != 1.0 else rec

    def extra_repr(self) -> str:
        extra = f", scale={self.scale:g}" if self.scale != 1.0 else ""
        return f"n_angles={self.n_angles}, image_size={self.image_size}, n_detectors={self.n_detectors}{extra}"


#: the largest image (pixels per channel) ``TomographySVD`` factorises: the dense SVD costs
#: O(M N min(M, N)) time and a dense N x N matrix V (64 MiB at 64x64, 1 GiB at 128x128 in float32)
MAX_SVD_PIXELS = 128 * 128


class TomographySVD(ShapedSVDOperator):
    """A ``Tomography`` as an SVD operator ``A = U diag(s) V^T`` from the dense matrix (for DDRM, DDNM).

    The SVD of the dense ``(M, N)`` matrix (``M = n_angles * n_detectors`` bins,
    ``N = H * W`` pixels) is computed once in float64 with ``torch.linalg.svd``
    and kept in float32: ``V`` is ``N x N`` (its last ``N - K`` columns span the
    null space), ``U`` is ``M x K`` with ``K = min(M, N)`` orthonormal columns, so
    when ``M > N`` the ``M - N`` directions of the data space that no image can
    reach are dropped from ``Ut`` (they carry only noise) and handled exactly by
    ``solve``.  Singular values below ``rtol * s_max`` are set to 0: they are
    float32 round-off of directions the geometry does not measure (the missing
    wedge of limited-angle CT is measured by small but real singular values and
    kept at the default ``rtol``).

    Cost, measured with one CPU thread: 64x64 with 30 views (2730 x 4096) about
    30 s, with 60 views (5460 x 4096) about 75 s, peak memory under 2 GB; the
    factors take 30-150 MB.  128x128 (16384 columns) costs, by the
    ``O(M N min(M, N))`` count, about 64 times more time (not measured here) and
    1 GiB for ``V``; images above ``MAX_SVD_PIXELS`` are refused:
    use samplers that need no SVD (PiGDM, DiffPIR with CG, DPS, Score-ALD).
    Factors are kept in memory per geometry (``Tomography.geometry_key``) for the
    process, and on disk as safetensors under ``cache_dir`` when it is given.
    Each channel is transformed alike; ``forward``, ``adjoint`` and ``pinv``
    derive from the SVD and match ``Tomography`` to float32 precision.
    """

    _memory: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def __init__(self, tomography: Tomography, rtol: float = 1e-5, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        if not isinstance(tomography, Tomography):
            raise ValueError(f"tomography must be a Tomography operator, got {type(tomography).__name__}")
        h, w = tomography.image_size
        if h * w > MAX_SVD_PIXELS:
            raise ValueError(
                f"a dense SVD of a {h}x{w} CT matrix is too large (limit {MAX_SVD_PIXELS} pixels); "
                "use a method that needs no SVD (pigdm, diffpir, dps, score_ald) or a smaller image"
            )
        if not 0 <= rtol < 1:
            raise ValueError(f"rtol must be in [0, 1), got {rtol}")
        self.tomography = tomography
        self.rtol = float(rtol)
        u, s, v = self._factors(tomography, cache_dir)
        s = torch.where(s > self.rtol * s.max(), s, torch.zeros_like(s))
        self.register_buffer("u", u)  # (M, K)
        self.register_buffer("s", s)  # (K,)
        self.register_buffer("v", v)  # (N, N)

    # -- the factorisation ------------------------------------------------------
    @classmethod
    def _factors(cls, tomography: Tomography, cache_dir: str | Path | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(U (M, K), s (K,), V (N, N))`` in float32 for this geometry: memory, disk cache, or computed."""
        key = tomography.geometry_key()
        if key in cls._memory:
            return cls._memory[key]
        path = Path(cache_dir).expanduser() / f"tomography-svd-{key}.safetensors" if cache_dir else None
        factors = None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            try:
                t = load_file(path)
                factors = (t["u"], t["s"], t["v"])
            except Exception:  # safetensors raises several types for a truncated file: recompute it
                factors = None
        if factors is None:
            a = tomography.matrix()
            m, n = a.shape
            # full V (N x N) for the null space; U only as wide as the rank can be
            u, s, vh = torch.linalg.svd(a, full_matrices=m < n)
            factors = (u[:, : min(m, n)].float().contiguous(), s.float(), vh.T.float().contiguous())
            if path is not None:
                from safetensors.torch import save_file

                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                save_file({"u": factors[0], "s": factors[1], "v": factors[2]}, str(tmp))
                tmp.replace(path)
        cls._memory[key] = factors
        return factors

    # -- geometry passthrough -------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return self.tomography.image_size

    @property
    def n_detectors(self) -> int:
        return self.tomography.n_detectors

    @property
    def n_angles(self) -> int:
        return self.tomography.n_angles

    @property
    def angles(self) -> Tensor:
        return self.tomography.angles

    def fbp(self, y: Tensor) -> Tensor:
        """Filtered back-projection of the underlying ``Tomography``."""
        return self.tomography.fbp(y)

    def check(self, x_shape: tuple[int, ...]) -> None:
        self.tomography.check(x_shape)

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        return self.tomography.x_shape(y)

    # -- SVD ------------------------------------------------------------------------
    def _k(self) -> int:
        return self.s.numel()

    def Vt(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C*N)``: per channel ``V^T x``; all range parts first, then the null parts."""
        self.check(x.shape)
        self._see(x.shape, x)
        b, c = x.shape[:2]
        z = _matmul(x.reshape(b, c, -1), self.v)
        k = self._k()
        return torch.cat([z[..., :k].reshape(b, -1), z[..., k:].reshape(b, -1)], dim=1)

    def V(self, z: Tensor) -> Tensor:
        c, h, w = self.image_shape
        n, k = h * w, self._k()
        self._check_vec(z, c * n, "V")
        b = z.shape[0]
        full = torch.cat([z[:, : c * k].reshape(b, c, k), z[:, c * k :].reshape(b, c, n - k)], dim=2)
        return _matmul(full, self.v.T).reshape(b, c, h, w)

    def Ut(self, y: Tensor) -> Tensor:
        """sinogram ``(B, C, n_detectors, n_angles) -> (B, C*K)``."""
        shape = self.tomography.x_shape(y)
        self._see(shape, y)
        b, c = y.shape[:2]
        return _matmul(y.transpose(-1, -2).reshape(b, c, -1), self.u).reshape(b, -1)

    def U(self, w: Tensor) -> Tensor:
        c = self.image_shape[0]
        self._check_vec(w, c * self._k(), "U")
        b = w.shape[0]
        y = _matmul(w.reshape(b, c, -1), self.u.T)
        return y.reshape(b, c, self.n_angles, self.n_detectors).transpose(-1, -2)

    def _singulars(self) -> Tensor:
        return self.s.to(**self._factory()).repeat(self.image_shape[0])

    def solve(self, y: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
        """``(a A A^T + b I)^-1 y``, including the part of ``y`` outside the span of ``U`` (divided by ``b``)."""
        inside = super().solve(y, a, b)
        rest = y - self.U(self.Ut(y))
        b_ = b.to(y).reshape(-1, 1, 1, 1) if isinstance(b, Tensor) and b.dim() > 0 else b
        return inside + rest / b_

    def extra_repr(self) -> str:
        return f"{self.tomography.extra_repr()}, rank={int((self.s > 0).sum())}, rtol={self.rtol:g}"
