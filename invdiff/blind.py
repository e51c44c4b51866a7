"""Blind deblurring: estimate the blur kernel and the image together.

``y = k * x + n`` with ``k`` unknown (``operators.BlindBlur``).  The method is an
expectation-maximisation loop around the diffusion prior, in the spirit of Fast
Diffusion EM (Laroche, Almansa & Coupete, WACV 2024), with the kernel step of the
classical MAP literature (Cho & Lee 2009; Xu, Zheng & Jia 2013; Pan et al. 2014):

1. **Start** (``classical_kernel``): a coarse-to-fine MAP estimate with an L0
   gradient prior on the image (Xu et al. 2013, "Unnatural L0 sparse
   representation"; the half-quadratic solver of Pan et al. 2014), which avoids
   the trivial "no blur" solution a natural-image prior falls into at the
   coarse scales.  Alone, with BM3D deblurring, it is the classical blind
   baseline of ``python -m benchmarks blind``.
2. **E-step**: a posterior sample of ``x`` given the current kernel, drawn by a
   non-blind sampler on the 'valid' blur (``Blur(k, padding="valid")``: no
   periodic-border assumption on a real photo).  A sample, not a mean: a mean is
   blurrier than the truth, and a kernel fitted to it shrinks towards no blur.
3. **M-step** (``estimate_kernel``): the kernel given that image, by ridge
   regression in the gradient domain (``min_k ||grad(x) * k - grad(y)||^2 +
   gamma ||k||^2``), clipped to be non-negative, normalised to sum 1, cleaned of
   values below a tenth of its maximum (Cho & Lee; Pan et al.) and centred.
4. **Gaussian snap** (``snap``): an estimate that an anisotropic Gaussian fits to
   ``SNAP_NCC`` is replaced by the fit (five numbers instead of K^2 noisy ones):
   the parametric fast path for defocus-like blur.  Camera shake stays free-form.

Four EM rounds are the default (``BlindBlur(em_iters=4)``): on 192x192 crops the
kernel's correlation with the truth kept rising through the fourth round (camera,
motion kernel: 0.73 after the start, 0.80, 0.83, 0.84, 0.85, then flat;
anisotropic Gaussian: 0.86, 0.93, 0.97, 0.99, 0.99).

Why this method and not BlindDPS, GibbsDDRM or BIRD: BlindDPS needs a second
diffusion prior trained on kernels and 1000 DPS steps with gradients through the
network (hours per image on a CPU); GibbsDDRM runs DDRM and so needs the blur's
SVD, i.e. a periodic image, which a photo is not; BIRD optimises the chain's
initial noise by back-propagating through the whole chain.  The EM loop needs
nothing from the prior but ``denoise``, serves every sampler for a linear operator
without an SVD (``methods_for_blind``), and costs ``em_iters + 1`` non-blind runs;
its kernel prior is positivity, unit sum, a support bound, a ridge term and the
Gaussian family, with no weights to download.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .methods import METHODS
from .operators import BlindBlur, Blur
from .operators.blur import transfer_function

# ----------------------------------------------------------------------------- kernel maths


def _gradients(t: Tensor) -> list[Tensor]:
    """Forward differences of ``(C, H, W)`` along rows and columns (each one pixel shorter)."""
    return [t[:, 1:, :] - t[:, :-1, :], t[:, :, 1:] - t[:, :, :-1]]


def _normal_equations(x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Normal equations ``G kf = b`` of ``y = valid(x, kf)`` (correlation with the flipped kernel).

    ``x`` ``(C, H, W)``, ``y`` ``(C, H - size + 1, W - size + 1)``.  ``b`` is exact;
    ``G`` is the Toeplitz approximation ``G[j, j'] = R(j' - j)`` by the autocorrelation
    ``R`` of ``x`` (the boundary terms of the exact Gram matrix are dropped, as every
    FFT-based kernel estimator does).
    """
    c, h, w = x.shape
    # by the FFT on a canvas padded by the kernel's size, so no correlation below `size` wraps around
    ph, pw = h + size, w + size
    X = torch.fft.rfft2(x, s=(ph, pw))
    # b[j] = sum_n x[n + j] y[n]: the correlation of x with y
    b = torch.fft.irfft2(X * torch.fft.rfft2(y, s=(ph, pw)).conj(), s=(ph, pw)).sum(0)[:size, :size]
    # R(d) = sum_n x[n] x[n + d] for |d| < size, zero outside the image
    r = torch.fft.irfft2(X * X.conj(), s=(ph, pw)).sum(0)
    d = torch.arange(-(size - 1), size, device=x.device)
    R = r[d[:, None] % ph, d[None, :] % pw]  # (2 size - 1, 2 size - 1), R[d + size - 1]
    j = torch.arange(size, device=x.device)
    jr, jc = (j[:, None].expand(size, size).reshape(-1), j[None, :].expand(size, size).reshape(-1))
    G = R[(jr[None, :] - jr[:, None]) + size - 1, (jc[None, :] - jc[:, None]) + size - 1]
    return G, b.reshape(-1)


def estimate_kernel(x: Tensor, y: Tensor, size: int, gamma: float = 0.5) -> Tensor:
    """MAP kernel ``(size, size)`` of ``y = valid(k * x)`` given the image ``x``: non-negative, summing to 1.

    ``x`` ``(C, H, W)`` and ``y`` ``(C, H - size + 1, W - size + 1)`` in data units.
    Solves ``min_k ||grad x * k - grad y||^2 + gamma * mean(diag G) ||k||^2`` in the
    gradient domain, where the data term is best conditioned (Cho & Lee 2009), then
    clips negative values and normalises, as Pan et al. (2014) do.  ``gamma`` is
    relative to the image's gradient energy (``G``'s mean diagonal), so it does not
    depend on the image's size or contrast; 0.5 was chosen on camera and astronaut
    crops with Gaussian and camera-shake kernels (a projected solve onto the simplex,
    and smaller ``gamma``, gave noisier kernels).  The solve is a dense
    ``size^2 x size^2`` system: 31x31 kernels take a fraction of a second.
    """
    x = x.double()
    y = y.double()
    n = size * size
    G = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    b = torch.zeros(n, dtype=torch.float64, device=x.device)
    for gx, gy in zip(_gradients(x), _gradients(y)):
        Gi, bi = _normal_equations(gx, gy, size)
        G += Gi
        b += bi
    scale = G.diagonal().mean().clamp(min=1e-12)
    A = G / scale + gamma * torch.eye(n, dtype=G.dtype, device=G.device)
    kf = torch.linalg.solve(A, b / scale).clamp(min=0)
    if kf.sum() <= 0:  # no positive response at all: no evidence of blur
        kf = torch.zeros(n, dtype=torch.float64, device=x.device)
        kf[n // 2] = 1.0
    kf = kf / kf.sum()
    return kf.reshape(size, size).flip(-2, -1).float()  # the flipped (correlation) kernel back to a convolution


def clean_kernel(k: Tensor, threshold: float = 0.1) -> Tensor:
    """Zero values below ``threshold * max``, keep the connected component(s) holding most mass, renormalise.

    The clean-up of Cho & Lee (2009) and Pan et al. (2014): least squares leaves a
    floor of small positive values that, summed over a large support, blurs the
    image the sampler restores.
    """
    from scipy import ndimage

    a = k.double().cpu().numpy()
    a = np.where(a >= threshold * a.max(), a, 0.0)
    labels, n = ndimage.label(a > 0, structure=np.ones((3, 3)))
    if n > 1:
        mass = ndimage.sum(a, labels, index=np.arange(1, n + 1))
        keep = np.isin(labels, 1 + np.nonzero(mass >= 0.1 * mass.max())[0])
        a = np.where(keep, a, 0.0)
    return torch.from_numpy(a / a.sum()).to(k)


def centre_kernel(k: Tensor) -> Tensor:
    """``k`` moved by whole pixels so its centre of mass is nearest the middle (the image moves the other way).

    The move is clamped to what keeps the kernel's nonzero support inside the window, so
    no mass falls off one side or wraps around to the other.
    """
    size_y, size_x = k.shape[-2:]
    m = k.double() / k.double().sum()
    rows, cols = torch.nonzero(m.sum(1) > 0)[:, 0], torch.nonzero(m.sum(0) > 0)[:, 0]
    iy, ix = torch.arange(size_y, dtype=torch.float64), torch.arange(size_x, dtype=torch.float64)
    sy = round(size_y // 2 - float((m.sum(1) * iy).sum()))
    sx = round(size_x // 2 - float((m.sum(0) * ix).sum()))
    sy = max(-int(rows.min()), min(sy, size_y - 1 - int(rows.max())))
    sx = max(-int(cols.min()), min(sx, size_x - 1 - int(cols.max())))
    return torch.roll(k, shifts=(sy, sx), dims=(-2, -1))  # nothing wraps: the shift keeps the support inside


def resize_kernel(k: Tensor, size: int) -> Tensor:
    """``k`` resampled to ``(size, size)`` (bilinear), non-negative, summing to 1."""
    out = F.interpolate(k[None, None].double(), size=(size, size), mode="bilinear", align_corners=True)[0, 0]
    out = out.clamp(min=0)
    if out.sum() <= 0:
        out = torch.zeros(size, size, dtype=torch.float64)
        out[size // 2, size // 2] = 1
    return (out / out.sum()).to(k)


def kernel_ncc(a: Tensor, b: Tensor) -> float:
    """Normalised cross-correlation of two kernels, maximised over shifts (1: equal up to a shift and a scale).

    Blind deblurring determines a kernel up to a translation (the image moves the other way), so
    kernel errors are reported shift-invariantly, as in Levin et al. (2009) and Pan et al. (2014).
    """
    a, b = a.double().cpu(), b.double().cpu()
    ph, pw = b.shape[-2] - 1, b.shape[-1] - 1
    corr = F.conv2d(F.pad(a[None, None], (pw, pw, ph, ph)), b[None, None])
    return float(corr.max() / (a.norm() * b.norm()).clamp(min=1e-300))


def gaussian_family(size: int, sy: float, sx: float, theta: float, cy: float = 0.0, cx: float = 0.0) -> Tensor:
    """Anisotropic Gaussian kernel ``(size, size)`` summing to 1: stds ``sy, sx`` along axes turned by ``theta``."""
    t = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = t[:, None] - cy, t[None, :] - cx
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * yy + s * xx, -s * yy + c * xx
    g = torch.exp(-0.5 * ((u / max(sy, 1e-3)) ** 2 + (v / max(sx, 1e-3)) ** 2))
    return g / g.sum()


def fit_gaussian(k: Tensor) -> tuple[Tensor, float]:
    """The anisotropic Gaussian closest to ``k`` (least squares on the kernel's values) and its ``kernel_ncc``.

    The parametric fast path: a Gaussian (defocus, atmospheric or lens blur) is five
    numbers instead of ``K^2`` noisy ones.  Started from ``k``'s second moments.
    """
    from scipy.optimize import least_squares

    size = k.shape[-1]
    a = k.double().cpu()
    a = a / a.sum()
    t = torch.arange(size, dtype=torch.float64) - size // 2
    my, mx = float((a.sum(1) * t).sum()), float((a.sum(0) * t).sum())
    vy = float((a.sum(1) * (t - my) ** 2).sum())
    vx = float((a.sum(0) * (t - mx) ** 2).sum())
    cov = float((a * (t[:, None] - my) * (t[None, :] - mx)).sum())
    evals, evecs = np.linalg.eigh(np.array([[vy, cov], [cov, vx]]))
    theta0 = math.atan2(evecs[1, 1], evecs[0, 1])
    p0 = [math.sqrt(max(evals[1], 0.04)), math.sqrt(max(evals[0], 0.04)), theta0, my, mx]
    target = a.numpy()

    def residual(p: np.ndarray) -> np.ndarray:
        return (gaussian_family(size, *p).numpy() - target).ravel()

    lo, hi = [0.2, 0.2, -2 * math.pi, -size / 2, -size / 2], [size, size, 2 * math.pi, size / 2, size / 2]
    p = least_squares(residual, np.clip(p0, lo, hi), bounds=(lo, hi)).x
    g = gaussian_family(size, *p).to(k)
    return g, kernel_ncc(g, k)


# ----------------------------------------------------------------------------- classical start


def l0_deconvolve(y: Tensor, k: Tensor, lam: float, beta_max: float = 1e5) -> Tensor:
    """``argmin_x ||k * x - y||^2 + lam ||grad x||_0`` by half-quadratic splitting (Xu et al. 2013).

    ``y`` ``(C, H, W)``; circular model on ``y`` mirror-padded by the kernel's size
    (cropped back), the FFT solve of Pan et al. (2014).
    """
    c, h, w = y.shape
    p = k.shape[-1]
    yp = F.pad(y[None].double(), (p, p, p, p), mode="reflect")[0] if min(h, w) > p else y.double()
    H, W = yp.shape[-2:]
    K = transfer_function(k.double(), (H, W))[..., : W // 2 + 1]  # real-input FFTs: half the spectrum
    dx = torch.zeros(H, W, dtype=torch.float64)
    dx[0, 0], dx[0, -1] = -1, 1
    dy = torch.zeros(H, W, dtype=torch.float64)
    dy[0, 0], dy[-1, 0] = -1, 1
    Dx, Dy = torch.fft.rfft2(dx), torch.fft.rfft2(dy)
    KtY = K.conj() * torch.fft.rfft2(yp)
    KtK = K.abs() ** 2
    DtD = Dx.abs() ** 2 + Dy.abs() ** 2
    x = yp.clone()
    beta = 2 * lam
    while beta < beta_max:
        # gradients of x (circular, matching Dx, Dy), hard-thresholded jointly
        gx = torch.roll(x, -1, dims=-1) - x
        gy = torch.roll(x, -1, dims=-2) - x
        small = (gx**2 + gy**2).sum(0, keepdim=True) < lam / beta
        gx = torch.where(small, 0.0, gx)
        gy = torch.where(small, 0.0, gy)
        num = KtY + beta * (Dx.conj() * torch.fft.rfft2(gx) + Dy.conj() * torch.fft.rfft2(gy))
        x = torch.fft.irfft2(num / (KtK + beta * DtD), s=(H, W))
        beta *= 2
    if yp.shape != y.shape:
        x = x[:, p : p + h, p : p + w]
    return x.to(y.dtype)


def _valid_part(y: Tensor, size: int) -> Tensor:
    """The part of a same-size blur ``y`` ``(C, H, W)`` that is a 'valid' blur of an image of ``y``'s size."""
    r = size // 2
    return y[:, r : y.shape[1] - r, r : y.shape[2] - r]


def classical_kernel(
    y: Tensor, size: int, lam: float = 4e-3, iters: int = 5, gamma: float = 0.5, threshold: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Coarse-to-fine blind kernel estimate with the L0 gradient prior: ``(kernel, image)``.

    ``y`` ``(C, H, W)`` (colour is estimated on its luminance; the kernel is shared).
    The pyramid halves the area per level (factor ``sqrt(2)`` per side) down to a
    3x3 kernel; each level runs ``iters`` rounds of ``l0_deconvolve`` and
    ``estimate_kernel``, and its kernel, upsampled, starts the next.
    """
    gray = y.double().mean(0, keepdim=True) if y.shape[0] > 1 else y.double()
    sizes = [size]
    while sizes[-1] > 3:
        s = int(round(sizes[-1] / math.sqrt(2)))
        s = max(3, s + 1 - s % 2)  # odd
        if s == sizes[-1]:
            break
        sizes.append(s)
    sizes = sizes[::-1]
    k = None
    x = gray
    for s in sizes:
        factor = s / size
        if factor < 1:
            hs, ws = max(int(round(gray.shape[1] * factor)), s + 2), max(int(round(gray.shape[2] * factor)), s + 2)
            ys = F.interpolate(gray[None], size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)[0]
        else:
            ys = gray
        if k is None:
            k = torch.zeros(s, s, dtype=torch.float64)
            k[s // 2, s // 2] = 1.0
        else:
            k = resize_kernel(k, s)
        lam_s = lam
        for _ in range(iters):
            x = l0_deconvolve(ys, k, lam_s)
            k = estimate_kernel(x, _valid_part(ys, s), s, gamma=gamma).double()
            k = clean_kernel(k, threshold)
            lam_s = max(lam_s / 1.1, 1e-4)
    k = centre_kernel(k)
    return k.float(), x.float()


# ----------------------------------------------------------------------------- the EM loop


def methods_for_blind() -> list[str]:
    """The methods that serve ``BlindBlur``: pixel samplers for a linear operator without an SVD."""
    return [name for name, m in METHODS.items() if m.needs <= {"linear"}]


def check_blind_method(method: str) -> None:
    """A one-line ``ValueError`` unless ``method`` can estimate a blur kernel (``methods_for_blind``)."""
    serve = methods_for_blind()
    if method not in serve:
        raise ValueError(f"method {method!r} cannot estimate a blur kernel (BlindBlur, --kernel auto: the blind "
                         f"model has no SVD); use --method {', '.join(serve)} (default diffpir)")  # fmt: skip


def estimate_blind(
    y: Tensor, blind: BlindBlur, run: Callable[[Blur], Any],
) -> tuple[Tensor, list[Tensor], Any]:
    """Kernel of one blurry image ``y`` ``(1, C, H, W)`` by EM around ``run(op)``, a ``restore`` of one sample.

    Returns the kernel ``(K, K)``, its estimates from the start on, and the E-step's
    last result (drawn with the kernel before the final one).
    """
    size = blind.kernel_size
    if blind.kernel_init is not None:
        k = blind.kernel_init.to(y.device, torch.float32)
    else:
        k = snap(classical_kernel(y[0].float(), size)[0])
    history = [k.clone()]
    res = None
    for _ in range(blind.em_iters):
        res = run(Blur(k, padding="valid"))
        x = res.samples[0, 0].float()  # a posterior sample of the image (larger than y by K - 1)
        k = snap(centre_kernel(clean_kernel(estimate_kernel(x, y[0].float(), size))))
        history.append(k.clone())
    return k, history, res


#: ``kernel_ncc`` above which a free-form estimate is replaced by its Gaussian fit (``snap``)
SNAP_NCC = 0.97


def snap(k: Tensor, threshold: float = SNAP_NCC) -> Tensor:
    """``k``'s anisotropic Gaussian fit (centred) when it explains ``k`` to ``threshold``, else ``k``.

    A free-form estimate of a Gaussian blur carries pixel noise the fit removes; a
    camera-shake kernel fits a Gaussian worse and stays free-form.
    """
    g, ncc = fit_gaussian(k)
    if ncc < threshold:
        return k
    return centre_kernel(g)
