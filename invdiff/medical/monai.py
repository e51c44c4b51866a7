"""A MONAI dictionary transform that restores the image under a key and keeps its metadata.

``Restored(keys, op, prior, ...)`` drops into a ``monai.transforms.Compose``
pipeline after loading: each ``data[key]`` is a channel-first ``MetaTensor``
``(C, H, W)`` or a volume ``(1, H, W, D)``; the restored image comes back as a
``MetaTensor`` with the input's ``meta`` (affine, spacing, file name, ...) and
``applied_operations``, so later spatial transforms and ``SaveImage`` see the
geometry unchanged.  Volumes are restored slice by slice along ``axis`` as one
batch (``invdiff.volume``).  Two modes:

* ``simulate=False`` (default): ``data[key]`` is the measurement of ``op``
  (a degraded image for image-domain operators, or stacked sinograms);
* ``simulate=True``: ``data[key]`` is a clean image; the transform measures it
  (``y = A x + sigma_y n``, seeded) and restores that, e.g. to study a method
  on a data set inside an existing pipeline.

``window`` maps Hounsfield units onto the prior's ``[0, 1]`` and back
(``invdiff.medical.ct.hu_to_unit``).  MONAI is an optional dependency, imported when
the transform is built: ``pip install 'invdiff[monai]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .ct import hu_to_unit, parse_window, unit_to_hu
from ..operators import Gaussian, Operator
from ..volume import restore_batch

__all__ = ["Restored", "RestoreD", "RestoreDict"]

_MONAI_HINT = "pip install 'invdiff[monai]'"


def _import_monai() -> Any:
    try:
        return importlib.import_module("monai.data")
    except ImportError:
        raise ValueError(f"the MONAI transform needs monai, which is not installed; run {_MONAI_HINT}") from None


class Restored:
    """Restore ``data[key]`` for each key (MONAI dictionary transform; MetaTensor in, MetaTensor out).

    Args:
        keys: key or keys of the images to restore.
        op: an operator for one slice, or a function ``(B, C, H, W) -> Operator`` of the
            slice shape (e.g. ``lambda shape: ct_operator(shape[-1], "sparse-30")``) that
            builds one per image size; with ``simulate=False`` the shape given is the
            measurement's.
        prior: the diffusion prior (``invdiff.priors.load_prior``).
        method, steps, sigma_y, samples, seed, noise, **knobs: as in ``invdiff.restore``.
        simulate: measure the clean image first (see the module docstring).
        window: HU window (``"ct"``, ``"soft-tissue"``, ``(lo, hi)``) to map values onto
            ``[0, 1]`` before restoring and back after; ``None`` to pass values as they are.
        axis: the spatial axis (0, 1, 2 or -1) volumes are cut along.
        batch_size: slices restored at once.
        std_postfix: if given, the posterior std goes to ``data[f"{key}_{std_postfix}"]``.
        allow_missing_keys: skip keys absent from the dictionary instead of raising.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        op: Operator | Callable[[tuple[int, ...]], Operator],
        prior: Any,
        *,
        method: str = "pigdm",
        steps: int | None = None,
        sigma_y: float | None = 0.01,
        samples: int = 1,
        seed: int = 0,
        noise: Any | None = None,
        simulate: bool = False,
        window: str | Sequence[float] | None = None,
        axis: int = -1,
        batch_size: int | None = 8,
        std_postfix: str | None = None,
        allow_missing_keys: bool = False,
        **knobs: Any,
    ) -> None:
        self._monai = _import_monai()
        self.keys = tuple(keys) if isinstance(keys, (list, tuple)) else (keys,)
        if not self.keys:
            raise ValueError("keys is empty; name at least one key to restore")
        if not (isinstance(op, Operator) or callable(op)):
            raise ValueError(f"op must be an Operator or a function of the slice shape, got {type(op).__name__}")
        if axis not in (0, 1, 2, -1):
            raise ValueError(f"axis is a spatial axis of a volume (0, 1, 2 or -1), got {axis}")
        self.op, self.prior = op, prior
        self.window = parse_window(window) if window is not None else None
        self.simulate, self.axis, self.batch_size = bool(simulate), axis, batch_size
        self.std_postfix, self.allow_missing_keys = std_postfix, bool(allow_missing_keys)
        self.restore_kwargs = dict(method=method, steps=steps, sigma_y=sigma_y, samples=samples, noise=noise, **knobs)
        self.seed = int(seed)

    def _operator(self, shape: tuple[int, ...]) -> Operator:
        return self.op if isinstance(self.op, Operator) else self.op(shape)

    def restore_image(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Channel-first ``(C, H, W)`` or ``(1, H, W, D)`` -> restored ``(mean, std)`` of the same layout."""
        x = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(np.asarray(image))
        x = x.float() if not x.is_floating_point() else x
        if x.dim() == 3:  # (C, H, W): one image
            batch = x[None]
        elif x.dim() == 4:  # (1, H, W, D): slices along a spatial axis
            if x.shape[0] != 1:
                raise ValueError(f"volumes must have one channel, got shape {tuple(x.shape)}; split the channels first")
            batch = x[0].movedim(self.axis % 3, 0)[:, None]
        else:
            raise ValueError(
                f"expected a channel-first image (C, H, W) or volume (1, H, W, D), got shape {tuple(x.shape)}"
            )
        if self.window is not None:
            batch = hu_to_unit(batch, self.window, clip=self.simulate)
        op = self._operator(tuple(batch.shape))
        if self.simulate:
            sigma_y = self.restore_kwargs.get("sigma_y") or 0.0
            noise = self.restore_kwargs.get("noise") or Gaussian(sigma_y)
            g = torch.Generator(device=batch.device).manual_seed(self.seed)
            with torch.no_grad():
                y = noise.sample(op(batch), generator=g)
        else:
            y = batch
        result = restore_batch(y, op, self.prior, batch_size=self.batch_size, seed=self.seed, **self.restore_kwargs)
        mean, std = result.mean, result.std
        if self.window is not None:
            lo, hi = self.window
            mean, std = unit_to_hu(mean, self.window), std * (hi - lo)
        if x.dim() == 3:
            return mean[0], std[0]
        return mean[:, 0].movedim(0, self.axis % 3)[None], std[:, 0].movedim(0, self.axis % 3)[None]

    def _like(self, image: Any, values: Tensor) -> Any:
        """``values`` carrying ``image``'s metadata when it is a MetaTensor, in its dtype."""
        dtype = image.dtype if isinstance(image, Tensor) and image.is_floating_point() else torch.float32
        values = values.to(dtype)
        if isinstance(image, self._monai.MetaTensor):
            return self._monai.MetaTensor(
                values, meta=dict(image.meta), applied_operations=list(image.applied_operations)
            )
        if isinstance(image, np.ndarray):
            return values.cpu().numpy()
        return values

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise ValueError(f"key {key!r} is not in the data (keys: {', '.join(map(str, d))}); "
                                 "pass allow_missing_keys=True to skip it")  # fmt: skip
            image = d[key]
            mean, std = self.restore_image(image)
            d[key] = self._like(image, mean)
            if self.std_postfix:
                d[f"{key}_{self.std_postfix}"] = self._like(image, std)
        return d


#: MONAI's aliases for dictionary transforms
RestoreD = RestoreDict = Restored
