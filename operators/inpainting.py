"""Inpainting ``y = m * x`` and mask helpers.

The measurement is the full grid (the masked image), so a batch may carry one
mask per image.  The SVD is trivial: ``U = V = I`` and the singulars are the
mask itself (zeros where a pixel is unknown), as in DDRM's inpainting without
its permutation, which per-sample masks would make batch-dependent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._shape import ShapedSVDOperator, as_4d_mask, fmt, require_batch, require_image


class Inpainting(ShapedSVDOperator):
    """Inpainting ``y = m * x`` with a mask broadcastable to the image (1 = known, 0 = missing).

    Args:
        mask: ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` with ``B`` and
            ``C`` each 1 or the image's; a batch of masks gives one mask per
            image.  Values in between weight a pixel (singular = mask value).

    Shapes: ``x`` and ``y`` are ``(B, C, H, W)``; ``singulars`` is ``(C*H*W,)``,
    or ``(B, C*H*W)`` for per-sample masks.
    """

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", as_4d_mask(mask, "Inpainting"))

    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "Inpainting")
        m = self.mask.shape
        if any(md not in (1, xd) for md, xd in zip(m[1:], shape[1:])):
            raise ValueError(
                f"mask has shape {fmt(m)} but the image is {fmt(shape)}; "
                "the mask must broadcast to the image (same H, W; channels 1 or equal)"
            )
        require_batch(m[0], shape[0], "mask", "Inpainting")

    def _mask(self, c: int, h: int, w: int) -> Tensor:
        """The mask as ``(Bm, C, H, W)`` in the working dtype."""
        return self.mask.to(device=self._device, dtype=self._dtype).expand(self.mask.shape[0], c, h, w)

    def Vt(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        self._see(x.shape, x)
        return x.reshape(x.shape[0], -1)

    def V(self, z: Tensor) -> Tensor:
        self._check_vec(z, self._n(), "V")
        return z.reshape(z.shape[0], *self.image_shape)

    def Ut(self, y: Tensor) -> Tensor:
        self.check(y.shape)
        self._see(y.shape, y)
        return y.reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:
        self._check_vec(w, self._n(), "U")
        return w.reshape(w.shape[0], *self.image_shape)

    def _singulars(self) -> Tensor:
        s = self._mask(*self.image_shape).reshape(self.mask.shape[0], -1)
        return s[0] if s.shape[0] == 1 else s

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        return require_image(y.shape, "Inpainting")

    def repeat_batch(self, n: int) -> "Inpainting":
        if self.mask.shape[0] == 1:
            return self
        return self._copy_seen(Inpainting(self.mask.repeat(n, 1, 1, 1)))  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"mask={fmt(self.mask.shape)}, known={self.mask.mean().item():.3f}"


def _image_hw(shape: Sequence[int], who: str) -> tuple[int, int, int]:
    """``(H, W)`` -> ``(1, H, W)``; ``(B, C, H, W)`` -> ``(B, H, W)``."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 4:
        return shape[0], shape[2], shape[3]
    raise ValueError(f"{who}: shape must be (H, W) or (B, C, H, W), got {fmt(shape)}")


def random_mask(
    shape: Sequence[int], missing: float = 0.7, generator: torch.Generator | None = None
) -> Tensor:
    """Random pixel mask with exactly ``round(missing * H * W)`` unknown pixels per image.

    ``shape`` is ``(H, W)`` (returns ``(1, 1, H, W)``) or an image shape
    ``(B, C, H, W)`` (returns ``(B, 1, H, W)``, an independent mask per image);
    the same mask applies to every channel.  1 = known, 0 = missing.
    """
    b, h, w = _image_hw(shape, "random_mask")
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"missing is the fraction of unknown pixels and must be in [0, 1], got {missing}")
    n_missing = int(round(missing * h * w))
    device = generator.device if generator is not None else None
    # a uniformly random subset of n_missing pixels per image
    order = torch.rand(b, h * w, generator=generator, device=device).argsort(dim=1)
    mask = torch.ones(b, h * w, device=device)
    mask.scatter_(1, order[:, :n_missing], 0.0)
    return mask.reshape(b, 1, h, w)


def box_mask(
    shape: Sequence[int], size: int | tuple[int, int], center: tuple[int, int] | None = None
) -> Tensor:
    """Mask with a missing ``size`` box (0 inside, 1 outside) centred at ``center`` (row, col).

    ``shape`` is ``(H, W)`` (returns ``(1, 1, H, W)``) or ``(B, C, H, W)``
    (returns ``(B, 1, H, W)``, the same box for every image).  ``center``
    defaults to the image centre; the box is clipped to the image.
    """
    b, h, w = _image_hw(shape, "box_mask")
    bh, bw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not (0 < bh <= h and 0 < bw <= w):
        raise ValueError(f"box_mask: box size ({bh}, {bw}) must be positive and fit in the image ({h}, {w})")
    cy, cx = (h // 2, w // 2) if center is None else (int(center[0]), int(center[1]))
    top, left = cy - bh // 2, cx - bw // 2
    mask = torch.ones(b, 1, h, w)
    mask[..., max(top, 0) : max(top + bh, 0), max(left, 0) : max(left + bw, 0)] = 0.0
    return mask


def mask_from_image(
    path_or_array: str | os.PathLike | np.ndarray | Tensor,
    shape: Sequence[int] | None = None,
    *,
    nonzero: str = "fill",
) -> Tensor:
    """Read a mask from an image file (via ``skimage.io``) or an array as :class:`Inpainting`'s known-pixel mask.

    ``nonzero="fill"`` (the default): white/nonzero pixels are the region to fill in,
    as in OpenCV's ``inpaint``, LaMa and diffusers' inpainting pipelines;
    ``nonzero="known"``: nonzero pixels are the known ones.  "Nonzero" means at least half
    of the mask's largest value (a JPEG mask's faint artefacts do not count); colour images
    count a pixel if any colour channel does (an alpha channel is ignored).
    Returns ``(1, 1, H, W)`` float, 1 where the pixel is known.  If ``shape``
    (``(H, W)`` or ``(B, C, H, W)``) is given, the mask's size must match it.
    """
    if nonzero not in ("fill", "known"):
        raise ValueError(f"nonzero must be 'fill' or 'known', got {nonzero!r}")
    if isinstance(path_or_array, (str, os.PathLike)):
        from skimage import io

        array = np.asarray(io.imread(os.fspath(path_or_array)))
        source = f"mask image {os.fspath(path_or_array)!r}"
    else:
        array = path_or_array.detach().cpu().numpy() if isinstance(path_or_array, Tensor) else np.asarray(path_or_array)
        source = "mask array"
    # "Nonzero" is at least half the mask's maximum, so a JPEG's or an anti-aliased brush's faint
    # stray values do not count as marked pixels.
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        color = np.abs(array[..., :3].astype(np.float64))
        on = (color >= 0.5 * color.max()).any(axis=-1) if color.max() > 0 else np.zeros(color.shape[:2], bool)
    elif array.ndim == 2:
        a = np.abs(array.astype(np.float64))
        on = a >= 0.5 * a.max() if a.max() > 0 else np.zeros(a.shape, bool)
    else:
        raise ValueError(f"{source} must be a gray (H, W) or colour (H, W, 3|4) image, got shape {fmt(array.shape)}")
    if shape is not None:
        _, h, w = _image_hw(shape, "mask_from_image")
        if on.shape != (h, w):
            raise ValueError(
                f"{source} is {on.shape[0]}x{on.shape[1]} (H x W) but the image is {h}x{w}; "
                "resize the mask to the image size"
            )
    known = on if nonzero == "known" else ~on
    return torch.from_numpy(known.astype(np.float32))[None, None]
