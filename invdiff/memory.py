"""Memory and time of a restoration, predicted from shapes before anything runs.

``predict_memory(method, op, x_shape, prior, samples)`` is the peak resident memory, in
bytes, of a process that loads ``prior`` and runs ``restore`` with ``method`` on images of
``x_shape = (B, C, H, W)``; ``check_memory`` refuses, in one line, a run predicted above a
cap (by default half the machine's memory, ``default_cap``) and names the methods that fit;
``default_steps_samples`` chooses steps and samples so that a run takes about a minute.
Nothing here runs the network: the predictions depend only on shapes, the method and the
prior's architecture, so the same problem always gets the same answer.

Memory model (``MemoryEstimate``), ``batch = samples * B``, ``P = H * W`` pixels after the
padding to the prior's ``factor`` that ``restore`` applies, ``s`` the dtype's bytes / 4::

    peak = process + max(setup, operator + network + working)
    process = PROCESS_BYTES + 2 * (bytes of the prior's parameters and buffers)
    network = s * (NETWORK_FIXED_BYTES + scale * NETWORK_BYTES_PER_PIXEL[kind] * P * batch * groups) + attention
    working = s * (WORKING_COPIES * batch * C * P + MEASUREMENT_COPIES * batch * numel(y) / B) * 4
    operator = its parameters and buffers, plus a Tomography's interpolation tables and
               back-projection temporaries (24 bytes per view and pixel, and 4 batch copies
               of ``views * P`` values)
    setup = the dense SVD that DDRM and DDNM need of a bare ``Tomography`` (0 otherwise)

``kind`` is ``"forward"`` for the samplers that only evaluate the denoiser, ``"backward"``
for those that differentiate through it once per call (``GRADIENT_METHODS``: DPS, PiGDM;
autograd keeps every activation for the vector-Jacobian product) and ``"latent"`` for the
latent samplers (``latent_dps``, ``psld``: the latent U-Net on ``P / 16`` latent pixels and
the decoder at full resolution, both differentiated).  ``groups``: a ``ChannelwisePrior``
folds its channel groups into the network's batch.

Dense SVD of a ``Tomography`` (``operators.tomography.TomographySVD``): the float64
``(M, N)`` matrix (``M = views * detectors``, ``N = P``) is formed and handed to
``torch.linalg.svd`` (LAPACK ``gesdd``), which keeps a copy of it, ``U`` ``(M, K)``,
``V^T`` ``(N, N)`` and a workspace of about ``4 K^2`` values, ``K = min(M, N)``::

    setup = 8 * (3 M N + M K + N N + 3.5 K K) + 32 * views * P
    kept afterwards (float32 factors) = 4 * (M K + N N)

That is 18 GiB for a 128x128 image with 90 views (``M = 16380``, ``N = 16384``), where the
report "11 minutes, 15.5 GB, nothing written" came from; 1.6 GiB at 64x64.  Factors
already computed in this process (``TomographySVD``'s memory cache) cost no setup.

Constants, measured on an Intel Xeon (2 cores, 2 torch threads, 23 GiB, torch 2.14 CPU)
as the resident-set high-water mark (``getrusage``) of a fresh process per case, minus its
size after loading the prior, for ``restore`` with each method on inpainting problems:

* ``PROCESS_BYTES``: 509-537 MiB after ``import torch, invdiff`` (scikit-image and SciPy,
  for reading and resizing images, add 25-30 MiB); loading a shipped prior (5.6M
  parameters) adds 28-54 MiB.
* forward samplers (DDRM, DDNM, DiffPIR, RePaint, Score-ALD, DAPS), growth over the
  loaded process: 74 MB at 128x128 x 1, 298 MB at 256x256 x 2, 1082 MB at 480x640 x 2
  (DDRM, gray); 1281 MB for RGB 480x640 x 2; Score-ALD and DAPS 728 and 709 MB at
  384x384 x 2, RePaint 538 MB.  Slope about 1620 bytes per pixel and batch element for
  gray DDRM; RGB adds about 185 bytes per extra channel.  Long runs in a process that
  has also loaded SciPy grow further (DDRM, 20 steps, 256x256 x 4: 563 MB alone, 680 MB
  after reading the image with scikit-image), which the fixed 160 MiB and the slope of
  2000 (which also covers Score-ALD and DAPS) absorb: whole-run peaks are predicted
  0-25% high (``benchmarks/results/realtime.md``).
* gradient samplers: DPS 254 MB at 128x128 x 1, 1865 MB at 256x256 x 2, 2194 MB at
  384x384 x 1; PiGDM RGB 930 MB at 256x256 x 1: 14 800 bytes per pixel (autograd keeps
  the U-Net's activations, about 8x a forward pass's peak).
* latent samplers with ``latent-gray``: PSLD 601 MB at 256x256 x 2 and 1172 MB at
  512x512 x 1, latent DPS 536 and 915 MB: 4400 bytes per image pixel.
* the dense SVD rule above: measured against 32x32 (20 and 90 views), 40x40 (60 views)
  and 48x48 (30 and 90 views) geometries, within -4% / +14%.

``benchmarks/realtime.py`` compares these predictions with measured peaks of whole runs.

Other priors: a ``UNetPrior`` (the architecture of ``invdiff train``) scales the per-pixel
network term (``scale``) by ``channels / 32 * (num_res_blocks + 1) / 3`` (its full-resolution
tensors: their width and how many the decoder keeps), plus the attention matrices of its finest attention
level (``heads * T^2`` values per image, ``T`` its pixels, twice for the softmax; three times
that for the samplers that differentiate through it).  Any other network (ADM, diffusers,
deepinv checkpoints) is scaled by twice the output width of its first convolution over 32
(twice: an unknown block structure), with ADM's attention added the same way; a prior
without a network (the analytic priors) costs its buffers only.
These are conservative rules, not measurements.  The predictions are of host memory
(a CPU run); on a CUDA device the network and working terms are device memory instead.

Time model (``seconds_per_call``): one call of a shipped U-Net costs
``SECONDS_PER_MEGAPIXEL`` seconds per megapixel and batch element on the machine above
(480x640 gray: 2.3-3.0 s at batch 1, 5.0-5.6 s at batch 2; 256x256: 0.29 s at batch 1),
``BACKWARD_TIME`` times that with its vector-Jacobian product (1.7x measured at
256x256 x 2), and ``LATENT_SECONDS_PER_MEGAPIXEL`` for a latent sampler's call (latent
U-Net and decoder, differentiated: 0.53 s at 512x512).  ``default_steps_samples`` uses it
to fit ``budget_seconds``; the operator's own cost is left out (negligible for masks,
blurs and downsampling; not for CT's projector).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .methods import METHODS
from .operators import Tomography
from .operators.tomography import MAX_SVD_PIXELS, TomographySVD
from .priors.base import Prior
from .priors.latent import LatentPrior

__all__ = [
    "MemoryEstimate",
    "machine_memory",
    "default_cap",
    "parse_memory",
    "format_bytes",
    "estimate_memory",
    "predict_memory",
    "dense_svd_bytes",
    "check_memory",
    "fitting_methods",
    "network_calls",
    "seconds_per_call",
    "predict_seconds",
    "default_steps_samples",
]

MIB = 2**20
GIB = 2**30

#: resident size of a process with torch, invdiff and its image libraries imported, before a prior is loaded
PROCESS_BYTES = 560 * MIB
#: the network's fixed cost (kernels, workspaces, allocator slack), bytes at float32
NETWORK_FIXED_BYTES = 160 * MIB
#: activation peak of the shipped U-Nets (32 channels, mult 1-2-3-4, 2 blocks), bytes per pixel per
#: batch element at float32: denoiser only / with its vector-Jacobian product / latent sampler per image pixel
NETWORK_BYTES_PER_PIXEL = {"forward": 2000, "backward": 14800, "latent": 4400}
#: image-sized tensors per channel a sampler, the preconditioning and ``restore``'s summary hold at once
WORKING_COPIES = 48
#: measurement-sized tensors (``y``, its spectral form, residuals) held at once
MEASUREMENT_COPIES = 8
#: samplers that differentiate through the denoiser once per call (``benchmarks/cost.py`` says the same)
GRADIENT_METHODS = frozenset({"dps", "pigdm"})

#: seconds per megapixel and batch element of one shipped U-Net call (480x640, batch 2, 2 cores)
SECONDS_PER_MEGAPIXEL = 8.5
#: a call with its vector-Jacobian product, relative to the call alone
BACKWARD_TIME = 2.0
#: seconds per image megapixel of one latent sampler call (latent U-Net + decoder, differentiated)
LATENT_SECONDS_PER_MEGAPIXEL = 2.2
#: fixed seconds per call (Python, kernel launch), negligible except for tiny images
CALL_SECONDS = 0.01

#: the fewest noise levels ``default_steps_samples`` gives each method: DDRM's 10 (half its paper's 20,
#: where its mean is still within 0.3 dB on the images benchmark's tasks) and, for the others, the reduced
#: counts of the images benchmark's full mode (``benchmarks/images.py`` ``FULL_REDUCED``), the fewest it reports;
#: PnP-DM (not in that benchmark) half its default, as DDRM, where its coupling still reaches rho_min from 5
STEP_FLOORS = {"ddrm": 10, "pigdm": 20, "ddnm": 20, "diffpir": 20, "dps": 100, "score_ald": 100, "repaint": 50,
               "daps": 50, "pnp_dm": 20, "latent_dps": 100, "psld": 100}  # fmt: skip

#: the order in which ``fitting_methods`` offers methods: the default first, then PiGDM (the best
#: without an SVD on CT and MRI, ``benchmarks/results/ct.md``, ``mri.md``), the other linear-operator
#: methods, the gradient and Langevin methods, and the latent ones (which need a latent prior)
FALLBACK_ORDER = ("ddrm", "pigdm", "ddnm", "diffpir", "dps", "daps", "pnp_dm", "repaint", "score_ald", "latent_dps",
                  "psld")  # fmt: skip


# -- the machine ------------------------------------------------------------------------------------


def machine_memory() -> int:
    """Bytes of RAM this process may use: the machine's (psutil, ``sysconf`` or ``/proc/meminfo``),
    or a smaller cgroup limit (a container's ``memory.max``)."""
    total = None
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # not installed, or no answer on this platform
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):
            total = _meminfo_total()
    if not total or total <= 0:
        raise RuntimeError("cannot tell this machine's memory; pass a cap explicitly (--max-memory)")
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    """The cgroup (v2 or v1) memory limit in bytes, ``None`` when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            return int(text)
    return None


def default_cap() -> int:
    """The default memory cap: half of ``machine_memory()``."""
    return machine_memory() // 2


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(value: str | int | float) -> int:
    """A memory size in bytes: ``8G``, ``500M``, ``1.5GB``, ``2GiB``, ``1024`` or a number of bytes.

    K, M, G and T are powers of 1024 (``8G`` is 8 GiB, as ``free -g`` and docker's
    ``--memory`` read them), with or without a trailing ``B`` / ``iB``.
    """
    if isinstance(value, bool):
        raise ValueError(f"a memory size is a number of bytes or a size such as 8G, 500M or 1.5GB, got {value!r}")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if not m:
            raise ValueError(f"memory size {value!r} is not a size such as 8G, 500M or 1.5GB "
                             "(K, M, G, T: powers of 1024)")  # fmt: skip
        size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"memory size must be at least one byte, got {value!r}")
    return int(size)


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``300 MiB``: a size for messages and tables."""
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / MIB:.0f} MiB"


# -- the prediction ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """A predicted peak and its parts, in bytes (see the module docstring for the model).

    ``total = process + max(setup, operator + network + working)``; ``note`` names the
    dominant operator cost in words (e.g. the dense SVD), empty when there is none.
    """

    total: int
    process: int
    network: int
    working: int
    operator: int
    setup: int = 0
    note: str = ""


def _kind(method: str) -> str:
    if "latent" in METHODS[method].needs:
        return "latent"
    return "backward" if method in GRADIENT_METHODS else "forward"


def _module_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers, each storage counted once."""
    if not isinstance(module, nn.Module):
        return 0
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _first_conv(module: nn.Module) -> nn.Conv2d | None:
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)


def _inner(prior: Prior) -> tuple[Prior, int]:
    """The prior whose network runs and how many channel groups are folded into its batch."""
    groups = 1
    while hasattr(prior, "groups") and isinstance(getattr(prior, "prior", None), nn.Module):
        groups *= int(prior.groups)
        prior = prior.prior
    return prior, groups


def _network_scale(prior: Prior) -> tuple[float, float]:
    """``(memory, time)`` factors of the prior's network over a shipped U-Net's; ``(0, 0)`` without one."""
    prior, _ = _inner(prior)
    if getattr(prior, "shipped", None) is not None:
        return 1.0, 1.0
    cfg = getattr(prior, "unet_config", None)
    if cfg is not None and not isinstance(prior, LatentPrior):
        depth = (cfg.num_res_blocks + 1) / 3
        return cfg.channels / 32 * depth, (cfg.channels / 32) ** 2 * depth
    conv = _first_conv(prior) if isinstance(prior, nn.Module) else None
    if conv is None:
        return 0.0, 0.0
    base = 24 if isinstance(prior, LatentPrior) else 32  # latent-gray's autoencoder / the U-Nets' width
    width = conv.out_channels / base
    return 2.0 * width, width**2


def _attention_bytes(prior: Prior, h: int, w: int, batch: int, itemsize: int) -> int:
    """Attention matrices of the finest attention level: ``batch * heads * T^2`` values, twice."""
    prior, groups = _inner(prior)
    best = 0
    cfg = getattr(prior, "unet_config", None)
    if cfg is not None and not isinstance(prior, LatentPrior):
        levels = set(cfg.attn_levels) | ({len(cfg.channel_mult) - 1} if cfg.attn_levels else set())
        for level in levels:
            heads = max(1, cfg.channels * cfg.channel_mult[level] // 32)
            t = (h >> level) * (w >> level)
            best = max(best, heads * t * t)
    elif isinstance(prior, nn.Module):
        for m in prior.modules():
            ds = getattr(m, "attention_resolutions", None)
            if not ds:
                continue
            heads = int(getattr(m, "num_heads", 1) or 1)
            mc, hc = int(getattr(m, "model_channels", 0) or 0), int(getattr(m, "num_head_channels", -1) or -1)
            if hc > 0 and mc:
                heads = max(heads, mc * max(getattr(m, "channel_mult", (1,))) // hc)
            t = (h // min(ds)) * (w // min(ds))
            best = max(best, heads * t * t)
    return 2 * batch * groups * best * itemsize


def _tomography(op: Any) -> Tomography | None:
    """The ``Tomography`` an operator is or wraps (``normalized``, ``BeerLambert``, ``Embed``), else ``None``."""
    if isinstance(op, Tomography):
        return op
    if isinstance(op, nn.Module) and not isinstance(op, TomographySVD):
        return next((m for m in op.modules() if isinstance(m, Tomography)), None)
    return None


def dense_svd_bytes(m: int, n: int) -> tuple[int, int]:
    """``(peak, kept)`` bytes of ``TomographySVD``'s dense SVD of an ``(m, n)`` matrix (module docstring)."""
    k = min(m, n)
    peak = 8 * (3 * m * n + m * k + n * n + 3.5 * k * k)
    kept = 4 * (m * k + n * n)
    return int(peak), int(kept)


def _measurement_numel(op: Any, x_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Elements of the measurement of one batch ``x_shape`` (real elements: complex counts twice)."""
    tomo = _tomography(op) if not isinstance(op, TomographySVD) else op.tomography
    b, c = x_shape[0], x_shape[1]
    if tomo is not None:
        return b * c * tomo.n_detectors * tomo.n_angles
    try:
        place = next(iter([*op.parameters(), *op.buffers()]), None) if isinstance(op, nn.Module) else None
        device = place.device if place is not None else torch.device("cpu")
        with torch.no_grad():
            y = op(torch.zeros(x_shape, dtype=dtype, device=device))
        return y.numel() * (2 if y.is_complex() else 1)
    except Exception:  # an operator that cannot run on zeros here: assume image-sized
        return math.prod(x_shape)


def _operator_parts(method: str, op: Any, x_shape: tuple[int, ...], batch: int,
                    itemsize: int) -> tuple[int, int, str]:  # fmt: skip
    """``(kept, setup, note)``: the operator's storage during sampling, a transient peak before it, words."""
    kept = _module_bytes(op)
    setup, note = 0, ""
    tomo = _tomography(op)
    if tomo is not None:
        h, w = tomo.image_size
        table = tomo.n_angles * h * w
        c = x_shape[1]
        # interpolation tables (two int64 indices, two weights) and back-projection temporaries
        kept += 24 * table + 4 * batch * c * table * itemsize
        if "svd" in METHODS[method].needs:
            m, n = tomo.n_angles * tomo.n_detectors, h * w
            peak, factors = dense_svd_bytes(m, n)
            kept += factors
            if tomo.geometry_key() not in TomographySVD._memory:
                setup = peak + 32 * table
                note = f"the dense SVD of the {m} x {n} CT matrix takes {format_bytes(setup)}"
            else:
                note = f"the dense SVD factors of the {m} x {n} CT matrix take {format_bytes(factors)}"
    return kept, setup, note


def estimate_memory(method: str, op: Any, x_shape: Sequence[int], prior: Prior, samples: int = 1,
                    dtype: torch.dtype = torch.float32, y_numel: int | None = None) -> MemoryEstimate:  # fmt: skip
    """The predicted peak of ``restore(y, op, prior, method, samples=samples)`` and its parts.

    Args:
        method: a key of ``METHODS``.
        op: the operator as the user gives it; a bare ``Tomography`` with a method that needs an
            SVD is predicted with the dense SVD that ``op.svd()`` would compute (without computing it).
        x_shape: the image shape ``(B, C, H, W)``.
        prior: the prior (its architecture sets the network's cost).
        samples: posterior samples per image (the batch is ``samples * B``).
        dtype: the dtype the sampler computes in.
        y_numel: elements of the measurement of one batch ``x_shape`` when known (else computed).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (B, C, H, W), got {x_shape}")
    b, c, h, w = x_shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    s = itemsize / 4
    batch = samples * b
    f = int(getattr(prior, "factor", 1) or 1)
    hp, wp = -(-h // f) * f, -(-w // f) * f
    pixels = hp * wp

    inner, groups = _inner(prior)
    mem_scale, _ = _network_scale(prior)
    kind = _kind(method)
    network = 0
    if mem_scale > 0:
        network = int(s * (NETWORK_FIXED_BYTES + mem_scale * NETWORK_BYTES_PER_PIXEL[kind] * pixels * batch * groups))
        network += _attention_bytes(prior, hp, wp, batch, itemsize) * (3 if kind != "forward" else 1)
    if y_numel is None:
        y_numel = _measurement_numel(op, x_shape, dtype)
    working = itemsize * (WORKING_COPIES * batch * c * pixels + MEASUREMENT_COPIES * samples * y_numel)
    kept, setup, note = _operator_parts(method, op, x_shape, batch, itemsize)
    process = PROCESS_BYTES + 2 * _module_bytes(prior)
    total = process + max(setup, kept + network + working)
    return MemoryEstimate(total=int(total), process=int(process), network=int(network), working=int(working),
                          operator=int(kept), setup=int(setup), note=note)  # fmt: skip


def predict_memory(method: str, op: Any, x_shape: Sequence[int], prior: Prior, samples: int = 1,
                   dtype: torch.dtype = torch.float32) -> int:  # fmt: skip
    """Predicted peak resident bytes of restoring images of ``x_shape`` with ``method`` (``estimate_memory``)."""
    return estimate_memory(method, op, x_shape, prior, samples, dtype).total


# -- which methods fit ------------------------------------------------------------------------------------


def _offers(op: Any, y: Tensor) -> set[str]:
    """What the operator offers the methods, counting a ``Tomography``'s dense SVD (``op.svd()``) as an SVD."""
    from .restore import _offers as offers

    out = offers(op, y)
    if isinstance(op, Tomography) and op.image_size[0] * op.image_size[1] <= MAX_SVD_PIXELS:
        out.add("svd")
    return out


def _runnable(op: Any, y: Tensor, prior: Prior) -> list[str]:
    """The methods whose needs ``op`` and ``prior`` meet, in ``FALLBACK_ORDER``."""
    offers = _offers(op, y)
    latent = isinstance(prior, LatentPrior)
    order = [m for m in FALLBACK_ORDER if m in METHODS] + [m for m in METHODS if m not in FALLBACK_ORDER]
    return [m for m in order
            if METHODS[m].needs - {"latent"} <= offers and ("latent" in METHODS[m].needs) == latent]  # fmt: skip


def _measurement(op: Any, x_shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    place = next(iter([*op.parameters(), *op.buffers()]), None) if isinstance(op, nn.Module) else None
    device = place.device if place is not None else torch.device("cpu")
    with torch.no_grad():
        return op(torch.zeros(x_shape, dtype=dtype, device=device))


def _fits(op: Any, y: Tensor, x_shape: tuple[int, ...], prior: Prior, samples: int, cap: int,
          dtype: torch.dtype) -> list[tuple[str, int]]:  # fmt: skip
    n = y.numel() * (2 if y.is_complex() else 1)
    out = []
    for m in _runnable(op, y, prior):
        total = estimate_memory(m, op, x_shape, prior, samples, dtype, y_numel=n).total
        if total <= cap:
            out.append((m, total))
    return out


def fitting_methods(op: Any, y: Tensor | None, x_shape: Sequence[int], prior: Prior, samples: int = 2,
                    cap: int | None = None, dtype: torch.dtype = torch.float32) -> list[str]:  # fmt: skip
    """The methods that run with ``op`` and ``prior`` and are predicted within ``cap``, in ``FALLBACK_ORDER``.

    ``y``: the measurement (``None``: ``op`` of zeros); ``cap``: bytes, default ``default_cap()``.
    """
    x_shape = tuple(int(v) for v in x_shape)
    cap = default_cap() if cap is None else int(cap)
    y = _measurement(op, x_shape, dtype) if y is None else y
    return [m for m, _ in _fits(op, y, x_shape, prior, samples, cap, dtype)]


def check_memory(method: str, op: Any, x_shape: Sequence[int], prior: Prior, samples: int = 1,
                 cap: int | None = None, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
    """Raise a one-line ``ValueError`` when ``method`` is predicted to need more than ``cap`` bytes.

    The message gives the prediction, names the methods that run with this operator and
    prior and fit (with their predictions), and the largest number of samples with which
    ``method`` itself would fit.  ``cap`` defaults to ``default_cap()`` (half the machine's memory).
    """
    x_shape = tuple(int(v) for v in x_shape)
    cap = default_cap() if cap is None else int(cap)
    est = estimate_memory(method, op, x_shape, prior, samples, dtype)
    if est.total <= cap:
        return
    y = _measurement(op, x_shape, dtype)
    fits = [(m, t) for m, t in _fits(op, y, x_shape, prior, samples, cap, dtype) if m != method]
    fewer = next((k for k in range(samples - 1, 0, -1)
                  if estimate_memory(method, op, x_shape, prior, k, dtype).total <= cap), None)  # fmt: skip
    b, c, h, w = x_shape
    images = f"a {h}x{w} image" if b == 1 else f"{b} {h}x{w} images"
    what = f"{samples} sample{'s' if samples != 1 else ''} of {images}"
    why = f" ({est.note})" if est.note else ""
    msg = (f"{method} would need about {format_bytes(est.total)} for {what}{why}, over the memory cap of "
           f"{format_bytes(cap)} (--max-memory to change)")  # fmt: skip
    if fits:
        msg += "; methods that fit: " + ", ".join(f"{m} ({format_bytes(t)})" for m, t in fits)
    if fewer is not None:
        msg += f"; or {method} with --samples {fewer}"
    elif not fits:
        ones = _fits(op, y, x_shape, prior, 1, cap, dtype) if samples > 1 else []
        if ones:
            msg += "; with --samples 1 these fit: " + ", ".join(f"{m} ({format_bytes(t)})" for m, t in ones)
        else:
            msg += "; no method fits even one sample: use a smaller image or raise the cap"
    raise ValueError(msg)


# -- time ----------------------------------------------------------------------------------------------


def network_calls(method: str, steps: int) -> int:
    """Denoiser calls per posterior sample of ``method`` at ``steps`` noise levels with its default knobs."""
    knobs = METHODS[method].knobs
    if method == "score_ald":
        return int(knobs["steps_per_level"]) * steps + 1
    if method == "daps":
        return int(knobs["ode_steps"]) * steps  # an upper bound: one call per level at the lowest levels
    if method == "pnp_dm":
        return int(knobs["inner_steps"]) * steps  # an upper bound: one call where rho is at the prior's sigma_min
    if method == "repaint":
        jl, jn = int(knobs["jump_length"]), int(knobs["jump_n_sample"])
        return steps + jl * (jn - 1) * len(range(0, steps - jl, jl))
    if method == "ddnm":
        return steps * max(1, int(knobs["travel_repeat"]))
    return steps


def seconds_per_call(prior: Prior, x_shape: Sequence[int], batch: int = 1, method: str = "ddrm") -> float:
    """Predicted seconds of one denoiser call of ``method`` (its kind, see the module docstring) on a
    batch of ``batch`` images of ``x_shape``'s size, on the 2-core machine the constants come from."""
    h, w = int(x_shape[-2]), int(x_shape[-1])
    f = int(getattr(prior, "factor", 1) or 1)
    mp = (-(-h // f) * f) * (-(-w // f) * f) / 1e6
    _, groups = _inner(prior)
    _, time_scale = _network_scale(prior)
    kind = _kind(method)
    if kind == "latent":
        per = LATENT_SECONDS_PER_MEGAPIXEL
    else:
        per = SECONDS_PER_MEGAPIXEL * (BACKWARD_TIME if kind == "backward" else 1.0)
    return CALL_SECONDS + per * time_scale * mp * batch * groups


#: seconds of one ``A`` plus ``A^T`` of a direct (non-FFT) blur per pixel: ``a + b * taps``, fitted to
#: 13x13 and 25x25 'valid' Gaussian blurs of 256x256 and 512x512 images on the 2-core CPU above
#: when they ran by conv2d / conv_transpose2d (an upper bound for the kernels that still run directly)
BLUR_PAIR_SECONDS = (2.2e-7, 4.3e-10)
#: the same for kernels above ``operators.blur.FFT_KERNEL_PIXELS``, applied by the FFT: 1.6e-8 to 5.3e-8
#: measured for 13x13 and 25x25 kernels on 256x256 and 512x512 images; the larger value is used
BLUR_FFT_PAIR_SECONDS = 5.3e-8
#: methods that solve with conjugate gradients on operators without an SVD (``cg_iters`` per step)
CG_METHODS = frozenset({"diffpir", "pigdm"})


def operator_seconds(method: str, op: Any, x_shape: Sequence[int], steps: int, samples: int,
                     knobs: dict[str, Any] | None = None) -> float:  # fmt: skip
    """Predicted seconds spent in ``op`` by ``method``'s conjugate gradients: ``cg_iters`` pairs of
    ``A`` and ``A^T`` per step, for a blur without an SVD (other operators: 0, not modelled)."""
    from .operators import Blur

    if method not in CG_METHODS or getattr(op, "has_svd", False) or not isinstance(op, Blur):
        return 0.0
    cg = int({**METHODS[method].knobs, **(knobs or {})}.get("cg_iters", 0))
    b, c, h, w = (int(v) for v in x_shape)
    from .operators.blur import FFT_KERNEL_PIXELS

    taps = int(op.kernel.shape[-2]) * int(op.kernel.shape[-1])
    a, per_tap = BLUR_PAIR_SECONDS
    per_pixel = BLUR_FFT_PAIR_SECONDS if taps > FFT_KERNEL_PIXELS else a + per_tap * taps
    return (steps + 1) * cg * samples * b * c * h * w * per_pixel


def predict_seconds(method: str, x_shape: Sequence[int], prior: Prior, steps: int, samples: int,
                    op: Any = None, knobs: dict[str, Any] | None = None) -> float:  # fmt: skip
    """Predicted seconds of a restore (``x_shape``'s batch ``B`` times ``samples``): its network calls,
    plus the operator's share in conjugate gradients when ``op`` is given (:func:`operator_seconds`)."""
    batch = samples * int(x_shape[0])
    net = network_calls(method, steps) * seconds_per_call(prior, x_shape, batch, method)
    return net + (0.0 if op is None else operator_seconds(method, op, x_shape, steps, samples, knobs))


def default_steps_samples(method: str, x_shape: Sequence[int], prior: Prior, budget_seconds: float = 60.0,
                          op: Any = None, knobs: dict[str, Any] | None = None) -> tuple[int, int]:  # fmt: skip
    """``(steps, samples)`` for a restore that takes about ``budget_seconds`` (``predict_seconds``).

    Samples: 4 (else 3) when the method's default steps fit the budget with that many (small
    images), otherwise 2.  Steps: with 2 samples, as many as fit, at most the method's default
    (``METHODS[method].steps``) and at least its floor (``STEP_FLOORS``; the floor wins over the
    budget).  Depends only on the shapes, the method, the prior's architecture and, when
    given, the operator (a blur without an SVD adds its conjugate gradients) and the knobs.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    default = METHODS[method].steps
    floor = min(STEP_FLOORS.get(method, 1), default)
    for samples in (4, 3):
        if predict_seconds(method, x_shape, prior, default, samples, op, knobs) <= budget_seconds:
            return default, samples
    steps = default
    while steps > floor and predict_seconds(method, x_shape, prior, steps, 2, op, knobs) > budget_seconds:
        steps -= 1
    return steps, 2
