"""Blur ``y = k * x`` (2-D convolution per channel) and blur-kernel helpers.

With circular padding the blur is diagonalised by the DFT and has an exact
SVD in the real Fourier basis of ``fourier.py`` (singulars ``|K(k)|``, the
phase of the transfer function ``K`` in ``U``).  Other paddings ("reflect",
"replicate", "valid") are plain linear operators with an exact adjoint.

Convolution, not correlation: ``y[n] = sum_m k[m] x[n + c - m]`` with the
kernel centre ``c = (kh // 2, kw // 2)``; a kernel with a single 1 at its
centre is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._shape import ShapedSVDOperator, fmt, require_image
from .fourier import fft_real_dtype, fourier_coords, fourier_image, magnitude_coords, phase_coords, rotate_coords

PADDINGS = ("circular", "reflect", "replicate", "valid")

#: kernels with more pixels than this are applied by the FFT (non-circular paddings): a 31x31 kernel on a
#: 256x256 image takes about 3 ms by the FFT, 30 ms by conv2d and 500 ms by conv_transpose2d on the CPU
FFT_KERNEL_PIXELS = 81


def gaussian_kernel(sigma: float, size: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Isotropic Gaussian blur kernel ``(size, size)`` summing to 1; ``size`` defaults to ``2 ceil(3 sigma) + 1``."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    size = 2 * math.ceil(3 * sigma) + 1 if size is None else int(size)
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype)


def motion_kernel(
    size: int, intensity: float = 0.5, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Random camera-shake kernel ``(size, size)`` summing to 1, reproducible under ``generator``.

    A random trajectory in the style of the motion kernels used by DPS (Chung
    et al. 2023; Borodenko's ``motionblur``): a path of Beta-distributed step
    lengths whose direction drifts by triangular-distributed turns (reversed
    with a Beta-distributed jitter probability), centred on its centre of
    mass, randomly rotated, rasterised on a twice-finer canvas, smoothed by a
    small Gaussian and averaged down to ``size``.  ``intensity`` in [0, 1]
    grows the path length and its curvature.
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
    device = generator.device if generator is not None else None
    eps = 0.1

    def uniform(lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator, device=device).item()

    def beta(a: int, b: int) -> float:
        # Beta(a, b) for integers: the a-th smallest of a + b - 1 uniforms
        u = torch.rand(a + b - 1, generator=generator, device=device, dtype=torch.float64)
        return u.sort().values[a - 1].item()

    def beta_1_30_below(c: float) -> float:
        # Beta(1, 30) conditioned on < c, by inverting its CDF 1 - (1 - x)^30
        return 1 - (1 - uniform() * (1 - (1 - min(c, 1.0)) ** 30)) ** (1 / 30)

    def triangular(lo: float, mode: float, hi: float) -> float:
        u = uniform()
        cut = (mode - lo) / (hi - lo)
        if u < cut:
            return lo + math.sqrt(u * (hi - lo) * (mode - lo))
        return hi - math.sqrt((1 - u) * (hi - lo) * (hi - mode))

    n2 = 2 * int(size)
    diagonal = math.sqrt(2.0) * n2
    # path length and step lengths
    max_len = 0.75 * diagonal * (uniform() + uniform(0.0, intensity**2))
    scale = (1 - intensity + eps) * diagonal
    steps: list[float] = []
    while sum(steps) < max_len and max_len > 1e-3:
        steps.append(beta_1_30_below(max_len / scale) * scale)  # Beta(1, 30) steps shorter than the path
    if not steps:
        steps = [0.0]
    # turning angles: a drift in one direction, reversed with probability `jitter`
    max_angle = uniform(0.0, intensity * math.pi)
    jitter = beta(2, 20)
    angles = [uniform(-max_angle, max_angle)]
    while len(angles) < len(steps):
        angle = triangular(0.0, intensity * max_angle, max_angle + eps)
        prev = math.copysign(1.0, angles[-1]) if angles[-1] != 0 else 0.0
        angles.append(-prev * angle if uniform() < jitter else prev * angle)
    # trajectory in the complex plane, centred and randomly rotated
    inc = torch.polar(torch.tensor(steps, dtype=torch.float64), torch.tensor(angles, dtype=torch.float64))
    path = torch.cumsum(inc, 0)
    rotation = uniform(0.0, math.pi)
    path = (path - path.mean()) * complex(math.cos(rotation), math.sin(rotation)) + complex(n2 / 2, n2 / 2)
    # rasterise: points every quarter pixel of arc length along the polyline, bilinear splatting
    arc = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((path[1:] - path[:-1]).abs(), 0)])
    s = torch.linspace(0, arc[-1].item(), max(int(arc[-1].item() * 4), 1) + 1, dtype=torch.float64)
    seg = torch.searchsorted(arc, s, right=True).clamp(1, max(len(arc) - 1, 1)) - 1
    if len(arc) > 1:
        frac = ((s - arc[seg]) / (arc[seg + 1] - arc[seg]).clamp(min=1e-12)).clamp(0, 1)
        dense = path[seg] + (path[seg + 1] - path[seg]) * frac
    else:
        dense = path
    px, py = dense.real - 0.5, dense.imag - 0.5  # pixel centres at integer + 1/2
    x0, y0 = px.floor(), py.floor()
    canvas = torch.zeros(n2 * n2, dtype=torch.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = (px - x0) if dx else (1 - (px - x0))
            wy = (py - y0) if dy else (1 - (py - y0))
            cx, cy = x0 + dx, y0 + dy
            ok = (cx >= 0) & (cx < n2) & (cy >= 0) & (cy < n2)
            canvas.index_add_(0, (cy[ok] * n2 + cx[ok]).long(), (wx * wy)[ok])
    canvas = canvas.reshape(1, 1, n2, n2)
    # smooth (Gaussian of std ~ 1% of the diagonal) and average down to size x size
    g = gaussian_kernel(max(0.01 * diagonal, 0.5), dtype=torch.float64)
    canvas = F.conv2d(F.pad(canvas, [g.shape[0] // 2] * 4), g[None, None])
    k = F.avg_pool2d(canvas, 2)[0, 0]
    if k.sum() <= 0:  # degenerate path: fall back to no blur
        k = torch.zeros(size, size, dtype=torch.float64)
        k[size // 2, size // 2] = 1.0
    return (k / k.sum()).to(dtype)


def transfer_function(kernel: Tensor, shape: tuple[int, int]) -> Tensor:
    """``DFT(k)`` on an ``(H, W)`` grid of a kernel ``(..., kh, kw)`` zero-padded with its centre at the origin.

    The circular blur's transfer function: ``y = IDFT(K * DFT(x))`` convolves with ``k``
    as ``Blur(k, padding="circular")`` does (complex, in the kernel's precision).
    """
    kh, kw = kernel.shape[-2:]
    kpad = kernel.new_zeros(*kernel.shape[:-2], *shape)
    kpad[..., :kh, :kw] = kernel
    return torch.fft.fft2(torch.roll(kpad, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1)))


def _pad_index(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """Source index of each position of a padded axis: ``(n + before + after,)``."""
    src = torch.arange(-before, n + after, device=device)
    if mode == "circular":
        return src % n
    if mode == "replicate":
        return src.clamp(0, n - 1)
    if n == 1:  # reflect
        return torch.zeros_like(src)
    period = 2 * n - 2
    s = src % period
    return torch.where(s >= n, period - s, s)


class Blur(ShapedSVDOperator):
    """Blur ``y = k * x`` per channel: ``(B, C, H, W) -> (B, C, H, W)`` (``valid``: ``H - kh + 1``, ...).

    Args:
        kernel: ``(kh, kw)`` shared by all channels, or ``(C, kh, kw)`` (also
            deepinv's ``(1, C, kh, kw)``) one per channel.
        padding: ``"circular"`` (SVD through the FFT, ``has_svd = True``),
            or ``"reflect"``, ``"replicate"``, ``"valid"`` (linear with an exact
            adjoint, ``has_svd = False``).

    The image size is learned from the data; the transfer function is built
    once per image size, dtype and device.  ``singulars`` (circular) is
    ``(C*H*W,)``: ``|K(k)|``, twice for each ``k / -k`` pair.
    """

    kernel: Tensor

    def __init__(self, kernel: Tensor, padding: str = "circular") -> None:
        super().__init__()
        kernel = torch.as_tensor(kernel)
        if kernel.dim() == 4 and kernel.shape[0] == 1:
            kernel = kernel[0]
        if kernel.dim() == 2:
            kernel = kernel[None]
        if kernel.dim() != 3:
            raise ValueError(f"kernel must be (kh, kw) or (C, kh, kw), got shape {fmt(kernel.shape)}")
        if not kernel.is_floating_point():
            kernel = kernel.float()
        if not torch.isfinite(kernel).all():
            raise ValueError("kernel contains NaN or infinite values")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.register_buffer("kernel", kernel)
        self.padding = padding
        self.has_svd = padding == "circular"

    # -- shapes --------------------------------------------------------------
    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "Blur")
        ck, kh, kw = self.kernel.shape
        if ck not in (1, shape[1]):
            raise ValueError(f"kernel has {ck} channels {fmt(self.kernel.shape)} but the image is {fmt(shape)}")
        if kh > shape[2] or kw > shape[3]:
            raise ValueError(f"kernel {kh}x{kw} is larger than the image {fmt(shape)}")

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        self._need_svd()
        return require_image(y.shape, "Blur")

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        if self.has_svd:
            return super().x_shape(y)
        b, c, h, w = require_image(y.shape, "Blur")
        if self.padding == "valid":
            return (b, c, h + self.kernel.shape[1] - 1, w + self.kernel.shape[2] - 1)
        return (b, c, h, w)

    def _need_svd(self) -> None:
        if not self.has_svd:
            raise ValueError(
                f"Blur with padding={self.padding!r} has no SVD; use padding='circular' for methods that need one"
            )

    # -- direct convolution (all paddings) --------------------------------------
    def _weight(self, like: Tensor) -> Tensor:
        return self.kernel.flip(-2, -1).to(like)[:, None]  # (Ck, 1, kh, kw) for conv2d's correlation

    def _fft_conv(self, t: Tensor, kernel: Tensor, crop: tuple[int, int, int, int]) -> Tensor:
        """Full linear convolution of ``t`` ``(B, C, h, w)`` with ``kernel`` ``(Ck, kh, kw)`` by the FFT, cropped."""
        kh, kw = kernel.shape[-2:]
        size = (t.shape[-2] + kh - 1, t.shape[-1] + kw - 1)
        dtype = fft_real_dtype(t.dtype)
        spec = torch.fft.rfft2(t.to(dtype), s=size) * torch.fft.rfft2(kernel.to(device=t.device, dtype=dtype), s=size)
        full = torch.fft.irfft2(spec, s=size)
        top, bottom, left, right = crop
        return full[..., top : size[0] - bottom, left : size[1] - right].to(t.dtype)

    def _conv(self, xp: Tensor) -> Tensor:
        """Valid convolution of a padded ``(B, C, Hp, Wp)`` tensor."""
        b, c = xp.shape[:2]
        _, kh, kw = self.kernel.shape
        if kh * kw > FFT_KERNEL_PIXELS:
            return self._fft_conv(xp, self.kernel, (kh - 1, kh - 1, kw - 1, kw - 1))
        wgt = self._weight(xp)
        if wgt.shape[0] == 1:
            out = F.conv2d(xp.reshape(b * c, 1, *xp.shape[2:]), wgt)
            return out.reshape(b, c, *out.shape[2:])
        return F.conv2d(xp, wgt, groups=c)

    def _conv_t(self, y: Tensor) -> Tensor:
        """Adjoint of ``_conv``: ``(B, C, h, w) -> (B, C, h + kh - 1, w + kw - 1)``.

        A full convolution with the flipped kernel: by the FFT for large kernels, else
        ``conv2d`` on the zero-padded input (torch's ``conv_transpose2d`` is an order of
        magnitude slower than ``conv2d`` on the CPU for large kernels).
        """
        b, c = y.shape[:2]
        _, kh, kw = self.kernel.shape
        if kh * kw > FFT_KERNEL_PIXELS:
            return self._fft_conv(y, self.kernel.flip(-2, -1), (0, 0, 0, 0))
        wgt = self._weight(y).flip(-2, -1)
        pad = (kw - 1, kw - 1, kh - 1, kh - 1)
        if wgt.shape[0] == 1:
            out = F.conv2d(F.pad(y.reshape(b * c, 1, *y.shape[2:]), pad), wgt)
            return out.reshape(b, c, *out.shape[2:])
        return F.conv2d(F.pad(y, pad), wgt, groups=c)

    def _pad_indices(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        _, kh, kw = self.kernel.shape
        rows = _pad_index(h, kh - 1 - kh // 2, kh // 2, self.padding, device)
        cols = _pad_index(w, kw - 1 - kw // 2, kw // 2, self.padding, device)
        return rows, cols

    def forward(self, x: Tensor) -> Tensor:
        if self.has_svd:
            return super().forward(x)
        self.check(x.shape)
        if self.padding == "valid":
            return self._conv(x)
        rows, cols = self._pad_indices(x.shape[2], x.shape[3], x.device)
        return self._conv(x[..., rows[:, None], cols[None, :]])

    def adjoint(self, y: Tensor) -> Tensor:
        if self.has_svd:
            return super().adjoint(y)
        b, c, h, w = self.x_shape(y)
        self.check((b, c, h, w))
        gp = self._conv_t(y)
        if self.padding == "valid":
            return gp
        # transpose of the padding gather: add each padded pixel back onto its source
        rows, cols = self._pad_indices(h, w, y.device)
        src = (rows[:, None] * w + cols[None, :]).reshape(-1)
        out = gp.new_zeros(b, c, h * w).index_add(2, src, gp.reshape(b, c, -1))
        return out.reshape(b, c, h, w)

    # -- SVD (circular) --------------------------------------------------------
    def transfer_function(self) -> Tensor:
        """``K = DFT(k)`` of the centred, zero-padded kernel: ``(Ck, H, W)`` complex (complex64 for half data)."""
        self._need_svd()

        def build() -> Tensor:
            _, h, w = self.image_shape
            factory = {"dtype": fft_real_dtype(self._dtype), "device": self._device}  # no half FFT on the CPU
            return transfer_function(self.kernel.to(**factory), (h, w))

        return self._cached("K", build)  # type: ignore[return-value]

    def _phase(self) -> tuple[Tensor, Tensor]:
        return self._cached("phase", lambda: phase_coords(self.transfer_function()))  # type: ignore[return-value]

    def Vt(self, x: Tensor) -> Tensor:
        self._need_svd()
        self.check(x.shape)
        self._see(x.shape, x)
        return fourier_coords(x).reshape(x.shape[0], -1)

    def V(self, z: Tensor) -> Tensor:
        self._need_svd()
        c, h, w = self.image_shape
        self._check_vec(z, c * h * w, "V")
        return fourier_image(z.reshape(z.shape[0], c, h * w), (h, w))

    def Ut(self, y: Tensor) -> Tensor:
        self._need_svd()
        self.check(y.shape)
        self._see(y.shape, y)
        cos, sin = self._phase()
        return rotate_coords(fourier_coords(y), cos, sin, y.shape[-2:], inverse=True).reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:
        self._need_svd()
        c, h, wd = self.image_shape
        self._check_vec(w, c * h * wd, "U")
        cos, sin = self._phase()
        return fourier_image(rotate_coords(w.reshape(w.shape[0], c, h * wd), cos, sin, (h, wd)), (h, wd))

    @property
    def singulars(self) -> Tensor:
        """``(C*H*W,)``: ``|K(k)|`` in the real Fourier coordinates (circular padding only)."""
        self._need_svd()
        return super().singulars

    def _singulars(self) -> Tensor:
        c, h, w = self.image_shape
        return magnitude_coords(self.transfer_function()).to(self._dtype).expand(c, h * w).reshape(-1)

    def extra_repr(self) -> str:
        return f"kernel={fmt(self.kernel.shape)}, padding={self.padding!r}"


#: the largest ``BlindBlur`` support: its kernel step solves a dense (K^2 x K^2) system, 250 MB at 75
MAX_BLIND_KERNEL = 75


#: ``BlindBlur``'s default ``check_margin``, in ``SpectralModel.nll``'s per-value units: the candidates that
#: restored better than the best-scoring one sat 0.009-0.018 above it on the blind benchmark's validation cases
CHECK_MARGIN = 0.02


class BlindBlur:
    """A blur whose kernel is unknown: ``invdiff.restore(y, BlindBlur(31), prior)`` estimates it with the image.

    Not an operator (it cannot be applied before its kernel is known): ``restore``
    estimates the kernel (``invdiff.blind``) and runs the sampler on
    ``Blur(kernel, padding="valid")``, the blurry photo as a 'valid' convolution of
    an image larger by ``kernel_size - 1``, cropped back to the photo's region.

    Args:
        kernel_size: odd side of the kernel's support (an upper bound on the blur's extent).
        init: optional starting kernel ``(kernel_size, kernel_size)`` (e.g. a Gaussian
            guess); it replaces the default candidates (the spectral Gaussian and line
            fits and the coarse-to-fine classical estimates) and the arc fit that would
            start the EM rounds: EM starts from ``init``.
        em_iters: rounds of (posterior sample given the kernel, kernel given the sample)
            after the start; 0 chooses among the starts alone.
        em_steps: noise levels of those rounds' sampler runs (default: the final run's).
        check_margin: the candidates (starts and rounds) whose spectral score
            (``invdiff.blind.SpectralModel.nll`` plus the charge for their free parameters)
            sits within this of the best are each restored (one sample; a round's kernel
            reuses the next round's run), and the one whose restoration, blurred by it, lies
            nearest the photo is used (``invdiff.blind.estimate_blind``).  0: the best score
            alone, with no extra runs.
    """

    def __init__(self, kernel_size: int = 31, init: Tensor | None = None, em_iters: int = 4,
                 em_steps: int | None = None, check_margin: float = CHECK_MARGIN) -> None:  # fmt: skip
        if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size!r}")
        if kernel_size > MAX_BLIND_KERNEL:
            raise ValueError(f"kernel_size {kernel_size} is above {MAX_BLIND_KERNEL} (the kernel step solves a "
                             f"size^2 x size^2 system); for a longer blur, downscale the photo first")  # fmt: skip
        self.kernel_size = int(kernel_size)
        if init is not None:
            init = torch.as_tensor(init, dtype=torch.float32)
            if init.shape != (self.kernel_size, self.kernel_size):
                raise ValueError(f"init must be ({kernel_size}, {kernel_size}), got {fmt(init.shape)}")
            if not torch.isfinite(init).all() or init.min() < 0 or init.sum() <= 0:
                raise ValueError("init must be finite and non-negative with a positive sum")
            init = init / init.sum()
        self.kernel_init = init
        if isinstance(em_iters, bool) or int(em_iters) != em_iters or em_iters < 0:
            raise ValueError(f"em_iters must be an integer >= 0, got {em_iters!r}")
        if em_steps is not None and (isinstance(em_steps, bool) or int(em_steps) != em_steps or em_steps < 1):
            raise ValueError(f"em_steps must be an integer >= 1, got {em_steps!r}")
        if isinstance(check_margin, bool) or not isinstance(check_margin, (int, float)) or not (
            math.isfinite(check_margin) and check_margin >= 0
        ):
            raise ValueError(f"check_margin must be a number >= 0, got {check_margin!r}")
        self.em_iters = int(em_iters)
        self.em_steps = None if em_steps is None else int(em_steps)
        self.check_margin = float(check_margin)

    def __call__(self, x: Tensor) -> Tensor:
        raise ValueError("BlindBlur has no kernel yet; pass it to invdiff.restore, which estimates the kernel")

    def __repr__(self) -> str:
        return f"BlindBlur(kernel_size={self.kernel_size})"
