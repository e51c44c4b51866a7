"""Checking a device name before any work starts."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` that exists on this machine.

    Raises a one-line ``ValueError`` that says what to use instead for a name torch
    does not know (``"gpu"``), for CUDA where torch sees none, and for a CUDA index
    past the last GPU, so a run fails before it loads anything rather than deep in
    torch's lazy CUDA initialisation.
    """
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {d} asked for, but torch sees no CUDA device here; use cpu")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise ValueError(f"device {d} asked for, but torch sees {n} CUDA device(s): cuda:0 to cuda:{n - 1}")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {d} asked for, but torch sees no MPS device here; use cpu")
    return d
