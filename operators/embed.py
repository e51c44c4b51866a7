"""An operator on a larger canvas: ``Embed(op, pad)`` crops the image to ``op``'s domain and applies ``op``.

Diffusion priors need image sides divisible by their ``factor``; a problem on
an image of any size is posed on a canvas larger by ``pad = (top, bottom,
left, right)`` pixels whose border is not measured.  With ``crop`` the
restriction to the inner window and ``crop^T`` its zero embedding:

* ``A' = A crop``, ``A'^T = crop^T A^T`` (linear iff ``op`` is);
* SVD iff ``op`` has one: ``V'^T x = [V^T crop x, the border pixels]``, ``U' = U``,
  ``s' = s``; the border pixels come after the ``N`` components of ``op``'s image
  space, so they lie in the null space (singular 0) and DDRM, DDNM and PiGDM let
  the prior fill them.

Inpainting keeps its pixel mask on the larger canvas instead (``embed``), so
RePaint still finds one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._shape import ShapedSVDOperator, fmt, require_image
from .base import Operator
from .inpainting import Inpainting


def _as_pad(pad: Sequence[int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` as four nonnegative ints."""
    try:
        ok = len(pad) == 4 and all(not isinstance(p, bool) and int(p) == p >= 0 for p in pad)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"pad must be four nonnegative integers (top, bottom, left, right), got {pad!r}")
    return tuple(int(p) for p in pad)  # type: ignore[return-value]


def crop(x: Tensor, pad: Sequence[int]) -> Tensor:
    """``(B, C, H, W) -> (B, C, H - top - bottom, W - left - right)``: the inner window."""
    top, bottom, left, right = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def zero_pad(x: Tensor, pad: Sequence[int]) -> Tensor:
    """``(B, C, h, w) -> (B, C, h + top + bottom, w + left + right)`` with zeros around ``x``."""
    top, bottom, left, right = pad
    return F.pad(x, (left, right, top, bottom)) if any(pad) else x


class Embed(ShapedSVDOperator):
    """``op`` applied to the inner window of an image larger by ``pad`` pixels: ``A'(x) = A(crop(x))``.

    Args:
        op: any operator; ``Embed`` is linear iff ``op`` is and has an SVD iff ``op`` has.
        pad: ``(top, bottom, left, right)`` unmeasured pixels around ``op``'s domain.

    Shapes: ``x`` is ``(B, C, H + top + bottom, W + left + right)`` for ``op``'s
    ``(B, C, H, W)``; ``y``, ``Ut``, ``U`` and ``singulars`` are ``op``'s; ``Vt(x)`` is
    ``(B, N + P)``: ``op.Vt`` of the window, then the ``P`` border pixels (top rows,
    bottom rows, then the left and right columns beside the window).
    """

    def __init__(self, op: Operator, pad: Sequence[int]) -> None:
        super().__init__()
        self.op = op
        self.pad = _as_pad(pad)
        self.linear = bool(getattr(op, "linear", False))
        self.has_svd = bool(getattr(op, "has_svd", False))

    # -- shapes ------------------------------------------------------------------
    def _outer(self, inner: Sequence[int]) -> tuple[int, int, int, int]:
        b, c, h, w = require_image(inner, type(self.op).__name__)
        top, bottom, left, right = self.pad
        return (b, c, h + top + bottom, w + left + right)

    def _inner(self, outer: Sequence[int]) -> tuple[int, int, int, int]:
        b, c, h, w = require_image(outer, "Embed")
        top, bottom, left, right = self.pad
        return (b, c, h - top - bottom, w - left - right)

    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "Embed")
        top, bottom, left, right = self.pad
        if shape[2] <= top + bottom or shape[3] <= left + right:
            raise ValueError(f"image {fmt(shape)} is not larger than the pad (top, bottom, left, right) = {self.pad}")
        self.op.check(self._inner(shape))

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        shape = self._outer(self.op.x_shape(y))
        self._see(shape, y)
        return shape

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        self._need_svd()
        return self._outer(self.op.x_shape(y))

    def repeat_batch(self, n: int) -> Operator:
        op = self.op.repeat_batch(n)
        if op is self.op:
            return self
        return self._copy_seen(Embed(op, self.pad))

    # -- forward and adjoint ----------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        return self.op(crop(x, self.pad))

    def adjoint(self, y: Tensor) -> Tensor:
        self._need_linear()
        return zero_pad(self.op.adjoint(y), self.pad)

    def pinv(self, y: Tensor) -> Tensor:
        """``A'^+ y = crop^T A^+ y``: zero on the border."""
        self._need_svd()
        return zero_pad(self.op.pinv(y), self.pad)

    def solve(self, y: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
        """``(a A' A'^T + b I)^-1 y``: ``A' A'^T = A A^T``, so ``op``'s own solve."""
        self._need_svd()
        return self.op.solve(y, a, b)

    def _need_linear(self) -> None:
        if not self.linear:
            raise ValueError(f"Embed of {type(self.op).__name__} is nonlinear and has no adjoint")

    def _need_svd(self) -> None:
        if not self.has_svd:
            raise ValueError(f"Embed of {type(self.op).__name__} has no SVD because {type(self.op).__name__} has none")

    # -- SVD --------------------------------------------------------------------
    def _border(self, x: Tensor) -> Tensor:
        """The border pixels of ``x`` ``(B, C, H, W)`` as ``(B, P)``: top, bottom, left, right strips."""
        top, bottom, left, right = self.pad
        h, w = x.shape[-2:]
        mid = x[..., top : h - bottom, :]
        strips = (x[..., :top, :], x[..., h - bottom :, :], mid[..., :left], mid[..., w - right :])
        return torch.cat([s.reshape(x.shape[0], -1) for s in strips], dim=1)

    def Vt(self, x: Tensor) -> Tensor:
        self._need_svd()
        self.check(x.shape)
        self._see(x.shape, x)
        return torch.cat([self.op.Vt(crop(x, self.pad)), self._border(x)], dim=1)

    def V(self, z: Tensor) -> Tensor:
        self._need_svd()
        c, h, w = self.image_shape
        self._check_vec(z, c * h * w, "V")
        _, _, hi, wi = self._inner((1, c, h, w))
        inner = self.op.V(z[:, : c * hi * wi])
        top, bottom, left, right = self.pad
        sizes = [c * top * w, c * bottom * w, c * hi * left, c * hi * right]
        z_top, z_bottom, z_left, z_right = z[:, c * hi * wi :].split(sizes, dim=1)
        n = z.shape[0]
        mid = torch.cat([z_left.reshape(n, c, hi, left), inner, z_right.reshape(n, c, hi, right)], dim=-1)
        return torch.cat([z_top.reshape(n, c, top, w), mid, z_bottom.reshape(n, c, bottom, w)], dim=-2)

    def Ut(self, y: Tensor) -> Tensor:
        self._need_svd()
        self.x_shape(y)
        return self.op.Ut(y)

    def U(self, w: Tensor) -> Tensor:
        self._need_svd()
        return self.op.U(w)

    @property
    def singulars(self) -> Tensor:
        """``op``'s singulars ``(M,)`` or ``(B, M)``; the border is in the null space."""
        self._need_svd()
        return self.op.singulars

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def embed(y: Tensor, op: Operator, pad: Sequence[int]) -> tuple[Tensor, Operator]:
    """The problem ``y = A(x)`` posed on images larger by ``pad = (top, bottom, left, right)``.

    Returns ``(y', op')``: for an ``Inpainting`` the mask and ``y`` zero-padded (the
    border is a missing region, and RePaint keeps a pixel mask), for every other
    operator ``y`` itself and ``Embed(op, pad)``; ``(y, op)`` unchanged for a zero pad.
    """
    pad = _as_pad(pad)
    if not any(pad):
        return y, op
    if type(op) is Inpainting:
        op.check(tuple(y.shape))
        mask = op.mask
        mask = mask.expand(*mask.shape[:2], *y.shape[-2:])  # a mask of height or width 1 broadcasts
        return zero_pad(y, pad), Inpainting(zero_pad(mask, pad))
    return y, Embed(op, pad)
