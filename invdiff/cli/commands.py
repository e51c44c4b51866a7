"""The ``invdiff`` command line: a thin typer layer over the library."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

# Task options, shared by restore and degrade (see invdiff.cli.tasks).
RandomMask = Annotated[Optional[float], typer.Option(
    help="inpaint, --simulate: fraction of pixels missing (default 0.7).")]
Box = Annotated[Optional[int], typer.Option(help="inpaint, --simulate: side of a centred missing square.")]
MaskFile = Annotated[Optional[str], typer.Option(
    help="inpaint: mask image sized like the input, white/nonzero = the region to fill.")]
MaskKnown = Annotated[Optional[str], typer.Option(
    "--mask-known", help="inpaint: mask image sized like the input, nonzero = the known pixels.")]
Kernel = Annotated[Optional[str], typer.Option(
    help="deblur: gaussian:SIGMA | FILE (image or .npy) | auto (estimated from the photo; not with --simulate) "
         "| motion:SIZE,INTENSITY (random; --simulate only).")]
KernelSize = Annotated[Optional[int], typer.Option(
    help="deblur, --kernel auto: odd side of the estimated kernel's support, at least the blur's extent (default 31).")]
Scale = Annotated[Optional[int], typer.Option(help="sr: factor (default 4).")]
Filter = Annotated[Optional[str], typer.Option(help="sr: bicubic or box.")]
Angles = Annotated[Optional[int], typer.Option(help="ct, --simulate: number of views.")]
ImageSize = Annotated[Optional[int], typer.Option(
    help="ct, measured sinogram: side of the image (default: the largest the detectors cover).")]
Arc = Annotated[Optional[float], typer.Option(help="ct: degrees the views span (default 180; less: limited angle).")]
Dose = Annotated[Optional[float], typer.Option(
    help="ct, --simulate: low dose, photons per detector bin (Poisson; dps, score_ald).")]
Window = Annotated[Optional[str], typer.Option(
    help="HU window onto the prior's [0, 1]: ct, soft-tissue, lung, bone, brain or LO,HI (CT DICOM: ct).")]
Acceleration = Annotated[Optional[float], typer.Option(help="mri, --simulate: undersampling factor.")]
CenterFraction = Annotated[Optional[float], typer.Option(
    help="mri, --simulate: fraction of central columns always measured.")]
MaskKind = Annotated[Optional[str], typer.Option(help="mri, --simulate: column mask, random or equispaced.")]
Coils = Annotated[Optional[int], typer.Option(help="mri, --simulate: receive coils (over 1: simulated sensitivities).")]


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Restore images and scans from degraded measurements with diffusion priors.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Restore images and scans from degraded measurements with diffusion priors."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _task_options(task: str, **given) -> dict:
    """The task's options from the command line flags; a flag the task does not take is an error."""
    from .tasks import TASKS

    if task not in TASKS:
        _fail(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    wrong = [k for k, v in given.items() if v is not None and k not in TASKS[task].options]
    if wrong:
        _fail(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} does not apply to --task {task}")
    return {k: v for k, v in given.items() if v is not None}


def _check_window(window: str | None) -> None:
    """Fail with one line on a bad ``--window``."""
    if window is not None:
        from ..medical.ct import parse_window

        try:
            parse_window(window)
        except ValueError as e:
            _fail(str(e))


def _data_channels(data: str) -> int:
    """Image channels of ``--data`` (a built-in set or a folder); a one-line error for anything else."""
    from ..datasets import BUILTIN

    if data not in BUILTIN and not Path(data).is_dir():
        _fail(f"--data {data!r} is neither a built-in data set ({', '.join(BUILTIN)}) nor a folder")
    return 3 if data == "natural-rgb" else 1


def _int_tuple(option: str, value: str) -> tuple[int, ...]:
    """``"1,2,3"`` as a tuple of ints; a one-line error naming ``option`` otherwise."""
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        _fail(f"{option} takes comma-separated integers, got {value!r}")


def _command_line() -> str:
    """The command as typed, recorded in the trained prior's config."""
    return "invdiff " + " ".join(shlex.quote(a) for a in sys.argv[1:])


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
    warmup_steps: int = typer.Option(500, help="Steps of linear learning-rate warm-up (fine-tuning needs fewer)."),
    checkpoint_every: int = typer.Option(250, help="Steps between checkpoints (and exported weights)."),
    seed: int = typer.Option(0, help="Seed for data, noise and initialisation."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (after a checkpoint) once this many minutes pass."),
    budget_minutes: Optional[float] = typer.Option(
        None, help="Fit the whole run (LR decay included) into this many minutes: --steps becomes a first guess."
    ),
    device: str = typer.Option("cpu", help="Where the network trains: cpu, cuda, cuda:1, ..."),
    workers: int = typer.Option(0, help="Background processes drawing patches (useful on a GPU)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if a checkpoint exists."),
    init_from: Optional[str] = typer.Option(
        None, "--init-from", help="Start from this prior's weights (shipped name or folder) instead of random ones."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a diffusion prior (EDM loss, random patches, EMA) and write model.safetensors + config.json."""
    import torch

    from ..priors.unet import UNetConfig
    from ..train.pixel import TrainConfig
    from ..train.pixel import train as run_train

    mult, attn = _int_tuple("--channel-mult", channel_mult), _int_tuple("--attn-levels", attn_levels)
    if checkpoint_every < 1 or warmup_steps < 0:
        _fail(f"--checkpoint-every must be >= 1 and --warmup-steps >= 0, got {checkpoint_every} and {warmup_steps}")
    in_ch = _data_channels(data)
    unet = UNetConfig(in_channels=in_ch, out_channels=in_ch, channels=channels, channel_mult=mult,
                      num_res_blocks=num_res_blocks, attn_levels=attn)  # fmt: skip
    cfg = TrainConfig(data=data, steps=steps, batch_size=batch_size, patch_size=patch_size, lr=lr,
                      ema_halflife_steps=ema_halflife, seed=seed, unet=unet.to_dict(), warmup_steps=warmup_steps,
                      checkpoint_every=checkpoint_every)  # fmt: skip
    command = _command_line()
    try:
        prior = run_train(output, cfg, resume=not no_resume, num_threads=threads, progress=not quiet,
                          command=command, max_seconds=None if max_minutes is None else 60 * max_minutes,
                          init_from=init_from, device=device, workers=workers,
                          time_budget=None if budget_minutes is None else 60 * budget_minutes)  # fmt: skip
    except ValueError as e:
        _fail(str(e))
    info = json.loads((Path(output) / "config.json").read_text())["training"]
    typer.echo(
        f"trained {info['steps_done']}/{info['steps']} steps in {info['wall_seconds'] / 60:.1f} min, "
        f"loss {info['final_loss']:.4f}; prior written to {output}"
    )
    del prior, torch


@app.command("train-latent")
def train_latent_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for checkpoints and the trained latent prior."),
    data: str = typer.Option("natural-gray", help="natural-gray, natural-rgb, phantoms, or a folder of images."),
    ae_steps: int = typer.Option(5000, help="Stage 1: autoencoder optimiser steps."),
    steps: int = typer.Option(4000, help="Stage 2: latent U-Net optimiser steps."),
    ae_batch_size: int = typer.Option(16, help="Stage 1: patches per step."),
    ae_patch_size: int = typer.Option(32, help="Stage 1: side of the square patches."),
    batch_size: int = typer.Option(32, help="Stage 2: patches per step."),
    patch_size: int = typer.Option(64, help="Stage 2: side of the square patches (latents are 4x smaller)."),
    ae_channels: int = typer.Option(24, help="Autoencoder base width (levels 1, 2, 2: downsampling 4)."),
    latent_channels: int = typer.Option(4, help="Latent channels."),
    kl_weight: float = typer.Option(1e-6, help="Weight of the KL term (summed over latents, as the reference)."),
    channels: int = typer.Option(32, help="Latent U-Net base width."),
    channel_mult: str = typer.Option("1,2,2", help="Latent U-Net width multipliers per level, comma-separated."),
    lr: float = typer.Option(4e-4, help="Stage 2 Adam learning rate (after warm-up)."),
    ae_lr: float = typer.Option(5e-4, help="Stage 1 Adam learning rate (after warm-up)."),
    seed: int = typer.Option(0, help="Seed for data, noise and initialisation."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (after a checkpoint) once this many minutes pass."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if a checkpoint exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a latent diffusion prior: a KL autoencoder, then an EDM U-Net on its scaled latents."""
    from ..priors.latent import AutoencoderConfig
    from ..priors.unet import UNetConfig
    from ..train.latent import LatentTrainConfig, train_latent

    mult = _int_tuple("--channel-mult", channel_mult)
    in_ch = _data_channels(data)
    ae = AutoencoderConfig(in_channels=in_ch, latent_channels=latent_channels, channels=ae_channels)
    unet = UNetConfig(in_channels=latent_channels, out_channels=latent_channels, channels=channels, channel_mult=mult)
    cfg = LatentTrainConfig(data=data, seed=seed, autoencoder=ae.to_dict(), ae_steps=ae_steps,
                            ae_batch_size=ae_batch_size, ae_patch_size=ae_patch_size, ae_lr=ae_lr, kl_weight=kl_weight,
                            unet=unet.to_dict(), steps=steps, batch_size=batch_size, patch_size=patch_size, lr=lr)  # fmt: skip
    command = _command_line()
    try:
        train_latent(output, cfg, resume=not no_resume, num_threads=threads, progress=not quiet, command=command,
                     max_seconds=None if max_minutes is None else 60 * max_minutes)  # fmt: skip
    except ValueError as e:
        _fail(str(e))
    cfg_file = Path(output) / "config.json"
    if not cfg_file.is_file():
        typer.echo(f"stopped during stage 1 (autoencoder); run the same command again to resume from {output}")
        return
    info = json.loads(cfg_file.read_text())["training"]
    minutes = info["wall_seconds"] / 60
    typer.echo(f"trained the autoencoder ({info['ae_steps_done']} steps) and {info['steps_done']}/{steps} latent "
               f"U-Net steps in {minutes:.1f} min, loss {info['final_loss']:.4f}; prior written to {output}")  # fmt: skip


def _prior_option(prior: str | None, task: str | None):
    """``--prior``: the named prior, or (not given) the shipped prior that fits each input's channels."""
    from .batch import PriorChoice
    from ..priors import load_prior

    if prior is None:
        if task in ("ct", "mri"):
            prior = "phantoms"
        elif task == "colorize":
            prior = "natural-rgb"
        else:
            return PriorChoice()
    try:
        return load_prior(prior)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))


def _sigma_y_option(text: str | None, real: bool) -> float | str:
    """``--sigma-y``: a number, or ``auto`` (the default for measured inputs; 0.01 when simulating)."""
    if text is None:
        return "auto" if real else 0.01
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        _fail(f"--sigma-y takes a noise std in data units (e.g. 0.01) or 'auto', got {text!r}")
    if not value >= 0:
        _fail(f"--sigma-y must be >= 0, got {text}")
    return value


#: posterior samples an --interval run draws when --samples is not given
INTERVAL_SAMPLES = 8


def _interval_option(level: float | None, calibration: Path | None, method: str | None, steps: int | None,
                     samples: int | None, task: str | None, blind: bool
                     ) -> tuple[Any, str | None, int | None, int | None]:  # fmt: skip
    """``(Interval or None, method, steps, samples)`` for ``--interval`` / ``--calibration``; fails in one line."""
    from ..intervals import Calibration, check_level
    from .batch import Interval

    if level is None and calibration is None:
        return None, method, steps, samples
    try:
        level = check_level(0.9 if level is None else level)
    except ValueError as e:
        _fail(f"--interval: {e}")
    if samples == 1:
        _fail("--interval needs at least 2 samples (one sample has no spread); drop --samples or pass --samples 8")
    if calibration is None:
        return Interval(level), method, steps, samples or INTERVAL_SAMPLES
    if blind:
        _fail("--calibration does not apply to --kernel auto (each photo's kernel is estimated); "
              "use raw --interval bounds")  # fmt: skip
    try:
        cal = Calibration.load(calibration)
        cal.scale(level)
    except ValueError as e:
        _fail(f"--calibration: {e}")
    for flag, given, made in (("--method", method, cal.method), ("--steps", steps, cal.steps),
                              ("--samples", samples, cal.samples), ("--task", task, cal.task)):  # fmt: skip
        if given is not None and made is not None and given != made:
            _fail(f"--calibration {calibration} was made for {flag} {made}, not {given}: drop {flag} or calibrate "
                  f"for {given}")  # fmt: skip
    return Interval(level, cal, str(calibration)), cal.method, cal.steps, cal.samples


@app.command()
def demo(
    output: Path = typer.Option(Path("invdiff-demo"), "--output", "-o", help="Folder for the outputs."),
    task: str = typer.Option("deblur", help="deblur (Gaussian, std 2), inpaint (70% pixels missing) or sr (4x bicubic)."),
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
    base = next(k for k in ("wiener", "biharmonic", "bicubic") if k in m)
    typer.echo(
        f"{m['task']}: {m['method']} ({m['steps']} steps, {m['samples']} samples, {m['seconds']:.1f} s) "
        f"PSNR {m['restored']['psnr']:.2f} dB, SSIM {m['restored']['ssim']:.3f}; "
        f"{base} baseline PSNR {m[base]['psnr']:.2f} dB, SSIM {m[base]['ssim']:.3f}; outputs in {output}"
    )


@app.command("restore")
def restore_cmd(
    inputs: list[str] = typer.Argument(..., help="Image files, folders or globs: the measurements to restore."),
    task: Optional[str] = typer.Option(None, help="inpaint, deblur, sr, denoise, colorize, mri, ct (not with --measured)."),
    output: Path = typer.Option(Path("invdiff-out"), "--output", "-o", help="Output folder."),
    simulate: bool = typer.Option(
        False, "--simulate", help="Evaluate: inputs are clean images; degrade them, restore, score against them."),
    random_mask: RandomMask = None,
    box: Box = None,
    mask: MaskFile = None,
    mask_known: MaskKnown = None,
    kernel: Kernel = None,
    kernel_size: KernelSize = None,
    scale: Scale = None,
    filter: Filter = None,
    angles: Angles = None,
    arc: Arc = None,
    image_size: ImageSize = None,
    dose: Dose = None,
    window: Window = None,
    acceleration: Acceleration = None,
    center_fraction: CenterFraction = None,
    mask_kind: MaskKind = None,
    coils: Coils = None,
    sigma_y: Optional[str] = typer.Option(
        None, help="Measurement noise std (data units) or 'auto' (estimated from each input image; the default; "
                   "ct and mri need a number). With --simulate the noise added (default 0.01)."),
    prior: Optional[str] = typer.Option(
        None, help="Shipped prior name or a path (default: natural-gray / natural-rgb by the input's channels, "
                   "natural-rgb for colorize, phantoms for ct and mri)."),
    method: Optional[str] = typer.Option(None, help="Sampler: " + ", ".join(["ddrm", "dps", "pigdm", "ddnm",
                                                                             "diffpir", "repaint", "score_ald",
                                                                             "daps", "pnp_dm"])
                                         + " (default: ddrm; diffpir for measured photos' deblurring)."),
    steps: Optional[int] = typer.Option(None, help="Noise levels (default: about a minute's worth per image)."),
    samples: Optional[int] = typer.Option(
        None, help="Posterior samples per image; the std is over them (default: 2 to 4, chosen per image)."),
    max_memory: Optional[str] = typer.Option(
        None, help="Refuse (or, without --method, avoid) methods predicted to need more, e.g. 8G "
                   "(default: half the machine's memory)."),
    interval: Optional[float] = typer.Option(
        None, help="Write per-pixel bounds lo.png / hi.png meant to hold the truth with this probability, e.g. 0.9: "
                   "the samples' quantiles (default 8 samples), or calibrated ones with --calibration."),
    calibration: Optional[Path] = typer.Option(
        None, help="A calibration from 'invdiff calibrate': calibrated --interval bounds (default level 0.9); "
                   "its method, steps, samples and (without --sigma-y) noise level become the run's."),
    seed: int = typer.Option(0, help="Seed (per-file seeds derive from it and the file name)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(
        1, help="Images per sampler call (same size, stackable operators); a batch's noise comes from its first file."
    ),
    ground_truth: Optional[Path] = typer.Option(
        None, help="Clean image file or folder (matched by name): PSNR/SSIM/LPIPS are reported against it."),
    save_samples: bool = typer.Option(False, help="Also write every posterior sample."),
    overwrite: bool = typer.Option(False, help="Redo files whose outputs already exist."),
    measured: bool = typer.Option(False, help="Inputs are measurements from 'invdiff degrade' (.npy + .json)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary line."),
) -> None:
    """Restore each input: the file is the measurement (a blurry, small, damaged or noisy photo, a sinogram).

    --simulate evaluates instead: clean inputs are degraded by the task, restored and scored against themselves.
    Without it, PSNR/SSIM/LPIPS are reported only against --ground-truth.
    """
    from .batch import restore_files, summarise
    from ..devices import resolve_device
    from ..memory import parse_memory
    from ..methods import METHODS

    given = dict(random_mask=random_mask, box=box, mask=mask, mask_known=mask_known, kernel=kernel,
                 kernel_size=kernel_size, scale=scale, filter=filter, angles=angles, arc=arc, image_size=image_size,
                 dose=dose, acceleration=acceleration, center_fraction=center_fraction, mask_kind=mask_kind,
                 coils=coils)  # fmt: skip
    if measured:
        flags = {"--task": task, "--window": window, "--simulate": simulate or None, "--sigma-y": sigma_y}
        flags.update({"--" + k.replace("_", "-"): v for k, v in given.items()})
        used = [k for k, v in flags.items() if v is not None]
        if used:
            _fail(f"{', '.join(used)} cannot be used with --measured: the sidecars describe the operator")
    elif task is None:
        _fail("--task is required (or --measured for measurements written by 'invdiff degrade')")
    options = {} if measured else _task_options(task, **given)
    if simulate and options.get("kernel") == "auto":
        _fail("--kernel auto estimates a real photo's blur; --simulate needs the kernel to blur the clean image with "
              "(e.g. --kernel gaussian:2.0, or a kernel file)")  # fmt: skip
    if simulate and options.get("kernel_size") is not None:
        _fail("--kernel-size applies only with --kernel auto (a real photo's blur, estimated); with --simulate give "
              "the kernel (e.g. --kernel gaussian:2.0,9)")  # fmt: skip
    if not measured and not simulate:
        from .tasks import check_measured_options

        try:
            check_measured_options(task, options)
        except ValueError as e:
            _fail(str(e))
    _check_window(window)
    if method is not None and method not in METHODS:
        _fail(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method is not None and options.get("kernel") == "auto":
        from ..blind import check_blind_method

        try:
            check_blind_method(method)
        except ValueError as e:
            _fail(str(e))
    for flag, value in (("--steps", steps), ("--samples", samples)):
        if value is not None and value < 1:
            _fail(f"{flag} must be at least 1, got {value}")
    bounds, method, steps, samples = _interval_option(interval, calibration, method, steps, samples, task,
                                                      options.get("kernel") == "auto")  # fmt: skip
    if bounds is not None and bounds.calibration is not None and bounds.calibration.sigma_y is not None \
            and sigma_y is None and not measured:
        sigma_y = str(bounds.calibration.sigma_y)  # the noise the calibration holds for, not an estimate
    try:
        resolve_device(device)
    except ValueError as e:
        _fail(f"--device: {e}")
    try:
        cap = None if max_memory is None else parse_memory(max_memory)
    except ValueError as e:
        _fail(f"--max-memory: {e}")
    noise = _sigma_y_option(sigma_y, real=not (simulate or measured))
    if noise == "auto" and (simulate or measured):
        _fail("--sigma-y auto estimates a real measurement's noise; with --simulate give the noise to add "
              "(e.g. --sigma-y 0.01)")  # fmt: skip
    if noise == "auto" and task == "ct" and sigma_y is None:
        _fail("--task ct needs --sigma-y: a sinogram's noise is not estimated (degrade's sidecar says what it used)")
    if noise == "auto" and task == "ct":
        _fail("--sigma-y auto does not apply to sinograms; give the noise std, e.g. --sigma-y 0.01")
    p = _prior_option(prior, None if measured else task)

    h5 = [i for i in inputs if i.lower().endswith((".h5", ".hdf5"))]
    if h5:  # fastMRI k-space: reconstructed slice by slice (invdiff.medical.mri)
        if task != "mri" or len(h5) != len(inputs):
            _fail("HDF5 k-space inputs (.h5) need --task mri and cannot be mixed with image files")
        unused = {"--simulate": simulate or None, "--ground-truth": ground_truth, "--max-memory": max_memory,
                  "--interval": interval, "--calibration": calibration,
                  "--save-samples": save_samples or None, "--batch-size": None if batch_size == 1 else batch_size}  # fmt: skip
        used = [k for k, v in unused.items() if v is not None]
        if used:
            _fail(f"{', '.join(used)} do not apply to k-space .h5 inputs (the file's reconstruction_rss, when "
                  "present, is the truth)")  # fmt: skip
        from ..medical.mri import restore_h5_files

        if sigma_y == "auto":
            _fail("--sigma-y auto does not apply to k-space; give the noise std (default 0.01)")
        if noise == "auto":
            noise = 0.01  # k-space is not an image: its noise is not estimated (give --sigma-y)
        say = None if quiet else lambda n, st, row: typer.echo(f"{st:8s} {n}")
        try:
            rep = restore_h5_files(h5, output, prior=p, task_options=options, method=method or "ddrm", steps=steps,
                                   sigma_y=noise, samples=samples or 4, seed=seed, overwrite=overwrite,
                                   device=device, on_file=say)  # fmt: skip
        except (ValueError, FileNotFoundError) as e:
            _fail(str(e))
        for name, why in rep["failed"].items():
            typer.echo(f"failed: {name}: {why}", err=True)
        typer.echo(f"{len(rep['done'])} restored, {len(rep['skipped'])} already done, {len(rep['failed'])} failed; "
                   f"outputs in {output}")  # fmt: skip
        raise typer.Exit(1 if rep["failed"] else 0)

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..io import find_inputs

    try:
        n_files = len(find_inputs(inputs))
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    n_steps = steps or (METHODS[method].steps if method else 20)  # refined by each file's first report
    console = Console(stderr=True)
    bars = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=quiet, transient=True)  # fmt: skip
    images = bars.add_task("images", total=n_files)
    sampling = bars.add_task("steps", total=n_steps)
    # Without a terminal (a log file, a batch system) the bars do not draw: a plain line every few seconds.
    ticker = None if quiet or console.is_terminal else _Ticker(n_files, n_steps)

    def on_file(name: str, status: str, row: dict | None) -> None:
        bars.advance(images)
        bars.reset(sampling, total=n_steps)
        if ticker is not None:
            ticker.next_file()
        if not quiet:
            detail = f"PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, " if row and "psnr" in row else ""
            if row and row.get("sigma_y_source") == "auto":
                detail += f"sigma_y {row['sigma_y']:.4f} (estimated), "
            took = f"{row['method']} {row['steps']} steps x {row['samples']}, {row['seconds']:.1f} s" if row else ""
            bars.console.print(f"{status:8s} {name} {detail}{took}".rstrip())
            if row and row.get("kernel_fills_support"):
                bars.console.print(f"note     {name}: the estimated kernel fills its {row['kernel_size']}-pixel "
                                   "support; the blur may be longer: try a larger --kernel-size")  # fmt: skip

    def on_step(info: dict) -> None:
        total = int(info.get("steps", n_steps))
        bars.update(sampling, completed=min(int(info["i"]) + 1, total), total=total)
        if ticker is not None:
            ticker.n_steps = total
            ticker.step(int(info["i"]) + 1)

    try:
        with bars:
            report = restore_files(inputs, output, task=task or "", task_options=options, prior=p, method=method,
                                   steps=steps, sigma_y=noise, samples=samples, seed=seed,
                                   ground_truth=ground_truth, overwrite=overwrite, save_samples=save_samples,
                                   device=device, on_file=on_file, measured=measured, callback=on_step,
                                   batch_size=batch_size, window=window, simulate=simulate,
                                   max_memory=cap, interval=bounds)  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 speaks for the run
        raise typer.Exit(1 if report.failed else 0)
    for name, why in report.failed.items():
        typer.echo(f"failed: {name}: {why}", err=True)
    s = summarise(report.rows)
    quality = f", mean PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f}" if "psnr" in s else ""
    typer.echo(f"{len(report.done)} restored, {len(report.skipped)} already done, {len(report.failed)} failed"
               f"{quality}; {report.seconds:.1f} s; outputs in {output}")  # fmt: skip
    if report.failed:
        raise typer.Exit(1)


#: seconds between progress lines when stderr is not a terminal
PROGRESS_EVERY = 5.0


class _Ticker:
    """Progress as plain stderr lines, at most one every ``PROGRESS_EVERY`` seconds, with the time left.

    The estimate is the current file's pace since its first step (not since the file
    began: a blind deblur spends minutes fitting kernels before its first step): its
    remaining steps plus the files not yet started, each taking what the finished ones
    took on average (before any has finished: this one's time so far plus its steps to
    go).  Until a file has a pace (its first step), a line gives the time elapsed only.
    """

    def __init__(self, n_files: int, n_steps: int, clock: Callable[[], float] | None = None) -> None:
        import time

        self.clock = clock or time.monotonic
        self.n_files, self.n_steps = n_files, n_steps
        self.start = self.file_start = self.last = self.clock()
        self.done = 0
        self.first: tuple[int, float] | None = None  # (step, time) of the current file's first step

    def next_file(self) -> None:
        self.done += 1
        self.file_start = self.clock()
        self.first = None

    def step(self, i: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (i, now)
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        head = (f"image {min(self.done + 1, self.n_files)}/{self.n_files}, step {i}/{self.n_steps}: "
                f"{now - self.start:.0f} s elapsed")  # fmt: skip
        i0, t0 = self.first
        if i <= i0:
            typer.echo(head, err=True)
            return
        per_step = (now - t0) / (i - i0)
        # a finished file's mean time, or this one's: so far, plus its steps to go
        this = (now - self.file_start) + per_step * (self.n_steps - i)
        per_file = (self.file_start - self.start) / self.done if self.done else this
        left = per_step * (self.n_steps - i) + per_file * max(self.n_files - self.done - 1, 0)
        typer.echo(f"{head}, about {left:.0f} s left", err=True)


@app.command()
def degrade(
    inputs: list[str] = typer.Argument(..., help="Clean image files, folders or globs."),
    task: str = typer.Option(..., help="inpaint, deblur, sr, denoise, colorize, mri, ct."),
    output: Path = typer.Option(Path("invdiff-measurements"), "--output", "-o", help="Output folder."),
    random_mask: RandomMask = None,
    box: Box = None,
    mask: MaskFile = None,
    mask_known: MaskKnown = None,
    kernel: Kernel = None,
    scale: Scale = None,
    filter: Filter = None,
    angles: Angles = None,
    arc: Arc = None,
    dose: Dose = None,
    window: Window = None,
    acceleration: Acceleration = None,
    center_fraction: CenterFraction = None,
    mask_kind: MaskKind = None,
    coils: Coils = None,
    sigma_y: float = typer.Option(0.01, help="Measurement noise std (data units)."),
    prior: Optional[str] = typer.Option(
        None, help="The prior you will restore with (sets padding and checks; default as for restore)."),
    seed: int = typer.Option(0, help="Seed (per-file seeds derive from it and the file name)."),
    overwrite: bool = typer.Option(False, help="Redo files whose measurements already exist."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary line."),
) -> None:
    """Make measurements from clean images: NAME.npy plus a NAME.json sidecar describing the operator."""
    from .batch import degrade_files

    options = _task_options(task, random_mask=random_mask, box=box, mask=mask, mask_known=mask_known,
                            kernel=kernel, scale=scale, filter=filter, angles=angles, arc=arc, dose=dose, acceleration=acceleration,
                            center_fraction=center_fraction, mask_kind=mask_kind, coils=coils)  # fmt: skip
    _check_window(window)
    p = _prior_option(prior, task)
    try:
        report = degrade_files(inputs, output, task=task, task_options=options, prior=p, sigma_y=sigma_y,
                               seed=seed, overwrite=overwrite, window=window,
                               on_file=None if quiet else lambda n, st, _: typer.echo(f"{st:8s} {n}"))  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    for name, why in report.failed.items():
        typer.echo(f"failed: {name}: {why}", err=True)
    typer.echo(f"{len(report.done)} measured, {len(report.skipped)} already done, {len(report.failed)} failed; "
               f"outputs in {output}")  # fmt: skip
    if report.failed:
        raise typer.Exit(1)


@app.command()
def calibrate(
    inputs: list[str] = typer.Argument(..., help="Clean image files, folders or globs, like those you will restore."),
    task: str = typer.Option(..., help="inpaint, deblur, sr, denoise, colorize, mri, ct."),
    output: Path = typer.Option(Path("calibration.json"), "--output", "-o", help="The calibration file to write."),
    random_mask: RandomMask = None,
    box: Box = None,
    mask: MaskFile = None,
    mask_known: MaskKnown = None,
    kernel: Kernel = None,
    scale: Scale = None,
    filter: Filter = None,
    angles: Angles = None,
    arc: Arc = None,
    dose: Dose = None,
    window: Window = None,
    acceleration: Acceleration = None,
    center_fraction: CenterFraction = None,
    mask_kind: MaskKind = None,
    coils: Coils = None,
    sigma_y: float = typer.Option(0.01, help="Measurement noise std (data units) added to the clean images."),
    prior: Optional[str] = typer.Option(None, help="Shipped prior name or a path (default as for restore)."),
    method: Optional[str] = typer.Option(None, help="Sampler (default: ddrm)."),
    steps: Optional[int] = typer.Option(None, help="Noise levels (default: the method's own)."),
    samples: int = typer.Option(8, help="Posterior samples per image (at least 2); restore uses the same."),
    seed: int = typer.Option(0, help="Seed (per-file seeds derive from it and the file name)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary line."),
) -> None:
    """Fit calibrated intervals: degrade clean images like 'restore --simulate', restore them, write a calibration.

    Then 'invdiff restore ... --calibration FILE --interval 0.9' writes lo.png / hi.png whose expected
    coverage of a new image's pixels is at least 0.9, for images like these (conformal risk control;
    0.9 needs at least 9 images, 0.95 19).
    """
    from .batch import calibrate_files
    from ..devices import resolve_device
    from ..methods import METHODS

    if method is not None and method not in METHODS:
        _fail(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if steps is not None and steps < 1:
        _fail(f"--steps must be at least 1, got {steps}")
    if samples < 2:
        _fail(f"--samples must be at least 2 for intervals (one sample has no spread), got {samples}")
    if not sigma_y >= 0:
        _fail(f"--sigma-y must be a number >= 0, got {sigma_y}")
    options = _task_options(task, random_mask=random_mask, box=box, mask=mask, mask_known=mask_known,
                            kernel=kernel, scale=scale, filter=filter, angles=angles, arc=arc, dose=dose,
                            acceleration=acceleration, center_fraction=center_fraction, mask_kind=mask_kind,
                            coils=coils)  # fmt: skip
    if options.get("kernel") == "auto":
        _fail("--kernel auto estimates a real photo's blur; calibration degrades clean images with a known kernel "
              "(e.g. --kernel gaussian:2.0)")  # fmt: skip
    _check_window(window)
    try:
        resolve_device(device)
    except ValueError as e:
        _fail(f"--device: {e}")
    p = _prior_option(prior, task)
    say = None if quiet else lambda n, st, _: typer.echo(f"{st:8s} {n}")
    try:
        rep = calibrate_files(inputs, output, task=task, task_options=options, prior=p, method=method, steps=steps,
                              samples=samples, sigma_y=sigma_y, seed=seed, device=device, window=window,
                              on_file=say)  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    for name, why in rep.failed.items():
        typer.echo(f"failed: {name}: {why}", err=True)
    cal = rep.calibration
    if cal is None:
        _fail(f"no file could be restored ({len(rep.failed)} failed); nothing written")
    s90 = cal.scales.get(0.9)
    line = (f"{cal.n_images} images, {cal.method} {cal.steps} steps x {cal.samples} samples: raw 90 % sample "
            f"intervals covered {cal.raw_coverage[0.9]:.3f}; ")  # fmt: skip
    line += (f"calibrated 90 % = mean +- {s90:.3f} std" if s90 is not None
             else f"0.9 needs at least 9 images, got {cal.n_images}")  # fmt: skip
    typer.echo(f"{line}; {rep.seconds:.1f} s; wrote {output}")
    if rep.failed or s90 is None:
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks: the quick image benchmark by default, or e.g. 'invdiff bench posterior --quick'.

    Needs a source checkout (benchmarks/ is not installed with the package).
    """
    import subprocess

    root = Path.cwd()
    if not (root / "benchmarks" / "__main__.py").is_file():
        _fail("benchmarks/ is not installed with the package; run 'invdiff bench' from the root of an invdiff checkout")
    args = ctx.args or ["images", "--quick"]
    raise typer.Exit(subprocess.call([sys.executable, "-m", "benchmarks", *args], cwd=root))


@app.command()
def priors(name: Optional[str] = typer.Argument(None, help="A shipped name or a prior folder to describe.")) -> None:
    """List the shipped priors, or describe one (architecture, training data, steps, wall time)."""
    from ..priors import SHIPPED, load_prior, shipped_priors

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
