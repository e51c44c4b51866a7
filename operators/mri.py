"""Single-coil Cartesian MRI ``y = M * F x`` with the centred orthonormal FFT, and fastMRI-style masks.

Images are real ``(B, C, H, W)`` or complex ``(B, 2C, H, W)`` (channel pairs
real, imaginary); k-space is ``(B, 2C, H, W)`` (real, imaginary per channel),
zero where not measured, in centred layout (``fft2c``: ifftshift -> fft2 ->
fftshift, as in fastMRI).

SVD, complex input: ``F`` is unitary, so ``V^T = F`` (as a real map on the
real and imaginary parts), ``U = I`` and the singulars are the mask.

SVD, real input: ``F x`` is Hermitian, so the frequencies ``k`` and ``-k``
carry the same information.  In the real Fourier basis (``fourier.py``, of the
uncentred grid) a pair with mask values ``p = m(k)``, ``q = m(-k)`` has two
coordinates ``sqrt(2) Re X(k)``, ``sqrt(2) Im X(k)``, both with singular value
``sqrt((p^2 + q^2) / 2)`` -- 1 if both are measured, ``1/sqrt(2)`` if one is,
0 if none -- and left singular vectors ``(p e_Re(k) + q e_Re(-k)) / n`` and
``(p e_Im(k) - q e_Im(-k)) / n`` (``n = sqrt(p^2 + q^2)``).  A self-conjugate
frequency (``X`` real there) has one coordinate with singular ``m(k)``.  The
measurement space (``2 H W`` per channel) is larger than the image space
(``H W``): here ``U`` is an isometry from ``R^(C H W)`` onto a subspace of
k-space that contains the range of ``A``, and ``Ut`` is its transpose (an
orthogonal projection onto it followed by the coordinates).  ``forward``,
``adjoint`` and ``pinv`` are exact; ``solve`` adds the component of ``y``
outside that subspace (where ``A A^T = 0``).

Multi-coil (``MultiCoilMRI``): coil ``j`` sees the image weighted by its
sensitivity ``S_j``, ``y_j = M * fft2c(S_j x)`` (SENSE, Pruessmann et al. 1999),
k-space ``(B, 2 C N_c, H, W)``.  ``A^T A = sum_j S_j^H F^H M F S_j`` is no longer
diagonal in one known basis, so the operator is linear without an SVD; samplers
invert it with conjugate gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._shape import ShapedSVDOperator, as_4d_mask, fmt, require_batch, require_image
from .base import LinearOperator, _col
from .fourier import fft2c, fft_real_dtype, fourier_coords, fourier_image, fourier_index, ifft2c


class MRI(ShapedSVDOperator):
    """Single-coil Cartesian MRI ``y = M * fft2c(x)`` (k-space as real, imaginary channels).

    Args:
        mask: k-space mask in centred layout, ``(H, W)`` or ``(B, 1, H, W)``
            (one mask per image), 1 = measured; e.g. from ``mri_mask``.
        complex_input: ``False``: ``x`` is real ``(B, C, H, W)``;
            ``True``: ``x`` is complex as ``(B, 2C, H, W)`` channel pairs.

    ``y`` is ``(B, 2C, H, W)``; ``singulars`` is ``(C*H*W,)`` (real) or
    ``(2*C*H*W,)`` (complex), or with a leading batch for per-sample masks.
    """

    mask: Tensor

    def __init__(self, mask: Tensor, complex_input: bool = False) -> None:
        super().__init__()
        mask = as_4d_mask(mask, "MRI")
        if mask.shape[1] != 1:
            raise ValueError(f"MRI mask must be (H, W) or (B, 1, H, W), got shape {fmt(mask.shape)}")
        self.register_buffer("mask", mask)
        self.complex_input = bool(complex_input)

    # -- shapes --------------------------------------------------------------
    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "MRI")
        if self.complex_input and shape[1] % 2:
            raise ValueError(
                f"MRI(complex_input=True) expects (real, imaginary) channel pairs, but the image {fmt(shape)} "
                "has an odd number of channels"
            )
        if tuple(self.mask.shape[2:]) != tuple(shape[2:]):
            raise ValueError(f"mask has shape {fmt(self.mask.shape)} but the image is {fmt(shape)}")
        require_batch(self.mask.shape[0], shape[0], "mask", "MRI")

    def _check_y(self, y: Tensor) -> None:
        shape = require_image(y.shape, "MRI")
        if shape[1] % 2:
            raise ValueError(f"MRI k-space is (B, 2C, H, W) (real, imaginary channels), got {fmt(shape)}")

    def x_shape_svd(self, y: Tensor) -> tuple[int, ...]:
        self._check_y(y)
        b, c2, h, w = y.shape
        return (b, c2 if self.complex_input else c2 // 2, h, w)

    def _nc(self) -> int:
        """Number of complex channels."""
        c = self.image_shape[0]
        return c // 2 if self.complex_input else c

    # -- mask in the real Fourier coordinates (real input) -----------------------
    def _pair_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(m_self, alpha, beta, n)``: ``(Bm, 1, S)``, ``(Bm, 1, P)`` x 3 (see module docstring)."""

        def build() -> tuple[Tensor, ...]:
            _, h, w = self.image_shape
            s, rep, rep_neg, _ = fourier_index(h, w, self._device)
            mu = torch.fft.ifftshift(self.mask.to(**self._factory()), dim=(-2, -1)).flatten(-2)  # uncentred
            p, q = mu.index_select(-1, rep), mu.index_select(-1, rep_neg)
            n = torch.sqrt(p**2 + q**2)
            nz = n > 0
            safe = torch.where(nz, n, torch.ones_like(n))
            alpha = torch.where(nz, p / safe, torch.full_like(n, math.sqrt(0.5)))
            beta = torch.where(nz, q / safe, torch.full_like(n, math.sqrt(0.5)))
            return mu.index_select(-1, s), alpha, beta, n

        return self._cached("pairs", build)  # type: ignore[return-value]

    def _pair_singulars(self) -> Tensor:
        """``sqrt((p^2 + q^2) / 2)`` per pair ``(Bm, 1, P)``, from the mask values themselves.

        (``n / sqrt(2)`` rounds to ``1 +- 1 ulp`` for a pair measured twice; this is exactly 1.)
        """

        def build() -> Tensor:
            _, h, w = self.image_shape
            _, rep, rep_neg, _ = fourier_index(h, w, self._device)
            mu = torch.fft.ifftshift(self.mask.to(**self._factory()), dim=(-2, -1)).flatten(-2)
            p, q = mu.index_select(-1, rep), mu.index_select(-1, rep_neg)
            return torch.sqrt((p**2 + q**2) / 2)

        return self._cached("pair_singulars", build)  # type: ignore[return-value]

    # -- SVD -----------------------------------------------------------------
    def Vt(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        self._see(x.shape, x)
        b, c, h, w = x.shape
        if self.complex_input:
            xf = x.to(fft_real_dtype(x.dtype))  # torch has no bfloat16 complex: half runs in float32
            X = fft2c(torch.complex(xf[:, 0::2], xf[:, 1::2]))
            return torch.stack([X.real, X.imag], dim=2).reshape(b, -1).to(x.dtype)
        return fourier_coords(torch.fft.ifftshift(x, dim=(-2, -1))).reshape(b, -1)

    def V(self, z: Tensor) -> Tensor:
        c, h, w = self.image_shape
        self._check_vec(z, c * h * w, "V")
        b = z.shape[0]
        if self.complex_input:
            zf = z.to(fft_real_dtype(z.dtype)).reshape(b, c // 2, 2, h, w)
            x = ifft2c(torch.complex(zf[:, :, 0], zf[:, :, 1]))
            return torch.stack([x.real, x.imag], dim=2).reshape(b, c, h, w).to(z.dtype)
        return torch.fft.fftshift(fourier_image(z.reshape(b, c, h * w), (h, w)), dim=(-2, -1))

    def Ut(self, y: Tensor) -> Tensor:
        self._see(self.x_shape_svd(y), y)
        b, c2, h, w = y.shape
        if self.complex_input:
            return y.reshape(b, -1)
        s, rep, rep_neg, _ = fourier_index(h, w, y.device)
        alpha, beta = (t.to(y.dtype) for t in self._pair_weights()[1:3])
        yu = torch.fft.ifftshift(y, dim=(-2, -1)).reshape(b, c2 // 2, 2, h * w)
        yr, yi = yu[:, :, 0], yu[:, :, 1]
        # coordinates on the left singular vectors (module docstring)
        w_self = yr.index_select(-1, s)
        w_re = alpha * yr.index_select(-1, rep) + beta * yr.index_select(-1, rep_neg)
        w_im = alpha * yi.index_select(-1, rep) - beta * yi.index_select(-1, rep_neg)
        return torch.cat([w_self, w_re, w_im], dim=-1).reshape(b, -1)

    def U(self, wv: Tensor) -> Tensor:
        c, h, w = self.image_shape
        b = wv.shape[0]
        if self.complex_input:
            self._check_vec(wv, c * h * w, "U")
            return wv.reshape(b, c, h, w)
        self._check_vec(wv, c * h * w, "U")
        s, rep, _, inverse = fourier_index(h, w, wv.device)
        alpha, beta = (t.to(wv.dtype) for t in self._pair_weights()[1:3])
        w_self, w_re, w_im = wv.reshape(b, c, h * w).split([s.numel(), rep.numel(), rep.numel()], dim=-1)
        # k-space (uncentred, flat) laid out as [self | rep | rep_neg], then permuted back
        yr = torch.cat([w_self, alpha * w_re, beta * w_re], dim=-1).index_select(-1, inverse)
        yi = torch.cat([torch.zeros_like(w_self), alpha * w_im, -beta * w_im], dim=-1).index_select(-1, inverse)
        y = torch.stack([yr, yi], dim=2).reshape(b, 2 * c, h, w)
        return torch.fft.fftshift(y, dim=(-2, -1))

    def _singulars(self) -> Tensor:
        c, h, w = self.image_shape
        bm = self.mask.shape[0]
        if self.complex_input:
            m = self.mask.to(**self._factory()).expand(bm, c, h, w).reshape(bm, -1)
        else:
            m_self, _, _, _ = self._pair_weights()
            half = self._pair_singulars()
            s = torch.cat([m_self, half, half], dim=-1)  # (Bm, 1, H*W)
            m = s.expand(bm, c, h * w).reshape(bm, -1)
        return m[0] if bm == 1 else m

    def solve(self, y: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
        """``(a A A^T + b I)^-1 y``; for real input the part of ``y`` outside ``U``'s range is divided by ``b``."""
        out = super().solve(y, a, b)
        if self.complex_input:
            return out
        rest = y - self.U(self.Ut(y))
        bcol = _col(b, rest.reshape(rest.shape[0], -1))
        return out + (rest.reshape(rest.shape[0], -1) / bcol).reshape(rest.shape)

    def repeat_batch(self, n: int) -> "MRI":
        if self.mask.shape[0] == 1:
            return self
        return self._copy_seen(MRI(self.mask.repeat(n, 1, 1, 1), self.complex_input))  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"mask={fmt(self.mask.shape)}, complex_input={self.complex_input}"


class MultiCoilMRI(LinearOperator):
    """Multi-coil Cartesian MRI ``y_j = M * fft2c(S_j x)``, ``j = 1..N_c`` (Pruessmann et al. 1999, eq. 3).

    Args:
        mask: k-space mask in centred layout, ``(H, W)`` or ``(B, 1, H, W)``, 1 = measured.
        maps: coil sensitivities ``S``, complex ``(N_c, H, W)`` or ``(B, N_c, H, W)`` (one set per
            image); a real tensor means real maps.  E.g. from ``estimate_sensitivities``.
        complex_input: ``False``: ``x`` is real ``(B, C, H, W)``; ``True``: complex as
            ``(B, 2C, H, W)`` channel pairs (real, imaginary).

    ``y`` is ``(B, 2 C N_c, H, W)``, laid out channel-major, then coil, then
    (real, imaginary): ``y[:, 2 (c N_c + j) + {0, 1}]`` is coil ``j`` of channel ``c``.
    Zero where not measured.  For real input the adjoint is the real part of
    ``sum_j S_j^H F^H M y_j`` (the adjoint of embedding ``R^N`` in ``C^N``).
    One coil with ``S = 1`` is ``MRI`` (which has an SVD).
    """

    mask: Tensor
    maps: Tensor

    def __init__(self, mask: Tensor, maps: Tensor, complex_input: bool = False) -> None:
        super().__init__()
        mask = as_4d_mask(mask, "MultiCoilMRI")
        if mask.shape[1] != 1:
            raise ValueError(f"MultiCoilMRI mask must be (H, W) or (B, 1, H, W), got shape {fmt(mask.shape)}")
        if not isinstance(maps, Tensor):
            maps = torch.as_tensor(maps)
        if maps.dim() == 3:
            maps = maps[None]
        if maps.dim() != 4:
            raise ValueError(
                f"MultiCoilMRI: coil maps must be complex (N_c, H, W) or (B, N_c, H, W), got shape {fmt(maps.shape)}"
            )
        if not maps.is_complex():
            maps = maps.to(torch.float64 if maps.dtype == torch.float64 else torch.float32) + 0j
        if not torch.isfinite(torch.view_as_real(maps)).all():
            raise ValueError("MultiCoilMRI: coil maps contain NaN or infinite values")
        if tuple(maps.shape[-2:]) != tuple(mask.shape[-2:]):
            raise ValueError(
                f"coil maps have shape {fmt(maps.shape)} but the mask is {fmt(mask.shape)}; both must be H x W"
            )
        self.register_buffer("mask", mask)
        # Stored as (..., 2) real pairs so that module.to(dtype) / .double() convert them without
        # dropping the imaginary part (casting a complex buffer to a real dtype would).
        precision = torch.complex128 if maps.dtype == torch.complex128 else torch.complex64
        self.register_buffer("maps", torch.view_as_real(maps.to(precision)).clone())
        self.complex_input = bool(complex_input)

    @property
    def coils(self) -> int:
        """Number of coils ``N_c``."""
        return self.maps.shape[1]

    def coil_maps(self, like: Tensor | None = None) -> Tensor:
        """Complex sensitivities ``(Bm, N_c, H, W)`` (in ``like``'s precision and device)."""
        maps = self.maps
        if like is not None:
            real = like.real.dtype if like.is_complex() else like.dtype
            maps = maps.to(device=like.device, dtype=real if real in (torch.float32, torch.float64) else torch.float32)
        return torch.view_as_complex(maps.contiguous())

    # -- shapes --------------------------------------------------------------
    def check(self, x_shape: tuple[int, ...]) -> None:
        shape = require_image(x_shape, "MultiCoilMRI")
        if self.complex_input and shape[1] % 2:
            raise ValueError(
                f"MultiCoilMRI(complex_input=True) expects (real, imaginary) channel pairs, but the image "
                f"{fmt(shape)} has an odd number of channels"
            )
        if tuple(self.mask.shape[2:]) != tuple(shape[2:]):
            raise ValueError(f"mask has shape {fmt(self.mask.shape)} but the image is {fmt(shape)}")
        if tuple(self.maps.shape[2:4]) != tuple(shape[2:]):
            raise ValueError(
                f"coil maps have shape {fmt(self.maps.shape[:4])} (B, N_c, H, W) but the image is {fmt(shape)}"
            )
        require_batch(self.mask.shape[0], shape[0], "mask", "MultiCoilMRI")
        require_batch(self.maps.shape[0], shape[0], "set of coil map", "MultiCoilMRI")

    def _check_y(self, y: Tensor) -> None:
        shape = require_image(y.shape, "MultiCoilMRI")
        if shape[1] % (2 * self.coils):
            raise ValueError(
                f"multi-coil k-space is (B, 2 C N_c, H, W) with N_c = {self.coils} coils (real, imaginary per coil), "
                f"got {fmt(shape)}"
            )
        if tuple(shape[2:]) != tuple(self.mask.shape[2:]):
            raise ValueError(f"k-space has shape {fmt(shape)} but the mask is {fmt(self.mask.shape)}")

    def x_shape(self, y: Tensor) -> tuple[int, ...]:
        self._check_y(y)
        b, c2n, h, w = y.shape
        c = c2n // (2 * self.coils)
        return (b, 2 * c if self.complex_input else c, h, w)

    # -- the operator ----------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        b, _, h, w = x.shape
        dtype, x = x.dtype, x.to(fft_real_dtype(x.dtype))  # half precision runs in float32, returns in half
        z = torch.complex(x[:, 0::2], x[:, 1::2]) if self.complex_input else x.to(_complex_of(x.dtype))
        s = self.coil_maps(x)[:, None]  # (Bm, 1, N_c, H, W)
        k = fft2c(s * z[:, :, None]) * self.mask.to(x)[:, :, None]  # (B, C, N_c, H, W)
        return torch.stack([k.real, k.imag], dim=3).reshape(b, -1, h, w).to(dtype)

    def adjoint(self, y: Tensor) -> Tensor:
        shape = self.x_shape(y)
        self.check(shape)
        b, _, h, w = y.shape
        dtype, y = y.dtype, y.to(fft_real_dtype(y.dtype))
        yk = y.reshape(b, -1, self.coils, 2, h, w)
        k = torch.complex(yk[:, :, :, 0], yk[:, :, :, 1]) * self.mask.to(y)[:, :, None]
        z = (self.coil_maps(y)[:, None].conj() * ifft2c(k)).sum(dim=2)  # (B, C, H, W)
        if self.complex_input:
            return torch.stack([z.real, z.imag], dim=2).reshape(shape).to(dtype)
        return z.real.to(dtype)

    def repeat_batch(self, n: int) -> "MultiCoilMRI":
        if self.mask.shape[0] == 1 and self.maps.shape[0] == 1:
            return self
        mask = self.mask.repeat(n, 1, 1, 1) if self.mask.shape[0] > 1 else self.mask
        maps = self.coil_maps()
        maps = maps.repeat(n, 1, 1, 1) if maps.shape[0] > 1 else maps
        return MultiCoilMRI(mask, maps, self.complex_input)

    def extra_repr(self) -> str:
        return f"mask={fmt(self.mask.shape)}, coils={self.coils}, complex_input={self.complex_input}"


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


#: fastMRI's pairing of acceleration and centre fraction (Zbontar et al. 2018, sec. 4.2)
FASTMRI_CENTER_FRACTIONS: dict[int, float] = {4: 0.08, 8: 0.04}


def mri_mask(
    shape: Sequence[int],
    acceleration: float = 4,
    center_fraction: float = 0.08,
    kind: str = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """fastMRI-style Cartesian column mask in centred layout (1 = measured).

    The ``round(W * center_fraction)`` central columns are always measured;
    of the others, ``"random"`` keeps each with probability
    ``(W / acceleration - n_center) / (W - n_center)`` and ``"equispaced"``
    keeps every ``r``-th one from a random offset, with ``r`` chosen so that
    about ``W / acceleration`` columns are measured in all (fastMRI's
    ``RandomMaskFunc`` / ``EquiSpacedMaskFunc``).

    ``shape`` is ``(H, W)`` (returns ``(1, 1, H, W)``) or an image shape
    ``(B, C, H, W)`` (returns ``(B, 1, H, W)``, an independent mask per image).
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        b, (h, w) = 1, shape
    elif len(shape) == 4:
        b, h, w = shape[0], shape[2], shape[3]
    else:
        raise ValueError(f"mri_mask: shape must be (H, W) or (B, C, H, W), got {fmt(shape)}")
    if acceleration < 1:
        raise ValueError(f"acceleration must be at least 1, got {acceleration}")
    if not 0.0 <= center_fraction <= 1.0:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction}")
    if kind not in ("random", "equispaced"):
        raise ValueError(f"kind must be 'random' or 'equispaced', got {kind!r}")
    n_center = int(round(w * center_fraction))
    if n_center > w / acceleration:
        raise ValueError(
            f"center_fraction={center_fraction} already measures {n_center} of {w} columns, more than "
            f"W / acceleration = {w / acceleration:.1f}; lower center_fraction or acceleration"
        )
    device = generator.device if generator is not None else None
    cols = torch.zeros(b, w, device=device)
    if kind == "random":
        prob = (w / acceleration - n_center) / max(w - n_center, 1)
        cols = (torch.rand(b, w, generator=generator, device=device) < prob).float()
    else:
        # spacing r such that n_center + (w - n_center) / r = w / acceleration
        spacing = (w - n_center) / (w / acceleration - n_center) if w / acceleration > n_center else float(w)
        for i in range(b):
            offset = torch.rand((), generator=generator, device=device).item() * spacing
            idx = torch.arange(offset, w, spacing).round().long().clamp(max=w - 1)
            cols[i, idx.to(cols.device)] = 1.0
    pad = (w - n_center + 1) // 2
    cols[:, pad : pad + n_center] = 1.0
    return cols[:, None, None, :].expand(b, 1, h, w).contiguous()
