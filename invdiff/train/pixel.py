"""Train a U-Net prior with EDM's loss and preconditioning (Karras et al. 2022).

``train(...)`` samples random patches from a built-in data set or a folder,
draws ``ln sigma_m ~ N(P_mean, P_std^2)`` (EDM's log-normal noise levels, in
the network's [-1, 1] units), minimises ``lambda(sigma) ||D(x0 + sigma n) - x0||^2``
with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``, keeps an EMA of the weights
whose half-life grows with the run (EDM's ramp-up, capped), writes resumable
checkpoints, and at the end a ``model.safetensors`` + ``config.json`` prior
and a grid of unconditional samples.

Mixed precision: on CPUs with native bfloat16 the network runs under
``torch.autocast("cpu", bfloat16)`` (about 4x faster on 64x64 patches with
AVX512-BF16); elsewhere emulated bf16 is slower, so a short timing decides.
On a CUDA device bf16 autocast is used wherever the GPU supports it.
The preconditioning, loss and optimiser stay in float32. Activations are
channels-last, which oneDNN convolutions prefer (about 1.5x faster on CPU).

On a GPU the patch sampler, not the network, sets the pace (a dead-leaves
image takes ~40 ms of numpy); ``workers > 0`` runs independent, seeded
samplers in background processes through a ``DataLoader``.  ``time_budget``
sizes the run to a wall-clock budget: the step count is re-estimated from the
measured speed until the learning-rate decay begins, so the decay always
completes inside the budget.
"""

from __future__ import annotations

import copy
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..datasets import BUILTIN, TEST_IMAGES, TRAIN_PHOTOS, PatchSampler
from ..devices import resolve_device
from ..priors.trained import UNetPrior
from ..priors.unet import UNetConfig, count_parameters
from .common import Progress, ema_update, lr_at, machine_description, optimiser_step, write_grid, write_log


@dataclass
class TrainConfig:
    """Every knob of a training run (stored in ``config.json``)."""

    data: str = "natural-gray"
    steps: int = 20_000
    batch_size: int = 32
    patch_size: int = 64
    lr: float = 4e-4
    warmup_steps: int = 500
    lr_decay_fraction: float = 0.2  # cosine decay to 10% over the last part of the run
    grad_clip: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    ema_halflife_steps: int = 2000
    ema_rampup: float = 0.1
    dead_leaves_fraction: float = 0.5
    seed: int = 0
    bf16: bool = True
    checkpoint_every: int = 250
    unet: dict = field(default_factory=lambda: UNetConfig(channels=32, channel_mult=(1, 2, 3, 4)).to_dict())


def _bf16_supported() -> bool:
    """True when bfloat16 autocast both runs and is faster than float32 here.

    CPUs with native bf16 (AVX512-BF16, AMX) run the U-Net several times
    faster under autocast; others emulate it and run slower, so a short
    timing of one convolution decides.
    """
    try:
        conv = torch.nn.Conv2d(32, 32, 3, padding=1)
        x = torch.randn(8, 32, 64, 64).contiguous(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)

        def best(bf16: bool) -> float:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    conv(x)
                times.append(time.perf_counter() - t)
            return min(times)

        return best(True) < 0.8 * best(False)
    except Exception:  # pragma: no cover - depends on the build
        return False


def _lr(cfg: TrainConfig, step: int) -> float:
    return lr_at(cfg.lr, step, cfg.steps, cfg.warmup_steps, cfg.lr_decay_fraction)


def edm_loss(model, x0: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """EDM training loss for clean data ``x0`` in [0, 1]: scalar (noise drawn on ``generator``'s device)."""
    x0_m = 2 * x0 - 1
    b = x0.shape[0]
    dev = generator.device
    ln_sigma = cfg.p_mean + cfg.p_std * torch.randn(b, generator=generator, device=dev).to(x0.device)
    sigma_m = ln_sigma.exp().reshape(b, 1, 1, 1)
    n = torch.randn(x0.shape, generator=generator, device=dev).to(x0.device)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        d = model(x0_m + sigma_m * n, sigma_m)
    weight = (sigma_m**2 + cfg.sigma_data**2) / (sigma_m * cfg.sigma_data) ** 2
    return (weight * (d.float() - x0_m) ** 2).mean()


def train(
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    num_threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
    max_seconds: float | None = None,
    on_log: Callable[[dict], None] | None = None,
    init_from: str | Path | None = None,
    device: str | torch.device = "cpu",
    workers: int = 0,
    time_budget: float | None = None,
) -> UNetPrior:
    """Train (or resume) a prior into ``output``; returns the EMA prior.

    ``output`` receives ``checkpoint.pt`` (every ``checkpoint_every`` steps),
    ``log.jsonl`` (loss every 50 steps), and at the end ``model.safetensors``,
    ``config.json`` and ``samples.png``.  ``max_seconds`` stops early (after a
    checkpoint) so long runs can be spread over several sittings; a resumed run
    continues the same schedule, RNG streams and wall-time count.

    ``init_from`` (a shipped prior's name or a prior folder) starts a new run
    from those weights instead of a random initialisation (fine-tuning, or
    continuing a prior whose optimiser state is gone); the U-Net architecture
    must match, and ``config.json`` then records the starting prior and adds
    its steps and wall time to the totals.

    ``device``: where the network trains (``"cuda"`` on a GPU).  ``workers``:
    background processes that draw patches (0: in this process).
    ``time_budget``: seconds for this sitting; the total step count is then
    set from the measured speed (``config.steps`` is only the first guess).
    """
    cfg = config or TrainConfig()
    device = resolve_device(device)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if num_threads:
        torch.set_num_threads(num_threads)
    ckpt_path = out / "checkpoint.pt"
    state = None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = state["train_config"]
        saved["steps"] = cfg.steps  # a run may be extended
        saved["bf16"] = cfg.bf16  # decided per machine: a run may move to another one
        cfg = TrainConfig(**saved)
    if cfg.bf16:
        cfg.bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else _bf16_supported()

    base_config = {
        "kind": "unet-edm",
        "parameterisation": "edm",
        "unet": cfg.unet,
        "sigma_data": cfg.sigma_data,
        "sigma_min": 0.001,
        "sigma_max": 40.0,
        "rho": 7.0,
        "data_range": [0.0, 1.0],
    }
    prior = UNetPrior(base_config)
    model = prior.model.to(device, memory_format=torch.channels_last)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)

    step, wall, losses = 0, 0.0, []
    init_info = state.get("init_from") if state is not None else None
    if state is None and init_from is not None:
        init_info = _load_init(init_from, cfg, model, ema)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    data_seed = cfg.seed
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, wall = int(state["step"]), float(state["wall"])
        if state.get("gen_device", "cpu") == device.type:
            gen.set_state(state["gen"])
        else:  # moved between CPU and GPU: a fresh stream, seeded by the sitting
            gen.manual_seed(cfg.seed + 1000 * (int(state.get("sittings", 0)) + 1))
        data_seed = cfg.seed + 1000 * (int(state.get("sittings", 0)) + 1)  # fresh, reproducible patch stream
    sittings = int(state.get("sittings", 0)) + 1 if state is not None else 1
    sampler = PatchSampler(cfg.data, cfg.patch_size, seed=data_seed, dead_leaves_fraction=cfg.dead_leaves_fraction)
    if sampler.channels != UNetConfig.from_dict(cfg.unet).in_channels:
        raise ValueError(
            f"data {cfg.data!r} has {sampler.channels} channels but the U-Net expects "
            f"{cfg.unet['in_channels']}; set unet in_channels/out_channels to {sampler.channels}"
        )
    batches = _batches(sampler, cfg.batch_size, workers)

    def save_checkpoint() -> None:
        tmp = out / "checkpoint.pt.tmp"
        torch.save(
            {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
             "wall": wall, "gen": gen.get_state(), "gen_device": device.type, "train_config": asdict(cfg),
             "sittings": sittings, "init_from": init_info},
            tmp,
        )  # fmt: skip
        tmp.replace(ckpt_path)

    bar = Progress(cfg.steps, enabled=progress)
    bar.update(step, None)
    t_start = time.time()
    t_last = t_start
    first_step = step
    log = open(out / "log.jsonl", "a")
    try:
        while step < cfg.steps:
            x0 = next(batches).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            loss = edm_loss(model, x0, cfg, gen)
            optimiser_step(opt, loss, _lr(cfg, step), cfg.grad_clip)
            step += 1
            ema_update(ema, model, step, cfg.ema_halflife_steps, cfg.ema_rampup)
            losses.append(loss.item())
            now = time.time()
            wall += now - t_last
            t_last = now
            if time_budget is not None:
                cfg.steps = budget_steps(cfg, step, first_step, now - t_start, time_budget)
                bar.set_total(cfg.steps)
            if step % 50 == 0:
                rec = {"step": step, "loss": float(np.mean(losses[-50:])), "lr": _lr(cfg, step), "wall": round(wall, 1)}
                write_log(log, rec, on_log)
            bar.update(step, float(np.mean(losses[-50:])))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
                _export(out, ema, base_config, cfg, step, wall, losses, command, partial=step < cfg.steps,
                        init_info=init_info, device=device)
                if max_seconds is not None and now - t_start > max_seconds:
                    break
    finally:
        log.close()
        bar.close()

    final = UNetPrior(base_config, {k: v.cpu() for k, v in ema.state_dict().items()})
    _export(out, ema, base_config, cfg, step, wall, losses, command, partial=step < cfg.steps, init_info=init_info,
            device=device)
    if step >= cfg.steps:
        save_sample_grid(final, out / "samples.png", seed=cfg.seed, device=device)
        final.to("cpu")
    return final


def budget_steps(cfg: TrainConfig, step: int, first_step: int, elapsed: float, budget: float) -> int:
    """The total step count that fits a sitting of ``budget`` seconds, from the speed measured so far.

    Re-estimated until the learning-rate decay (the last ``lr_decay_fraction``
    of the run) has begun; from then on the total is kept, so the decay runs to
    its end.  10 s (and 2 %) of the budget are kept back for the export.
    """
    if step <= int(cfg.steps * (1 - cfg.lr_decay_fraction)):
        rate = elapsed / max(step - first_step, 1)
        left = max(0.98 * budget - 10.0 - elapsed, 0.0)
        return max(step + int(left / rate), step + 1)
    return cfg.steps


def _batches(sampler: PatchSampler, batch_size: int, workers: int):
    """An endless iterator of patch batches: drawn here, or by ``workers`` seeded background processes."""
    if workers == 0:
        while True:
            yield sampler(batch_size)
    loader = torch.utils.data.DataLoader(_SamplerStream(sampler, batch_size), batch_size=None,
                                         num_workers=workers, pin_memory=torch.cuda.is_available(),
                                         prefetch_factor=4, persistent_workers=True)  # fmt: skip
    yield from loader


class _SamplerStream(torch.utils.data.IterableDataset):
    """Batches from a copy of ``sampler`` per worker, each reseeded by its worker id."""

    def __init__(self, sampler: PatchSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        self.sampler.rng = np.random.default_rng([int(self.sampler.seed), 7919, wid])
        while True:
            yield self.sampler(self.batch_size)


def inflate_channels(state: dict[str, torch.Tensor], in_channels: int, out_channels: int) -> dict[str, torch.Tensor]:
    """A 1-channel U-Net's weights made to take ``in_channels`` and give ``out_channels``.

    The first convolution sees the mean of the input channels (its weights split
    evenly), the last one writes the same prediction to every output channel:
    the inflated net denoises the channel mean like the gray one, and EDM's skip
    connection keeps each channel's own values at low noise.  A gray prior is a
    far better start for a colour one than random weights.
    """
    out = dict(state)
    for k, v in state.items():
        if k.endswith("conv_in.weight"):
            out[k] = v.repeat(1, in_channels, 1, 1) / in_channels
        elif k.endswith("conv_out.weight") or k.endswith("conv_out.bias"):
            out[k] = v.repeat(out_channels, *([1] * (v.dim() - 1)))
    return out


def _load_init(init_from: str | Path, cfg: TrainConfig, model, ema) -> dict:
    """Copy a saved prior's weights into ``model`` and ``ema``; returns what to record about it."""
    from ..priors.registry import load_prior

    start = load_prior(str(init_from))
    if not isinstance(start, UNetPrior):
        raise ValueError(f"--init-from {init_from!r} is not an invdiff U-Net prior; give a shipped name or a trained folder")
    have, want = start.unet_config.to_dict(), UNetConfig.from_dict(cfg.unet).to_dict()
    colour = lambda d: {k: v for k, v in d.items() if k not in ("in_channels", "out_channels")}  # noqa: E731
    inflate = colour(have) == colour(want) and (have["in_channels"], have["out_channels"]) == (1, 1)
    if have != want and not inflate:
        raise ValueError(
            f"--init-from {init_from!r} has U-Net {have} but this run asks for "
            f"{want}; use the same --channels/--channel-mult/--num-res-blocks"
        )
    state = start.model.state_dict()
    if have != want:
        state = inflate_channels(state, want["in_channels"], want["out_channels"])
    model.load_state_dict(state)
    ema.load_state_dict(state)
    done = start.config.get("training", {})
    # a prior that was itself fine-tuned carries its whole history in total_steps / total_wall_seconds
    return {"source": str(init_from), "steps_done": int(done.get("total_steps", done.get("steps_done", 0))),
            "wall_seconds": float(done.get("total_wall_seconds", done.get("wall_seconds", 0.0))),
            "command": done.get("command")}  # fmt: skip


def _export(out: Path, ema, base_config: dict, cfg: TrainConfig, step: int, wall: float, losses: list[float],
            command: str | None, partial: bool, init_info: dict | None = None, device: str = "cpu") -> None:  # fmt: skip
    """Write the EMA weights as a loadable prior with its provenance."""
    prior = UNetPrior(base_config, ema.state_dict())
    data_desc = {
        "natural-gray": "scikit-image bundled photographs (gray) except " + ", ".join(TEST_IMAGES)
        + " (" + ", ".join(TRAIN_PHOTOS) + "), at scales 1, 0.7, 0.5, mixed with procedural dead-leaves images",
        "natural-rgb": "scikit-image bundled photographs (RGB) except " + ", ".join(TEST_IMAGES)
        + " (" + ", ".join(TRAIN_PHOTOS) + "), at scales 1, 0.7, 0.5, mixed with procedural dead-leaves images",
        "phantoms": "procedural random-ellipse phantoms with smooth texture (DIVal ellipses style), seeded",
    }.get(cfg.data, f"images under {cfg.data}")
    prior.save(
        out,
        extra={
            "training": {
                **{k: v for k, v in asdict(cfg).items() if k != "unet"},
                "data_description": data_desc,
                "steps_done": step,
                "finished": not partial,
                "wall_seconds": round(wall, 1),
                **(
                    {"initialised_from": init_info,
                     "total_steps": step + init_info["steps_done"],
                     "total_wall_seconds": round(wall + init_info["wall_seconds"], 1)}
                    if init_info else {}
                ),  # fmt: skip
                "final_loss": float(np.mean(losses[-200:])) if losses else None,
                "parameters": count_parameters(prior.model),
                "machine": machine_description(device),
                "command": command or " ".join(shlex.quote(a) for a in sys.argv),
            }
        },
    )


def save_sample_grid(prior: UNetPrior, path: str | Path, n: int = 16, size: int = 64, steps: int = 32,
                     seed: int = 0, device: str | torch.device = "cpu") -> None:  # fmt: skip
    """Write a grid of ``n`` unconditional samples (EDM Heun) as a PNG."""
    from ..samplers.heun import sample_prior

    g = torch.Generator(device).manual_seed(seed)
    x = sample_prior(prior.to(device), (n, prior.channels, size, size), steps=steps, generator=g, device=device)
    write_grid(x, path)


__all__ = ["TrainConfig", "train", "edm_loss", "save_sample_grid", "BUILTIN"]
