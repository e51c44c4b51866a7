"""Diffusion priors behind one ``denoise(x, sigma)`` interface.

Installed as ``invdiff.priors``.  Knows nothing of operators.
"""

from .analytic import GaussianMixturePrior, GaussianPrior
from .base import Prior, as_sigma, geometric_sigmas, karras_sigmas
from .channelwise import ChannelwisePrior
from .loaders import (
    DeepinvDenoiserPrior,
    DiscreteDDPMPrior,
    load_adm,
    load_checkpoint,
    load_diffusers,
    load_diffusers_latent,
    load_monai,
)
from .registry import SHIPPED, load_prior, shipped_priors
from .trained import UNetPrior
from .unet import UNet, UNetConfig

__all__ = [
    "Prior", "as_sigma", "karras_sigmas", "geometric_sigmas", "GaussianPrior", "GaussianMixturePrior",
    "ChannelwisePrior", "UNetPrior", "UNet", "UNetConfig", "load_prior", "shipped_priors", "SHIPPED",
    "DiscreteDDPMPrior", "DeepinvDenoiserPrior", "load_checkpoint", "load_adm", "load_diffusers",
    "load_diffusers_latent", "load_monai",
]
