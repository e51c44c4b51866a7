"""Latent diffusion: the KL autoencoder, LatentPrior files, latent DPS and PSLD, diffusers latent folders, training.

The samplers are checked against exact answers: with the linear autoencoder ``E(x) = 2 x`` and
the Gaussian image prior carried to latents, latent DPS is pixel DPS step for step, and for
inpainting PSLD's gluing norm is twice the measurement norm, so PSLD is latent DPS with
``zeta = omega + gamma``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from invdiff import restore
from invdiff.cli import app
from invdiff.datasets import PatchSampler
from invdiff.operators import Inpainting, random_mask
from invdiff.operators.nonlinear import Saturation
from invdiff.priors import GaussianPrior, load_prior
from invdiff.priors.latent import AutoencoderConfig, KLAutoencoder, LatentPrior, LatentUNetPrior, ModelUnits
from invdiff.priors.unet import UNetConfig
from invdiff.samplers.dps import dps
from invdiff.samplers.latent_dps import latent_dps
from invdiff.samplers.psld import psld
from invdiff.train.latent import LatentTrainConfig, latent_statistics, train_latent

AE = AutoencoderConfig(in_channels=1, latent_channels=4, channels=8, channel_mult=(1, 2, 2), groups=4)
UNET = UNetConfig(in_channels=4, out_channels=4, channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=32,
                  groups=4)  # fmt: skip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomise(net: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Random weights everywhere (the zero-initialised output layers would hide bugs)."""
    g = gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return net


def tiny_latent_prior(seed: int = 0) -> LatentPrior:
    ae = randomise(KLAutoencoder(AE), seed, 0.2)
    den = LatentUNetPrior(UNET)
    randomise(den.model, seed + 1)
    return LatentPrior(ae, den, scale_factor=1.7, shift_factor=0.1)


class ScaleAutoencoder(nn.Module):
    """The linear, invertible autoencoder ``E(x) = a x``, ``D(z) = z / a`` (no downsampling)."""

    factor, channels, latent_channels = 1, 1, 1

    def __init__(self, a: float = 2.0):
        super().__init__()
        self.a = a

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.a


def gaussian_pair(shape=(1, 8, 8), a: float = 2.0) -> tuple[GaussianPrior, LatentPrior]:
    """A Gaussian image prior and the same prior carried to the latents of ``E(x) = a x``."""
    pixel = GaussianPrior.smooth(shape, length_scale=2.0, variance=0.04, mean=0.5)
    latent = GaussianPrior(a * pixel.mean, a**2 * pixel.cov, shape, sigma_min=a * pixel.sigma_min,
                           sigma_max=a * pixel.sigma_max)  # fmt: skip
    return pixel, LatentPrior(ScaleAutoencoder(a), latent)


def inpainting_problem(shape=(1, 8, 8), seed=0, sigma_y=0.05):
    """``(op, x, y)`` with ``y = M (x + sigma_y e)``: noise only where the mask measures (y lies in A's range)."""
    g = gen(seed)
    op = Inpainting(random_mask((1, *shape), missing=0.5, generator=g).double())
    x = 0.5 + 0.2 * torch.randn(1, *shape, generator=g, dtype=torch.float64)
    return op, x, op(x + sigma_y * torch.randn(x.shape, generator=g, dtype=torch.float64))


# -- the autoencoder and LatentPrior -------------------------------------------------------------


def test_autoencoder_shapes_and_latent_shape():
    p = tiny_latent_prior()
    x = torch.rand(2, 1, 16, 16, generator=gen(1))
    mean, logvar = p.autoencoder.encode_dist(x)
    assert mean.shape == logvar.shape == (2, 4, 4, 4) and p.autoencoder.factor == 4
    z = p.encode(x)
    torch.testing.assert_close(z, (mean - 0.1) * 1.7)
    assert p.latent_shape((2, 1, 16, 16)) == (2, 4, 4, 4) and p.factor == 8
    xd = p.decode(z)
    assert xd.shape == x.shape
    torch.testing.assert_close(xd, p.autoencoder.decode(z / 1.7 + 0.1))
    assert p.denoise(z, 0.5).shape == z.shape
    torch.testing.assert_close(p.denoise(z, torch.tensor([0.5, 0.5])), p.latent_prior.denoise(z, 0.5))
    torch.testing.assert_close(p.sigmas(5), p.latent_prior.sigmas(5))
    with pytest.raises(ValueError, match="divisible by 8"):
        p.latent_shape((1, 1, 20, 16))
    with pytest.raises(ValueError, match="1-channel images but the image has 3"):
        p.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="latents have shape"):
        p.decode(torch.rand(1, 3, 4, 4))


def test_save_load_round_trip_is_exact(tmp_path):
    p = tiny_latent_prior()
    p.save(tmp_path / "a", extra={"note": "x"}, dtype=torch.float32)
    q = load_prior(tmp_path / "a")
    assert isinstance(q, LatentPrior) and q.config["note"] == "x" and q.config["kind"] == "latent-edm"
    x = torch.rand(2, 1, 16, 16, generator=gen(2))
    z = p.encode(x)
    assert torch.equal(q.encode(x), z) and torch.equal(q.decode(z), p.decode(z))
    assert torch.equal(q.denoise(z, 0.7), p.denoise(z, 0.7))
    # float16 denoiser weights (the default): the latent U-Net is close, the autoencoder exact
    p.save(tmp_path / "b")
    r = LatentPrior.from_folder(tmp_path / "b")
    assert torch.equal(r.decode(z), p.decode(z))
    assert (r.denoise(z, 0.7) - p.denoise(z, 0.7)).abs().max() < 1e-2


def test_latent_prior_errors(tmp_path):
    with pytest.raises(ValueError, match="has no 'encode'"):
        LatentPrior(nn.Identity(), GaussianPrior(0.0, torch.ones(4), (1, 2, 2)))
    with pytest.raises(ValueError, match="scale_factor must be finite and > 0"):
        LatentPrior(ScaleAutoencoder(), GaussianPrior(0.0, torch.ones(4), (1, 2, 2)), scale_factor=0.0)
    _, lp = gaussian_pair()
    with pytest.raises(ValueError, match="only a KLAutoencoder with a LatentUNetPrior"):
        lp.save(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="config.json not found: a latent prior folder holds"):
        LatentPrior.from_folder(tmp_path)
    p = tiny_latent_prior()
    p.save(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["autoencoder"]["channels"] = 16
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="the autoencoder weights do not fit config.json"):
        load_prior(tmp_path / "c")


def test_model_units_is_the_exact_affine_map():
    inner = GaussianPrior.smooth((1, 4, 4), mean=0.5)
    u = ModelUnits(inner)
    z = torch.randn(2, 1, 4, 4, generator=gen(3), dtype=torch.float64)
    torch.testing.assert_close(u.denoise(z, 0.6), 2 * inner.denoise((z + 1) / 2, 0.3) - 1)
    torch.testing.assert_close(u.sigmas(4), 2 * inner.sigmas(4))
    assert u.sigma_max == 2 * inner.sigma_max


# -- samplers ------------------------------------------------------------------------------------


def test_latent_dps_with_a_linear_autoencoder_is_pixel_dps():
    pixel, latent = gaussian_pair()
    pixel.data_range = (0.0, 1.0)  # starts alike: 0.5 + sqrt(s^2 + 1/4) n is 1 + sqrt((2 s)^2 + 1) n on latents
    op, _, y = inpainting_problem()
    s = pixel.sigmas(30).double()
    want = dps(pixel, op, y, s, zeta=0.5, clip_x0=False, generator=gen(7))
    got = latent_dps(latent, op, y, 2 * s, zeta=0.5, generator=gen(7))
    assert (want - y).abs().max() > 0.01  # a real restoration, not the measurement
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_psld_gluing_term_on_inpainting_and_its_dps_limit():
    _, latent = gaussian_pair()
    op, _, y = inpainting_problem()
    s = latent.sigmas(25).double()
    # E(x_glue) - z0 = 2 M (y - x0): the gluing norm is twice the measurement norm
    a = psld(latent, op, y, s, omega=0.3, gamma=0.2, eta=1.0, generator=gen(5))
    b = latent_dps(latent, op, y, s, zeta=0.5, generator=gen(5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    c = psld(latent, op, y, s, omega=0.3, gamma=0.0, eta=1.0, generator=gen(5))
    d = latent_dps(latent, op, y, s, zeta=0.3, generator=gen(5))
    torch.testing.assert_close(c, d, rtol=0, atol=1e-9)
    assert (a - c).abs().max() > 1e-4


@pytest.mark.parametrize("method", ["latent_dps", "psld"])
def test_latent_samplers_run_deterministically_through_restore(method):
    p = tiny_latent_prior()
    x = torch.rand(1, 1, 16, 16, generator=gen(4))
    op = Inpainting(random_mask((1, 1, 16, 16), missing=0.7, generator=gen(5)))
    y = op(x)
    seen = []
    r = restore(y, op, p, method=method, steps=4, sigma_y=0.01, samples=2, seed=3, callback=seen.append)
    assert r.mean.shape == (1, 1, 16, 16) and r.samples.shape == (2, 1, 1, 16, 16) and r.nfe == 4
    assert torch.isfinite(r.samples).all() and r.std.abs().max() > 0
    assert seen[0]["x"].shape == (2, 4, 4, 4) and seen[0]["x0_hat"].shape == (2, 1, 16, 16)
    again = restore(y, op, p, method=method, steps=4, sigma_y=0.01, samples=2, seed=3)
    assert torch.equal(again.samples, r.samples)
    other = restore(y, op, p, method=method, steps=4, sigma_y=0.01, samples=2, seed=4)
    assert not torch.equal(other.samples, r.samples)


@pytest.mark.parametrize("method", ["latent_dps", "psld"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_latent_prior_in_half_runs_its_networks_in_half_and_the_chain_in_float32(method, dtype):
    x = torch.rand(1, 1, 16, 16, generator=gen(4))
    op = Inpainting(random_mask((1, 1, 16, 16), missing=0.7, generator=gen(5)))
    y = op(x)
    kw = dict(method=method, steps=4, sigma_y=0.01, samples=2, seed=3)
    ref = restore(y, op, tiny_latent_prior(), **kw)
    half = tiny_latent_prior().to(dtype)
    # the autoencoder and the latent U-Net answer in their caller's dtype
    assert half.encode(x).dtype == half.decode(half.encode(x)).dtype == torch.float32
    r = restore(y, op, half, **kw)
    assert r.dtype == "float32" and r.network_dtype == str(dtype).removeprefix("torch.")
    assert r.mean.dtype == torch.float32 and torch.isfinite(r.samples).all()
    # 4 levels of network rounding (float16 11 bits, bfloat16 8): seen 0.0004 and 0.004
    assert (r.mean - ref.mean).abs().max() < (0.003 if dtype == torch.float16 else 0.03)


def test_prior_kind_and_operator_errors():
    p = tiny_latent_prior()
    x = torch.rand(1, 1, 16, 16, generator=gen(4))
    op = Inpainting(random_mask((1, 1, 16, 16), missing=0.5, generator=gen(5)))
    with pytest.raises(ValueError, match="'dps' works on images but the prior is a latent prior.*latent_dps, psld"):
        restore(op(x), op, p, method="dps", steps=2, sigma_y=0.01)
    pixel, _ = gaussian_pair()
    x8 = torch.rand(1, 1, 8, 8)
    op8 = Inpainting(random_mask((1, 1, 8, 8), missing=0.5, generator=gen(5)))
    with pytest.raises(ValueError, match="'psld' needs a latent prior .* is a pixel prior"):
        restore(op8(x8), op8, pixel, method="psld", steps=2, sigma_y=0.01)
    sat = Saturation()
    with pytest.raises(ValueError, match="'psld' needs a linear operator.*: latent_dps$"):
        restore(sat(x), sat, p, method="psld", steps=2, sigma_y=0.01)
    op18 = Inpainting(torch.ones(1, 1, 20, 20))  # any size: padded to what the autoencoder and U-Net need
    r = restore(torch.rand(1, 1, 20, 20), op18, p, method="latent_dps", steps=2, sigma_y=0.01)
    assert r.mean.shape == (1, 1, 20, 20) and r.padded[1] > 0 and r.padded[3] > 0
    with pytest.raises(ValueError, match="latent_dps needs a latent prior"):
        latent_dps(pixel, op8, op8(x8), pixel.sigmas(2))
    with pytest.raises(ValueError, match="zeta must be >= 0"):
        latent_dps(p, op, op(x), p.sigmas(2), zeta=-1.0)
    with pytest.raises(ValueError, match="omega and gamma must be >= 0"):
        psld(p, op, op(x), p.sigmas(2), gamma=-1.0)


# -- diffusers latent folders --------------------------------------------------------------------


def _diffusers_latent_folder(tmp_path, conditional: bool):
    diffusers = pytest.importorskip("diffusers")
    vae = randomise(diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16, scaling_factor=0.5,
    ), 1, 0.1).eval()  # fmt: skip
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                  norm_num_groups=8)  # fmt: skip
    if conditional:
        unet = diffusers.UNet2DConditionModel(**common, cross_attention_dim=8, attention_head_dim=4,
                                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))  # fmt: skip
    else:
        unet = diffusers.UNet2DModel(**common, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    randomise(unet, 2, 0.1).eval()
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.001,
                                    beta_end=0.03)  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Custom", "_diffusers_version": "0.0"}))
    return vae, unet, sched


@pytest.mark.parametrize("conditional", [False, True])
def test_diffusers_latent_folder_matches_the_ddpm_formulas(tmp_path, conditional):
    vae, unet, sched = _diffusers_latent_folder(tmp_path, conditional)
    ctx = torch.randn(1, 3, 8, generator=gen(9)) if conditional else None
    if conditional:
        with pytest.raises(ValueError, match="UNet2DConditionModel; pass encoder_hidden_states"):
            load_prior(tmp_path)
    p = load_prior(tmp_path, **({"encoder_hidden_states": ctx} if conditional else {}))
    assert isinstance(p, LatentPrior) and p.factor == 2 and p.latent_channels == 4
    x = torch.rand(2, 1, 16, 16, generator=gen(3))
    with torch.no_grad():
        z_ref = 0.5 * vae.encode(2 * x - 1).latent_dist.mean
        torch.testing.assert_close(p.encode(x), z_ref)
        torch.testing.assert_close(p.decode(z_ref), (vae.decode(z_ref / 0.5).sample + 1) / 2)
        # eps prediction at exact discrete timesteps, by hand: z_t = sqrt(abar) z, z0 = (z_t - sqrt(1 - abar) eps) / sqrt(abar)
        k = torch.tensor([10, 70])
        abar = sched.alphas_cumprod[k].view(-1, 1, 1, 1)
        z = torch.randn(2, 4, 8, 8, generator=gen(4))
        z_t = abar.sqrt() * z
        kw = {"encoder_hidden_states": ctx.expand(2, 3, 8)} if conditional else {}
        eps = unet(z_t, k.float(), **kw).sample
        want = (z_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        sigma = ((1 - abar) / abar).sqrt().reshape(-1)
        got = p.denoise(z, sigma)
    assert (want - z).abs().max() > 0.05
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_diffusers_latent_folder_errors(tmp_path):
    pytest.importorskip("diffusers")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a AutoencoderTiny, but only AutoencoderKL and VQModel"):
        load_prior(tmp_path)


# -- training ------------------------------------------------------------------------------------


def _image_folder(tmp_path, n: int = 3, size: int = 40):
    from skimage import io

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.random((size, size)).cumsum(0).cumsum(1)
        io.imsave(folder / f"im{i}.png", (255 * img / img.max()).astype(np.uint8), check_contrast=False)
    return folder


def test_latent_statistics_normalise_the_latents(tmp_path):
    folder = _image_folder(tmp_path)
    ae = randomise(KLAutoencoder(AE), 0, 0.2).eval()
    shift, scale = latent_statistics(ae, PatchSampler(str(folder), 16, seed=1), 20, batch=8)
    with torch.no_grad():
        s = PatchSampler(str(folder), 16, seed=1)
        z = torch.cat([(ae.encode(s(n)) - shift) * scale for n in (8, 8, 4)]).double()
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-5


def test_train_latent_writes_a_loadable_prior_and_resumes(tmp_path):
    folder = _image_folder(tmp_path)
    cfg = LatentTrainConfig(data=str(folder), autoencoder=AE.to_dict(), unet=UNET.to_dict(), ae_steps=3, steps=2,
                            ae_batch_size=2, ae_patch_size=16, batch_size=2, patch_size=16, scale_patches=8,
                            checkpoint_every=2, warmup_steps=1)  # fmt: skip
    out = tmp_path / "run"
    first = train_latent(out, cfg, progress=False, command="test")
    info = json.loads((out / "config.json").read_text())["training"]
    assert info["steps_done"] == 2 and info["ae_steps_done"] == 3 and info["finished"] and info["command"] == "test"
    assert (out / "samples.png").is_file()
    assert first.scale_factor == json.loads((out / "config.json").read_text())["scale_factor"] != 1.0
    cfg.steps = 4
    prior = train_latent(out, cfg, progress=False)
    assert json.loads((out / "config.json").read_text())["training"]["steps_done"] == 4
    assert prior.scale_factor == first.scale_factor  # the autoencoder and its statistics carry over
    z = torch.randn(1, 4, 4, 4, generator=gen(0))
    torch.testing.assert_close(load_prior(out).denoise(z, 0.5), prior.denoise(z, 0.5), atol=5e-3, rtol=0)


def test_train_latent_cli(tmp_path):
    r = CliRunner().invoke(app, ["train-latent", "-o", str(tmp_path / "o"), "--data", "no-such-thing"])
    assert r.exit_code == 2 and "neither a built-in data set" in r.output
    folder = _image_folder(tmp_path)
    r = CliRunner().invoke(app, ["train-latent", "-o", str(tmp_path / "o"), "--data", str(folder), "--ae-steps", "2",
                                 "--steps", "2", "--ae-batch-size", "2", "--ae-patch-size", "16", "--batch-size", "2",
                                 "--patch-size", "16", "--ae-channels", "8", "--channels", "8", "--channel-mult", "1,2",
                                 "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "latent U-Net steps" in r.output and isinstance(load_prior(tmp_path / "o"), LatentPrior)
    r = CliRunner().invoke(app, ["priors", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "LatentPrior" in r.output and "trained 2 steps" in r.output
