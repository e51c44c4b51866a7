"""The identity operator ``A = I`` (denoising)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._shape import ShapedSVDOperator, require_image


class Identity(ShapedSVDOperator):
    """Denoising: ``y = x``, with ``U = V = I`` and all singulars 1.  ``(B, C, H, W) -> (B, C, H, W)``."""

    def Vt(self, x: Tensor) -> Tensor:
        self._see(require_image(x.shape, "Identity"), x)
        return x.reshape(x.shape[0], -1)

    def V(self, z: Tensor) -> Tensor:
        self._check_vec(z, self._n(), "V")
        return z.reshape(z.shape[0], *self.image_shape)

    def Ut(self, y: Tensor) -> Tensor:
        self._see(self.x_shape_svd(y), y)
        return y.reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:
        self._check_vec(w, self._n(), "U")
        return w.reshape(w.shape[0], *self.image_shape)

    def _singulars(self) -> Tensor:
        return torch.ones(self._n(), **self._factory())

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        return require_image(y.shape, "Identity")

    def check(self, x_shape: tuple[int, ...]) -> None:
        require_image(x_shape, "Identity")
