"""Posterior samplers: plain functions ``name(prior, op, y, sigmas, *, sigma_y, <knobs>, generator, callback) -> x``."""

from .daps import daps
from .ddnm import ddnm
from .ddrm import ddrm
from .diffpir import diffpir
from .dps import dps
from .latent_dps import latent_dps
from .pigdm import pigdm
from .pnp_dm import pnp_dm
from .psld import psld
from .repaint import repaint
from .score_ald import score_ald

__all__ = ["daps", "ddnm", "ddrm", "diffpir", "dps", "latent_dps", "pigdm", "pnp_dm", "psld", "repaint", "score_ald"]
