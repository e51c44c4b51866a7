"""The ``invdiff`` command line: a thin typer layer over the library."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Restore images and scans from degraded measurements with diffusion priors.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Restore images and scans from degraded measurements with diffusion priors."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for checkpoints and the trained prior."),
    data: str = typer.Option("natural-gray", help="natural-gray, natural-rgb, phantoms, or a folder of images."),
    steps: int = typer.Option(20000, help="Optimiser steps in total (a resumed run continues to this count)."),
    batch_size: int = typer.Option(32, help="Patches per step."),
    patch_size: int = typer.Option(64, help="Side of the square training patches."),
    lr: float = typer.Option(4e-4, help="Adam learning rate (after warm-up)."),
    channels: int = typer.Option(32, help="U-Net base width."),
    channel_mult: str = typer.Option("1,2,3,4", help="Width multipliers per level, comma-separated."),
    num_res_blocks: int = typer.Option(2, help="Residual blocks per level."),
    attn_levels: str = typer.Option("", help="Levels with self-attention, comma-separated (e.g. 3)."),
    ema_halflife: int = typer.Option(2000, help="EMA half-life in steps (reached after the ramp-up)."),
    seed: int = typer.Option(0, help="Seed for data, noise and initialisation."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (after a checkpoint) once this many minutes pass."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if a checkpoint exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a diffusion prior (EDM loss, random patches, EMA) and write model.safetensors + config.json."""
    import torch

    from .priors.unet import UNetConfig
    from .training import TrainConfig
    from .training import train as run_train

    try:
        mult = tuple(int(v) for v in channel_mult.split(",") if v.strip())
        attn = tuple(int(v) for v in attn_levels.split(",") if v.strip())
    except ValueError:
        _fail(f"--channel-mult and --attn-levels take comma-separated integers, got {channel_mult!r}, {attn_levels!r}")
    in_ch = 3 if data == "natural-rgb" else 1
    if data not in ("natural-gray", "natural-rgb", "phantoms"):
        if not Path(data).is_dir():
            _fail(f"--data {data!r} is neither a built-in data set (natural-gray, natural-rgb, phantoms) nor a folder")
    unet = UNetConfig(in_channels=in_ch, out_channels=in_ch, channels=channels, channel_mult=mult,
                      num_res_blocks=num_res_blocks, attn_levels=attn)  # fmt: skip
    cfg = TrainConfig(data=data, steps=steps, batch_size=batch_size, patch_size=patch_size, lr=lr,
                      ema_halflife_steps=ema_halflife, seed=seed, unet=unet.to_dict())  # fmt: skip
    command = "invdiff " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        prior = run_train(output, cfg, resume=not no_resume, num_threads=threads, progress=not quiet,
                          command=command, max_seconds=None if max_minutes is None else 60 * max_minutes)  # fmt: skip
    except ValueError as e:
        _fail(str(e))
    info = json.loads((Path(output) / "config.json").read_text())["training"]
    typer.echo(
        f"trained {info['steps_done']}/{steps} steps in {info['wall_seconds'] / 60:.1f} min, "
        f"loss {info['final_loss']:.4f}; prior written to {output}"
    )
    del prior, torch


@app.command()
def demo(
    output: Path = typer.Option(Path("invdiff-demo"), "--output", "-o", help="Folder for the outputs."),
    task: str = typer.Option("inpaint", help="inpaint (70% pixels missing) or sr (4x bicubic)."),
    method: Optional[str] = typer.Option(None, help="Sampler (default ddrm)."),
    steps: Optional[int] = typer.Option(None, help="Noise levels (default: the method's)."),
    samples: int = typer.Option(4, help="Posterior samples (mean and std are over these)."),
    size: int = typer.Option(128, help="Side of the centre crop of the test image."),
    seed: int = typer.Option(0, help="Seed for the measurement and the sampler."),
) -> None:
    """Restore the held-out camera image with the shipped prior; write images and metrics.json."""
    from .demo import run_demo

    try:
        m = run_demo(output, task=task, method=method, steps=steps, samples=samples, size=size, seed=seed)
    except ValueError as e:
        _fail(str(e))
    base = next(k for k in ("biharmonic", "bicubic") if k in m)
    typer.echo(
        f"{m['task']}: {m['method']} ({m['steps']} steps, {m['samples']} samples, {m['seconds']:.1f} s) "
        f"PSNR {m['restored']['psnr']:.2f} dB, SSIM {m['restored']['ssim']:.3f}; "
        f"{base} baseline PSNR {m[base]['psnr']:.2f} dB, SSIM {m[base]['ssim']:.3f}; outputs in {output}"
    )


@app.command()
def priors(name: Optional[str] = typer.Argument(None, help="A shipped name or a prior folder to describe.")) -> None:
    """List the shipped priors, or describe one (architecture, training data, steps, wall time)."""
    from .priors import SHIPPED, load_prior, shipped_priors

    if name is None:
        for prior_name, present in shipped_priors().items():
            typer.echo(f"{prior_name:14s} {'shipped' if present else 'not trained yet'}  {SHIPPED[prior_name]}")
        return
    try:
        prior = load_prior(name)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    config = getattr(prior, "config", {})
    training = config.get("training", {})
    n_params = sum(p.numel() for p in prior.parameters())
    typer.echo(f"{name}: {type(prior).__name__}, {n_params / 1e6:.2f}M parameters, "
               f"sigma {prior.sigma_min:g}..{prior.sigma_max:g}, data range {prior.data_range}")  # fmt: skip
    if training:
        typer.echo(f"  trained {training.get('steps_done')} steps ({training.get('wall_seconds', 0) / 3600:.2f} h), "
                   f"final loss {training.get('final_loss')}, finished: {training.get('finished')}")  # fmt: skip
        typer.echo(f"  data: {training.get('data_description', training.get('data'))}")
        typer.echo(f"  command: {training.get('command')}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
