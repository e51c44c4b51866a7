"""Shape bookkeeping shared by the operators: shape strings, input checks, and
an SVD operator that learns its image shape from the tensors it is applied to.

``V``, ``U`` and ``singulars`` take no image, yet their sizes depend on the
image shape ``(C, H, W)``.  ``ShapedSVDOperator`` remembers the shape, dtype
and device of the last image (or measurement) it saw in ``Vt``, ``Ut`` or
``x_shape``, and computes derived tensors (singulars, transfer functions, 1-D
SVDs) once per such key, in that dtype and on that device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .base import SVDOperator


def fmt(shape: Sequence[int]) -> str:
    """``(1, 3, 8, 8)`` for any shape-like sequence."""
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def require_image(x_shape: Sequence[int], who: str) -> tuple[int, int, int, int]:
    """Check that ``x_shape`` is a 4-D image shape ``(B, C, H, W)`` and return it as a tuple."""
    shape = tuple(int(d) for d in x_shape)
    if len(shape) != 4:
        raise ValueError(f"{who} acts on images of shape (B, C, H, W), got shape {fmt(shape)}")
    return shape  # type: ignore[return-value]


def require_batch(param_batch: int, x_batch: int, what: str, who: str) -> None:
    """Per-sample parameters need a batch of 1 or the image's batch."""
    if param_batch not in (1, x_batch):
        raise ValueError(
            f"{who} has {param_batch} per-sample {what}s but the batch holds {x_batch} images; "
            f"use one {what} or one per image (for several samples per image use op.repeat_batch)"
        )


def as_4d_mask(mask: Tensor, who: str, name: str = "mask") -> Tensor:
    """A 2-D ``(H, W)``, 3-D ``(C, H, W)`` or 4-D ``(B, C, H, W)`` mask as a 4-D float tensor."""
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[None]
    elif mask.dim() != 4:
        raise ValueError(
            f"{who}: {name} must be (H, W), (C, H, W) or (B, C, H, W), got shape {fmt(mask.shape)}"
        )
    if not mask.is_floating_point():
        mask = mask.float()
    if not torch.isfinite(mask).all():
        raise ValueError(f"{who}: {name} contains NaN or infinite values")
    if (mask < 0).any():
        raise ValueError(f"{who}: {name} must be nonnegative (1 = measured, 0 = not measured)")
    return mask


class ShapedSVDOperator(SVDOperator):
    """An SVD operator whose image shape ``(C, H, W)`` is learned from the data it sees.

    ``Vt(x)``, ``Ut(y)`` and ``x_shape(y)`` record the image shape, dtype and
    device; ``V``, ``U`` and ``singulars`` use the last ones recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: tuple[tuple[int, int, int], torch.dtype, torch.device] | None = None
        self._cache: dict[tuple, object] = {}

    # -- bookkeeping --------------------------------------------------------
    def _see(self, x_shape: Sequence[int], like: Tensor) -> None:
        """Record the image shape ``(B, C, H, W)`` and ``like``'s dtype and device."""
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        self._seen = (tuple(int(d) for d in x_shape[1:]), dtype, like.device)  # type: ignore[assignment]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the last image this operator saw."""
        if self._seen is None:
            raise ValueError(
                f"{type(self).__name__} does not know the image size yet: apply it to an image "
                "(op(x) or op.Vt(x)) or to a measurement (op.Ut(y) or op.x_shape(y)) first"
            )
        return self._seen[0]

    @property
    def _dtype(self) -> torch.dtype:
        self.image_shape  # raises the clear error if nothing was seen
        return self._seen[1]  # type: ignore[index]

    @property
    def _device(self) -> torch.device:
        self.image_shape
        return self._seen[2]  # type: ignore[index]

    def _cached(self, name: str, build: Callable[[], object]) -> object:
        """``build()`` once per (name, image shape, dtype, device)."""
        key = (name, *self._key())
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _key(self) -> tuple:
        self.image_shape
        return self._seen  # type: ignore[return-value]

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(): drop derived tensors
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def _copy_seen(self, other: "ShapedSVDOperator") -> "ShapedSVDOperator":
        other._seen = self._seen
        return other

    # -- conveniences -------------------------------------------------------
    def _n(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def _check_vec(self, v: Tensor, n: int, what: str) -> None:
        if v.dim() != 2 or v.shape[1] != n:
            raise ValueError(
                f"{type(self).__name__}.{what} expects a tensor of shape (B, {n}) for images of shape "
                f"{fmt(self.image_shape)}, got {fmt(v.shape)}"
            )

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        shape = self.x_shape_svd(y)
        self._see(shape, y)
        return shape

    @property
    def singulars(self) -> Tensor:
        """``(M,)`` or ``(B, M)``, in the dtype and on the device of the last input."""
        return self._cached("singulars", self._singulars)  # type: ignore[return-value]

    def _singulars(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _factory(self) -> dict[str, object]:
        return {"dtype": self._dtype, "device": self._device}
