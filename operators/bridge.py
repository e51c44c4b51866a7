"""Bridges to DeepInverse: wrap a deepinv ``Physics`` as an operator, and an operator as a deepinv ``Physics``.

``from_deepinv(physics)`` gives an ``Operator`` (``forward = physics.A``), a
``LinearOperator`` for a ``LinearPhysics`` (``adjoint = physics.A_adjoint``)
and an SVD operator for a ``DecomposablePhysics`` whose decomposition is real
and image-shaped (e.g. deepinv's ``Inpainting``, ``Denoising``).  deepinv's
FFT-based decompositions (``BlurFFT``, ``MRI``) use complex or half-spectrum
coefficients that are not a real orthogonal basis of the image; they are
wrapped as linear operators (use ``Blur(padding="circular")`` or ``MRI`` for
their SVDs).

``to_deepinv(op)`` gives a deepinv ``LinearPhysics`` (or ``Physics`` for a
nonlinear operator) calling the operator, so that deepinv's solvers can use
it; for SVD operators ``A_dagger`` and ``prox_l2`` are the closed forms.
deepinv is imported only when these functions are called.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ._shape import ShapedSVDOperator, fmt, require_image
from .base import LinearOperator, Operator, SVDOperator, _col
from .noise import Gaussian, Poisson


def _repeat_physics(physics, n: int):
    """A copy of ``physics`` with a per-sample ``mask`` tiled ``n`` times, or ``physics`` itself."""
    mask = getattr(physics, "mask", None)
    if not isinstance(mask, Tensor) or mask.dim() < 4 or mask.shape[0] == 1:
        return physics
    new = copy.deepcopy(physics)
    new.mask = mask.repeat(n, *([1] * (mask.dim() - 1)))
    return new


class _Wrapped:
    """Shared by the wrappers of deepinv physics: image shape, checks, per-sample masks."""

    def __init__(self, physics, image_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.physics = physics
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.physics.A(x)

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        if self.image_shape is None:
            return super().x_shape(y)  # type: ignore[misc]
        return (y.shape[0], *self.image_shape)

    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, type(self).__name__)
        if self.image_shape is not None and tuple(shape[1:]) != self.image_shape:
            raise ValueError(f"the wrapped physics expects images (B, *{fmt(self.image_shape)}), got {fmt(shape)}")

    def repeat_batch(self, n: int) -> Operator:
        physics = _repeat_physics(self.physics, n)
        return self if physics is self.physics else type(self)(physics, self.image_shape)  # type: ignore[return-value]


class DeepinvOperator(_Wrapped, Operator):
    """A deepinv ``Physics`` as an operator: ``forward = physics.A`` (noiseless)."""


class DeepinvLinearOperator(_Wrapped, LinearOperator):
    """A deepinv ``LinearPhysics`` as a linear operator: ``physics.A`` and ``physics.A_adjoint``."""

    def adjoint(self, y: Tensor) -> Tensor:
        return self.physics.A_adjoint(y)


class DeepinvSVDOperator(ShapedSVDOperator):
    """A deepinv ``DecomposablePhysics`` ``A = U diag(mask) V^T`` with real, image-shaped coefficients.

    Negative mask values have their sign moved into ``U`` so that the
    singulars are ``|mask|``.
    """

    def __init__(self, physics, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.physics = physics
        self.physics_shape = tuple(int(d) for d in image_shape)

    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "DeepinvSVDOperator")
        if tuple(shape[1:]) != self.physics_shape:
            raise ValueError(f"the wrapped physics expects images (B, *{fmt(self.physics_shape)}), got {fmt(shape)}")

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        return (y.shape[0], *self.physics_shape)

    def _mask(self) -> Tensor:
        """The mask (singular values with signs) as ``(Bm, C, H, W)`` in the working dtype."""
        mask = torch.as_tensor(self.physics.mask).to(**self._factory())
        while mask.dim() < 4:
            mask = mask[None]
        return mask.expand(mask.shape[0], *self.physics_shape)

    def _sign(self) -> Tensor:
        return self._cached("sign", lambda: torch.where(self._mask() < 0, -1.0, 1.0).to(self._dtype))  # type: ignore[return-value]

    def Vt(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        self._see(x.shape, x)
        return self.physics.V_adjoint(x).reshape(x.shape[0], -1)

    def V(self, z: Tensor) -> Tensor:
        self._check_vec(z, self._n(), "V")
        return self.physics.V(z.reshape(z.shape[0], *self.physics_shape))

    def Ut(self, y: Tensor) -> Tensor:
        self._see(self.x_shape_svd(y), y)
        return (self._sign().to(y.dtype) * self.physics.U_adjoint(y)).reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:
        self._check_vec(w, self._n(), "U")
        return self.physics.U(self._sign().to(w.dtype) * w.reshape(w.shape[0], *self.physics_shape))

    def _singulars(self) -> Tensor:
        mask = self._mask()
        s = mask.abs().reshape(mask.shape[0], -1)
        return s[0] if s.shape[0] == 1 else s

    def repeat_batch(self, n: int) -> Operator:
        physics = _repeat_physics(self.physics, n)
        return self if physics is self.physics else self._copy_seen(DeepinvSVDOperator(physics, self.physics_shape))


def _real_decomposition(physics, image_shape: tuple[int, ...]) -> bool:
    """Probe whether ``V^T``, ``U^T`` of a DecomposablePhysics are real orthogonal maps on image-shaped tensors."""
    mask = physics.mask
    if isinstance(mask, Tensor) and mask.is_complex():
        return False
    dtype = mask.dtype if isinstance(mask, Tensor) and mask.is_floating_point() else torch.float32
    device = mask.device if isinstance(mask, Tensor) else None
    g = torch.Generator(device=device or "cpu").manual_seed(0)
    x = torch.randn((1, *image_shape), generator=g, dtype=dtype, device=device)
    with torch.no_grad():
        try:
            z = physics.V_adjoint(x)
            y = physics.A(x)
            w = physics.U_adjoint(y)
        except (RuntimeError, ValueError, TypeError, NotImplementedError):  # cannot run on the probe: no SVD
            return False

    def isometric(a: Tensor, b: Tensor) -> bool:
        return (
            not a.is_complex()
            and tuple(a.shape) == tuple(x.shape)
            and bool(torch.isclose(a.norm(), b.norm(), rtol=1e-4, atol=1e-6))
        )

    return isometric(z, x) and isometric(w, y) and tuple(y.shape) == tuple(x.shape)


def from_deepinv(physics, image_shape: Sequence[int] | None = None) -> Operator:
    """Wrap a deepinv ``Physics`` as an invdiff operator (linear if it is linear, SVD if decomposable and real).

    ``image_shape`` ``(C, H, W)`` is taken from ``physics.img_size`` if not
    given; an SVD needs it (to verify the decomposition and size ``V``, ``U``).
    """
    import deepinv

    if not isinstance(physics, deepinv.physics.Physics):
        raise ValueError(f"from_deepinv expects a deepinv.physics.Physics, got {type(physics).__name__}")
    if isinstance(physics, _physics_classes()):
        return physics.op  # made by to_deepinv: give the operator back, SVD included
    if image_shape is None and getattr(physics, "img_size", None) is not None:
        image_shape = physics.img_size
    if image_shape is not None:
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) == 4:
            image_shape = image_shape[1:]
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {fmt(image_shape)}")
    if isinstance(physics, deepinv.physics.DecomposablePhysics) and image_shape is not None:
        if _real_decomposition(physics, image_shape):
            return DeepinvSVDOperator(physics, image_shape)
    if isinstance(physics, deepinv.physics.LinearPhysics):
        return DeepinvLinearOperator(physics, image_shape)
    return DeepinvOperator(physics, image_shape)


@functools.lru_cache(maxsize=1)
def _physics_classes():
    """deepinv Physics subclasses calling an invdiff operator (built on first use)."""
    from deepinv.physics import LinearPhysics, Physics

    class InvdiffPhysics(Physics):
        """A deepinv ``Physics`` whose noiseless forward is an invdiff operator."""

        def __init__(self, op: Operator, **kwargs) -> None:
            super().__init__(**kwargs)
            self.op = op

        def A(self, x: Tensor, **kwargs) -> Tensor:
            return self.op(x)

    class InvdiffLinearPhysics(LinearPhysics):
        """A deepinv ``LinearPhysics`` calling an invdiff linear operator (closed forms for SVD operators)."""

        def __init__(self, op: LinearOperator, **kwargs) -> None:
            super().__init__(**kwargs)
            self.op = op

        def A(self, x: Tensor, **kwargs) -> Tensor:
            return self.op(x)

        def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
            return self.op.adjoint(y)

        def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
            if getattr(self.op, "has_svd", False):
                return self.op.pinv(y)
            return super().A_dagger(y, **kwargs)

        def prox_l2(self, z, y: Tensor, gamma, **kwargs) -> Tensor:
            """``argmin_x gamma/2 ||A x - y||^2 + 1/2 ||x - z||^2``; through the SVD when there is one."""
            if not getattr(self.op, "has_svd", False):
                return super().prox_l2(z, y, gamma, **kwargs)
            op: SVDOperator = self.op  # type: ignore[assignment]
            g = gamma.reshape(-1) if isinstance(gamma, Tensor) and gamma.numel() > 1 else float(gamma)
            b = self.A_adjoint(y)
            b = b * (g.to(b).reshape(-1, 1, 1, 1) if isinstance(g, Tensor) else g)
            if z is not None and not (isinstance(z, (int, float)) and z == 0):
                b = b + z
            # (gamma A^T A + I)^-1 b in V's coordinates: divide the first M by gamma s^2 + 1
            zb = op.Vt(b)
            s = op._s(zb)
            m = s.shape[1]
            head = zb[:, :m] / (_col(g, zb) * s**2 + 1)
            return op.V(torch.cat([head, zb[:, m:]], dim=1))

    return InvdiffPhysics, InvdiffLinearPhysics


def to_deepinv(op: Operator, noise: Gaussian | Poisson | None = None):
    """A deepinv ``LinearPhysics`` (linear ``op``) or ``Physics`` (nonlinear) calling ``op``.

    ``noise`` maps to deepinv's ``GaussianNoise(sigma)`` or
    ``PoissonNoise(gain, normalize=True)`` (the same model); default noiseless.
    """
    from deepinv.physics import GaussianNoise, PoissonNoise, ZeroNoise

    if not isinstance(op, Operator):
        raise ValueError(f"to_deepinv expects an invdiff operator, got {type(op).__name__}")
    if noise is None or (isinstance(noise, Gaussian) and noise.sigma == 0):
        noise_model = ZeroNoise()
    elif isinstance(noise, Gaussian):
        noise_model = GaussianNoise(sigma=noise.sigma)
    elif isinstance(noise, Poisson):
        noise_model = PoissonNoise(gain=noise.gain, normalize=True)
    else:
        raise ValueError(f"noise must be Gaussian, Poisson or None, got {type(noise).__name__}")
    physics_cls, linear_cls = _physics_classes()
    if op.linear:
        return linear_cls(op, noise_model=noise_model)
    return physics_cls(op, noise_model=noise_model)
