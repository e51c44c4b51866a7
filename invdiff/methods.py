"""``METHODS``: the one table from method names to samplers, their default step counts and needs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .samplers.daps import daps
from .samplers.ddnm import ddnm
from .samplers.ddrm import ddrm
from .samplers.diffpir import diffpir, diffpir_run_defaults
from .samplers.dps import dps
from .samplers.latent_dps import latent_dps
from .samplers.pigdm import pigdm
from .samplers.pnp_dm import pnp_dm
from .samplers.psld import psld
from .samplers.repaint import repaint
from .samplers.score_ald import score_ald

#: Keyword arguments every sampler takes that are not method knobs.
RESERVED = ("sigma_y", "noise", "generator", "callback")

#: What a method needs: of the operator ``"svd"`` (``has_svd``), ``"linear"`` (``adjoint``),
#: ``"mask"`` (an inpainting ``.mask``); of the prior ``"latent"`` (a ``LatentPrior``; methods
#: without it need a pixel prior).
REQUIREMENTS = ("svd", "linear", "mask", "latent")


@dataclass(frozen=True)
class Method:
    """A posterior sampler with its default number of noise levels and what it needs of the operator."""

    fn: Callable[..., Tensor]
    steps: int
    needs: frozenset[str] = frozenset()
    noise_models: bool = False
    description: str = ""
    #: first noise level of the sampling schedule for the shipped pixel priors, in data units (None:
    #: the prior's own ``sigma_max``); chosen on validation images, see ``benchmarks/results/schedule.md``.
    #: Other priors (users' checkpoints, analytic priors) start at their own ``sigma_max``.
    sigma_max: float | None = None
    #: knob defaults that depend on the run, ``(steps, op) -> {knob: value}``: ``restore`` fills each knob
    #: left unset (or ``None``) from it before padding wraps the operator, and ``Result.knobs`` records them
    run_defaults: Callable[[int, Any], dict[str, Any]] | None = None

    @property
    def knobs(self) -> dict[str, Any]:
        """The sampler's keyword knobs with their defaults, e.g. ``{"eta": 0.85, "eta_b": 1.0}``."""
        return {
            name: p.default
            for name, p in inspect.signature(self.fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in RESERVED
        }


# ``sigma_max``: the start with the best mean PSNR on validation crops (``python -m benchmarks schedule``,
# natural-gray, random inpainting / a centred box hole / Gaussian deblurring / SR x4, the images benchmark's
# quick step counts), measured with every chain starting where its reference starts (centred on the data's
# middle).  DPS keeps the prior's start (10 is +0.08 dB on one sample: within the noise); Score-ALD too: at
# 10 levels it is no restorer whatever the start, so that sweep cannot choose for it.  They apply to the
# shipped priors only (``restore``); ``results/schedule.md`` shows what each default leaves.  PnP-DM's 5 is not from
# the sweep: it is its reference's first coupling, rho = 10 on [-1, 1] (``samplers/pnp_dm.py``).
METHODS: dict[str, Method] = {
    "ddrm": Method(
        ddrm, 20, frozenset({"svd"}), False,
        "DDRM (Kawar et al. 2022): diffusion restoration in the operator's SVD basis",
        sigma_max=5.0,
    ),
    "dps": Method(
        dps, 1000, frozenset(), True,
        "DPS (Chung et al. 2023): ancestral steps guided by the gradient of ||y - A(x0_hat)||",
    ),
    "pigdm": Method(
        pigdm, 100, frozenset({"linear"}), False,
        "PiGDM (Song et al. 2023): pseudoinverse-guided DDIM with the noisy-measurement correction",
        sigma_max=5.0,
    ),
    "score_ald": Method(
        score_ald, 500, frozenset(), True,
        "Score-ALD (Jalal et al. 2021): annealed Langevin dynamics on prior score plus likelihood",
    ),
    "repaint": Method(
        repaint, 250, frozenset({"mask"}), False,
        "RePaint (Lugmayr et al. 2022): inpainting by resampling the known region with jumps",
        sigma_max=10.0,
    ),
    "ddnm": Method(
        ddnm, 100, frozenset({"svd"}), False,
        "DDNM+ (Wang et al. 2023): range-null-space decomposition with noise-aware scaling",
        sigma_max=2.0,
    ),
    "diffpir": Method(
        diffpir, 100, frozenset({"linear"}), False,
        "DiffPIR (Zhu et al. 2023): plug-and-play half-quadratic splitting with the diffusion denoiser",
        sigma_max=2.0, run_defaults=diffpir_run_defaults,
    ),
    "daps": Method(
        daps, 200, frozenset(), True,
        "DAPS (Zhang et al. 2025): decoupled annealing with PF-ODE estimates and Langevin on x0",
        sigma_max=10.0,
    ),
    "pnp_dm": Method(
        pnp_dm, 40, frozenset(), True,
        "PnP-DM (Wu et al. 2024): split Gibbs sampling, a likelihood step and a reverse-diffusion prior step",
        sigma_max=5.0,
    ),
    "latent_dps": Method(
        latent_dps, 1000, frozenset({"latent"}), True,
        "Latent DPS (Chung et al. 2023; Rout et al. 2023): DPS on latents, gradient through the decoder",
    ),
    "psld": Method(
        psld, 1000, frozenset({"latent", "linear"}), False,
        "PSLD (Rout et al. 2023): latent DPS plus the gluing term ||z0_hat - E(A^+ y + (I - A^+ A) D(z0_hat))||",
    ),
}
