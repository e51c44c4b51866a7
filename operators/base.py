"""Base classes for forward operators: ``Operator``, ``LinearOperator``, ``SVDOperator``.

Every operator maps a batch of images ``x`` of shape ``(B, C, H, W)`` to a
measurement ``y = A(x)``.  Linear operators add ``adjoint``; operators with a
known singular value decomposition ``A = U diag(s) V^T`` implement only
``Vt``, ``V``, ``Ut``, ``U`` and ``singulars`` (as in DDRM's
``svd_replacement.py``) and get ``forward``, ``adjoint``, ``pinv`` and the
regularised solve ``(a A A^T + b I)^-1`` derived here once.

Conventions of the SVD form (all real tensors):

* ``Vt(x) -> (B, N)`` with ``N = C*H*W`` the dimension of the image space;
  ``V`` is its inverse (``V`` is orthogonal).
* ``Ut(y) -> (B, M)`` with ``M`` the dimension of the measurement space;
  ``U`` is its inverse (``U`` is orthogonal, square on measurement space).
* ``singulars`` has shape ``(M,)`` or ``(B, M)`` (a batch may carry one
  mask per image) and may contain zeros (unmeasured components).
* ``A x = U(singulars * Vt(x)[:, :M])``: the first ``M`` right singular
  components pair with the singulars; the remaining ``N - M`` span the null
  space.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Operator(nn.Module):
    """A forward operator ``x -> A(x)``, batched and differentiable.

    Subclasses implement ``forward``.  Operators whose parameters differ per
    image in the batch (per-sample masks) override ``repeat_batch``.
    """

    #: whether ``adjoint`` exists (set by ``LinearOperator``)
    linear: bool = False

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        """Shape of the image ``x`` that produced a measurement ``y``."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot infer the image shape from y; "
            "give the operator an image_size"
        )

    def repeat_batch(self, n: int) -> "Operator":
        """The operator for a batch tiled ``n`` times (``x.repeat(n, 1, 1, 1)``).

        Batch-independent operators return themselves.
        """
        return self

    def check(self, x_shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` with a clear message if ``x_shape`` does not fit."""


class LinearOperator(Operator):
    """A linear operator: ``forward`` and its exact ``adjoint``."""

    linear = True

    def adjoint(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        return tuple(self.adjoint(y).shape)

    def normal(self, x: Tensor) -> Tensor:
        """``A^T A x``."""
        return self.adjoint(self.forward(x))


class SVDOperator(LinearOperator):
    """A linear operator given by its SVD ``A = U diag(s) V^T``, never as a matrix."""

    has_svd = True

    # -- to implement -----------------------------------------------------
    def Vt(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(B, C, H, W) -> (B, N)``."""
        raise NotImplementedError

    def V(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(B, N) -> (B, C, H, W)``."""
        raise NotImplementedError

    def Ut(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """measurement -> ``(B, M)``."""
        raise NotImplementedError

    def U(self, w: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(B, M)`` -> measurement."""
        raise NotImplementedError

    @property
    def singulars(self) -> Tensor:  # pragma: no cover - abstract
        """``(M,)`` or ``(B, M)``."""
        raise NotImplementedError

    # -- derived once -------------------------------------------------------
    def _s(self, like: Tensor) -> Tensor:
        """Singulars broadcast to ``(B, M)`` on ``like``'s device and dtype."""
        s = self.singulars.to(device=like.device, dtype=like.dtype)
        return s.expand(like.shape[0], -1) if s.dim() == 1 else s

    def _pad(self, w: Tensor, n: int) -> Tensor:
        """``(B, M) -> (B, N)`` with zeros on the null-space components."""
        if w.shape[1] == n:
            return w
        return torch.cat([w, w.new_zeros(w.shape[0], n - w.shape[1])], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.Vt(x)
        m = self.singulars.shape[-1]
        return self.U(self._s(z) * z[:, :m])

    def adjoint(self, y: Tensor) -> Tensor:
        w = self.Ut(y)
        return self.V(self._pad(self._s(w) * w, self.n_in(y)))

    def pinv(self, y: Tensor) -> Tensor:
        """Pseudo-inverse ``A^+ y``: divides by the nonzero singulars only."""
        w = self.Ut(y)
        s = self._s(w)
        nz = s > 0
        w = torch.where(nz, w / torch.where(nz, s, torch.ones_like(s)), torch.zeros_like(w))
        return self.V(self._pad(w, self.n_in(y)))

    def solve(self, y: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
        """``(a A A^T + b I)^-1 y`` through the SVD (``a``, ``b`` scalars or ``(B,)``)."""
        w = self.Ut(y)
        s = self._s(w)
        a = _col(a, w)
        b = _col(b, w)
        return self.U(w / (a * s**2 + b))

    def n_in(self, y: Tensor) -> int:
        """Dimension ``N`` of the image space for a measurement ``y``."""
        shape = self.x_shape_svd(y)
        n = 1
        for d in shape[1:]:
            n *= d
        return n

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:  # pragma: no cover - abstract
        """Image shape for ``y`` (implemented by subclasses without calling ``adjoint``)."""
        raise NotImplementedError

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        return self.x_shape_svd(y)


def _col(v: float | Tensor, like: Tensor) -> Tensor | float:
    """Scalar or ``(B,)`` -> something broadcastable against ``(B, M)``."""
    if isinstance(v, Tensor) and v.dim() > 0:
        return v.to(like).reshape(-1, 1)
    return v
