"""``estimate_sigma_y`` and ``restore(sigma_y="auto")``: known noise on real photographs, the floor, the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from invdiff import restore
from invdiff.datasets import skimage_image
from invdiff.noise_level import QUANTISATION_SIGMA, estimate_sigma_y, masked_sigma
from invdiff.operators import (
    MRI, Blur, Colorization, Downsampling, Gaussian, Identity, Inpainting, Poisson, Tomography, box_mask,
    gaussian_kernel, mri_mask, random_mask,
)  # fmt: skip
from invdiff.priors import load_prior

F64 = torch.float64


def photo(name: str = "camera", channels: int = 1, size: int = 128) -> torch.Tensor:
    """Centre ``size x size`` crop of a scikit-image photograph, ``(1, C, size, size)`` float64 in [0, 1]."""
    img = skimage_image(name, channels)
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return torch.from_numpy(img[top : top + size, left : left + size]).permute(2, 0, 1)[None].to(F64)


def noisy(a: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    return a + sigma * torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=a.dtype)


@pytest.mark.parametrize("name, channels", [("camera", 1), ("astronaut", 3)])
def test_denoising_estimate_is_within_ten_percent_of_the_added_noise(name: str, channels: int) -> None:
    x = photo(name, channels)
    for sigma in (0.05, 0.1):
        est = estimate_sigma_y(noisy(x, sigma), Identity())
        assert est == pytest.approx(sigma, rel=0.1)
    # small noise reads high: the photo's own noise and texture add to it (benchmarks/results/noise_level.md)
    assert estimate_sigma_y(noisy(x, 0.005)) > 0.005 * 1.3


def test_blurred_measurements_read_the_added_noise_within_five_percent() -> None:
    x = photo("camera", size=96)
    for padding, std in (("reflect", 2.0), ("valid", 3.0)):
        op = Blur(gaussian_kernel(std, dtype=F64), padding=padding)
        for sigma in (0.01, 0.05):
            assert estimate_sigma_y(noisy(op(x), sigma), op) == pytest.approx(sigma, rel=0.05)


def test_super_resolution_and_colorization_measurements_are_images() -> None:
    x = photo("astronaut", 3)
    sr = Downsampling(4, filter="bicubic", image_size=(128, 128))
    assert estimate_sigma_y(noisy(sr(x), 0.1), sr) == pytest.approx(0.1, rel=0.1)
    gray = Colorization(3)
    assert estimate_sigma_y(noisy(gray(x), 0.05), gray) == pytest.approx(0.05, rel=0.1)


@pytest.mark.parametrize("mask", ["random", "box"])
def test_inpainting_counts_only_fully_known_blocks(mask: str) -> None:
    x = photo("camera")
    m = random_mask(tuple(x.shape), missing=0.5, generator=torch.Generator().manual_seed(1)) if mask == "random" \
        else box_mask(tuple(x.shape), 48)  # fmt: skip
    op = Inpainting(m)
    y = op(noisy(x, 0.05))  # zeros where unknown
    assert estimate_sigma_y(y, op) == pytest.approx(0.05, rel=0.1)
    if mask == "random":  # without the mask the holes' edges count as noise
        assert estimate_sigma_y(y) > 0.05 * 1.5


def test_masked_haar_estimate_is_exact_on_noise_over_a_ramp() -> None:
    # (a - b - c + d) / 2 is zero on any plane and keeps white noise's std.
    h = w = 64
    ramp = torch.linspace(0, 1, h, dtype=F64)[:, None] + 0.5 * torch.linspace(0, 1, w, dtype=F64)[None, :]
    y = noisy(ramp[None, None].repeat(1, 2, 1, 1), 0.03, seed=3)[0]
    known = torch.rand(y.shape, generator=torch.Generator().manual_seed(4)) > 0.2
    assert masked_sigma(y, known) == pytest.approx(0.03, rel=0.08)
    with pytest.raises(ValueError, match="fully known 2x2"):
        masked_sigma(y, torch.zeros_like(known))


def test_the_estimate_never_falls_below_8_bit_rounding_noise() -> None:
    assert QUANTISATION_SIGMA == pytest.approx(1 / 255 / math.sqrt(12))
    assert estimate_sigma_y(torch.full((1, 1, 32, 32), 0.5)) == QUANTISATION_SIGMA  # a flat image
    blurred = Blur(gaussian_kernel(3.0, dtype=F64), padding="reflect")(photo("camera", size=64))
    assert estimate_sigma_y(blurred) == QUANTISATION_SIGMA  # noiseless and smooth


def test_one_value_per_batch_the_largest() -> None:
    x = photo("camera", size=96)
    y = torch.cat([noisy(x, 0.05, seed=0), noisy(x, 0.1, seed=1)])
    assert estimate_sigma_y(y) == pytest.approx(estimate_sigma_y(y[1:]))
    assert estimate_sigma_y(y) == pytest.approx(0.1, rel=0.1)


def test_k_space_sinograms_and_unknown_operators_are_refused_in_one_line() -> None:
    x = photo("camera", size=64).float()
    mri = MRI(mri_mask((64, 64), acceleration=4, generator=torch.Generator().manual_seed(0)))
    ct = Tomography(30, 64)

    class Unknown(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    for op, y, what in ((mri, mri(x), "not images"), (ct, ct(x), "not images"), (Unknown(), x, "cannot tell")):
        with pytest.raises(ValueError, match=what) as e:
            estimate_sigma_y(y, op)
        assert "\n" not in str(e.value) and "pass sigma_y=" in str(e.value)
    with pytest.raises(ValueError, match="too small"):
        estimate_sigma_y(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        estimate_sigma_y(torch.zeros(8, 8))


@pytest.fixture(scope="module")
def prior():
    return load_prior("natural-gray")


def test_restore_auto_records_the_estimate_in_the_result(prior) -> None:
    x = photo("camera", size=32).float()
    op = Identity()
    y = noisy(x, 0.1)
    r = restore(y, op, prior, method="ddrm", steps=2, sigma_y="auto")
    assert r.sigma_y == estimate_sigma_y(y, op)
    assert r.to_dict()["sigma_y"] == r.sigma_y
    assert r.sigma_y == pytest.approx(0.1, rel=0.2)  # a 32x32 crop: fewer coefficients, looser
    # a given value, or a Gaussian noise model, is recorded as given
    assert restore(y, op, prior, method="ddrm", steps=2, sigma_y=0.07).sigma_y == 0.07
    assert restore(y, op, prior, method="ddrm", steps=2, noise=Gaussian(0.06)).sigma_y == 0.06


def test_restore_auto_refuses_noise_models_and_non_images_in_one_line(prior) -> None:
    y = photo("camera", size=32).float()
    with pytest.raises(ValueError, match="cannot be combined with noise=Poisson") as e:
        restore(y, Identity(), prior, method="dps", steps=2, sigma_y="auto", noise=Poisson(100.0))
    assert "\n" not in str(e.value)
    mri = MRI(mri_mask((32, 32), acceleration=4, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="pass sigma_y= explicitly"):
        restore(mri(y), mri, prior, method="ddrm", steps=2, sigma_y="auto")
    with pytest.raises(ValueError, match="or 'auto'"):
        restore(y, Identity(), prior, method="ddrm", steps=2, sigma_y="0.1")
