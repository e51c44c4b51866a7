"""Checkpoint loaders: tiny random checkpoints in each exact format, read back and checked against
the DDPM formulas written out by hand (x_t = sqrt(abar_t) (2 x - 1), eps / x0 / v -> x0)."""

import math
import sys

import pytest
import torch

from invdiff.priors.adm import ADM_PRESETS, adm_options, adm_state_dict_shapes, adm_unet
from invdiff.priors.loaders import (
    DeepinvDenoiserPrior,
    DiscreteDDPMPrior,
    ddpm_alphas_cumprod,
    load_adm,
    load_checkpoint,
    load_state_dict,
)

F64 = torch.float64
TINY_ADM = dict(image_size=16, in_channels=3, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                attention_resolutions="8", num_head_channels=32, learn_sigma=True, resblock_updown=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomise(net: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised output convolutions would hide every bug)."""
    g = gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return net.eval()


def linear_abar(T: int = 1000) -> torch.Tensor:
    """Ho et al. 2020: betas linspace(1e-4, 0.02, T), abar_t = prod (1 - beta)."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=F64), 0)


def data_sigma(abar_t: torch.Tensor) -> torch.Tensor:
    """The data-space sigma of discrete step t: sqrt((1 - abar) / abar) / 2."""
    return ((1 - abar_t) / abar_t).sqrt() / 2


def by_hand(out_fn, x: torch.Tensor, abar_t: torch.Tensor, t: torch.Tensor, prediction: str, channels: int):
    """x0_hat in data units from the DDPM formulas in the abar form, at integer timesteps t."""
    a = abar_t.to(x.dtype).view(-1, 1, 1, 1)
    x_t = a.sqrt() * (2 * x - 1)
    out = out_fn(x_t, t.to(x.dtype))[:, :channels]
    if prediction in ("eps", "epsilon"):
        x0 = (x_t - (1 - a).sqrt() * out) / a.sqrt()
    elif prediction in ("x0", "sample"):
        x0 = out
    else:
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * out
    return (x0 + 1) / 2


# --- DiscreteDDPMPrior ------------------------------------------------------------------------


def toy_model(channels: int, extra: int = 0):
    """A network whose output depends on x_t and t in a known way: (B, channels + extra, H, W)."""
    def model_fn(x_t, t):
        out = torch.tanh(x_t) + 0.01 * t.view(-1, 1, 1, 1) * x_t.mean(dim=(1, 2, 3), keepdim=True)
        return torch.cat([out, 7 + out[:, :extra]], dim=1) if extra else out
    return model_fn


def test_timestep_interpolation_exact_at_discrete_sigmas():
    abar = linear_abar()
    prior = DiscreteDDPMPrior(toy_model(1), abar, channels=1)
    k = torch.tensor([0, 1, 17, 500, 998, 999])
    t = prior.sigma_to_t(2 * data_sigma(abar[k]))
    torch.testing.assert_close(t, k.double(), atol=1e-9, rtol=0)  # float64 interpolation: exact
    # halfway in log sigma between steps 300 and 301 -> t = 300.5
    s_mid = (2 * data_sigma(abar[[300, 301]])).log().mean().exp()
    assert prior.sigma_to_t(s_mid.float().view(1)).item() == pytest.approx(300.5, abs=2e-3)
    # outside the schedule: clamped to the first and last step
    torch.testing.assert_close(prior.sigma_to_t(torch.tensor([1e-6, 0.0, 1e6])), torch.tensor([0.0, 0.0, 999.0], dtype=F64))


def test_sigmas_is_the_natural_schedule():
    abar = linear_abar()
    prior = DiscreteDDPMPrior(toy_model(1), abar, channels=1)
    s = prior.sigmas(1000)
    expected = torch.cat([data_sigma(abar).flip(0), torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(s, expected, rtol=1e-9, atol=0)  # float64 schedule, on the integer timesteps
    assert prior.sigma_max == pytest.approx(data_sigma(abar[-1]).item())
    assert prior.sigma_min == pytest.approx(data_sigma(abar[0]).item())
    s3 = prior.sigmas(3)  # t = 999, 499.5, 0
    assert s3.shape == (4,) and s3[-1] == 0
    assert s3[1].item() == pytest.approx(data_sigma(abar[[499, 500]]).log().mean().exp().item(), rel=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("learned_sigma", [False, True])
def test_discrete_denoise_matches_ddpm_formulas(prediction, learned_sigma):
    abar, C = linear_abar(), 2
    model = toy_model(C, extra=C if learned_sigma else 0)
    prior = DiscreteDDPMPrior(model, abar, prediction=prediction, learned_sigma=learned_sigma, channels=C)
    x = torch.rand(3, C, 8, 8, generator=gen(1))
    k = torch.tensor([3, 250, 900])
    x.requires_grad_(True)
    got = prior.denoise(x, data_sigma(abar[k]).float())
    want = by_hand(model, x, abar[k], k, prediction, C)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # gradients w.r.t. x flow through the wrapper (DPS differentiates the denoiser)
    w = torch.randn(got.shape, generator=gen(9))
    (g_got,) = torch.autograd.grad((w * got).sum(), x)
    (g_want,) = torch.autograd.grad((w * want).sum(), x)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-4)


def test_discrete_prior_rejects_bad_input():
    abar = linear_abar(10)
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteDDPMPrior(toy_model(1), abar.flip(0), channels=1)
    with pytest.raises(ValueError, match=r"strictly in \(0, 1\)"):
        DiscreteDDPMPrior(toy_model(1), torch.cat([abar, torch.zeros(1, dtype=F64)]), channels=1)
    with pytest.raises(ValueError, match="unknown prediction"):
        DiscreteDDPMPrior(toy_model(1), abar, prediction="score", channels=1)
    prior = DiscreteDDPMPrior(toy_model(1), abar, channels=1)
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        prior.denoise(torch.rand(1, 3, 8, 8), 0.1)
    learned = DiscreteDDPMPrior(toy_model(1), abar, learned_sigma=True, channels=1)
    with pytest.raises(ValueError, match="expected 2 channels"):
        learned.denoise(torch.rand(1, 1, 8, 8), 0.1)


def test_ddpm_schedules():
    torch.testing.assert_close(ddpm_alphas_cumprod(1000, "linear"), linear_abar())
    sl = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 50, dtype=F64) ** 2, 0)
    torch.testing.assert_close(ddpm_alphas_cumprod(50, "scaled_linear", 0.00085, 0.012), sl)
    # cosine: abar_t = f(t + 1) / f(0), f(u) = cos((u / T + s) / (1 + s) pi / 2)^2 (no beta clipping hit here)
    f = [math.cos(((u / 20) + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(21)]
    torch.testing.assert_close(ddpm_alphas_cumprod(20, "cosine")[:-1], torch.tensor(f[1:-1], dtype=F64) / f[0])


# --- guided-diffusion / ADM -------------------------------------------------------------------


@pytest.mark.parametrize("preset,large", [("ffhq-256", False), ("imagenet-256-uncond", True)])
def test_adm_presets_have_deepinv_diffunet_layout(preset, large):
    from deepinv.models import DiffUNet

    with torch.device("meta"):
        ref = DiffUNet(large_model=large, pretrained=None)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if "alphas_cumprod" not in k}
    assert adm_state_dict_shapes(**adm_options(preset)) == ref_shapes


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_adm_checkpoint_round_trip(tmp_path, suffix):
    net = randomise(adm_unet(**TINY_ADM))
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(net.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    prior = load_checkpoint(path, **TINY_ADM)
    assert isinstance(prior, DiscreteDDPMPrior) and prior.channels == 3 and prior.learned_sigma
    abar, k = linear_abar(), torch.tensor([20, 700])
    x = torch.rand(2, 3, 16, 16, generator=gen(2))
    got = prior.denoise(x, data_sigma(abar[k]).float())
    with torch.no_grad():
        want = by_hand(net.forward_diffusion, x, abar[k], k, "eps", 3)
    assert (want - x).abs().max() > 0.1  # the network does change the image
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_adm_half_is_guided_diffusions_mixed_precision(dtype):
    from invdiff import restore
    from invdiff.operators import Downsampling

    net = randomise(adm_unet(**TINY_ADM))
    prior = load_adm(net.state_dict(), **TINY_ADM)
    x = torch.rand(2, 3, 16, 16, generator=gen(3))
    want = prior.denoise(x, 0.3)
    half = load_adm(net.state_dict(), **TINY_ADM).to(dtype)
    # the same layout as DiffUNet.convert_to_fp16 (guided-diffusion's use_fp16): the blocks' convolutions
    # in half, the timestep embedding, norms, linear layers and output block in float32
    ref = randomise(adm_unet(**TINY_ADM))
    ref.convert_to_fp16()
    got = {k: v.dtype for k, v in half.model_fn.net.state_dict().items()}
    assert got == {k: dtype if v.dtype == torch.float16 else v.dtype for k, v in ref.state_dict().items()}
    assert half.model_fn.net.dtype == dtype
    # the float32 layers keep their values (moved, never rounded through half); the convolutions are rounded
    for key, value in half.model_fn.net.state_dict().items():
        original = net.state_dict()[key]
        if value.dtype == torch.float32:
            assert torch.equal(value, original), key
        else:
            assert torch.equal(value, original.to(dtype)), key
    out = half.denoise(x, 0.3)
    assert out.dtype == torch.float32  # answered in x's dtype
    # the network's own rounding only: float16 keeps 11 bits, bfloat16 8
    err = (out - want).abs().max().item()
    assert 0 < err < (3e-3 if dtype == torch.float16 else 2.5e-2)  # seen 0.00097 and 0.0081
    assert half.denoise(x.to(dtype), 0.3).dtype == dtype
    # .float() undoes it
    assert {v.dtype for v in half.float().model_fn.net.state_dict().values()} == {torch.float32}
    # restore: the chain in float32, the network in half
    back = load_adm(net.state_dict(), **TINY_ADM).to(dtype)
    op = Downsampling(2)
    r = restore(op(x[:1]), op, back, method="ddrm", steps=3, sigma_y=0.05, samples=2)
    assert r.dtype == "float32" and r.network_dtype == str(dtype).removeprefix("torch.")
    assert torch.isfinite(r.samples).all()


def test_adm_wrong_options_say_what_does_not_fit(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(adm_unet(**TINY_ADM).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit the architecture options: missing"):
        load_checkpoint(path, **{**TINY_ADM, "num_res_blocks": 2})
    with pytest.raises(ValueError, match="unknown ADM options"):
        load_checkpoint(path, num_chanels=32)
    with pytest.raises(ValueError, match="matches none of the presets"):
        load_checkpoint(path)
    assert set(ADM_PRESETS) == {"ffhq-256", "imagenet-256-uncond"}


# --- safety and dispatch ----------------------------------------------------------------------


class Payload:
    """Unpickling this would create a file; the loader must refuse before that happens."""

    marker = None

    def __reduce__(self):
        return (open, (str(Payload.marker), "w"))


def test_pickled_objects_are_refused(tmp_path):
    Payload.marker = tmp_path / "executed"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(ValueError, match="holds pickled Python objects.*never runs pickled code"):
        load_checkpoint(path)
    assert not Payload.marker.exists()


def test_unknown_layouts_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1, 1, 3, 3)}, path)
    with pytest.raises(ValueError, match="not a recognised checkpoint layout; supported: a diffusers folder"):
        load_checkpoint(path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        load_checkpoint(tmp_path / "folder")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        load_checkpoint(path, kind="tensorflow")


def test_nested_and_dataparallel_state_dicts_unwrap(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module.a": torch.ones(2)}, "epoch": 3}, path)
    sd = load_state_dict(path)
    assert list(sd) == ["a"] and torch.equal(sd["a"], torch.ones(2))


@pytest.mark.parametrize("module,extra", [("diffusers", "diffusers"), ("monai", "monai")])
def test_missing_extra_names_the_pip_command(tmp_path, monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    path = folder if module == "diffusers" else tmp_path / "x.pt"
    torch.save({}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=rf"pip install 'invdiff\[{extra}\]'"):
        load_checkpoint(path, **({"kind": "monai", "network": {}} if module == "monai" else {}))


# --- diffusers --------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction,layout", [("epsilon", "model"), ("v_prediction", "pipeline")])
def test_diffusers_folder_round_trip(tmp_path, prediction, layout):
    diffusers = pytest.importorskip("diffusers")
    unet = randomise(diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ), seed=3, scale=0.1)
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear",
                                    beta_start=0.001, beta_end=0.03, prediction_type=prediction)
    if layout == "model":
        unet.save_pretrained(tmp_path)
        sched.save_pretrained(tmp_path)
    else:
        diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)
    prior = load_checkpoint(tmp_path)
    assert prior.prediction == ("eps" if prediction == "epsilon" else "v") and prior.num_timesteps == 100
    abar, k = sched.alphas_cumprod.double(), torch.tensor([5, 60])
    x = torch.rand(2, 3, 8, 8, generator=gen(4))
    with torch.no_grad():
        want = by_hand(lambda x_t, t: unet(x_t, t).sample, x, abar[k], k, prediction, 3)
    assert (want - x).abs().max() > 0.1
    torch.testing.assert_close(prior.denoise(x, data_sigma(abar[k]).float()), want, rtol=1e-4, atol=1e-4)


# --- MONAI ------------------------------------------------------------------------------------


def test_monai_state_dict_round_trip(tmp_path):
    pytest.importorskip("monai")
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    network = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 16), attention_levels=(False, True),
                   num_res_blocks=1, num_head_channels=8, norm_num_groups=8)
    net = randomise(DiffusionModelUNet(**network), seed=5, scale=0.1)
    path = tmp_path / "monai.pt"
    torch.save(net.state_dict(), path)
    schedule = dict(num_train_timesteps=200, schedule="scaled_linear_beta", beta_start=0.0005, beta_end=0.0195)
    prior = load_checkpoint(path, kind="monai", network=network, prediction_type="sample", **schedule)
    abar, k = DDPMScheduler(**schedule).alphas_cumprod.double(), torch.tensor([2, 150])
    x = torch.rand(2, 1, 16, 16, generator=gen(6))
    with torch.no_grad():
        want = by_hand(net, x, abar[k], k, "sample", 1)
    torch.testing.assert_close(prior.denoise(x, data_sigma(abar[k]).float()), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not fit the network options"):
        load_checkpoint(path, kind="monai", network={**network, "channels": (16, 32)})


# --- deepinv denoisers ------------------------------------------------------------------------


def test_deepinv_denoiser_prior_passes_sigma_per_image():
    from deepinv.models import DRUNet

    drunet = randomise(DRUNet(1, 1, nc=(8, 8, 8, 8), nb=1, pretrained=None), seed=7, scale=0.1)
    prior = DeepinvDenoiserPrior(drunet, sigma_max=0.5, channels=1)
    x = torch.rand(2, 1, 16, 16, generator=gen(8))
    sigma = torch.tensor([0.05, 0.3])
    with torch.no_grad():
        want = torch.cat([drunet(x[i:i + 1], float(sigma[i])) for i in range(2)])
        other = drunet(x[1:2], float(sigma[0]))
    assert (want[1:2] - other).abs().max() > 1e-4  # the noise level reaches the network
    torch.testing.assert_close(prior.denoise(x, sigma), want, rtol=1e-5, atol=1e-5)
    assert prior.sigma_max == 0.5 and prior.sigmas(4)[0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        DeepinvDenoiserPrior(drunet, sigma_max=0.0)
