"""Image quality metrics per image: PSNR, SSIM and LPIPS on ``(B, C, H, W)`` batches.

PSNR and SSIM take an explicit ``data_range`` (1 for images in ``[0, 1]``).
LPIPS needs torchvision's ImageNet backbone weights in the torch hub cache;
nothing is ever downloaded.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["psnr", "ssim", "lpips", "lpips_available", "LPIPSWeightsMissing"]

#: torchvision's ImageNet checkpoints behind each LPIPS trunk (file names as in the torch hub cache)
_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
#: smallest H and W each trunk accepts (its pooling layers need at least one output pixel)
_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}
#: SSIM's window side (scikit-image's default ``win_size``)
_SSIM_WIN = 7

_MODELS: dict[tuple[str, str], nn.Module] = {}


class LPIPSWeightsMissing(RuntimeError):
    """torchvision's ImageNet backbone weights for LPIPS are not in the torch hub cache."""


def _check_pair(x: Tensor, ref: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(ref, Tensor):
        raise ValueError(f"x and ref must be tensors, got {type(x).__name__} and {type(ref).__name__}")
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got x of shape {tuple(x.shape)}")
    if x.shape != ref.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but ref is {tuple(ref.shape)}")
    if not (x.is_floating_point() and ref.is_floating_point()):
        raise ValueError(f"images must be floating point, got {x.dtype} and {ref.dtype}")


def _check_range(data_range: float) -> float:
    data_range = float(data_range)
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number (1.0 for images in [0, 1]), got {data_range}")
    return data_range


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB: ``(B, C, H, W)`` x2 -> ``(B,)``.

    Float64, on ``x``'s device; identical images give ``inf``.
    """
    _check_pair(x, ref)
    data_range = _check_range(data_range)
    mse = (x.to(torch.float64) - ref.to(torch.float64)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity (Wang et al. 2004, eq. 13) per image: ``(B, C, H, W)`` x2 -> ``(B,)``.

    scikit-image's ``structural_similarity`` with its defaults (7x7 uniform window,
    sample covariance, K1 = 0.01, K2 = 0.03, mean over channels) and the given
    ``data_range``.  Float64, on ``x``'s device; not differentiable.
    """
    # scikit-image itself is called rather than ported so that the numbers are exactly those
    # papers report with it; moving a few images to the CPU is negligible next to sampling.
    from skimage.metrics import structural_similarity

    _check_pair(x, ref)
    data_range = _check_range(data_range)
    if min(x.shape[-2:]) < _SSIM_WIN:
        raise ValueError(f"ssim needs images of at least {_SSIM_WIN}x{_SSIM_WIN} pixels, got {tuple(x.shape[-2:])}")
    a = x.detach().to("cpu", torch.float64).numpy()
    b = ref.detach().to("cpu", torch.float64).numpy()
    vals = []
    for ai, bi in zip(a, b):
        if ai.shape[0] == 1:
            vals.append(structural_similarity(ai[0], bi[0], data_range=data_range))
        else:
            vals.append(structural_similarity(ai, bi, data_range=data_range, channel_axis=0))
    return torch.tensor(np.asarray(vals, dtype=np.float64), device=x.device)


# -- LPIPS ---------------------------------------------------------------------------------------


def _check_net(net: str) -> None:
    if net not in _BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS net {net!r}: choose one of {sorted(_BACKBONE_FILES)}")


def _backbone_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _BACKBONE_FILES[net]


def lpips_available(net: str = "alex") -> bool:
    """Whether ``lpips(..., net=net)`` can run: the package imports and the backbone file is cached."""
    _check_net(net)
    try:
        import lpips as _  # noqa: F401
    except ImportError:
        return False
    return _backbone_path(net).is_file()


def _load_backbone(net: str) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ``net`` from the torch hub cache, or ``LPIPSWeightsMissing``."""
    path = _backbone_path(net)
    if not path.is_file():
        raise LPIPSWeightsMissing(
            f"LPIPS ({net}) needs torchvision's ImageNet weights {path.name} in {path.parent}; "
            f"copy the file there (or set TORCH_HOME): invdiff never downloads"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _lpips_model(
    net: str = "alex", backbone_state: dict[str, Tensor] | None = None, allow_random: bool = False
) -> nn.Module:
    """LPIPS v0.1 (Zhang et al. 2018) with the package's linear layers and ``backbone_state``'s trunk.

    ``backbone_state`` uses torchvision's keys (``features.<i>.<param>``).  Without
    it the trunk stays randomly initialised, which only tests may ask for
    (``allow_random=True``): its numbers mean nothing.
    """
    import lpips as lpips_pkg

    _check_net(net)
    if backbone_state is None and not allow_random:
        raise LPIPSWeightsMissing("no backbone weights given for LPIPS; a random trunk gives meaningless numbers")
    # pnet_rand=True builds the trunk without torchvision's download; the fixed seed inside
    # fork_rng makes its (temporary) random init reproducible and leaves the global RNG as it was.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=` deprecation notice
        torch.manual_seed(0)
        model = lpips_pkg.LPIPS(pretrained=True, net=net, version="0.1", pnet_rand=True, verbose=False)
    if backbone_state is not None:
        # The package slices torchvision's `features` keeping indices: "slice2.3.weight" <- "features.3.weight".
        trunk = {}
        for key in model.net.state_dict():
            _, idx, param = key.split(".", 2)
            src = f"features.{idx}.{param}"
            if src not in backbone_state:
                raise ValueError(f"backbone state has no {src!r}: is it torchvision's {net} checkpoint?")
            trunk[key] = backbone_state[src]
        model.net.load_state_dict(trunk)
    return model.eval()


def _lpips_distance(model: nn.Module, x: Tensor, ref: Tensor) -> Tensor:
    """LPIPS of ``model`` for images in ``[0, 1]``: ``(B, 1 or 3, H, W)`` x2 -> ``(B,)`` float32 on ``x``'s device."""
    _check_pair(x, ref)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS takes gray or RGB images (1 or 3 channels), got {x.shape[1]}")
    lo = _MIN_SIZE[model.pnet_type]
    if min(x.shape[-2:]) < lo:
        got = tuple(x.shape[-2:])
        raise ValueError(f"LPIPS ({model.pnet_type}) needs images of at least {lo}x{lo} pixels, got {got}")
    dev = next(model.parameters()).device
    a, b = (t.detach().to(dev, torch.float32).expand(-1, 3, -1, -1) for t in (x, ref))  # gray -> 3 channels
    with torch.no_grad():
        d = model(2 * a - 1, 2 * b - 1)  # LPIPS expects [-1, 1]
    return d.reshape(-1).to(x.device)


def lpips(x: Tensor, ref: Tensor, net: str = "alex") -> Tensor:
    """Learned perceptual distance (Zhang et al. 2018, LPIPS v0.1) per image: ``(B, 1 or 3, H, W)`` x2 -> ``(B,)``.

    Images in ``[0, 1]``; gray images are repeated to RGB.  The model is built once
    per ``(net, device)`` from the ``lpips`` package's linear layers and torchvision's
    ImageNet trunk read from ``torch.hub.get_dir()/checkpoints/`` (``LPIPSWeightsMissing``
    if absent).  Not differentiable.
    """
    _check_net(net)
    _check_pair(x, ref)
    key = (net, str(x.device))
    model = _MODELS.get(key)
    if model is None:
        model = _lpips_model(net, _load_backbone(net)).to(x.device)
        _MODELS[key] = model
    return _lpips_distance(model, x, ref)
