"""The guided-diffusion / ADM U-Net (Dhariwal & Nichol 2021) for any architecture options.

``deepinv.models.DiffUNet`` has guided-diffusion's module and state-dict layout
but fixes the architecture to two variants; :func:`adm_unet` builds a
``DiffUNet`` from deepinv's own blocks for the full set of guided-diffusion
options (``image_size``, ``num_channels``, ``num_res_blocks``, ``channel_mult``,
``attention_resolutions``, ``learn_sigma``, ...), so that any ADM checkpoint
loads into it with ``strict=True`` and runs through
``DiffUNet.forward_diffusion(x_t, t)``.  Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: guided-diffusion ``create_model`` options and their defaults (``model_and_diffusion_defaults``).
ADM_DEFAULTS: dict[str, Any] = {
    "image_size": 256,
    "in_channels": 3,
    "num_channels": 128,
    "num_res_blocks": 2,
    "channel_mult": "",
    "learn_sigma": False,
    "class_cond": False,
    "attention_resolutions": "16,8",
    "num_heads": 4,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "use_checkpoint": False,
    # diffusion options
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
}

#: the checkpoints the DPS, DDRM, PiGDM and RePaint papers use
ADM_PRESETS: dict[str, dict[str, Any]] = {
    # FFHQ 256x256 (ffhq_10m.pt of DPS / DiffPIR)
    "ffhq-256": {
        "image_size": 256, "num_channels": 128, "num_res_blocks": 1, "channel_mult": "",
        "learn_sigma": True, "class_cond": False, "attention_resolutions": "16", "num_heads": 4,
        "num_head_channels": 64, "num_heads_upsample": -1, "use_scale_shift_norm": True,
        "dropout": 0.0, "resblock_updown": True, "use_new_attention_order": False,
    },
    # ImageNet 256x256 unconditional (256x256_diffusion_uncond.pt of guided-diffusion)
    "imagenet-256-uncond": {
        "image_size": 256, "num_channels": 256, "num_res_blocks": 2, "channel_mult": "",
        "learn_sigma": True, "class_cond": False, "attention_resolutions": "32,16,8", "num_heads": 4,
        "num_head_channels": 64, "num_heads_upsample": -1, "use_scale_shift_norm": True,
        "dropout": 0.0, "resblock_updown": True, "use_new_attention_order": False,
    },
}

_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def adm_options(preset: str | None = None, **options: Any) -> dict[str, Any]:
    """guided-diffusion defaults, then ``preset`` (``"ffhq-256"``, ``"imagenet-256-uncond"``), then ``options``."""
    unknown = sorted(set(options) - set(ADM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown ADM options {unknown}; known options are {sorted(ADM_DEFAULTS)}")
    merged = dict(ADM_DEFAULTS)
    if preset is not None:
        if preset not in ADM_PRESETS:
            raise ValueError(f"unknown ADM preset {preset!r}; known presets are {sorted(ADM_PRESETS)}")
        merged.update(ADM_PRESETS[preset])
    merged.update(options)
    return merged


def _channel_mult(image_size: int, channel_mult: str | tuple | list) -> tuple[float, ...]:
    if channel_mult in ("", None):
        if image_size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"no default channel_mult for image_size={image_size}; pass channel_mult, e.g. '1,2,2,4'"
            )
        return _DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        return tuple(float(m) for m in channel_mult.split(","))
    return tuple(float(m) for m in channel_mult)


def _resolutions(attention_resolutions: str | tuple | list) -> list[int]:
    if isinstance(attention_resolutions, str):
        return [int(r) for r in attention_resolutions.split(",") if r.strip()]
    return [int(r) for r in attention_resolutions]


def adm_unet(**options: Any) -> nn.Module:
    """A ``deepinv.models.DiffUNet`` with guided-diffusion's ``UNetModel`` layout for ``options``.

    ``options`` are those of :data:`ADM_DEFAULTS` (as merged by :func:`adm_options`);
    the weights are left at their random initialisation and kept in float32 (``use_fp16``
    and ``use_checkpoint`` only affect training-time memory and are ignored).  The network maps
    ``(x_t, t)`` with ``x_t``: ``(B, C, H, W)`` in ``[-1, 1]`` units and ``t``: ``(B,)``
    to ``(B, C, H, W)`` (or ``(B, 2C, H, W)`` with ``learn_sigma``) via ``forward_diffusion``.
    """
    from deepinv.models import DiffUNet
    from deepinv.models.base import Denoiser
    from deepinv.models.diffunet import (
        AttentionBlock,
        Downsample,
        ResBlock,
        TimestepEmbedSequential,
        Upsample,
        normalization,
        zero_module,
    )

    o = adm_options(**options)
    if o["class_cond"]:
        raise ValueError("class-conditional ADM checkpoints are not supported; use an unconditional model")
    image_size, mc = int(o["image_size"]), int(o["num_channels"])
    in_channels = int(o["in_channels"])
    out_channels = 2 * in_channels if o["learn_sigma"] else in_channels
    channel_mult = _channel_mult(image_size, o["channel_mult"])
    nrb, dropout = int(o["num_res_blocks"]), float(o["dropout"])
    # attention at these downsampling factors
    attention_ds = {image_size // r for r in _resolutions(o["attention_resolutions"])}
    num_heads, head_ch = int(o["num_heads"]), int(o["num_head_channels"])
    num_heads_up = num_heads if int(o["num_heads_upsample"]) == -1 else int(o["num_heads_upsample"])
    ssn, updown = bool(o["use_scale_shift_norm"]), bool(o["resblock_updown"])

    def res(ch: int, out: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
        return ResBlock(ch, 4 * mc, dropout, out_channels=out, dims=2, use_scale_shift_norm=ssn, up=up, down=down)

    def attn(ch: int, heads: int) -> nn.Module:
        return AttentionBlock(ch, num_heads=heads, num_head_channels=head_ch,
                              use_new_attention_order=bool(o["use_new_attention_order"]))

    net = DiffUNet.__new__(DiffUNet)
    Denoiser.__init__(net)
    net.img_size, net.in_channels, net.out_channels = image_size, in_channels, out_channels
    net.model_channels, net.num_res_blocks, net.dropout = mc, nrb, dropout
    net.attention_resolutions, net.channel_mult = tuple(sorted(attention_ds)), channel_mult
    net.conv_resample, net.num_classes, net.use_checkpoint = True, None, False
    net.dtype = torch.float32
    net.num_heads, net.num_head_channels, net.num_heads_upsample = num_heads, head_ch, num_heads_up

    net.time_embed = nn.Sequential(nn.Linear(mc, 4 * mc), nn.SiLU(), nn.Linear(4 * mc, 4 * mc))
    # encoder: num_res_blocks ResBlocks per level (+ attention), then a downsampling block
    ch = input_ch = int(channel_mult[0] * mc)
    net.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_chans, ds = [ch], 1
    for level, mult in enumerate(channel_mult):
        for _ in range(nrb):
            layers = [res(ch, int(mult * mc))]
            ch = int(mult * mc)
            if ds in attention_ds:
                layers.append(attn(ch, num_heads))
            net.input_blocks.append(TimestepEmbedSequential(*layers))
            skip_chans.append(ch)
        if level != len(channel_mult) - 1:
            down = res(ch, ch, down=True) if updown else Downsample(ch, True, dims=2, out_channels=ch)
            net.input_blocks.append(TimestepEmbedSequential(down))
            skip_chans.append(ch)
            ds *= 2
    # middle: ResBlock, attention, ResBlock
    net.middle_block = TimestepEmbedSequential(res(ch), attn(ch, num_heads), res(ch))
    # decoder: num_res_blocks + 1 ResBlocks per level on concatenated skips, then upsampling
    net.output_blocks = nn.ModuleList([])
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(nrb + 1):
            layers = [res(ch + skip_chans.pop(), int(mc * mult))]
            ch = int(mc * mult)
            if ds in attention_ds:
                layers.append(attn(ch, num_heads_up))
            if level and i == nrb:
                layers.append(res(ch, ch, up=True) if updown else Upsample(ch, True, dims=2, out_channels=ch))
                ds //= 2
            net.output_blocks.append(TimestepEmbedSequential(*layers))
    net.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    # DiffUNet.forward_denoise's schedule, kept out of the state dict so ADM checkpoints load strictly
    sqrt_1m_abar, sqrt_abar = net.get_alpha_prod()[-2:]
    net.register_buffer("sqrt_1m_alphas_cumprod", sqrt_1m_abar, persistent=False)
    net.register_buffer("sqrt_alphas_cumprod", sqrt_abar, persistent=False)
    return net


def adm_state_dict_shapes(**options: Any) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of :func:`adm_unet` for ``options``, built on the meta device (no memory)."""
    with torch.device("meta"):
        net = adm_unet(**options)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}
