"""What the pixel and latent trainers share: the learning-rate schedule, the EMA, the
optimiser step, the run log, the machine description, sample grids and the progress bar."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def lr_at(base: float, step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up, constant, then a cosine decay to 10 % over the last ``decay_fraction`` of ``total``."""
    lr = base * min(1.0, (step + 1) / max(warmup, 1))
    start = int(total * (1 - decay_fraction))
    if step > start and decay_fraction > 0:
        t = (step - start) / max(total - start, 1)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, halflife_steps: float, rampup: float) -> None:
    """EMA of the weights whose half-life ramps up with the run (EDM): ``rampup * step``, capped at ``halflife_steps``."""
    beta = 0.5 ** (1.0 / min(halflife_steps, max(step * rampup, 1.0)))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - beta)  # one fused update on a GPU


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float) -> bool:
    """One Adam step on ``loss`` at ``lr`` with the gradient norm clipped to ``grad_clip``.

    A step whose gradient holds a NaN or inf is skipped (a rare spike must not
    poison the weights or Adam's moments), as mixed-precision loss scalers do.
    Returns whether the step was taken.
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def write_log(log, rec: dict, on_log: Callable[[dict], None] | None) -> None:
    """Append ``rec`` to the run's ``log.jsonl`` (flushed, so a killed run keeps it) and pass it to ``on_log``."""
    log.write(json.dumps(rec) + "\n")
    log.flush()
    if on_log:
        on_log(rec)


def machine_description(device: str | torch.device = "cpu") -> str:
    """The machine and torch build a prior was trained on, for ``config.json``."""
    where = f"{torch.get_num_threads()} threads"
    if torch.device(device).type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)}, {where}"
    return f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {where}".strip()


def write_grid(x: torch.Tensor, path: str | Path) -> None:
    """Write images ``x`` ``(N, C, S, S)`` in [0, 1] (clamped) as a square grid PNG with 2-pixel white gaps."""
    from skimage import io

    n, channels, size = x.shape[0], x.shape[1], x.shape[-1]
    x = x.detach().clamp(0, 1).cpu()
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = torch.ones(channels, rows * (size + 2), cols * (size + 2))
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, r * (size + 2) : r * (size + 2) + size, c * (size + 2) : c * (size + 2) + size] = x[i]
    img = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    io.imsave(str(path), img[..., 0] if channels == 1 else img, check_contrast=False)


class Progress:
    """A rich progress bar with the running loss (silent when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        if enabled:
            import rich.progress as rp

            self.p = rp.Progress(rp.TextColumn("training"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                 rp.TextColumn("loss {task.fields[loss]}"), rp.TimeRemainingColumn())  # fmt: skip
            self.task = self.p.add_task("train", total=total, loss="-")
            self.p.start()

    def set_total(self, total: int) -> None:
        if self.enabled:
            self.p.update(self.task, total=total)

    def update(self, step: int, loss: float | None) -> None:
        if self.enabled:
            self.p.update(self.task, completed=step, loss="-" if loss is None else f"{loss:.4f}")

    def close(self) -> None:
        if self.enabled:
            self.p.stop()
