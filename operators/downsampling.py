"""Downsampling by an integer factor: block averaging ("box") or bicubic filtering.

Both have exact SVDs without forming the ``(C h w) x (C H W)`` matrix:

* box: each ``f x f`` block is averaged.  In a block the normalised constant
  vector is the only right singular vector (singular value ``1/f``); an
  orthonormal basis of its complement (the rows of a Helmert matrix) spans the
  null space.  ``U = I``.
* bicubic: separable, ``Y = A_h X A_w^T`` with 1-D matrices built from the
  Keys cubic kernel (``a = -0.5``) stretched by ``f`` (antialiased, as in
  DDRM's bicubic super-resolution) with symmetric boundaries.  The 1-D SVDs
  ``A_h = U_h S_h V_h^T`` give ``A = (U_h x U_w) (S_h x S_w) (V_h x V_w)^T``
  (Kronecker structure, applied as two small matrix products).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from ._shape import ShapedSVDOperator, fmt, require_image


@functools.lru_cache(maxsize=16)
def _helmert_np(g: int) -> np.ndarray:
    """``g x g`` orthogonal matrix whose first row is ``1 / sqrt(g)`` (Helmert)."""
    h = np.zeros((g, g))
    h[0] = 1.0 / math.sqrt(g)
    for k in range(1, g):
        h[k, :k] = 1.0 / math.sqrt(k * (k + 1))
        h[k, k] = -k / math.sqrt(k * (k + 1))
    return h


def helmert(g: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """``(g, g)`` orthogonal matrix with first row ``ones(g) / sqrt(g)``; the other rows span its complement."""
    return torch.as_tensor(_helmert_np(int(g)), dtype=dtype, device=device)


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys (1981) cubic convolution kernel, eq. (15) with ``a = -0.5``."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_matrix(n: int, factor: int) -> np.ndarray:
    """1-D antialiased bicubic downsampling matrix ``(n // factor, n)`` (float64).

    Output sample ``o`` sits at input position ``f (o + 1/2) - 1/2``; weights
    are ``keys_cubic(d / f)`` for input offsets ``d``, normalised to sum to 1,
    with symmetric (half-sample) reflection at the borders.
    """
    if n % factor:
        raise ValueError(f"size {n} is not divisible by the factor {factor}")
    taps = np.arange(-2 * factor, 2 * factor) + 0.5 * ((factor + 1) % 2)  # offsets d within the support
    weights = keys_cubic(taps / factor)
    weights = weights / weights.sum()
    m = np.zeros((n // factor, n))
    for o in range(n // factor):
        centre = factor * (o + 0.5) - 0.5
        for d, wgt in zip(taps, weights):
            j = int(round(centre + d))
            # symmetric padding: -1 -> 0, n -> n - 1
            while j < 0 or j >= n:
                j = -j - 1 if j < 0 else 2 * n - 1 - j
            m[o, j] += wgt
    return m


class Downsampling(ShapedSVDOperator):
    """Downsampling by ``factor``: ``(B, C, H, W) -> (B, C, H/f, W/f)`` with an exact SVD.

    Args:
        factor: integer downsampling factor ``f``.
        filter: ``"box"`` (average of ``f x f`` blocks, singulars ``1/f``) or
            ``"bicubic"`` (Keys ``a = -0.5`` cubic, antialiased).
        image_size: optional ``(H, W)``; if given, images of another size are
            rejected by ``check``.  Otherwise the size is learned from the data.

    ``singulars`` has shape ``(C*h*w,)`` with ``h = H/f``, ``w = W/f``.
    """

    def __init__(self, factor: int, filter: str = "box", image_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        if filter not in ("box", "bicubic"):
            raise ValueError(f"filter must be 'box' or 'bicubic', got {filter!r}")
        self.factor = int(factor)
        self.filter = filter
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))

    def check(self, x_shape: tuple[int, ...]) -> None:
        _, _, h, w = require_image(x_shape, "Downsampling")
        f = self.factor
        if h % f or w % f:
            raise ValueError(
                f"image size {h}x{w} of image {fmt(x_shape)} is not divisible by the downsampling factor {f}; "
                f"crop or pad it to a multiple of {f}"
            )
        if self.image_size is not None and (h, w) != self.image_size:
            raise ValueError(f"Downsampling was built for {fmt(self.image_size)} images but the image is {fmt(x_shape)}")

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        b, c, h, w = require_image(y.shape, "Downsampling")
        return (b, c, h * self.factor, w * self.factor)

    # -- shapes --------------------------------------------------------------
    def _small(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        return c, h // self.factor, w // self.factor

    def _m(self) -> int:
        c, h, w = self._small()
        return c * h * w

    # -- bicubic 1-D SVDs ------------------------------------------------------
    def _svd1d(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(U_h, s_h, Vt_h, U_w, s_w, Vt_w)`` of the 1-D matrices, full ``Vt``."""

        def build() -> tuple[Tensor, ...]:
            _, h, w = self.image_shape
            out = []
            for n in (h, w):
                a = torch.as_tensor(bicubic_matrix(n, self.factor), dtype=torch.float64)
                u, s, vt = torch.linalg.svd(a, full_matrices=True)
                out += [t.to(**self._factory()) for t in (u, s, vt)]
            return tuple(out)

        return self._cached("svd1d", build)  # type: ignore[return-value]

    # -- SVD -----------------------------------------------------------------
    def Vt(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        self._see(x.shape, x)
        b, c, hh, ww = x.shape
        f = self.factor
        if self.filter == "box":
            # (B, C, h, w, f*f) blocks, rotated by the Helmert matrix
            blocks = x.reshape(b, c, hh // f, f, ww // f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hh // f, ww // f, f * f)
            z = blocks @ helmert(f * f, x.dtype, x.device).T
            return torch.cat([z[..., 0].reshape(b, -1), z[..., 1:].reshape(b, -1)], dim=1)
        _, _, vt_h, _, _, vt_w = (t.to(x.dtype) for t in self._svd1d())
        zt = vt_h @ x @ vt_w.T  # V_h^T X V_w
        h, w = hh // f, ww // f
        first = zt[..., :h, :w].reshape(b, -1)
        rest = torch.cat([zt[..., :h, w:].reshape(b, c, -1), zt[..., h:, :].reshape(b, c, -1)], dim=2)
        return torch.cat([first, rest.reshape(b, -1)], dim=1)

    def V(self, z: Tensor) -> Tensor:
        c, hh, ww = self.image_shape
        self._check_vec(z, c * hh * ww, "V")
        _, h, w = self._small()
        f, b, m = self.factor, z.shape[0], self._m()
        if self.filter == "box":
            blocks = torch.cat([z[:, :m].reshape(b, c, h, w, 1), z[:, m:].reshape(b, c, h, w, f * f - 1)], dim=-1)
            blocks = blocks @ helmert(f * f, z.dtype, z.device)
            return blocks.reshape(b, c, h, w, f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hh, ww)
        _, _, vt_h, _, _, vt_w = (t.to(z.dtype) for t in self._svd1d())  # cached in the last input's dtype
        rest = z[:, m:].reshape(b, c, -1)
        n_right = h * (ww - w)
        top = torch.cat([z[:, :m].reshape(b, c, h, w), rest[..., :n_right].reshape(b, c, h, ww - w)], dim=-1)
        zt = torch.cat([top, rest[..., n_right:].reshape(b, c, hh - h, ww)], dim=-2)
        return vt_h.T @ zt @ vt_w

    def Ut(self, y: Tensor) -> Tensor:
        self._see(self.x_shape_svd(y), y)
        if self.filter == "box":
            return y.reshape(y.shape[0], -1)
        u_h, _, _, u_w, _, _ = (t.to(y.dtype) for t in self._svd1d())
        return (u_h.T @ y @ u_w).reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:
        self._check_vec(w, self._m(), "U")
        y = w.reshape(w.shape[0], *self._small())
        if self.filter == "box":
            return y
        u_h, _, _, u_w, _, _ = (t.to(w.dtype) for t in self._svd1d())
        return u_h @ y @ u_w.T

    def _singulars(self) -> Tensor:
        c, h, w = self._small()
        if self.filter == "box":
            return torch.full((c * h * w,), 1.0 / self.factor, **self._factory())
        _, s_h, _, _, s_w, _ = self._svd1d()
        return (s_h[:, None] * s_w[None, :]).reshape(-1).repeat(c)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, filter={self.filter!r}"
