"""Classical baselines for the image benchmark: oracle-tuned Tikhonov and Wiener, TV, bicubic, biharmonic.

Every function maps a measurement ``y`` ``(1, ...)`` to an image ``(1, C, H, W)``.
The regularised ones take their weight ``lam``; ``oracle`` picks, for one image,
the weight on a log grid that maximises PSNR against the ground truth. That is
an upper bound on what the method reaches with a weight chosen without the
truth, and the tables say so.

* ``tikhonov``: ``argmin ||A x - y||^2 + lam ||x||^2`` through the operator's SVD,
  ``x = V diag(s / (s^2 + lam)) U^T y``.
* ``wiener``: scikit-image's Wiener-Hunt deconvolution (Laplacian regulariser,
  ``balance = lam``) for circular blurs.
* ``tv``: ``argmin 1/2 ||A x - y||^2 + lam TV(x)`` by deepinv's proximal gradient
  descent with its ``TVPrior`` (isotropic TV).
* ``bicubic``: ``torch.nn.functional.interpolate`` upsampling of a low-resolution ``y``.
* ``biharmonic``: scikit-image's ``inpaint_biharmonic`` on the missing pixels.
* ``saturation_inverse``: the closed-form inverse of ``Saturation`` on ``y``.
* ``bm3d_denoise`` / ``bm3d_deblur``: BM3D (Dabov et al. 2007; CBM3D for RGB denoising) and its deblurring
  (regularised inverse, then BM3D on the colored noise; Mäkinen et al. 2020) from the
  ``bm3d`` package, with the noise std as ``lam`` (oracle over a grid around the true
  one).  ``bm3d`` is free for non-commercial use only, so it is a benchmark extra
  (``pip install 'invdiff[bench]'``), never a dependency of invdiff; without it these
  rows are left out, and the tables say so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invdiff.metrics import psnr
from invdiff.operators import Blur, Downsampling, Identity, Inpainting, Operator, Saturation

#: log grid of regularisation weights searched by the oracle (Tikhonov, Wiener)
LAMBDAS = tuple(float(v) for v in np.logspace(-6, 1, 29))
#: coarser grid for TV, whose every weight costs an iterative solve
TV_LAMBDAS = tuple(float(v) for v in np.logspace(-3.5, -0.5, 7))


def tikhonov(op: Operator, y: Tensor, lam: float) -> Tensor:
    """``argmin_x ||A x - y||^2 + lam ||x||^2 = V diag(s / (s^2 + lam)) U^T y`` for an SVD operator."""
    w = op.Ut(y)
    s = op._s(w)
    return op.V(op._pad(s * w / (s**2 + lam), op.n_in(y)))


def wiener(op: Blur, y: Tensor, lam: float) -> Tensor:
    """Wiener-Hunt deconvolution (``skimage.restoration.wiener``, Laplacian regulariser, ``balance = lam``).

    For circular blurs (scikit-image works in the periodic Fourier basis); one
    kernel for all channels or one per channel.
    """
    from skimage.restoration import wiener as sk_wiener

    if not (isinstance(op, Blur) and op.padding == "circular"):
        raise ValueError(f"wiener needs a circular Blur, got {op!r}")
    kernel = op.kernel.detach().cpu().double().numpy()
    img = y.detach().cpu().double().numpy()[0]
    out = [sk_wiener(img[c], kernel[min(c, kernel.shape[0] - 1)], lam, clip=False) for c in range(img.shape[0])]
    return torch.from_numpy(np.stack(out)[None]).to(y)


def tv(op: Operator, y: Tensor, lam: float, iters: int = 100, inner_iters: int = 20) -> Tensor:
    """``argmin 1/2 ||A x - y||^2 + lam TV(x)``: deepinv's PGD with ``TVPrior`` (warm-started inner solver).

    Step size ``1 / ||A||^2`` (largest singular value for SVD operators, power
    iteration otherwise); ``iters`` outer iterations from ``A^T y``.
    """
    import deepinv

    from invdiff.operators import to_deepinv
    from invdiff.samplers.common import operator_norm

    x0 = op.adjoint(y)
    if getattr(op, "has_svd", False):
        norm2 = float(op.singulars.max()) ** 2
    else:
        norm2 = float(operator_norm(op, x0).max()) ** 2
    model = deepinv.optim.optim_builder(
        iteration="PGD",
        prior=deepinv.optim.TVPrior(n_it_max=inner_iters),
        data_fidelity=deepinv.optim.data_fidelity.L2(),
        params_algo={"stepsize": 1.0 / norm2, "lambda": lam},
        max_iter=iters,
        early_stop=False,
    )
    with torch.no_grad():
        return model(y, to_deepinv(op))


def bicubic(op: Downsampling, y: Tensor) -> Tensor:
    """Bicubic upsampling of the low-resolution ``y`` by the operator's factor (half-pixel centres)."""
    if not isinstance(op, Downsampling):
        raise ValueError(f"bicubic upsampling needs a Downsampling operator, got {op!r}")
    return F.interpolate(y, scale_factor=op.factor, mode="bicubic", align_corners=False)


def biharmonic(op: Inpainting, y: Tensor) -> Tensor:
    """``skimage.restoration.inpaint_biharmonic`` of the pixels the inpainting mask hides."""
    from skimage.restoration import inpaint_biharmonic

    if not isinstance(op, Inpainting):
        raise ValueError(f"biharmonic inpainting needs an Inpainting operator, got {op!r}")
    mask = op.mask.detach().cpu().expand(-1, *y.shape[1:])[0].numpy() == 0  # (C, H, W), True where missing
    img = y.detach().cpu().double().numpy()[0]
    out = np.stack([inpaint_biharmonic(img[c], mask[min(c, mask.shape[0] - 1)]) for c in range(img.shape[0])])
    return torch.from_numpy(out[None]).to(y)


def saturation_inverse(op: Saturation, y: Tensor) -> Tensor:
    """``Saturation.inverse`` of ``y``, with ``y`` clipped into the inverse's domain ``|y| < 1 / tanh(alpha)``."""
    if not isinstance(op, Saturation):
        raise ValueError(f"saturation_inverse needs a Saturation operator, got {op!r}")
    bound = (1.0 - 1e-6) / float(np.tanh(op.alpha))
    return op.inverse(y.clamp(-bound, bound))


#: noise stds BM3D is run with (the oracle picks one; the benchmarks' true std is 0.02 or 0.1)
BM3D_SIGMAS = tuple(float(v) for v in np.geomspace(0.005, 0.4, 13))


def bm3d_available() -> bool:
    """Whether the ``bm3d`` package (the ``bench`` extra) is installed."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def _bm3d():
    import bm3d

    # bm3d's deblurring calls bm4d's PSD helper, which uses np.trapz, removed in numpy 2.0; its
    # replacement np.trapezoid computes the same integral.
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    return bm3d


def _hwc(y: Tensor) -> np.ndarray:
    return y.detach().cpu().double().numpy()[0].transpose(1, 2, 0)  # (H, W, C)


def _from_hwc(a: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.atleast_3d(a).transpose(2, 0, 1))[None]).to(like)


def bm3d_denoise(op: Operator, y: Tensor, sigma: float) -> Tensor:
    """BM3D of a noisy image ``y`` (``Identity`` operator) at noise std ``sigma``: CBM3D (``bm3d_rgb``,
    block matching on luminance) for RGB images, as a user would run it, plain BM3D per channel otherwise."""
    if tuple(op.x_shape(y)) != tuple(y.shape):
        raise ValueError(f"bm3d_denoise needs y to be the noisy image itself (Identity), got {op!r}")
    bm3d = _bm3d()
    img = _hwc(y)
    if img.shape[2] == 3:
        return _from_hwc(bm3d.bm3d_rgb(img, sigma), y)
    return _from_hwc(np.stack([bm3d.bm3d(img[..., c], sigma) for c in range(img.shape[2])], -1), y)


def bm3d_deblur(op: Blur, y: Tensor, sigma: float) -> Tensor:
    """BM3D deblurring (``bm3d.bm3d_deblurring``) of a circular blur at noise std ``sigma``, per channel.

    ``bm3d_deblurring`` models ``y = psf (*) x`` circularly with the PSF's centre at
    ``(kh - 1) / 2``, as :class:`~invdiff.operators.Blur` does for odd kernel sides.
    """
    if not (isinstance(op, Blur) and op.padding == "circular"):
        raise ValueError(f"bm3d_deblur needs a circular Blur, got {op!r}")
    kh, kw = op.kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"bm3d_deblur needs odd kernel sides (centre (k - 1) / 2), got {kh}x{kw}")
    bm3d = _bm3d()
    kernel = op.kernel.detach().cpu().double().numpy()
    img = _hwc(y)
    # Each channel as (H, W, 1): bm3d_deblurring's last stage rejects its own 2-D pilot for a 2-D image.
    out = [np.reshape(bm3d.bm3d_deblurring(img[..., c : c + 1], sigma, kernel[min(c, kernel.shape[0] - 1)]),
                      img.shape[:2]) for c in range(img.shape[2])]  # fmt: skip
    return _from_hwc(np.stack(out, -1), y)


def oracle(
    solve: Callable[[float], Tensor], lambdas: Sequence[float], x: Tensor, data_range: float = 1.0
) -> tuple[Tensor, float, bool]:
    """The best ``solve(lam)`` over ``lambdas`` by PSNR against the truth ``x`` ``(1, C, H, W)``.

    Outputs are clipped to ``[0, data_range]`` before scoring.  Returns the
    estimate, its weight, and whether that weight lies on the edge of the grid
    (then a wider grid might do better).
    """
    best, best_lam, best_psnr = None, None, -float("inf")
    for lam in lambdas:
        est = solve(lam).clamp(0, data_range)
        p = float(psnr(est, x, data_range)[0])
        if p > best_psnr:
            best, best_lam, best_psnr = est, lam, p
    assert best is not None and best_lam is not None
    edge = best_lam in (lambdas[0], lambdas[-1])
    return best, best_lam, edge


def baselines_for(op: Operator) -> dict[str, dict[str, Any]]:
    """The classical baselines that apply to ``op``: name -> ``{"fn", "lambdas", "description"}``.

    ``fn(op, y, lam)`` (``lam`` ignored where ``lambdas`` is ``None``).
    """
    out: dict[str, dict[str, Any]] = {}
    if isinstance(op, Inpainting):
        out["biharmonic"] = {"fn": lambda o, y, lam: biharmonic(o, y), "lambdas": None,
                             "description": "biharmonic inpainting (scikit-image)"}  # fmt: skip
    if isinstance(op, Downsampling):
        out["bicubic"] = {"fn": lambda o, y, lam: bicubic(o, y), "lambdas": None,
                          "description": "bicubic upsampling (torch)"}  # fmt: skip
    if isinstance(op, Blur) and op.padding == "circular":
        out["wiener"] = {"fn": wiener, "lambdas": LAMBDAS,
                         "description": "Wiener-Hunt, Laplacian regulariser, oracle balance (scikit-image)"}  # fmt: skip
        if bm3d_available() and op.kernel.shape[-1] % 2 and op.kernel.shape[-2] % 2:
            out["bm3d"] = {"fn": bm3d_deblur, "lambdas": BM3D_SIGMAS,
                           "description": "BM3D deblurring, oracle noise std (bm3d package)"}  # fmt: skip
    if isinstance(op, Identity) and bm3d_available():
        out["bm3d"] = {"fn": bm3d_denoise, "lambdas": BM3D_SIGMAS,
                       "description": "BM3D, oracle noise std (bm3d package)"}  # fmt: skip
    if getattr(op, "has_svd", False):
        out["tikhonov"] = {"fn": tikhonov, "lambdas": LAMBDAS,
                           "description": "Tikhonov through the SVD, oracle weight"}  # fmt: skip
    if getattr(op, "linear", False):
        out["tv"] = {"fn": tv, "lambdas": TV_LAMBDAS,
                     "description": "TV, proximal gradient (deepinv TVPrior), oracle weight"}  # fmt: skip
    if isinstance(op, Saturation):
        out["inverse"] = {"fn": lambda o, y, lam: saturation_inverse(o, y), "lambdas": None,
                          "description": "closed-form inverse of the saturation"}  # fmt: skip
    return out


#: the baseline the priors issue names per kind of task, for the margin table
REFERENCE = {"inpaint": ("biharmonic",), "deblur": ("bm3d", "wiener", "tikhonov"), "sr": ("bicubic",),
             "denoise": ("bm3d", "tikhonov"), "nonlinear": ("inverse",)}  # fmt: skip
