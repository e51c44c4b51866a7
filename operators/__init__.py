"""Forward operators ``x -> A(x)``: masks, blurs, downsampling, MRI, CT, nonlinear ones, noise models.

Installed as ``invdiff.operators``.  Knows nothing of diffusion.
"""

from .base import LinearOperator, Operator, SVDOperator
from .blur import BlindBlur, Blur, gaussian_kernel, motion_kernel
from .bridge import from_deepinv, to_deepinv
from .coils import birdcage_sensitivities, calibration_width, estimate_sensitivities
from .colorization import Colorization
from .downsampling import Downsampling
from .embed import Embed, embed
from .identity import Identity
from .inpainting import Inpainting, box_mask, mask_from_image, random_mask
from .mri import FASTMRI_CENTER_FRACTIONS, MRI, MultiCoilMRI, mri_mask
from .noise import Gaussian, Poisson
from .nonlinear import BeerLambert, PhaseRetrieval, Saturation
from .tomography import Tomography, TomographySVD

__all__ = [
    "Operator",
    "LinearOperator",
    "SVDOperator",
    "Identity",
    "Inpainting",
    "random_mask",
    "box_mask",
    "mask_from_image",
    "BlindBlur",
    "Blur",
    "gaussian_kernel",
    "motion_kernel",
    "Downsampling",
    "Colorization",
    "Embed",
    "embed",
    "MRI",
    "MultiCoilMRI",
    "mri_mask",
    "FASTMRI_CENTER_FRACTIONS",
    "estimate_sensitivities",
    "birdcage_sensitivities",
    "calibration_width",
    "Tomography",
    "TomographySVD",
    "PhaseRetrieval",
    "Saturation",
    "BeerLambert",
    "Gaussian",
    "Poisson",
    "from_deepinv",
    "to_deepinv",
]
