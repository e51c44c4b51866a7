"""``load_prior(name_or_path)``: the shipped priors by name, or a prior from a local path.

This table of shipped names is the only place that maps a prior's name to
files; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Prior
from .trained import UNetPrior

WEIGHTS = Path(__file__).parent / "weights"

#: shipped prior name -> what it models
SHIPPED: dict[str, str] = {
    "natural-gray": "gray natural images in [0, 1] (U-Net, EDM, trained on bundled photographs + dead leaves)",
    "natural-rgb": "RGB natural images in [0, 1] (U-Net, EDM, trained on bundled photographs + dead leaves)",
    "phantoms": "CT/MRI random-ellipse phantoms in [0, 1] (U-Net, EDM)",
    "latent-gray": "gray natural images in [0, 1], latent diffusion (KL autoencoder, downsampling 4, + latent U-Net, EDM)",
}


def shipped_priors() -> dict[str, bool]:
    """Shipped names and whether their weights are present in this installation."""
    return {name: (WEIGHTS / name / "model.safetensors").is_file() for name in SHIPPED}


def load_prior(name_or_path: str | Path, **options) -> Prior:
    """A shipped prior by name (``natural-gray``, ...) or a prior from a local folder or checkpoint file.

    A folder written by ``invdiff train`` (``config.json`` + ``model.safetensors``)
    loads as a :class:`~.trained.UNetPrior`; other checkpoints (guided-diffusion /
    ADM, diffusers, MONAI, deepinv) go through :func:`.loaders.load_checkpoint`
    with ``options``.
    """
    key = str(name_or_path)
    if key in SHIPPED:
        folder = WEIGHTS / key
        if not (folder / "model.safetensors").is_file():
            raise ValueError(
                f"the shipped prior {key!r} has no weights in this installation; train one with "
                + ("'invdiff train-latent --data natural-gray --output DIR'" if key == "latent-gray"
                   else f"'invdiff train --data {key} --output DIR'") + " and pass DIR"
            )
        prior = _from_folder(folder)
        prior.shipped = key
        return prior
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ValueError(
            f"unknown prior {key!r}: give a shipped name ({', '.join(SHIPPED)}) or an existing path"
        )
    cfg = path / "config.json"
    if path.is_dir() and cfg.is_file() and (path / "model.safetensors").is_file():
        try:
            kind = json.loads(cfg.read_text()).get("kind")
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg} is not valid JSON: {e}") from None
        if kind in ("unet-edm", "latent-edm"):
            if options:
                raise ValueError(f"an invdiff-trained prior takes no options, got {sorted(options)}")
            return _from_folder(path)
    try:
        from .loaders import load_checkpoint
    except ImportError:  # pragma: no cover - loaders ship with the package
        raise ValueError(f"{path} is not an invdiff prior folder (config.json + model.safetensors)") from None
    return load_checkpoint(path, **options)


def _from_folder(folder: Path) -> Prior:
    """An invdiff-trained folder: a pixel U-Net prior, or a latent prior (``kind: "latent-edm"``)."""
    try:
        kind = json.loads((folder / "config.json").read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
        kind = None
    if kind == "latent-edm":
        from .latent import LatentPrior

        return LatentPrior.from_folder(folder)
    return UNetPrior.from_folder(folder)
