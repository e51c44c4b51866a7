"""A small fully convolutional U-Net for denoising priors.

Residual blocks with GroupNorm and adaptive scale/shift from a noise-level
embedding (as in ADM / EDM's DDPM++), average-pool downsampling, nearest
upsampling, optional self-attention at the lowest resolutions.  No layer
depends on the image size, so a net trained on patches runs on any image whose
sides are divisible by ``2 ** (len(channel_mult) - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet` (stored in a prior's ``config.json``)."""

    in_channels: int = 1
    out_channels: int = 1
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = ()
    emb_dim: int = 256
    dropout: float = 0.0
    groups: int = 16

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        for k in ("channel_mult", "attn_levels"):
            if k in d:
                d[k] = tuple(d[k])
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attn_levels"] = list(self.attn_levels)
        return d

    @property
    def factor(self) -> int:
        """Image sides must be divisible by this."""
        return 2 ** (len(self.channel_mult) - 1)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(ch, groups)
    return nn.GroupNorm(g, ch, eps=1e-6)


class FourierEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise conditioning ``c_noise``."""

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        # c_noise = ln(sigma)/4 lies in about [-2, 2]; scale it up so the slow
        # frequencies still separate noise levels.
        a = (250.0 * c)[:, None] * self.freqs[None].to(c.dtype)
        return torch.cat([a.cos(), a.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as scale and shift of the second norm."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return (self.skip(x) + h) / math.sqrt(2)


class Attention(nn.Module):
    """Multi-head self-attention over pixels with a residual connection."""

    def __init__(self, ch: int, groups: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class UNet(nn.Module):
    """``F(x, c_noise) -> (B, out_channels, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Sequential(
            FourierEmbedding(cfg.channels),
            nn.Linear(cfg.channels, cfg.emb_dim),
            nn.SiLU(),
            nn.Linear(cfg.emb_dim, cfg.emb_dim),
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)
        widths = [cfg.channels * m for m in cfg.channel_mult]

        # Encoder: num_res_blocks blocks per level, then downsample (not after the last level).
        self.down = nn.ModuleList()
        skips = [cfg.channels]
        ch = cfg.channels
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(ch, width, cfg.emb_dim, cfg.groups, cfg.dropout)]
                if level in cfg.attn_levels:
                    blocks.append(Attention(width, cfg.groups))
                self.down.append(nn.ModuleList(blocks))
                ch = width
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([Downsample()]))
                skips.append(ch)

        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, cfg.emb_dim, cfg.groups, cfg.dropout),
                Attention(ch, cfg.groups) if cfg.attn_levels else nn.Identity(),
                ResBlock(ch, ch, cfg.emb_dim, cfg.groups, cfg.dropout),
            ]
        )

        # Decoder: num_res_blocks + 1 blocks per level, each eating one skip, then upsample.
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            for _ in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), width, cfg.emb_dim, cfg.groups, cfg.dropout)]
                if level in cfg.attn_levels:
                    blocks.append(Attention(width, cfg.groups))
                self.up.append(nn.ModuleList(blocks))
                ch = width
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))

        self.norm_out = _norm(ch, cfg.groups)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        f = self.config.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"image sides must be divisible by {f} for this U-Net, got {tuple(x.shape[-2:])}; pad the image"
            )
        emb = self.embed(c_noise.reshape(-1).expand(x.shape[0]).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            for blk in blocks:
                h = blk(h, emb) if isinstance(blk, ResBlock) else blk(h)
            hs.append(h)
        for blk in self.mid:
            h = blk(h, emb) if isinstance(blk, ResBlock) else blk(h)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb) if isinstance(blk, ResBlock) else blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Downsample(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["UNet", "UNetConfig", "count_parameters"]
