"""Cost of sampling: the network's floor, each sampler's overhead over it, deepinv's DPS, batch scaling.

No sampler can be faster than ``NFE`` passes of the network: ``t_net`` is the
median time of one ``prior.denoise`` call (forward) or of one call and its
vector-Jacobian product (forward + backward, what DPS and PiGDM pay per step)
at the problem's size and batch.  A sampler's overhead ratio is
``seconds / (NFE * t_net)``: 1 means all its time goes to the network.

Timings on a shared CPU are noisy; the benchmark measures ``t_net`` for every
problem right before its samplers run, and records the load average.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from invdiff import restore
from invdiff.priors import Prior

#: samplers that differentiate through the network once per call (their floor is forward + backward)
GRADIENT_METHODS = frozenset({"dps", "pigdm"})


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels on a CUDA device (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_network(
    prior: Prior, shape: Sequence[int], device: torch.device | str, reps: int = 3, backward: bool = False,
    sigma: float = 0.5,
) -> float:  # fmt: skip
    """Median seconds of one ``prior.denoise`` call on a batch ``shape`` ``(B, C, H, W)`` (after one warm-up).

    ``backward=True`` times the call plus the vector-Jacobian product with respect to ``x``
    (``torch.autograd.grad``), the work of one DPS or PiGDM step.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.rand(tuple(shape), generator=g).to(device)
    v = torch.randn(tuple(shape), generator=g).to(device)

    def call() -> None:
        if backward:
            xr = x.detach().requires_grad_(True)
            with torch.enable_grad():
                out = prior.denoise(xr, sigma)
                torch.autograd.grad(out, xr, grad_outputs=v)
        else:
            with torch.no_grad():
                prior.denoise(x, sigma)

    call()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead(seconds: float | None, nfe: int | None, t_net: float) -> float | None:
    """``seconds / (nfe * t_net)``, or ``None`` without a time or a network call."""
    if seconds is None or not nfe or t_net <= 0:
        return None
    return seconds / (nfe * t_net)


def _rss_bytes() -> int | None:
    """Resident set size of this process from ``/proc/self/statm`` (Linux), else ``None``."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory growth inside a ``with`` block, in MiB (``.mib``; ``None`` where it cannot be measured).

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at entry.
    CPU: the process's resident set size, sampled every ``interval`` seconds by a
    thread, above its value at entry (torch has no CPU allocator statistics).
    """

    def __init__(self, device: torch.device | str, interval: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.mib: float | None = None
        self.kind = "cuda allocated" if self.device.type == "cuda" else "cpu rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base: int | None = None
        self._peak: int | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            if rss is not None and self._peak is not None:
                self._peak = max(self._peak, rss)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = _rss_bytes()
            if self._base is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - (self._base or 0)) / 2**20
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = _rss_bytes()
            if rss is not None and self._peak is not None:
                self._peak = max(self._peak, rss)
            self.mib = max(0, (self._peak or 0) - (self._base or 0)) / 2**20


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[Any, float, float | None]:
    """Run ``fn()`` and return its result, wall seconds (synchronised) and peak memory growth in MiB."""
    with PeakMemory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - t0
    return out, seconds, mem.mib


def batch_scaling(
    prior: Prior, op: Any, y: Tensor, sigma_y: float, method: str, steps: int, counts: Sequence[int] = (1, 4, 16),
    seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Seconds per posterior sample when ``restore`` draws ``counts`` samples in one call."""
    rows = []
    for n in counts:
        result, seconds, mib = timed(
            lambda: restore(y, op, prior, method=method, steps=steps, sigma_y=sigma_y, samples=n, seed=seed),
            y.device,
        )
        rows.append({"samples": n, "seconds": seconds, "seconds_per_sample": seconds / n, "nfe": result.nfe,
                     "peak_mib": mib})  # fmt: skip
    return rows


def speed_ratios(rows: Sequence[dict[str, Any]], method: str = "dps") -> list[dict[str, Any]]:
    """invdiff against deepinv for ``method`` per task at equal steps: speed ratio and PSNR difference.

    ``rows`` are the image benchmark's rows; a pair is the invdiff and the
    deepinv row of one task with the same number of steps.  Speed ratio:
    deepinv seconds over invdiff seconds (above 1: invdiff is faster).
    """
    ours = {(r["task"], r["steps"]): r for r in rows if r["family"] == "invdiff" and r["method"] == method}
    out = []
    for r in rows:
        if r["family"] != "deepinv" or r["method"] != method or "error" in r:
            continue
        mine = ours.get((r["task"], r["steps"]))
        if mine is None or "error" in mine:
            continue
        out.append({
            "task": r["task"], "steps": r["steps"],
            "seconds_invdiff": mine["seconds"], "seconds_deepinv": r["seconds"],
            "speed_ratio": r["seconds"] / mine["seconds"],
            "nfe_invdiff": mine["nfe"], "nfe_deepinv": r["nfe"],
            "psnr_invdiff": mine["psnr"], "psnr_deepinv": r["psnr"], "psnr_diff": mine["psnr"] - r["psnr"],
        })  # fmt: skip
    return out
