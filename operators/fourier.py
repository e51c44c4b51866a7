"""A real orthonormal Fourier basis of ``R^(H x W)`` and centred FFTs.

The unitary DFT ``X = F x`` of a real image is Hermitian, ``X(-k) = conj X(k)``.
Pairing each frequency ``k`` with ``-k`` and keeping, for one representative
of each pair, ``sqrt(2) Re X(k)`` and ``sqrt(2) Im X(k)`` (and only
``Re X(k)`` for the self-conjugate frequencies ``k = -k``, where ``X`` is real)
gives ``H * W`` real coordinates of the same norm as ``x``: a real orthogonal
map.  Coordinates are laid out as ``[self-conjugate | pair real | pair imag]``.

An operator diagonalised by the DFT, ``X -> K(k) X(k)`` with ``K`` Hermitian
(the transfer function of a real kernel), multiplies each pair's complex
coordinate by ``K(k)``: a rotation by ``arg K(k)`` times ``|K(k)|``.  The
rotation goes into ``U`` and ``|K|`` becomes the singular values, each
appearing twice for a ``k / -k`` pair.

Half precision: torch has no float16 / bfloat16 FFT on the CPU (and no bfloat16
complex dtype anywhere), so every FFT here runs in float32 / complex64 for half
inputs; the real-to-real helpers cast their result back to the input's dtype,
the complex-valued ones (``fft2c``, ``ifft2c``, ``coords_spectrum``) return complex64.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "fourier_coords",
    "fourier_image",
    "spectrum_coords",
    "coords_spectrum",
    "magnitude_coords",
    "phase_coords",
    "rotate_coords",
    "fft2c",
    "ifft2c",
    "fourier_index",
    "fft_real_dtype",
]

#: half-precision dtypes whose FFTs run in float32 / complex64
_HALF = (torch.float16, torch.bfloat16)


def fft_real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype an FFT of ``dtype`` data runs in: float32 for half precision (real or complex32), else itself."""
    if dtype in _HALF or dtype == torch.complex32:
        return torch.float32
    return dtype


def _fft_in(x: Tensor) -> Tensor:
    """``x`` upcast for torch.fft: half -> float32, complex32 -> complex64; other dtypes unchanged."""
    if x.dtype in _HALF:
        return x.float()
    if x.dtype == torch.complex32:
        return x.to(torch.complex64)
    return x


@functools.lru_cache(maxsize=64)
def _index_cpu(h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    k1 = torch.arange(h).reshape(-1, 1)
    k2 = torch.arange(w).reshape(1, -1)
    flat = (k1 * w + k2).reshape(-1)
    neg = ((-k1) % h * w + (-k2) % w).reshape(-1)
    self_conj = flat[flat == neg]
    # representative of each pair: the smaller flat index
    rep = flat[flat < neg]
    rep_neg = neg[flat < neg]
    order = torch.cat([self_conj, rep, rep_neg])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(h * w)
    return self_conj, rep, rep_neg, inverse


def fourier_index(h: int, w: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flat frequency indices on an ``h x w`` grid: ``(self_conj, rep, rep_neg, inverse)``.

    ``self_conj`` (S,) are the frequencies with ``k = -k``; ``rep`` (P,) one
    frequency of each pair and ``rep_neg`` (P,) its negative;
    ``cat([self_conj, rep, rep_neg])[inverse] = arange(h * w)``.
    ``S + 2 P = h w``.
    """
    return tuple(t.to(device) for t in _index_cpu(int(h), int(w)))  # type: ignore[return-value]


def spectrum_coords(X: Tensor) -> Tensor:
    """Hermitian spectrum ``(..., H, W)`` (complex) -> real coordinates ``(..., H*W)``."""
    h, w = X.shape[-2:]
    s, rep, _, _ = fourier_index(h, w, X.device)
    X = X.flatten(-2)
    xs = X.index_select(-1, s).real
    xp = X.index_select(-1, rep) * math.sqrt(2.0)
    return torch.cat([xs, xp.real, xp.imag], dim=-1)


def coords_spectrum(z: Tensor, size: tuple[int, int]) -> Tensor:
    """Real coordinates ``(..., H*W)`` -> Hermitian spectrum ``(..., H, W)`` (complex)."""
    h, w = size
    s, rep, _, inverse = fourier_index(h, w, z.device)
    n_s, n_p = s.numel(), rep.numel()
    zs, zr, zi = _fft_in(z).split([n_s, n_p, n_p], dim=-1)
    xp = torch.complex(zr, zi) / math.sqrt(2.0)
    xs = torch.complex(zs, torch.zeros_like(zs))
    X = torch.cat([xs, xp, xp.conj()], dim=-1).index_select(-1, inverse)
    return X.reshape(*z.shape[:-1], h, w)


def fourier_coords(x: Tensor) -> Tensor:
    """``V^T``: real image ``(..., H, W)`` -> orthonormal real Fourier coordinates ``(..., H*W)``, in ``x``'s dtype."""
    return spectrum_coords(torch.fft.fft2(_fft_in(x), norm="ortho")).to(x.dtype)


def fourier_image(z: Tensor, size: tuple[int, int]) -> Tensor:
    """``V``: coordinates ``(..., H*W)`` -> real image ``(..., H, W)`` in ``z``'s dtype; inverse of ``fourier_coords``."""
    return torch.fft.ifft2(coords_spectrum(z, size), norm="ortho").real.to(z.dtype)


def magnitude_coords(K: Tensor) -> Tensor:
    """``|K|`` of a Hermitian transfer function ``(..., H, W)`` in coordinate layout ``(..., H*W)``."""
    h, w = K.shape[-2:]
    s, rep, _, _ = fourier_index(h, w, K.device)
    K = K.flatten(-2)
    ks = K.index_select(-1, s).real.abs()
    kp = K.index_select(-1, rep).abs()
    return torch.cat([ks, kp, kp], dim=-1)


def phase_coords(K: Tensor) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of ``arg K`` in coordinate layout ``(..., H*W)``, for ``rotate_coords``.

    Self-conjugate frequencies take the sign of ``Re K``; where ``K = 0`` the
    phase is 1 (any unit phase is a valid singular vector there).
    """
    h, w = K.shape[-2:]
    s, rep, _, _ = fourier_index(h, w, K.device)
    K = K.flatten(-2)
    ks = K.index_select(-1, s).real
    sign = torch.where(ks < 0, -torch.ones_like(ks), torch.ones_like(ks))
    kp = K.index_select(-1, rep)
    mag = kp.abs()
    nz = mag > 0
    safe = torch.where(nz, mag, torch.ones_like(mag))
    cos = torch.where(nz, kp.real / safe, torch.ones_like(mag))
    sin = torch.where(nz, kp.imag / safe, torch.zeros_like(mag))
    return torch.cat([sign, cos, cos], dim=-1), torch.cat([torch.zeros_like(sign), sin, sin], dim=-1)


def rotate_coords(z: Tensor, cos: Tensor, sin: Tensor, size: tuple[int, int], inverse: bool = False) -> Tensor:
    """Multiply the spectrum represented by ``z`` by the unit phase ``cos + i sin`` (or its conjugate).

    ``cos`` and ``sin`` are cast to ``z``'s dtype (they may be cached in another one).
    """
    cos, sin = cos.to(z.dtype), sin.to(z.dtype)
    h, w = size
    s, rep, _, _ = fourier_index(h, w, z.device)
    n_s, n_p = s.numel(), rep.numel()
    zs, zr, zi = z.split([n_s, n_p, n_p], dim=-1)
    # J z: the coordinates of i * X on the pairs, 0 on the self-conjugate ones
    jz = torch.cat([torch.zeros_like(zs), -zi, zr], dim=-1)
    return cos * z + (-sin if inverse else sin) * jz


def fft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2-D FFT over the last two dims (fastMRI: ifftshift -> fft2 -> fftshift).

    Half-precision input is transformed in float32: the result is complex64.
    """
    x = torch.fft.ifftshift(_fft_in(x), dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(X: Tensor) -> Tensor:
    """Inverse of ``fft2c`` (half precision or complex32 in: complex64 out)."""
    X = torch.fft.ifftshift(_fft_in(X), dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(X, norm="ortho"), dim=(-2, -1))
