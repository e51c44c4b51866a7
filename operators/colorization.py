"""Colorization: ``y`` is the channel mean of ``x`` (gray image), as in DDRM."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._shape import ShapedSVDOperator, fmt, require_image
from .downsampling import helmert


class Colorization(ShapedSVDOperator):
    """Gray from colour, ``y = mean_c x_c``: ``(B, C, H, W) -> (B, 1, H, W)`` (``C = 3`` for RGB).

    Per pixel ``A = (1/C) 1^T``: one right singular vector ``1 / sqrt(C)``
    with singular value ``1 / sqrt(C)``, the other ``C - 1`` (Helmert rows)
    span the null space; ``U = I``.  ``singulars`` is ``(H*W,)``.
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        if int(channels) != channels or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels}")
        self.channels = int(channels)

    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "Colorization")
        if shape[1] != self.channels:
            raise ValueError(
                f"Colorization expects {self.channels}-channel images but the image is {fmt(shape)}"
            )

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        b, c, h, w = require_image(y.shape, "Colorization")
        if c != 1:
            raise ValueError(f"Colorization measurements are gray (B, 1, H, W), got {fmt(y.shape)}")
        return (b, self.channels, h, w)

    def Vt(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        self._see(x.shape, x)
        z = torch.einsum("kc,bchw->bkhw", helmert(self.channels, x.dtype, x.device), x)
        return z.reshape(x.shape[0], -1)  # the k = 0 (mean) plane comes first

    def V(self, z: Tensor) -> Tensor:
        self._check_vec(z, self._n(), "V")
        z = z.reshape(z.shape[0], *self.image_shape)
        return torch.einsum("kc,bkhw->bchw", helmert(self.channels, z.dtype, z.device), z)

    def Ut(self, y: Tensor) -> Tensor:
        self._see(self.x_shape_svd(y), y)
        return y.reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:
        _, h, wd = self.image_shape
        self._check_vec(w, h * wd, "U")
        return w.reshape(w.shape[0], 1, h, wd)

    def _singulars(self) -> Tensor:
        _, h, w = self.image_shape
        return torch.full((h * w,), 1.0 / math.sqrt(self.channels), **self._factory())

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
