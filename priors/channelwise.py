"""``ChannelwisePrior``: a ``C``-channel prior applied to each group of ``C`` channels of a ``kC``-channel image.

Complex MRI images are ``(B, 2, H, W)`` (real, imaginary).  A prior of real
gray images (``C = 1``) denoises them by folding the two parts into the batch,
``(B, 2, H, W) -> (2B, 1, H, W)``, and unfolding the result: the prior then says
that the real and the imaginary part are each, independently, an image it knows.

Limits, stated plainly: that is a model of images whose phase is (close to)
constant.  For images with a smoothly varying phase, remove the phase first --
``estimate_sensitivities`` puts the low-resolution phase into the coil maps, so
the image they explain is nearly real and non-negative, and a real-input
operator with the plain prior is then the better model (its imaginary part is
not a free image).  The two parts are denoised independently, so the prior
cannot couple them (no magnitude or phase statistics); a prior trained on
``[0, 1]`` images sees a negative real or imaginary part outside what it was
trained on, so ``data_range`` (which samplers clip to) should be widened only
knowingly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Prior, as_sigma


class ChannelwisePrior(Prior):
    """Denoise each group of ``prior.channels`` channels with ``prior``, the groups folded into the batch.

    Args:
        prior: a prior of ``C``-channel images (``C = prior.channels``, 1 if it does not say).
        groups: how many groups ``k`` of ``C`` channels an image has (2: real and imaginary parts).
        data_range: the range samplers clip ``x0_hat`` to; default the inner prior's.

    ``denoise(x, sigma)``: ``x`` ``(B, k C, H, W)``, ``sigma`` float or ``(B,)`` -> ``(B, k C, H, W)``;
    one call of the inner prior on a batch of ``k B`` images.
    """

    def __init__(self, prior: Prior, groups: int = 2, data_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        if int(groups) < 1:
            raise ValueError(f"groups must be a positive number of channel groups, got {groups}")
        self.prior = prior
        self.groups = int(groups)
        self.data_range = tuple(float(v) for v in (data_range or prior.data_range))  # type: ignore[assignment]

    @property
    def inner_channels(self) -> int:
        return int(getattr(self.prior, "channels", 1))

    @property
    def channels(self) -> int:
        """Channels of the images this prior models: ``groups * prior.channels``."""
        return self.groups * self.inner_channels

    @property
    def factor(self) -> int:
        """Image sides must be divisible by this (the inner prior's)."""
        return int(getattr(self.prior, "factor", 1))

    @property
    def casts_input(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.prior, "casts_input", False))

    @property
    def shipped(self) -> str | None:  # type: ignore[override]
        """The inner prior's shipped name: the methods' starts chosen for it apply here too."""
        return getattr(self.prior, "shipped", None)

    @property
    def sigma_min(self) -> float:  # type: ignore[override]
        return self.prior.sigma_min

    @property
    def sigma_max(self) -> float:  # type: ignore[override]
        return self.prior.sigma_max

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        return self.prior.sigmas(steps, sigma_max)

    def data_mean(self) -> Tensor | None:
        mean = self.prior.data_mean()
        return None if mean is None else mean.repeat(self.groups, 1, 1)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        b, ch, h, w = x.shape
        c = self.inner_channels
        if ch != self.channels:
            raise ValueError(
                f"ChannelwisePrior models {self.groups} groups of {c} channel(s) ({self.channels} channels) "
                f"but x has {ch}"
            )
        s = as_sigma(sigma, x).reshape(b)
        x0 = self.prior.denoise(x.reshape(b * self.groups, c, h, w), torch.repeat_interleave(s, self.groups))
        return x0.reshape(b, ch, h, w)
