"""U-Net priors trained by invdiff: EDM preconditioning around :class:`~.unet.UNet`.

The network works on ``[-1, 1]`` data (``x_m = 2 x - 1``, so ``sigma_m = 2 sigma``)
and is preconditioned as in Karras et al. 2022 (EDM), Table 1:

    D_m(x_m; sigma_m) = c_skip x_m + c_out F(c_in x_m, c_noise)
    c_skip = sd^2 / (sigma_m^2 + sd^2)     c_out = sigma_m sd / sqrt(sigma_m^2 + sd^2)
    c_in = 1 / sqrt(sigma_m^2 + sd^2)      c_noise = ln(sigma_m) / 4

with ``sd = sigma_data``.  ``denoise`` maps back to data units.  A prior is a
folder (or package resource) holding ``model.safetensors`` and ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .base import Prior, as_sigma, karras_sigmas, to_network
from .unet import UNet, UNetConfig


class EDMPrecond(torch.nn.Module):
    """EDM preconditioning in the network's own ``[-1, 1]`` units."""

    def __init__(self, net: UNet, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def coefficients(self, sigma_m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma_m**2 + sd**2)
        c_out = sigma_m * sd / (sigma_m**2 + sd**2).sqrt()
        c_in = 1 / (sigma_m**2 + sd**2).sqrt()
        c_noise = sigma_m.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x_m: Tensor, sigma_m: Tensor) -> Tensor:
        """``x_m``: ``(B, C, H, W)`` noisy in [-1, 1] units; ``sigma_m``: ``(B, 1, 1, 1)``.

        Only ``F`` runs in the network's dtype: the skip path ``c_skip x_m`` and the output
        stay in ``x_m``'s, so a half-precision network does not round the sampler's state
        (as EDM's reference does with ``use_fp16``).
        """
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma_m)
        f = self.net(to_network(c_in * x_m, self.net), c_noise.reshape(-1))
        return c_skip * x_m + c_out * f.to(x_m.dtype)


class UNetPrior(Prior):
    """A trained U-Net prior answering ``denoise(x, sigma)`` in data units.

    Args:
        config: the ``config.json`` contents (``unet``, ``sigma_data``, ``sigma_min``,
            ``sigma_max``, ``data_range`` and provenance fields).
        state_dict: weights for :class:`EDMPrecond` (optional).
    """

    casts_input = True  # EDMPrecond hands only F's input to the network's dtype

    def __init__(self, config: dict, state_dict: dict[str, Tensor] | None = None):
        super().__init__()
        self.config = dict(config)
        self.unet_config = UNetConfig.from_dict(config["unet"])
        self.model = EDMPrecond(UNet(self.unet_config), sigma_data=float(config.get("sigma_data", 0.5)))
        lo, hi = config.get("data_range", [0.0, 1.0])
        self.data_range = (float(lo), float(hi))
        # sigma limits in data units
        self.sigma_min = float(config.get("sigma_min", 0.001))
        self.sigma_max = float(config.get("sigma_max", 40.0))
        self.rho = float(config.get("rho", 7.0))
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def channels(self) -> int:
        return self.unet_config.in_channels

    @property
    def factor(self) -> int:
        """Image sides must be divisible by this (pad otherwise)."""
        return self.unet_config.factor

    def _to_model(self, x: Tensor) -> Tensor:
        lo, hi = self.data_range
        return (x - lo) * (2.0 / (hi - lo)) - 1.0

    def _from_model(self, x_m: Tensor) -> Tensor:
        lo, hi = self.data_range
        return (x_m + 1.0) * ((hi - lo) / 2.0) + lo

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)`` = ``x0 + sigma n`` in data units -> ``x0_hat``."""
        if x.shape[1] != self.channels:
            raise ValueError(
                f"this prior models {self.channels}-channel images but x has {x.shape[1]} channels"
            )
        lo, hi = self.data_range
        scale = 2.0 / (hi - lo)
        sigma_m = as_sigma(sigma, x) * scale
        # The network was trained on sigma_m >= a small floor; below it the
        # denoiser is (nearly) the identity, which is what sigma -> 0 means.
        sigma_m = sigma_m.clamp_min(1e-5)
        return self._from_model(self.model(self._to_model(x), sigma_m))

    def sigmas(self, steps: int, sigma_max: float | None = None) -> Tensor:
        return karras_sigmas(steps, self.sigma_min, self.schedule_start(sigma_max), self.rho)

    # -- files ------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path) -> "UNetPrior":
        """Load ``model.safetensors`` + ``config.json`` from a folder."""
        config, state = read_folder(path, "a trained prior folder")
        return cls(config, {k: v.float() for k, v in state.items()})

    def save(self, path: str | Path, extra: dict | None = None, dtype: torch.dtype = torch.float16) -> None:
        """Write ``model.safetensors`` (weights stored as ``dtype``) + ``config.json`` into ``path``.

        Weights are stored in float16 by default (half the size; the denoiser's
        output changes by ~1e-4, far below any noise level it is used at) and
        loaded back as float32.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        config["kind"] = "unet-edm"
        config["unet"] = self.unet_config.to_dict()
        config["weights_dtype"] = str(dtype).replace("torch.", "")
        if extra:
            config.update(extra)
        write_folder(path, config, {k: v.detach().to(dtype) for k, v in self.model.state_dict().items()})


def read_folder(path: str | Path, what: str) -> tuple[dict, dict[str, Tensor]]:
    """``config.json`` and the tensors of ``model.safetensors`` in ``path`` (``what``: the folder, for errors)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: {what} holds config.json and model.safetensors")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
    return config, load_file(str(weights))


def write_folder(path: Path, config: dict, state: dict[str, Tensor]) -> None:
    """Write ``state`` as ``model.safetensors`` (atomically) and ``config`` as ``config.json`` into ``path``."""
    from safetensors.torch import save_file

    tmp = path / "model.safetensors.tmp"
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))
    tmp.replace(path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def edm_sigma_range(sigma_min_m: float = 0.002, sigma_max_m: float = 80.0) -> tuple[float, float]:
    """EDM's range in [-1, 1] units converted to [0, 1] data units."""
    return sigma_min_m / 2, sigma_max_m / 2


__all__ = ["UNetPrior", "EDMPrecond", "edm_sigma_range"]

