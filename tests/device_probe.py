"""A CPU-only check that code keeps its tensors on the input's device.

CI has no GPU, yet the samplers must run unchanged on one.  The classic way to
break that is a tensor made without ``device=`` (``torch.zeros(shape)``,
``torch.linspace(...)``, ``torch.from_numpy(...)``) that then meets the data: on
a GPU that is a cpu/cuda mismatch, on a CPU it goes unnoticed.
:class:`DeviceProbe` is a torch function mode that marks every tensor a factory
function makes without a device, carries the mark through operations on marked
tensors only, clears it when the tensor is moved with ``.to(device)`` /
``.to(other)`` / ``.cuda()``, and raises as soon as a marked tensor with more
than one element meets an unmarked one.  Zero-dimensional CPU tensors mix with
CUDA tensors in torch, so those are let through.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

#: factory functions whose result lands on the default device unless ``device=`` is given
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.from_numpy, torch.zeros, torch.ones, torch.empty, torch.full,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.arange, torch.linspace, torch.logspace,
    torch.eye, torch.normal,
}  # fmt: skip
#: methods that put the tensor on an explicitly chosen device (or a given tensor's)
MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.type_as}


class DeviceMismatch(AssertionError):
    pass


def _tensors(args, kwargs) -> Iterator[torch.Tensor]:
    flat, _ = tree_flatten((args, kwargs or {}))
    return (a for a in flat if isinstance(a, torch.Tensor))


def _moves_device(func, args, kwargs) -> bool:
    if func in (torch.Tensor.cuda, torch.Tensor.type_as):
        return True
    if kwargs and "device" in kwargs:
        return True
    return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])


class DeviceProbe(TorchFunctionMode):
    """Raise :class:`DeviceMismatch` where a tensor made on the default device meets the data."""

    def __init__(self):
        super().__init__()
        # id -> weak reference; a WeakSet would compare tensors with ==, which is elementwise
        self.marked: dict[int, weakref.ref] = {}

    def _is_marked(self, t: torch.Tensor) -> bool:
        ref = self.marked.get(id(t))
        return ref is not None and ref() is t

    def _mark(self, tensors) -> None:
        for t in tensors:
            self.marked[id(t)] = weakref.ref(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        results = [t for t in _tensors((out,), None)]
        if func in FACTORIES:
            # as_tensor of a tensor keeps that tensor's device
            keeps = func is torch.as_tensor and bool(args) and isinstance(args[0], torch.Tensor)
            if kwargs.get("device") is None and not keeps:
                self._mark(results)
            return out
        if func in MOVES and _moves_device(func, args, kwargs):
            for r in results:  # .to(device) returns the tensor itself when it is already there
                self.marked.pop(id(r), None)
            return out
        inputs = list(_tensors(args, kwargs))
        marked = [t for t in inputs if self._is_marked(t)]
        if marked:
            real = [t for t in inputs if not self._is_marked(t)]
            big = [t for t in marked if t.dim() > 0]
            if real and big:
                raise DeviceMismatch(
                    f"{getattr(func, '__name__', func)}: a tensor of shape {tuple(big[0].shape)} made without "
                    f"device= meets data of shape {tuple(real[0].shape)}; on a GPU this is a device mismatch"
                )
            if not real:
                self._mark(r for r in results if all(r is not i for i in inputs))
        return out
