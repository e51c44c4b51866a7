"""``CountingPrior``: a prior that delegates to another and counts its ``denoise`` calls (shared by the sampler tests)."""

from __future__ import annotations

from invdiff.priors import Prior


class CountingPrior(Prior):
    """Delegates to ``inner`` and counts ``denoise`` calls."""

    def __init__(self, inner: Prior) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0
        self.sigma_min, self.sigma_max, self.data_range = inner.sigma_min, inner.sigma_max, inner.data_range

    def denoise(self, x, sigma):
        self.calls += 1
        return self.inner.denoise(x, sigma)

    def sigmas(self, steps, sigma_max=None):
        return self.inner.sigmas(steps, sigma_max)

    def data_mean(self):
        return self.inner.data_mean()
