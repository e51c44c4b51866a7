"""Latent diffusion priors: an autoencoder plus a denoiser on its latents (Rombach et al. 2022).

A :class:`LatentPrior` answers three questions:

    encode(x) -> z      x: (B, C, H, W) images in data units ([0, 1]); z: (B, c, H / f, W / f)
    decode(z) -> x
    denoise(z, sigma)   E[z0 | z0 + sigma n = z], in latent space

Latents are scaled to about unit variance, ``z = scale_factor * (E(x) - shift_factor)``
(Stable Diffusion's ``scale_factor``, Rombach et al. 2022, Sec. 4.3.2; SD3's
``shift_factor``), so a noise level ``sigma`` means the same in every latent
prior, and noisy latents follow the variance-exploding form of :mod:`.base`
(``z = z0 + sigma n``) with no range map: a DDPM timestep with cumulative
product ``abar`` corresponds to ``abar = 1 / (1 + sigma^2)``.  Only the latent
samplers (``latent_dps``, ``psld``) use ``denoise``; ``data_range`` is the
range of the *images*, for clipping decoded images.

:class:`KLAutoencoder` is a small fully convolutional KL-regularised
autoencoder (Rombach et al. 2022, Sec. 3 and App. G, "KL-reg."), and
:class:`LatentUNetPrior` the EDM-preconditioned U-Net (Karras et al. 2022) on
its latents; together they save to and load from one folder (``config.json``
with ``kind: "latent-edm"`` and ``model.safetensors``).  Any other
autoencoder with ``encode``/``decode``/``factor``/``channels``/``latent_channels``
and any :class:`~.base.Prior` on latents combine the same way, e.g. a diffusers
``AutoencoderKL`` with a ``UNet2DModel`` (:func:`.loaders.load_diffusers_latent`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Prior, as_sigma, karras_sigmas, to_network
from .trained import EDMPrecond, read_folder, write_folder
from .unet import UNet, UNetConfig, _norm

__all__ = [
    "AutoencoderConfig", "KLAutoencoder", "LatentUNetPrior", "LatentPrior", "ModelUnits",
]


# ---------------------------------------------------------------------------------------------
# the autoencoder


@dataclass
class AutoencoderConfig:
    """Architecture of :class:`KLAutoencoder` (stored in ``config.json``)."""

    in_channels: int = 1
    latent_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    groups: int = 8

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        d = dict(d)
        if "channel_mult" in d:
            d["channel_mult"] = tuple(d["channel_mult"])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown autoencoder config keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @property
    def factor(self) -> int:
        """Downsampling factor ``f``: latents are ``H / f x W / f``."""
        return 2 ** (len(self.channel_mult) - 1)


class _Block(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual connection (no noise embedding)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class KLAutoencoder(nn.Module):
    """A small KL-regularised autoencoder ``x -> q(z | x) = N(mean, exp(logvar)) -> x_hat`` (Rombach et al. 2022, App. G).

    Encoder: a conv, then per level ``num_res_blocks`` residual blocks and a
    stride-2 conv (not after the last level), a residual block, and a conv to
    ``2 * latent_channels`` (mean and log-variance).  The decoder mirrors it with
    nearest-neighbour upsampling.  Fully convolutional: any ``H, W`` divisible by
    ``factor`` works.  Images are ``[0, 1]``, mapped to ``[-1, 1]`` inside.
    """

    def __init__(self, config: AutoencoderConfig | dict | None = None):
        super().__init__()
        cfg = config if isinstance(config, AutoencoderConfig) else AutoencoderConfig.from_dict(config or {})
        self.config = cfg
        widths = [cfg.channels * m for m in cfg.channel_mult]
        g = cfg.groups
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                enc.append(_Block(ch, width, g))
                ch = width
            if level < len(widths) - 1:
                enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc += [_Block(ch, ch, g), _norm(ch, g), nn.SiLU(), nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1), _Block(ch, ch, g)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                dec.append(_Block(ch, widths[level], g))
                ch = widths[level]
            if level > 0:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
        dec += [_norm(ch, g), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def channels(self) -> int:
        return self.config.in_channels

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def encode_dist(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: ``(B, C, H, W)`` in ``[0, 1]`` -> ``(mean, logvar)``, each ``(B, c, H / f, W / f)``."""
        mean, logvar = self.encoder(2 * x - 1).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # as the reference DiagonalGaussianDistribution

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean ``E(x)``: ``(B, c, H / f, W / f)`` (unscaled latents)."""
        return self.encode_dist(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents ``(B, c, h, w)`` -> images ``(B, C, f h, f w)`` in data units."""
        return (self.decoder(z) + 1) / 2


# ---------------------------------------------------------------------------------------------
# denoisers on latents


class LatentUNetPrior(Prior):
    """An EDM-preconditioned U-Net on scaled latents (Karras et al. 2022, Table 1), no range map.

    ``denoise(z, sigma) = c_skip z + c_out F(c_in z, ln(sigma) / 4)`` with
    ``sigma_data`` the latents' standard deviation (1 after scaling).  Latents are
    unbounded, so ``data_range`` is ``(-inf, inf)``.

    Args:
        unet: the U-Net's architecture (``in_channels = out_channels =`` latent channels).
        sigma_data, sigma_min, sigma_max, rho: EDM's constants, in latent units.
        state_dict: weights of the :class:`~.trained.EDMPrecond` (optional).
    """

    casts_input = True  # EDMPrecond hands only F's input to the network's dtype

    def __init__(
        self, unet: UNetConfig | dict, *, sigma_data: float = 1.0, sigma_min: float = 0.002,
        sigma_max: float = 80.0, rho: float = 7.0, state_dict: dict[str, Tensor] | None = None,
    ):  # fmt: skip
        super().__init__()
        self.unet_config = unet if isinstance(unet, UNetConfig) else UNetConfig.from_dict(unet)
        if self.unet_config.in_channels != self.unet_config.out_channels:
            raise ValueError(f"a latent U-Net maps latents to latents; got in/out channels "
                             f"{self.unet_config.in_channels}/{self.unet_config.out_channels}")  # fmt: skip
        self.model = EDMPrecond(UNet(self.unet_config), sigma_data=float(sigma_data))
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.data_range = (-math.inf, math.inf)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.eval().requires_grad_(False)

    @property
    def channels(self) -> int:
        return self.unet_config.in_channels

    @property
    def factor(self) -> int:
        return self.unet_config.factor

    def denoise(self, z: Tensor, sigma: float | Tensor) -> Tensor:
        """``z``: ``(B, c, h, w)`` = ``z0 + sigma n``, ``sigma``: float or ``(B,)`` -> ``z0_hat``."""
        if z.dim() != 4 or z.shape[1] != self.channels:
            raise ValueError(f"latents have shape {tuple(z.shape)} but this prior expects (B, {self.channels}, h, w)")
        # below the smallest trained level the denoiser is (nearly) the identity
        return self.model(z, as_sigma(sigma, z).clamp_min(1e-5))

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        return karras_sigmas(steps, self.sigma_min, self.schedule_start(sigma_max), self.rho)

    def config_dict(self) -> dict:
        return {"unet": self.unet_config.to_dict(), "sigma_data": self.model.sigma_data, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "rho": self.rho}  # fmt: skip


class ModelUnits(Prior):
    """A prior on ``[0, 1]`` data seen in its network's ``[-1, 1]`` units: ``u = 2 x - 1``, ``sigma_u = 2 sigma``.

    ``denoise(u, sigma_u) = 2 D((u + 1) / 2, sigma_u / 2) - 1``, exact for any
    denoiser.  A DDPM trained directly on latents (a diffusers ``UNet2DModel``
    loaded as :class:`~.loaders.DiscreteDDPMPrior`, whose wrapper assumes
    ``[0, 1]`` images) thereby answers on the latents themselves.
    """

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior
        self.sigma_min, self.sigma_max = 2 * prior.sigma_min, 2 * prior.sigma_max
        self.data_range = (-math.inf, math.inf)
        self.channels = getattr(prior, "channels", None)

    @property
    def casts_input(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.prior, "casts_input", False))

    def denoise(self, u: Tensor, sigma: float | Tensor) -> Tensor:
        """``u``: ``(B, c, h, w)``, ``sigma``: float or ``(B,)`` -> ``u0_hat`` ``(B, c, h, w)``."""
        s = sigma / 2 if not isinstance(sigma, Tensor) else sigma.to(u.dtype) / 2
        return 2 * self.prior.denoise((u + 1) / 2, s) - 1

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        return 2 * self.prior.sigmas(steps, None if sigma_max is None else sigma_max / 2)


# ---------------------------------------------------------------------------------------------
# the latent prior


class LatentPrior(Prior):
    """An autoencoder ``(E, D)`` and a prior on scaled latents ``z = scale_factor * (E(x) - shift_factor)``.

    Args:
        autoencoder: a module with ``encode(x) -> latents`` (deterministic, e.g. the
            posterior mean), ``decode(latents) -> x`` on images in ``data_range``, and
            ``factor``, ``channels``, ``latent_channels``.
        latent_prior: any :class:`~.base.Prior` on the scaled latents.
        scale_factor, shift_factor: latent normalisation (computed at training time).
        data_range: range of the decoded images (for clipping ``x0``).
        config: ``config.json`` contents (provenance), kept as ``self.config``.

    ``sigma_min``, ``sigma_max`` and ``sigmas`` are the latent prior's.  ``factor``
    (the autoencoder's times the latent prior's) is what image sides must be
    divisible by.
    """

    def __init__(
        self, autoencoder: nn.Module, latent_prior: Prior, *, scale_factor: float = 1.0, shift_factor: float = 0.0,
        data_range: tuple[float, float] = (0.0, 1.0), config: dict | None = None,
    ):  # fmt: skip
        super().__init__()
        for attr in ("encode", "decode", "factor", "channels", "latent_channels"):
            if not hasattr(autoencoder, attr):
                raise ValueError(f"the autoencoder ({type(autoencoder).__name__}) has no {attr!r}; a latent prior "
                                 "needs encode, decode, factor, channels and latent_channels")  # fmt: skip
        if not (math.isfinite(scale_factor) and scale_factor > 0 and math.isfinite(shift_factor)):
            raise ValueError(f"scale_factor must be finite and > 0 and shift_factor finite, got {scale_factor}, {shift_factor}")
        self.autoencoder = autoencoder
        self.latent_prior = latent_prior
        self.scale_factor, self.shift_factor = float(scale_factor), float(shift_factor)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.sigma_min, self.sigma_max = latent_prior.sigma_min, latent_prior.sigma_max
        self.config = dict(config or {})
        self.eval().requires_grad_(False)

    @property
    def casts_input(self) -> bool:  # type: ignore[override]
        """The latent denoiser's (``encode`` and ``decode`` cast for the autoencoder themselves)."""
        return bool(getattr(self.latent_prior, "casts_input", False))

    @property
    def channels(self) -> int:
        """Image channels."""
        return int(self.autoencoder.channels)

    @property
    def latent_channels(self) -> int:
        return int(self.autoencoder.latent_channels)

    @property
    def factor(self) -> int:
        """Image sides must be divisible by this (pad otherwise)."""
        return int(self.autoencoder.factor) * int(getattr(self.latent_prior, "factor", 1))

    def latent_shape(self, x_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int, int]:
        """``(B, C, H, W)`` of an image -> ``(B, c, H / f, W / f)`` of its latent; ``ValueError`` if it does not fit."""
        if len(x_shape) != 4:
            raise ValueError(f"images must be 4-D (B, C, H, W), got shape {tuple(x_shape)}")
        b, c, h, w = (int(v) for v in x_shape)
        if c != self.channels:
            raise ValueError(f"this latent prior models {self.channels}-channel images but the image has {c} channels")
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"image sides must be divisible by {self.factor} for this latent prior, got {h}x{w}; pad or crop the image"
            )
        f = int(self.autoencoder.factor)
        return b, self.latent_channels, h // f, w // f

    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> scaled latents ``(B, c, H / f, W / f)``."""
        self.latent_shape(tuple(x.shape))
        # the autoencoder in its own dtype, the latents in x's
        z = self.autoencoder.encode(to_network(x, self.autoencoder)).to(x.dtype)
        return (z - self.shift_factor) * self.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents ``(B, c, h, w)`` -> images ``(B, C, f h, f w)``."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents have shape {tuple(z.shape)} but this prior's are (B, {self.latent_channels}, h, w)")
        u = z / self.scale_factor + self.shift_factor
        return self.autoencoder.decode(to_network(u, self.autoencoder)).to(z.dtype)

    def denoise(self, z: Tensor, sigma: float | Tensor) -> Tensor:
        """``z``: ``(B, c, h, w)`` = ``z0 + sigma n`` (latent space), ``sigma``: float or ``(B,)`` -> ``z0_hat``."""
        return self.latent_prior.denoise(z, sigma)

    def data_mean(self) -> Tensor | None:
        """The mean of the *latents* where the latent denoiser knows it (``data_range`` is the images')."""
        return self.latent_prior.data_mean()

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        """The latent prior's schedule (``sigma_max`` in latent units)."""
        return self.latent_prior.sigmas(steps, sigma_max)

    # -- files ------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None, dtype: torch.dtype = torch.float16) -> None:
        """Write ``config.json`` (``kind: "latent-edm"``) and ``model.safetensors`` into ``path``.

        The latent U-Net's weights are stored as ``dtype`` (float16 by default, half
        the size); the autoencoder's always as float32 (it is small, and its
        decoder's output is what the user sees).
        """
        if not isinstance(self.autoencoder, KLAutoencoder) or not isinstance(self.latent_prior, LatentUNetPrior):
            raise ValueError("only a KLAutoencoder with a LatentUNetPrior can be saved as an invdiff latent prior folder")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {**self.config, "kind": "latent-edm", "autoencoder": self.autoencoder.config.to_dict(),
                  **self.latent_prior.config_dict(), "scale_factor": self.scale_factor,
                  "shift_factor": self.shift_factor, "data_range": list(self.data_range),
                  "weights_dtype": {"autoencoder": "float32", "denoiser": str(dtype).replace("torch.", "")}}  # fmt: skip
        if extra:
            config.update(extra)
        state = {f"autoencoder.{k}": v.detach().float() for k, v in self.autoencoder.state_dict().items()}
        state.update({f"denoiser.{k}": v.detach().to(dtype) for k, v in self.latent_prior.model.state_dict().items()})
        write_folder(path, config, state)

    @classmethod
    def from_config(cls, config: dict, state: dict[str, Tensor] | None = None) -> "LatentPrior":
        """Build from ``config.json`` contents and (optionally) the weights of ``model.safetensors``."""
        if config.get("kind") != "latent-edm":
            raise ValueError(f"config kind is {config.get('kind')!r}, not 'latent-edm'")
        ae = KLAutoencoder(AutoencoderConfig.from_dict(config["autoencoder"]))
        den = LatentUNetPrior(config["unet"], sigma_data=float(config.get("sigma_data", 1.0)),
                              sigma_min=float(config.get("sigma_min", 0.002)),
                              sigma_max=float(config.get("sigma_max", 80.0)), rho=float(config.get("rho", 7.0)))  # fmt: skip
        if state is not None:
            parts = {"autoencoder": ae, "denoiser": den.model}
            for name, module in parts.items():
                sub = {k[len(name) + 1:]: v.float() for k, v in state.items() if k.startswith(name + ".")}
                try:
                    module.load_state_dict(sub)
                except RuntimeError as e:
                    first = str(e).strip().splitlines()[0]
                    raise ValueError(f"the {name} weights do not fit config.json: {first}") from None
            unknown = [k for k in state if not k.startswith(("autoencoder.", "denoiser."))]
            if unknown:
                raise ValueError(f"model.safetensors holds unexpected tensors {unknown[:3]}")
        lo, hi = config.get("data_range", [0.0, 1.0])
        return cls(ae, den, scale_factor=float(config.get("scale_factor", 1.0)),
                   shift_factor=float(config.get("shift_factor", 0.0)), data_range=(lo, hi), config=config)  # fmt: skip

    @classmethod
    def from_folder(cls, path: str | Path) -> "LatentPrior":
        """Load ``config.json`` + ``model.safetensors`` written by :meth:`save`."""
        return cls.from_config(*read_folder(path, "a latent prior folder"))
