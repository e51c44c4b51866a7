"""Priors from checkpoints users bring: guided-diffusion / ADM, diffusers, MONAI, deepinv denoisers.

Every checkpoint is read from a local path without executing pickled code
(``torch.load(..., weights_only=True)`` or safetensors) and wrapped once into the
data-space convention of :class:`~.base.Prior`: ``x = x0 + sigma n`` with
``x0`` in ``[0, 1]``.  For a discrete DDPM network trained on ``[-1, 1]`` the
wrapper maps (Ho et al. 2020; Karras et al. 2022, Table 1, "VP"; as
k-diffusion's ``DiscreteEpsDDPMDenoiser``)

    sigma_m = 2 sigma                        # [0, 1] -> [-1, 1] doubles sigma
    x_t     = (2 x - 1) / sqrt(1 + sigma_m^2)  # VP scaling, abar = 1 / (1 + sigma_m^2)
    t       = the fractional timestep whose sigma_t = sqrt((1 - abar_t) / abar_t) is sigma_m

and turns the network's eps, x0 or v prediction back into ``x0_hat`` in data
units.  Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .adm import ADM_PRESETS, adm_options, adm_state_dict_shapes, adm_unet
from .base import Prior, as_sigma, to_network
from .latent import LatentPrior, ModelUnits

__all__ = [
    "DiscreteDDPMPrior", "DeepinvDenoiserPrior", "ddpm_alphas_cumprod", "load_checkpoint", "load_adm",
    "load_diffusers", "load_diffusers_latent", "load_monai", "load_state_dict", "ADM_PRESETS",
]

_PREDICTION_ALIASES = {"eps": "eps", "epsilon": "eps", "x0": "x0", "sample": "x0", "v": "v", "v_prediction": "v"}


def _prediction(name: str) -> str:
    if name not in _PREDICTION_ALIASES:
        raise ValueError(f"unknown prediction {name!r}; use one of 'eps', 'x0', 'v'")
    return _PREDICTION_ALIASES[name]


def ddpm_alphas_cumprod(
    steps: int = 1000, schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 2e-2
) -> Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)``, ``(steps,)`` float64, for the standard DDPM beta schedules.

    ``linear``: Ho et al. 2020, Sec. 4, scaled by ``1000 / steps`` as guided-diffusion does
    (exactly ``beta_start..beta_end`` for 1000 steps); ``scaled_linear``: ``linspace`` of
    ``sqrt(beta)`` squared (latent diffusion); ``cosine``: Nichol & Dhariwal 2021, eq. 17.
    """
    if steps < 2:
        raise ValueError(f"a DDPM schedule needs at least 2 steps, got {steps}")
    if schedule == "linear":
        scale = 1000 / steps
        betas = torch.linspace(scale * beta_start, scale * beta_end, steps, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "cosine":
        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor(
            [min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)], dtype=torch.float64
        )
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; use 'linear', 'scaled_linear' or 'cosine'")
    return torch.cumprod(1 - betas, dim=0)


class DiscreteDDPMPrior(Prior):
    """A discrete-time DDPM network (eps, x0 or v prediction on ``[-1, 1]``) as a data-space denoiser.

    Ho et al. 2020 (eq. 4 and 11); timestep mapping as Karras et al. 2022, Table 1 (VP)
    and k-diffusion's ``DiscreteSchedule``: ``t`` is found by linear interpolation of
    ``log sigma_m`` between the model's discrete ``log sigma_t``, so the exact discrete
    sigmas give integer timesteps; levels outside the schedule clamp to ``t = 0`` or
    ``T - 1``.  The VP scaling and the eps/x0/v conversion use the exact ``sigma_m``,
    not the nearest ``sigma_t``.

    Args:
        model_fn: ``model_fn(x_t, t) -> out`` with ``x_t``: ``(B, C, H, W)``, ``t``: ``(B,)``
            float timesteps; ``out``: ``(B, C, H, W)``, or ``(B, 2C, H, W)`` when ``learned_sigma``
            (the first ``C`` channels are the prediction, the rest the learned variance).
        alphas_cumprod: ``(T,)`` decreasing ``abar_t`` in ``(0, 1)``.
        prediction: what the network predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        learned_sigma: the network outputs ``2C`` channels (improved DDPM / ADM).
        channels: ``C``, image channels.
        clip: optional ``(lo, hi)`` to clamp ``x0_hat`` to (data units); off by default since
            clipping is a sampler knob.
        image_size: the training resolution, if known (informative only).
    """

    casts_input = True  # the network gets x_t in its dtype, the conversion stays in x's

    def __init__(
        self,
        model_fn: Callable[[Tensor, Tensor], Tensor],
        alphas_cumprod: Tensor,
        *,
        prediction: str = "eps",
        learned_sigma: bool = False,
        channels: int,
        clip: tuple[float, float] | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if abar.dim() != 1 or abar.numel() < 2:
            raise ValueError(
                f"alphas_cumprod must be a 1-D tensor of at least 2 values, got shape {tuple(abar.shape)}"
            )
        if not bool(((abar > 0) & (abar < 1)).all()):
            raise ValueError(
                "alphas_cumprod must lie strictly in (0, 1); a zero-terminal-SNR schedule has no finite sigma_max"
            )
        if not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in t")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.model_fn = model_fn  # registered as a submodule when it is an nn.Module
        self.prediction = _prediction(prediction)
        self.learned_sigma = bool(learned_sigma)
        self.channels = int(channels)
        self.image_size = image_size
        self.clip_range = None if clip is None else (float(clip[0]), float(clip[1]))
        # model units: sigma_t = sqrt((1 - abar_t) / abar_t), increasing in t
        sigmas_m = ((1 - abar) / abar).sqrt()
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas_m.log().float(), persistent=False)
        # The timestep interpolation runs on a float64 copy kept off the module's buffers (so neither
        # .half() nor .float() rounds it): in float32, 69 of 1000 integer timesteps of a linear schedule
        # come back up to 6e-5 off their own level.
        self._log_sigmas64 = sigmas_m.log().double().cpu()
        # data units: sigma = sigma_m / 2
        self.sigma_min = float(sigmas_m[0]) / 2
        self.sigma_max = float(sigmas_m[-1]) / 2
        self.data_range = (0.0, 1.0)

    @property
    def num_timesteps(self) -> int:
        return self.log_sigmas.numel()

    def sigma_to_t(self, sigma_m: Tensor) -> Tensor:
        """Model-unit ``sigma_m`` ``(B,)`` -> fractional timestep ``(B,)``, float64 (log-sigma interpolation)."""
        log_sigmas = self._log_sigmas64.to(sigma_m.device)
        log_sigma = sigma_m.to(log_sigmas.dtype).log()
        # lower neighbour i with log_sigmas[i] <= log_sigma < log_sigmas[i + 1]
        i = (torch.searchsorted(log_sigmas, log_sigma.contiguous(), right=True) - 1).clamp(0, self.num_timesteps - 2)
        lo, hi = log_sigmas[i], log_sigmas[i + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return i.to(w.dtype) + w

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Fractional timestep ``(N,)`` -> model-unit sigma ``(N,)``, float64 (log-sigma interpolation)."""
        log_sigmas = self._log_sigmas64.to(t.device)
        t = t.to(log_sigmas.dtype).clamp(0, self.num_timesteps - 1)
        i = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - i
        return ((1 - w) * log_sigmas[i] + w * log_sigmas[i + 1]).exp()

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        """``steps`` evenly spaced timesteps from ``T - 1`` (or the timestep of ``sigma_max``) to ``0``
        in data sigmas, then 0: ``(steps + 1,)``."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        t_max = float(self.num_timesteps - 1)
        if sigma_max is not None:
            start = torch.tensor([2 * self.schedule_start(sigma_max)], dtype=torch.float64)
            t_max = float(self.sigma_to_t(start)[0])
        t = torch.linspace(t_max, 0, steps, dtype=torch.float64)
        s = self.t_to_sigma(t) / 2
        return torch.cat([s, s.new_zeros(1)])

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)`` in data units, ``sigma``: float or ``(B,)`` -> ``x0_hat`` ``(B, C, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x has shape {tuple(x.shape)} but this prior expects (B, {self.channels}, H, W)")
        sigma_m = 2 * as_sigma(sigma, x)  # (B, 1, 1, 1), model units
        x_m = 2 * x - 1
        # VP input: x_t = sqrt(abar) x_m with abar = 1 / (1 + sigma_m^2)
        x_t = x_m / (1 + sigma_m**2).sqrt()
        # timesteps from the float64 sigma, handed over in at least float32 (float16 cannot tell 999 from 999.25)
        sigma64 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        t = self.sigma_to_t(2 * sigma64).to(torch.promote_types(x.dtype, torch.float32))
        # the network in its own dtype, the eps / x0 / v conversion in x's
        out = self.model_fn(to_network(x_t, self.model_fn), t).to(x.dtype)
        c = self.channels
        if out.shape[1] != (2 * c if self.learned_sigma else c) or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"the network returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; expected "
                f"{2 * c if self.learned_sigma else c} channels (learned_sigma={self.learned_sigma})"
            )
        out = out[:, :c]  # learned variance: the first C channels are the prediction
        if self.prediction == "eps":
            x0_m = x_m - sigma_m * out  # x_m = x0 + sigma_m eps
        elif self.prediction == "x0":
            x0_m = out
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  x0 = sqrt(abar) x_t - sqrt(1 - abar) v
            x0_m = x_m / (1 + sigma_m**2) - sigma_m / (1 + sigma_m**2).sqrt() * out
        x0_hat = (x0_m + 1) / 2
        return x0_hat if self.clip_range is None else x0_hat.clamp(*self.clip_range)


class DeepinvDenoiserPrior(Prior):
    """Any deepinv denoiser ``D(x, sigma)`` on ``[0, 1]`` images (e.g. ``DRUNet``) as a prior.

    The denoiser already works in the data-space convention, so ``denoise`` passes
    ``x``: ``(B, C, H, W)`` and ``sigma`` as a ``(B,)`` tensor straight through.
    ``sigma_max`` / ``sigma_min`` state the range it was trained on (data units).
    """

    casts_input = True

    def __init__(
        self, denoiser: nn.Module, *, sigma_max: float, sigma_min: float = 1e-3, channels: int | None = None
    ):
        super().__init__()
        if not callable(denoiser):
            raise ValueError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.denoiser = denoiser
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.channels = channels
        self.data_range = (0.0, 1.0)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``, ``sigma``: float or ``(B,)`` -> ``x0_hat`` ``(B, C, H, W)``."""
        if self.channels is not None and (x.dim() != 4 or x.shape[1] != self.channels):
            raise ValueError(f"x has shape {tuple(x.shape)} but this prior expects (B, {self.channels}, H, W)")
        sigma_b = as_sigma(sigma, x).reshape(-1)
        return self.denoiser(to_network(x, self.denoiser), to_network(sigma_b, self.denoiser)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# reading weights without unpickling code


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``d state dict, never unpickling objects.

    A checkpoint nesting its weights under ``state_dict``, ``model`` or ``ema`` is unwrapped,
    and a ``module.`` prefix (``DataParallel``) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} holds pickled Python objects, not only tensors ({first}); invdiff never runs pickled code: "
            f"re-save it with torch.save(model.state_dict(), ...) or as .safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {e}") from None
    for key in ("state_dict", "model", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of parameter name -> tensor)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _mismatch(expected: dict[str, tuple[int, ...]], state: dict[str, Tensor], limit: int = 3) -> str:
    """One-line summary of how ``state`` differs from ``expected`` shapes ('' when it fits)."""
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [f"{k} {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    parts = [f"{name} {len(keys)} ({', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''})"
             for name, keys in (("missing", missing), ("unexpected", extra), ("shape mismatch", wrong)) if keys]
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# guided-diffusion / ADM


def _is_adm(state: dict[str, Tensor]) -> bool:
    return all(k in state for k in ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"))


def load_adm(
    path: str | Path | dict[str, Tensor], preset: str | None = None, *, clip: tuple[float, float] | None = None,
    **options: Any,
) -> DiscreteDDPMPrior:
    """A guided-diffusion / ADM checkpoint (Dhariwal & Nichol 2021) as a :class:`DiscreteDDPMPrior`.

    The architecture is ``preset`` (``"ffhq-256"``, ``"imagenet-256-uncond"``) updated by
    guided-diffusion ``options`` (``image_size``, ``num_channels``, ``num_res_blocks``,
    ``channel_mult``, ``attention_resolutions``, ``num_head_channels``, ``learn_sigma``, ...).
    ``in_channels``, ``num_channels`` and ``learn_sigma`` are read from the weights; with
    neither preset nor options the presets are tried in turn.  Schedule: ``noise_schedule``
    (``linear``: betas 1e-4..2e-2) over ``diffusion_steps`` (1000); eps prediction.
    """
    state = path if isinstance(path, dict) else load_state_dict(path)
    if not _is_adm(state):
        raise ValueError(f"{path if not isinstance(path, dict) else 'the state dict'} does not have the "
                         f"guided-diffusion / ADM key layout (time_embed.*, input_blocks.*, out.*)")
    if "label_emb.weight" in state:
        raise ValueError("class-conditional ADM checkpoints are not supported; use an unconditional model")
    # what the weights say
    in_w, out_w = state["input_blocks.0.0.weight"], state["out.2.weight"]
    inferred = {"in_channels": int(in_w.shape[1]), "num_channels": int(state["time_embed.0.weight"].shape[1]),
                "learn_sigma": int(out_w.shape[0]) == 2 * int(in_w.shape[1])}
    if preset is None and not (set(options) - {"diffusion_steps", "noise_schedule"}):
        candidates = [
            p for p in ADM_PRESETS if not _mismatch(adm_state_dict_shapes(**adm_options(p, **inferred)), state)
        ]
        if not candidates:
            raise ValueError(
                "the ADM checkpoint matches none of the presets "
                f"{sorted(ADM_PRESETS)}; pass its architecture options (image_size, num_res_blocks, "
                "channel_mult, attention_resolutions, num_head_channels, ...)"
            )
        preset = candidates[0]
    opts = adm_options(preset, **{**inferred, **options})
    expected = adm_state_dict_shapes(**opts)
    problem = _mismatch(expected, state)
    if problem:
        raise ValueError(f"the ADM checkpoint does not fit the architecture options: {problem}")
    net = adm_unet(**opts)
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    abar = ddpm_alphas_cumprod(int(opts["diffusion_steps"]), str(opts["noise_schedule"]))
    return DiscreteDDPMPrior(
        _ADMNet(net), abar, prediction="eps", learned_sigma=bool(opts["learn_sigma"]),
        channels=int(opts["in_channels"]), clip=clip, image_size=int(opts["image_size"]),
    )


class _ADMNet(nn.Module):
    """``(x_t, t) -> eps`` of a ``DiffUNet`` (its ``forward_diffusion``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        # x_t in the output layer's dtype: float32 under mixed precision, where DiffUNet casts
        # to its blocks' dtype (net.dtype) and back itself
        return self.net.forward_diffusion(x_t.to(self.net.out[-1].weight.dtype), t)

    def _apply(self, fn, recurse=True):
        """``.half()`` / ``.to(torch.bfloat16)`` as guided-diffusion's ``use_fp16``.

        Only the convolutions of the input, middle and output blocks take the half dtype;
        the timestep embedding, the norms, the linear layers and the output block keep
        their float32 values (``convert_to_fp16``; they are moved, never rounded), which a
        plain ``.half()`` would break: the float32 timestep embedding meets a half
        ``time_embed``.  Any other conversion (a device, float32, float64) applies to all.
        """
        net = self.net
        first = net.input_blocks[0][0].weight
        target = fn(torch.zeros((1, 1, 1, 1), dtype=torch.float32, device=first.device))
        if target.dtype not in (torch.float16, torch.bfloat16):
            super()._apply(fn, recurse)
        else:
            convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
            half = {id(m) for part in (net.input_blocks, net.middle_block, net.output_blocks)
                    for m in part.modules() if isinstance(m, convs)}  # fmt: skip
            device = target.device

            def move(t: torch.Tensor) -> torch.Tensor:
                return t.to(device)

            for m in net.modules():
                m._apply(fn if id(m) in half else move, recurse=False)
        net.dtype = net.input_blocks[0][0].weight.dtype  # what forward_diffusion casts the blocks' input to
        return self


# ---------------------------------------------------------------------------------------------
# diffusers


class _DiffusersNet(nn.Module):
    """``(x_t, t) -> out`` of a diffusers ``UNet2DModel``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.unet(x_t, t).sample


def load_diffusers(
    path: str | Path, *, scheduler: dict[str, Any] | None = None, clip: tuple[float, float] | None = None
) -> DiscreteDDPMPrior:
    """A diffusers ``UNet2DModel`` folder (or a pipeline folder with ``unet/`` and ``scheduler/``).

    The schedule and prediction type come from ``scheduler_config.json`` (DDPM/DDIM/PNDM
    betas: ``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``,
    ``prediction_type``) or from ``scheduler``, a dict of the same keys.  Learned-variance
    models (``out_channels == 2 in_channels``) use the first half.
    """
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ValueError("loading diffusers checkpoints needs diffusers: pip install 'invdiff[diffusers]'") from None
    path = Path(path)
    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"{path} is not a diffusers model folder (no config.json or unet/config.json)")
    sched = diffusers_scheduler(path, unet_dir, scheduler)
    config = json.loads((unet_dir / "config.json").read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{unet_dir} holds a {config['_class_name']}, but only UNet2DModel is supported")
    unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    unet.eval().requires_grad_(False)
    c_in, c_out = int(unet.config.in_channels), int(unet.config.out_channels)
    if c_out not in (c_in, 2 * c_in):
        raise ValueError(f"UNet2DModel has {c_in} input and {c_out} output channels; expected {c_in} or {2 * c_in}")
    size = unet.config.sample_size
    return DiscreteDDPMPrior(
        _DiffusersNet(unet), sched.alphas_cumprod, prediction=sched.config.prediction_type,
        learned_sigma=c_out == 2 * c_in, channels=c_in, clip=clip, image_size=size if isinstance(size, int) else None,
    )


def diffusers_scheduler(path: Path, unet_dir: Path, scheduler: dict[str, Any] | None = None):
    """The diffusers ``DDPMScheduler`` of a model folder (``scheduler/``, the folder or ``unet_dir``), or of ``scheduler``."""
    from diffusers import DDPMScheduler

    if scheduler is None:
        cands = [path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json",
                 unet_dir / "scheduler_config.json"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise ValueError(f"{path} has no scheduler_config.json; pass scheduler={{'beta_schedule': ..., ...}}")
        scheduler = json.loads(found.read_text())
    if scheduler.get("_class_name", "DDPMScheduler") not in (
        "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
    ):
        raise ValueError(
            f"unsupported diffusers scheduler {scheduler['_class_name']!r}; need a discrete DDPM/DDIM beta schedule"
        )
    return DDPMScheduler.from_config({k: v for k, v in scheduler.items() if not k.startswith("_")})


# ---------------------------------------------------------------------------------------------
# MONAI


def load_monai(
    path: str | Path | dict[str, Tensor],
    *,
    network: dict[str, Any],
    num_train_timesteps: int = 1000,
    schedule: str = "linear_beta",
    prediction_type: str = "epsilon",
    clip: tuple[float, float] | None = None,
    **schedule_args: Any,
) -> DiscreteDDPMPrior:
    """A MONAI ``DiffusionModelUNet`` state dict with its DDPM schedule as a :class:`DiscreteDDPMPrior`.

    ``network``: the constructor options (``spatial_dims=2``, ``in_channels``, ``out_channels``,
    ``channels``, ``attention_levels``, ``num_res_blocks``, ``num_head_channels``, ...);
    ``schedule`` (``linear_beta``, ``scaled_linear_beta``, ``sigmoid_beta``, ``cosine``) with
    ``schedule_args`` (``beta_start``, ``beta_end``) and ``prediction_type`` (``epsilon``,
    ``sample``, ``v_prediction``) as MONAI's ``DDPMScheduler`` takes them.
    """
    try:
        from monai.networks.nets import DiffusionModelUNet
        from monai.networks.schedulers import DDPMScheduler
    except ImportError:
        raise ValueError("loading MONAI checkpoints needs monai: pip install 'invdiff[monai]'") from None
    if int(network.get("spatial_dims", 2)) != 2:
        raise ValueError(f"only 2-D MONAI networks are supported, got spatial_dims={network['spatial_dims']}")
    state = path if isinstance(path, dict) else load_state_dict(path)
    net = DiffusionModelUNet(**{"spatial_dims": 2, **network})
    problem = _mismatch({k: tuple(v.shape) for k, v in net.state_dict().items()}, state)
    if problem:
        raise ValueError(f"the MONAI checkpoint does not fit the network options: {problem}")
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    sched = DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule, **schedule_args)
    c_in, c_out = int(network["in_channels"]), int(network["out_channels"])
    if c_out not in (c_in, 2 * c_in):
        raise ValueError(f"the network has {c_in} input and {c_out} output channels; expected {c_in} or {2 * c_in}")
    return DiscreteDDPMPrior(
        net, sched.alphas_cumprod, prediction=prediction_type, learned_sigma=c_out == 2 * c_in,
        channels=c_in, clip=clip,
    )


# ---------------------------------------------------------------------------------------------
# dispatch

SUPPORTED = (
    "a diffusers folder (model_index.json, or config.json of a UNet2DModel; with vae/ or vqvae/ a latent model); "
    "a guided-diffusion / ADM .pt/.pth/.safetensors state dict; "
    "a MONAI DiffusionModelUNet state dict with kind='monai' and network={...}"
)


class _DiffusersAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` (posterior mean) or ``VQModel`` on ``[0, 1]`` images (they work on ``[-1, 1]``)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.kind = type(vae).__name__
        self.channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)

    def encode(self, x: Tensor) -> Tensor:
        if self.kind == "VQModel":
            return self.vae.encode(2 * x - 1).latents
        return self.vae.encode(2 * x - 1).latent_dist.mean

    def decode(self, z: Tensor) -> Tensor:
        return (self.vae.decode(z).sample + 1) / 2


class _ConditionedUNet(nn.Module):
    """``(x_t, t) -> out`` of a diffusers ``UNet2DModel``, or a ``UNet2DConditionModel`` with fixed conditioning."""

    def __init__(self, unet: nn.Module, encoder_hidden_states: Tensor | None):
        super().__init__()
        self.unet = unet
        self.register_buffer("context", encoder_hidden_states, persistent=False)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.context is None:
            return self.unet(x_t, t).sample
        ctx = self.context.to(x_t.dtype).expand(x_t.shape[0], *self.context.shape[1:])
        return self.unet(x_t, t, encoder_hidden_states=ctx).sample


def load_diffusers_latent(
    path: str | Path, *, scheduler: dict[str, Any] | None = None, encoder_hidden_states: Tensor | None = None,
) -> LatentPrior:
    """A diffusers latent diffusion folder (``vae/`` or ``vqvae/``, ``unet/``, ``scheduler/``) as a :class:`LatentPrior`.

    The autoencoder is an ``AutoencoderKL`` (posterior mean) or ``VQModel``; latents are
    scaled with its ``scaling_factor`` (and ``shift_factor``) as diffusers' pipelines do.
    The U-Net is a ``UNet2DModel``, or a ``UNet2DConditionModel`` used with a fixed
    ``encoder_hidden_states`` ``(1, L, D)`` (e.g. a precomputed empty-prompt embedding);
    its DDPM schedule and prediction type come from ``scheduler_config.json`` (or
    ``scheduler``).  The DDPM on latents is wrapped by :class:`ModelUnits` so that it
    denoises the latents themselves.
    """
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel
    except ImportError:
        raise ValueError("loading diffusers checkpoints needs diffusers: pip install 'invdiff[diffusers]'") from None
    path = Path(path)
    ae_dir = next((path / d for d in ("vae", "vqvae") if (path / d / "config.json").is_file()), None)
    if ae_dir is None:
        raise ValueError(f"{path} is not a diffusers latent model folder (no vae/config.json or vqvae/config.json)")
    ae_class = json.loads((ae_dir / "config.json").read_text()).get("_class_name")
    classes = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
    if ae_class not in classes:
        raise ValueError(f"{ae_dir} holds a {ae_class}, but only AutoencoderKL and VQModel are supported")
    unet_dir = path / "unet"
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"{path} has no unet/config.json")
    unet_class = json.loads((unet_dir / "config.json").read_text()).get("_class_name", "UNet2DModel")
    if unet_class not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ValueError(f"{unet_dir} holds a {unet_class}; supported: UNet2DModel, UNet2DConditionModel")
    if unet_class == "UNet2DConditionModel" and encoder_hidden_states is None:
        raise ValueError(
            f"{unet_dir} holds a UNet2DConditionModel; pass encoder_hidden_states=<tensor (1, L, D)> "
            "(e.g. the empty-prompt text embedding) to use it unconditionally"
        )
    if unet_class == "UNet2DModel" and encoder_hidden_states is not None:
        raise ValueError("encoder_hidden_states applies to a UNet2DConditionModel, but this folder has a UNet2DModel")
    sched = diffusers_scheduler(path, unet_dir, scheduler)
    vae = classes[ae_class].from_pretrained(str(ae_dir), local_files_only=True).eval().requires_grad_(False)
    cls = UNet2DModel if unet_class == "UNet2DModel" else UNet2DConditionModel
    unet = cls.from_pretrained(str(unet_dir), local_files_only=True).eval().requires_grad_(False)
    c_in, c_out = int(unet.config.in_channels), int(unet.config.out_channels)
    if c_out not in (c_in, 2 * c_in):
        raise ValueError(f"{unet_class} has {c_in} input and {c_out} output channels; expected {c_in} or {2 * c_in}")
    ctx = None if encoder_hidden_states is None else torch.as_tensor(encoder_hidden_states).detach()
    ddpm = DiscreteDDPMPrior(_ConditionedUNet(unet, ctx), sched.alphas_cumprod, prediction=sched.config.prediction_type,
                             learned_sigma=c_out == 2 * c_in, channels=c_in)  # fmt: skip
    ae = _DiffusersAutoencoder(vae)
    if ddpm.channels != ae.latent_channels:
        raise ValueError(f"the U-Net has {ddpm.channels} channels but the autoencoder's latents have {ae.latent_channels}")
    shift = getattr(vae.config, "shift_factor", None)
    return LatentPrior(ae, ModelUnits(ddpm), scale_factor=float(vae.config.scaling_factor),
                       shift_factor=float(shift or 0.0), config={"kind": "diffusers-latent", "path": str(path)})  # fmt: skip


def load_checkpoint(path: str | Path, *, kind: str | None = None, **options: Any) -> Prior:
    """A prior from a local checkpoint, by what ``path`` is (or ``kind``: ``adm``, ``diffusers``, ``monai``).

    ``options`` go to :func:`load_adm`, :func:`load_diffusers` or :func:`load_monai`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist")
    if kind not in (None, "adm", "diffusers", "monai"):
        raise ValueError(f"unknown checkpoint kind {kind!r}; use 'adm', 'diffusers' or 'monai'")
    if kind == "monai":
        return load_monai(path, **options)
    if path.is_dir():
        config = path / "config.json"
        try:
            is_diffusers = (path / "model_index.json").is_file() or (
                config.is_file() and "_diffusers_version" in json.loads(config.read_text())
            )
        except json.JSONDecodeError as e:
            raise ValueError(f"{config} is not valid JSON: {e}") from None
        if kind == "diffusers" or is_diffusers:
            if any((path / d / "config.json").is_file() for d in ("vae", "vqvae")):
                return load_diffusers_latent(path, **options)  # autoencoder + U-Net on its latents
            return load_diffusers(path, **options)
        raise ValueError(f"{path} is a folder but not a diffusers model folder; supported: {SUPPORTED}")
    if kind == "diffusers":
        raise ValueError(f"a diffusers checkpoint is a folder, but {path} is a file")
    if path.suffix not in (".pt", ".pth", ".safetensors", ".ckpt", ".bin"):
        raise ValueError(f"unsupported checkpoint file {path.name}; supported: {SUPPORTED}")
    state = load_state_dict(path)
    if kind == "adm" or _is_adm(state):
        return load_adm(state, **options)
    raise ValueError(f"{path} is not a recognised checkpoint layout; supported: {SUPPORTED}")
