"""Figure grids for the image benchmark: truth | measurement | each method, one labelled tile each (PIL)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

#: tiles larger than this (pixels per side) are shrunk so that a grid stays a reasonable file
MAX_TILE = 256


def to_tile(img: Tensor, size: tuple[int, int]) -> Image.Image:
    """``(1, C, H, W)`` or ``(C, H, W)`` in [0, 1] (clipped) -> a gray or RGB PIL image of ``size`` ``(H, W)``.

    Smaller inputs (a low-resolution measurement) are enlarged by pixel repetition so
    that their pixels stay visible; larger ones are shrunk by area averaging.
    """
    t = img.detach().float().cpu()
    if t.dim() == 3:
        t = t[None]
    if tuple(t.shape[-2:]) != tuple(size):
        mode = "nearest" if t.shape[-1] < size[1] else "area"
        t = F.interpolate(t, size=size, mode=mode)
    arr = (t[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[..., 0], mode="L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]), mode="RGB")


def grid(panels: Sequence[tuple[str, Tensor]], path: str | Path, columns: int = 6) -> Path:
    """Write a PNG grid of ``(label, image)`` panels, ``columns`` per row, each label above its tile.

    Tiles take the size of the first panel (the truth), shrunk to at most ``MAX_TILE``
    pixels per side; labels may hold a second line after ``"\\n"``.
    """
    if not panels:
        raise ValueError("grid needs at least one panel")
    h, w = panels[0][1].shape[-2:]
    scale = min(1.0, MAX_TILE / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    font = ImageFont.load_default()
    line = 12
    label_h = 2 * line + 4
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    pad = 4
    tile_w = max(size[1], 120)
    canvas = Image.new("RGB", (cols * (tile_w + pad) + pad, rows * (size[0] + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        r, c = divmod(i, cols)
        x0 = pad + c * (tile_w + pad)
        y0 = pad + r * (size[0] + label_h + pad)
        for k, text in enumerate(label.split("\n")[:2]):
            draw.text((x0, y0 + k * line), text, fill="black", font=font)
        canvas.paste(to_tile(img, size), (x0, y0 + label_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path
