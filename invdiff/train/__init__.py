"""Prior training over the core: the pixel U-Net trainer (:mod:`.pixel`), the latent
autoencoder + U-Net trainer (:mod:`.latent`) and what they share (:mod:`.common`).
Uses the core only."""

from .latent import LatentTrainConfig, train_latent
from .pixel import TrainConfig, train

__all__ = ["LatentTrainConfig", "TrainConfig", "train", "train_latent"]
