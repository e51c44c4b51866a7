"""Posterior samplers: plain functions ``name(prior, op, y, sigmas, *, sigma_y, <knobs>, generator, callback) -> x``."""

from .daps import daps
from .ddnm import ddnm
from .ddrm import ddrm
from .diffpir import diffpir
from .dps import dps
from .pigdm import pigdm
from .repaint import repaint
from .score_ald import score_ald

__all__ = ["daps", "ddnm", "ddrm", "diffpir", "dps", "pigdm", "repaint", "score_ald"]
