"""3-D volumes as batches of 2-D slices: cut along an axis, restore in chunks, stack back in place.

A volume ``(D0, D1, D2)`` cut along ``axis`` gives ``S = D_axis`` slices, each
made of the two other axes in their original order; ``stack`` puts restored
slices back along the same axis, so the result has the input's orientation
(for CT, restore axial slices of a NIfTI volume ``(i, j, k)`` with ``axis=2``).
Slices are restored by ``invdiff.restore`` in chunks of ``batch_size`` slices
(times ``samples`` posterior samples), drawing from one generator in order, so
a result depends on ``seed`` and ``batch_size`` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .restore import Result, restore

__all__ = ["slices", "stack", "restore_batch", "restore_volume", "VolumeResult"]


def _axis(volume_dim: int, axis: int) -> int:
    if not -volume_dim <= axis < volume_dim:
        raise ValueError(f"axis {axis} is out of range for a {volume_dim}-D volume; use 0, 1, 2 or -1")
    return axis % volume_dim


def slices(volume: Tensor, axis: int = -1) -> Tensor:
    """``(D0, D1, D2)`` -> ``(S, 1, H, W)``: the slices along ``axis``, each the other two axes in order."""
    if not isinstance(volume, Tensor) or volume.dim() != 3:
        raise ValueError(f"volume must be a 3-D tensor (D0, D1, D2), got {getattr(volume, 'shape', type(volume).__name__)}")
    return volume.movedim(_axis(3, axis), 0)[:, None]


def stack(batch: Tensor, axis: int = -1) -> Tensor:
    """``(S, 1, H, W)`` -> the volume with the ``S`` slices along ``axis`` (inverse of ``slices``)."""
    if not isinstance(batch, Tensor) or batch.dim() != 4 or batch.shape[1] != 1:
        raise ValueError(f"slices must be a (S, 1, H, W) tensor, got {getattr(batch, 'shape', type(batch).__name__)}")
    return batch[:, 0].movedim(0, _axis(3, axis))


def restore_batch(
    y: Tensor,
    op: Any,
    prior: Any,
    *,
    batch_size: int | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    **restore_kwargs: Any,
) -> Result:
    """``invdiff.restore`` of a batch ``y`` ``(S, C, H', W')`` in chunks of ``batch_size`` items.

    ``op`` must treat batch items independently (one operator for every slice).
    The chunks' results are joined into one ``Result`` (``samples`` of shape
    ``(samples, S, C, H, W)``, ``seconds`` summed, ``nfe`` per sample as in one run).
    """
    if not isinstance(y, Tensor) or y.dim() != 4:
        raise ValueError(f"y must be a (S, C, H, W) batch of slices, got {getattr(y, 'shape', type(y).__name__)}")
    n = y.shape[0]
    size = n if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be a positive number of slices, got {batch_size}")
    if generator is None:
        generator = torch.Generator(device=y.device).manual_seed(seed)
    parts: list[Result] = []
    for start in range(0, n, size):
        parts.append(restore(y[start : start + size], op, prior, generator=generator, callback=callback,
                             **restore_kwargs))  # fmt: skip
    first = parts[0]
    return Result(
        mean=torch.cat([p.mean for p in parts]),
        std=torch.cat([p.std for p in parts]),
        samples=torch.cat([p.samples for p in parts], dim=1),
        nfe=first.nfe,
        seconds=sum(p.seconds for p in parts),
        method=first.method,
        steps=first.steps,
        knobs=first.knobs,
        dtype=first.dtype,
        network_dtype=first.network_dtype,
        padded=first.padded,
        sigma_y=max((p.sigma_y for p in parts if p.sigma_y is not None), default=None),
        calibration=first.calibration,
        sigma_max=first.sigma_max,
    )


@dataclass
class VolumeResult:
    """``restore_volume``'s output: ``mean`` and ``std`` volumes in the input's orientation."""

    mean: Tensor
    std: Tensor
    axis: int
    nfe: int
    seconds: float
    method: str
    steps: int
    knobs: dict[str, Any] = field(default_factory=dict)


def restore_volume(
    volume: Tensor,
    op: Any,
    prior: Any,
    *,
    axis: int = -1,
    batch_size: int | None = 8,
    **restore_kwargs: Any,
) -> VolumeResult:
    """Restore a measured volume slice by slice: each slice along ``axis`` is one 2-D measurement of ``op``.

    ``volume`` ``(D0, D1, D2)``: e.g. CT sinograms stacked as ``(n_detectors, n_angles, Z)``
    with ``axis=-1``, or degraded images ``(H, W, Z)`` for image-domain operators.
    The restored slices ``(H, W)`` are stacked back along ``axis``: a ``(H, W, Z)``
    volume for ``axis=-1``.  ``restore_kwargs`` go to ``invdiff.restore`` (``method``,
    ``steps``, ``sigma_y``, ``samples``, ``seed``, ``noise``, knobs).
    """
    start = time.perf_counter()
    ax = _axis(3, axis) if isinstance(volume, Tensor) and volume.dim() == 3 else axis
    result = restore_batch(slices(volume, ax), op, prior, batch_size=batch_size, **restore_kwargs)
    if result.mean.shape[1] != 1:
        raise ValueError(f"restore_volume works on single-channel slices; the operator gave {result.mean.shape[1]}")
    return VolumeResult(
        mean=stack(result.mean, ax),
        std=stack(result.std, ax),
        axis=ax,
        nfe=result.nfe,
        seconds=time.perf_counter() - start,
        method=result.method,
        steps=result.steps,
        knobs=result.knobs,
    )
