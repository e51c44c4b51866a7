"""Diffusion priors behind one ``denoise(x, sigma)`` interface.

Installed as ``invdiff.priors``.  Knows nothing of operators.
"""

from .analytic import GaussianMixturePrior, GaussianPrior
from .base import Prior, as_sigma, geometric_sigmas, karras_sigmas

__all__ = ["Prior", "as_sigma", "karras_sigmas", "geometric_sigmas", "GaussianPrior", "GaussianMixturePrior"]
