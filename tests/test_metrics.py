"""invdiff.metrics: PSNR and SSIM against scikit-image and closed forms; LPIPS without downloads."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from invdiff import metrics
from invdiff.metrics import LPIPSWeightsMissing, lpips, lpips_available, psnr, ssim

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(shape, seed=0, noise=0.1):
    ref = torch.rand(shape, generator=gen(seed), dtype=F64)
    x = (ref + noise * torch.randn(shape, generator=gen(seed + 1), dtype=F64)).clamp(0, 1)
    return x, ref


# -- PSNR / SSIM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_psnr_matches_skimage(channels, data_range):
    x, ref = pair((3, channels, 16, 16))
    got = psnr(x, ref, data_range)
    expected = [peak_signal_noise_ratio(r.numpy(), a.numpy(), data_range=data_range) for a, r in zip(x, ref)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_psnr_closed_form_and_identical_images():
    ref = torch.rand(2, 1, 8, 8, generator=gen(2))
    # a constant offset c gives MSE = c^2: PSNR = -20 log10(c)
    got = psnr(ref + torch.tensor([0.1, 0.01]).reshape(2, 1, 1, 1), ref)
    np.testing.assert_allclose(got.numpy(), [20.0, 40.0], atol=1e-4)
    assert torch.isinf(psnr(ref, ref)).all() and (psnr(ref, ref) > 0).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
    x, ref = pair((2, channels, 16, 16), seed=3)
    got = ssim(x, ref, data_range=1.0)
    if channels == 1:  # 2-D gray images
        expected = [structural_similarity(a[0].numpy(), r[0].numpy(), data_range=1.0) for a, r in zip(x, ref)]
    else:
        expected = [structural_similarity(a.numpy(), r.numpy(), data_range=1.0, channel_axis=0) for a, r in zip(x, ref)]
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert torch.allclose(ssim(ref, ref), torch.ones(2, dtype=F64))


def windowed_ssim(a: np.ndarray, b: np.ndarray, data_range: float, win: int = 7) -> float:
    """SSIM from its definition: every win x win window inside the image, sample (co)variances, mean."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            p, q = a[i : i + win, j : j + win].ravel(), b[i : i + win, j : j + win].ravel()
            mp, mq = p.mean(), q.mean()
            vp, vq = p.var(ddof=1), q.var(ddof=1)
            cpq = ((p - mp) * (q - mq)).sum() / (p.size - 1)
            vals.append((2 * mp * mq + c1) * (2 * cpq + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
    return float(np.mean(vals))


def test_ssim_matches_its_definition():
    x, ref = pair((1, 1, 12, 13), seed=5, noise=0.2)
    expected = windowed_ssim(x[0, 0].numpy(), ref[0, 0].numpy(), data_range=2.0)
    assert ssim(x, ref, data_range=2.0).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9)), "ref is"),
        (lambda: psnr(torch.zeros(8, 8), torch.zeros(8, 8)), r"\(B, C, H, W\)"),
        (lambda: psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), data_range=0), "data_range"),
        (lambda: ssim(torch.zeros(1, 1, 6, 8), torch.zeros(1, 1, 6, 8)), "at least 7x7"),
        (lambda: lpips(torch.zeros(1, 3, 40, 40), torch.zeros(1, 3, 40, 40), net="resnet"), "unknown LPIPS net"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- LPIPS --------------------------------------------------------------------------------------------

ALEX_KEYS = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def random_model():
    return metrics._lpips_model("alex", allow_random=True)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # an earlier set_dir() must not win over TORCH_HOME
    monkeypatch.setattr(metrics, "_MODELS", {})
    return tmp_path / "hub" / "checkpoints"


def test_lpips_missing_weights_raise_and_name_the_file(empty_hub):
    assert not lpips_available("alex")
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(LPIPSWeightsMissing) as err:
        lpips(x, x)
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and str(empty_hub) in str(err.value)
    assert metrics._MODELS == {}


def test_lpips_refuses_a_random_backbone_unless_asked():
    with pytest.raises(LPIPSWeightsMissing, match="random"):
        metrics._lpips_model("alex")


def test_lpips_random_backbone_path(random_model):
    g = gen(6)
    ref = torch.rand(2, 3, 32, 32, generator=g)
    x = (ref + 0.2 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    d = metrics._lpips_distance(random_model, x, ref)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    assert torch.equal(metrics._lpips_distance(random_model, ref, ref), torch.zeros(2))
    # [0, 1] -> [-1, 1] as the package's own `normalize=True` does
    with torch.no_grad():
        direct = random_model(x, ref, normalize=True).reshape(-1)
    torch.testing.assert_close(d, direct, rtol=1e-6, atol=1e-7)
    # gray images are the same as their RGB repeat
    g1 = metrics._lpips_distance(random_model, x[:, :1], ref[:, :1])
    rgb = metrics._lpips_distance(random_model, x[:, :1].repeat(1, 3, 1, 1), ref[:, :1].repeat(1, 3, 1, 1))
    torch.testing.assert_close(g1, rgb)
    with pytest.raises(ValueError, match="at least 31x31"):
        metrics._lpips_distance(random_model, x[..., :30, :30], ref[..., :30, :30])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        metrics._lpips_distance(random_model, x[:, :2], ref[:, :2])


def test_lpips_building_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    metrics._lpips_model("alex", allow_random=True)
    assert torch.equal(state, torch.random.get_rng_state())


def test_lpips_loads_the_cached_backbone(empty_hub, random_model):
    # a stand-in checkpoint with torchvision's key layout (the trunk only; the real file also has a classifier)
    g = gen(7)
    state = {}
    for key, v in random_model.net.state_dict().items():
        _, idx, param = key.split(".", 2)
        state[f"features.{idx}.{param}"] = v * (1 + 0.5 * torch.rand(v.shape, generator=g))
    assert set(state) == ALEX_KEYS
    empty_hub.mkdir(parents=True)
    torch.save(state, empty_hub / "alexnet-owt-7be5be79.pth")
    assert lpips_available("alex")

    ref = torch.rand(2, 1, 32, 32, generator=g)
    x = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    d = lpips(x, ref)
    model = metrics._MODELS[("alex", "cpu")]
    torch.testing.assert_close(model.net.state_dict()["slice3.6.weight"], state["features.6.weight"], rtol=0, atol=0)
    assert lpips(x, ref) is not None and metrics._MODELS[("alex", "cpu")] is model  # cached
    expected = metrics._lpips_distance(metrics._lpips_model("alex", state), x, ref)
    torch.testing.assert_close(d, expected, rtol=0, atol=0)
    assert not torch.allclose(d, metrics._lpips_distance(random_model, x, ref))
    assert d.dtype == torch.float32 and math.isfinite(d.sum().item())
