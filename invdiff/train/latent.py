"""Train a latent diffusion prior in two stages (Rombach et al. 2022, Sec. 3-4).

Stage 1 trains a :class:`~invdiff.priors.latent.KLAutoencoder` on random
patches: ``x_hat = D(mean + exp(logvar / 2) eps)`` with ``(mean, logvar) = E(x)``,
minimising the L1 reconstruction error plus an L1 error of the image
gradients (finite differences; it keeps edges sharp without a GAN) plus a
small KL term, all summed per image as the reference does
(``sum |x - x_hat| + kl_weight * KL(q(z | x) || N(0, I))``, reported per pixel).

Between the stages the latent normalisation is computed on encoded patches,
``shift_factor = mean(E(x))`` and ``scale_factor = 1 / std(E(x))`` (Stable
Diffusion's ``scale_factor``, Sec. 4.3.2 and App. D.1), so the scaled latents
have unit variance.

Stage 2 trains an EDM-preconditioned :class:`~invdiff.priors.unet.UNet` on the
scaled latents of (larger) patches with EDM's loss (Karras et al. 2022):
``ln sigma ~ N(P_mean, P_std^2)``, ``lambda(sigma) ||D(z0 + sigma n) - z0||^2``
with ``sigma_data = 1``; ``P_mean = -0.5`` is EDM's ``-1.2`` moved by ``ln 2``
for data of standard deviation 1 instead of 0.5.  An EMA of the U-Net's
weights is kept as in :mod:`invdiff.train.pixel`.

Both stages write resumable checkpoints; the result is one folder with
``config.json`` (``kind: "latent-edm"``) and ``model.safetensors``.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..datasets import TEST_IMAGES, TRAIN_PHOTOS, PatchSampler
from ..priors.latent import AutoencoderConfig, KLAutoencoder, LatentPrior, LatentUNetPrior
from ..priors.unet import UNetConfig, count_parameters
from .common import Progress, ema_update, lr_at, machine_description, optimiser_step, write_grid, write_log


@dataclass
class LatentTrainConfig:
    """Every knob of a two-stage latent prior run (stored in ``config.json``)."""

    data: str = "natural-gray"
    seed: int = 0
    dead_leaves_fraction: float = 0.5
    grad_clip: float = 1.0
    warmup_steps: int = 200
    lr_decay_fraction: float = 0.2  # cosine decay to 10% over the last part of each stage
    checkpoint_every: int = 250
    # stage 1: autoencoder
    autoencoder: dict = field(default_factory=lambda: AutoencoderConfig(channels=24, channel_mult=(1, 2, 2)).to_dict())
    ae_steps: int = 5000
    ae_batch_size: int = 16
    ae_patch_size: int = 32
    ae_lr: float = 5e-4
    kl_weight: float = 1e-6
    gradient_weight: float = 0.5
    # between the stages
    scale_patches: int = 512
    # stage 2: latent U-Net
    unet: dict = field(default_factory=lambda: UNetConfig(in_channels=4, out_channels=4, channels=32,
                                                          channel_mult=(1, 2, 2)).to_dict())  # fmt: skip
    steps: int = 4000
    batch_size: int = 32
    patch_size: int = 64
    lr: float = 4e-4
    p_mean: float = -0.5
    p_std: float = 1.2
    sigma_data: float = 1.0
    ema_halflife_steps: int = 500
    ema_rampup: float = 0.1


def autoencoder_loss(
    ae: KLAutoencoder, x: torch.Tensor, cfg: LatentTrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 loss for patches ``x`` ``(B, C, H, W)`` in [0, 1], per pixel, and its parts.

    ``(sum |x - x_hat| + w_g sum |grad x - grad x_hat| + kl_weight KL) / (C H W)``, averaged
    over the batch, with ``x_hat`` decoded from a posterior sample (reparameterised).
    """
    mean, logvar = ae.encode_dist(x)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator)
    x_hat = ae.decode(z)
    n_pix = x[0].numel()
    rec = (x_hat - x).abs().flatten(1).sum(1)
    d = x_hat - x
    grad = (d[..., 1:, :] - d[..., :-1, :]).abs().flatten(1).sum(1) + (d[..., 1:] - d[..., :-1]).abs().flatten(1).sum(1)
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    loss = ((rec + cfg.gradient_weight * grad + cfg.kl_weight * kl) / n_pix).mean()
    return loss, {"l1": float(rec.detach().mean() / n_pix), "kl": float(kl.detach().mean())}


def latent_edm_loss(model, z0: torch.Tensor, cfg: LatentTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """EDM loss (Karras et al. 2022, eq. 2 and Table 1) on scaled latents ``z0`` ``(B, c, h, w)``: scalar."""
    b = z0.shape[0]
    sigma = (cfg.p_mean + cfg.p_std * torch.randn(b, generator=generator)).exp().reshape(b, 1, 1, 1)
    n = torch.randn(z0.shape, generator=generator)
    d = model(z0 + sigma * n, sigma)
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    return (weight * (d - z0) ** 2).mean()


@torch.no_grad()
def latent_statistics(ae: KLAutoencoder, sampler: PatchSampler, patches: int, batch: int = 32) -> tuple[float, float]:
    """``(shift_factor, scale_factor) = (mean, 1 / std)`` of the posterior means of ``patches`` patches."""
    zs = []
    done = 0
    while done < patches:
        n = min(batch, patches - done)
        zs.append(ae.encode(sampler(n)).flatten())
        done += n
    z = torch.cat(zs).double()
    return float(z.mean()), float(1.0 / z.std())


def train_latent(
    output: str | Path,
    config: LatentTrainConfig | None = None,
    *,
    resume: bool = True,
    num_threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
    max_seconds: float | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> LatentPrior:
    """Train (or resume) a latent prior into ``output``; returns it (EMA weights of the U-Net).

    ``output`` receives ``checkpoint.pt`` (every ``checkpoint_every`` steps of
    either stage), ``log.jsonl`` (every 50 steps), and, once stage 2 has begun,
    ``model.safetensors`` + ``config.json`` (refreshed at each checkpoint) and at
    the end ``samples.png``.  ``max_seconds`` stops after the next checkpoint
    once that much time has passed; a resumed run continues where it stopped.
    """
    cfg = config or LatentTrainConfig()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if num_threads:
        torch.set_num_threads(num_threads)
    ckpt_path = out / "checkpoint.pt"
    state = None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = state["train_config"]
        saved["steps"], saved["ae_steps"] = cfg.steps, cfg.ae_steps  # a run may be extended
        cfg = LatentTrainConfig(**saved)
    if UNetConfig.from_dict(cfg.unet).in_channels != AutoencoderConfig.from_dict(cfg.autoencoder).latent_channels:
        raise ValueError(
            f"the latent U-Net has {cfg.unet['in_channels']} channels but the autoencoder's latents have "
            f"{cfg.autoencoder['latent_channels']}; make them equal"
        )
    f_total = UNetConfig.from_dict(cfg.unet).factor * AutoencoderConfig.from_dict(cfg.autoencoder).factor
    if cfg.patch_size % f_total or cfg.ae_patch_size % AutoencoderConfig.from_dict(cfg.autoencoder).factor:
        raise ValueError(
            f"patch sizes must be divisible by the downsampling: --patch-size by {f_total}, --ae-patch-size by "
            f"{AutoencoderConfig.from_dict(cfg.autoencoder).factor}; got {cfg.patch_size} and {cfg.ae_patch_size}"
        )

    ae = KLAutoencoder(AutoencoderConfig.from_dict(cfg.autoencoder))
    denoiser = LatentUNetPrior(cfg.unet, sigma_data=cfg.sigma_data)
    model = denoiser.model
    model.train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    ae_opt = torch.optim.Adam(ae.parameters(), lr=cfg.ae_lr, betas=(0.9, 0.99))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # initialisation of both networks
    stage, step, wall = 1, 0, {"autoencoder": 0.0, "latent_unet": 0.0}
    shift, scale, sittings = 0.0, 1.0, 1
    if state is not None:
        ae.load_state_dict(state["autoencoder"])
        ae_opt.load_state_dict(state["ae_opt"])
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        stage, step, wall = int(state["stage"]), int(state["step"]), dict(state["wall"])
        shift, scale = float(state["shift_factor"]), float(state["scale_factor"])
        gen.set_state(state["gen"])
        sittings = int(state["sittings"]) + 1
    data_seed = cfg.seed + 1000 * (sittings - 1)  # fresh, reproducible patch stream per sitting
    channels = AutoencoderConfig.from_dict(cfg.autoencoder).in_channels
    sampler_args = dict(seed=data_seed, dead_leaves_fraction=cfg.dead_leaves_fraction)

    def save_checkpoint() -> None:
        tmp = out / "checkpoint.pt.tmp"
        torch.save(
            {"autoencoder": ae.state_dict(), "ae_opt": ae_opt.state_dict(), "model": model.state_dict(),
             "ema": ema.state_dict(), "opt": opt.state_dict(), "stage": stage, "step": step, "wall": wall,
             "shift_factor": shift, "scale_factor": scale, "gen": gen.get_state(), "train_config": asdict(cfg),
             "sittings": sittings, "ae_losses": ae_losses[-200:]},
            tmp,
        )  # fmt: skip
        tmp.replace(ckpt_path)

    def export(losses: list[float], finished: bool) -> LatentPrior:
        prior = LatentPrior(copy.deepcopy(ae).eval(), LatentUNetPrior(cfg.unet, sigma_data=cfg.sigma_data,
                            state_dict=ema.state_dict()), scale_factor=scale, shift_factor=shift)  # fmt: skip
        prior.save(out, extra={"training": _provenance(cfg, prior, step, wall, losses, ae_losses, command, finished)})
        return prior

    t_start = time.time()
    log = open(out / "log.jsonl", "a")
    ae_losses: list[float] = list(state.get("ae_losses", [])) if state is not None else []
    try:
        # -- stage 1: the autoencoder ------------------------------------------------------------
        if stage == 1:
            sampler = PatchSampler(cfg.data, cfg.ae_patch_size, **sampler_args)
            if sampler.channels != channels:
                raise ValueError(f"data {cfg.data!r} has {sampler.channels} channels but the autoencoder expects {channels}")
            ae.train()
            bar = Progress(cfg.ae_steps, enabled=progress)
            parts: list[dict] = []
            t_last = time.time()
            while step < cfg.ae_steps:
                loss, info = autoencoder_loss(ae, sampler(cfg.ae_batch_size), cfg, gen)
                optimiser_step(ae_opt, loss, lr_at(cfg.ae_lr, step, cfg.ae_steps, cfg.warmup_steps,
                                                   cfg.lr_decay_fraction), cfg.grad_clip)  # fmt: skip
                step += 1
                ae_losses.append(loss.item())
                parts.append(info)
                now = time.time()
                wall["autoencoder"] += now - t_last
                t_last = now
                if step % 50 == 0:
                    rec = {"stage": 1, "step": step, "loss": float(np.mean(ae_losses[-50:])),
                           "l1": float(np.mean([p["l1"] for p in parts[-50:]])),
                           "kl": float(np.mean([p["kl"] for p in parts[-50:]])),
                           "wall": round(wall["autoencoder"], 1)}  # fmt: skip
                    write_log(log, rec, on_log)
                bar.update(step, float(np.mean(ae_losses[-50:])))
                if step % cfg.checkpoint_every == 0 or step == cfg.ae_steps:
                    save_checkpoint()
                    if max_seconds is not None and now - t_start > max_seconds and step < cfg.ae_steps:
                        bar.close()
                        return LatentPrior(ae.eval(), denoiser, scale_factor=scale, shift_factor=shift)
            bar.close()
            ae.eval().requires_grad_(False)
            # -- between the stages: latent normalisation ----------------------------------------
            stats_sampler = PatchSampler(cfg.data, cfg.patch_size, **{**sampler_args, "seed": data_seed + 1})
            shift, scale = latent_statistics(ae, stats_sampler, cfg.scale_patches)
            stage, step = 2, 0
            save_checkpoint()
            log.write(json.dumps({"stage": "scale", "shift_factor": shift, "scale_factor": scale}) + "\n")
            log.flush()

        # -- stage 2: the latent U-Net -------------------------------------------------------------
        ae.eval().requires_grad_(False)
        sampler = PatchSampler(cfg.data, cfg.patch_size, **{**sampler_args, "seed": data_seed + 2})
        bar = Progress(cfg.steps, enabled=progress)
        losses: list[float] = []
        t_last = time.time()
        while step < cfg.steps:
            with torch.no_grad():
                z0 = (ae.encode(sampler(cfg.batch_size)) - shift) * scale
            loss = latent_edm_loss(model, z0, cfg, gen)
            optimiser_step(opt, loss, lr_at(cfg.lr, step, cfg.steps, cfg.warmup_steps, cfg.lr_decay_fraction),
                           cfg.grad_clip)  # fmt: skip
            step += 1
            ema_update(ema, model, step, cfg.ema_halflife_steps, cfg.ema_rampup)
            losses.append(loss.item())
            now = time.time()
            wall["latent_unet"] += now - t_last
            t_last = now
            if step % 50 == 0:
                rec = {"stage": 2, "step": step, "loss": float(np.mean(losses[-50:])),
                       "wall": round(wall["latent_unet"], 1)}  # fmt: skip
                write_log(log, rec, on_log)
            bar.update(step, float(np.mean(losses[-50:])))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
                export(losses, finished=step >= cfg.steps)
                if max_seconds is not None and now - t_start > max_seconds and step < cfg.steps:
                    break
        bar.close()
    finally:
        log.close()

    final = export(losses, finished=step >= cfg.steps)
    if step >= cfg.steps:
        save_latent_samples(final, out / "samples.png", seed=cfg.seed)
    return final


def _provenance(cfg: LatentTrainConfig, prior: LatentPrior, step: int, wall: dict, losses: list[float],
                ae_losses: list[float], command: str | None, finished: bool) -> dict:  # fmt: skip
    data_desc = {
        "natural-gray": "scikit-image bundled photographs (gray) except " + ", ".join(TEST_IMAGES)
        + " (" + ", ".join(TRAIN_PHOTOS) + "), at scales 1, 0.7, 0.5, mixed with procedural dead-leaves images",
        "phantoms": "procedural random-ellipse phantoms with smooth texture (DIVal ellipses style), seeded",
    }.get(cfg.data, f"images under {cfg.data}")
    return {
        **{k: v for k, v in asdict(cfg).items() if k not in ("unet", "autoencoder")},
        "data_description": data_desc,
        "ae_steps_done": cfg.ae_steps,
        "steps_done": step,
        "finished": finished,
        "wall_seconds": round(sum(wall.values()), 1),
        "wall_seconds_per_stage": {k: round(v, 1) for k, v in wall.items()},
        "ae_final_loss": float(np.mean(ae_losses[-200:])) if ae_losses else None,
        "final_loss": float(np.mean(losses[-200:])) if losses else None,
        "parameters": {"autoencoder": count_parameters(prior.autoencoder),
                       "latent_unet": count_parameters(prior.latent_prior.model)},  # fmt: skip
        "machine": machine_description(),
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
    }


def save_latent_samples(prior: LatentPrior, path: str | Path, n: int = 16, size: int = 64, steps: int = 32,
                        seed: int = 0) -> None:  # fmt: skip
    """Write a grid of ``n`` unconditional samples (EDM Heun in latent space, then decoded) as a PNG."""
    from ..samplers.heun import sample_prior

    g = torch.Generator().manual_seed(seed)
    z = sample_prior(prior.latent_prior, prior.latent_shape((n, prior.channels, size, size)), steps=steps, generator=g)
    with torch.no_grad():
        write_grid(prior.decode(z), path)


__all__ = ["LatentTrainConfig", "train_latent", "autoencoder_loss", "latent_edm_loss", "latent_statistics",
           "save_latent_samples"]  # fmt: skip
