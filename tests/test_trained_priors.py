"""The U-Net prior, its EDM preconditioning, training data, the trainer, load_prior and the demo."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from invdiff.cli import app
from invdiff.datasets import TEST_IMAGES, TRAIN_PHOTOS, PatchSampler, dead_leaves, ellipse_phantom, load_test_image
from invdiff.metrics import psnr
from invdiff.priors import SHIPPED, UNet, UNetConfig, UNetPrior, load_prior, shipped_priors
from invdiff.train.pixel import TrainConfig, _batches, budget_steps, edm_loss, train

TINY = UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4)


def tiny_prior(seed: int = 0, **cfg) -> UNetPrior:
    torch.manual_seed(seed)
    prior = UNetPrior({"unet": TINY.to_dict(), **cfg})
    # give the zero-initialised output layers weights so the network is not trivially zero
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return prior


def test_unet_runs_at_any_divisible_size_and_rejects_others():
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, groups=4))
    for h, w in [(16, 16), (24, 40), (32, 8)]:
        assert net(torch.randn(2, 1, h, w), torch.zeros(2)).shape == (2, 1, h, w)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 18, 16), torch.zeros(1))


def test_unet_attention_level_runs():
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), groups=4))
    assert torch.isfinite(net(torch.randn(1, 1, 8, 8), torch.zeros(1))).all()


def test_edm_preconditioning_formulas():
    prior = tiny_prior()
    x = torch.rand(2, 1, 8, 8)
    sigma = torch.tensor([0.05, 0.7])
    # by hand, from Karras et al. Table 1 in [-1, 1] units
    sm = 2 * sigma.reshape(-1, 1, 1, 1)
    sd = 0.5
    c_skip, c_out, c_in = sd**2 / (sm**2 + sd**2), sm * sd / (sm**2 + sd**2).sqrt(), 1 / (sm**2 + sd**2).sqrt()
    xm = 2 * x - 1
    f = prior.model.net(c_in * xm, (sm.log() / 4).reshape(-1))
    expected = (c_skip * xm + c_out * f + 1) / 2
    torch.testing.assert_close(prior.denoise(x, sigma), expected, rtol=1e-5, atol=1e-6)
    # batched sigma equals per-image calls
    each = torch.cat([prior.denoise(x[i : i + 1], float(sigma[i])) for i in range(2)])
    torch.testing.assert_close(prior.denoise(x, sigma), each, rtol=1e-5, atol=1e-6)
    # sigma -> 0: c_skip -> 1, c_out -> 0, the denoiser becomes the identity
    assert (prior.denoise(x, 1e-6) - x).abs().max() < 1e-4


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="1-channel images but x has 3 channels"):
        tiny_prior().denoise(torch.rand(1, 3, 8, 8), 0.1)


def test_save_and_load_round_trip_in_float16(tmp_path):
    prior = tiny_prior()
    prior.save(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["weights_dtype"] == "float16"
    loaded = load_prior(tmp_path / "p")
    x = torch.rand(2, 1, 8, 8)
    for s in (0.01, 0.2, 5.0):
        a, b = prior.denoise(x, s), loaded.denoise(x, s)
        # float16 weights: relative error ~1e-3 of the correction term
        assert (a - b).abs().max() < 5e-3 * max(1.0, s)
    prior.save(tmp_path / "p32", dtype=torch.float32)
    torch.testing.assert_close(load_prior(tmp_path / "p32").denoise(x, 0.2), prior.denoise(x, 0.2))


def test_sigmas_schedule():
    prior = tiny_prior(sigma_min=0.002, sigma_max=20.0)
    s = prior.sigmas(10)
    assert s.shape == (11,) and s[-1] == 0
    assert math.isclose(float(s[0]), 20.0, rel_tol=1e-5) and math.isclose(float(s[-2]), 0.002, rel_tol=1e-4)
    assert (s[:-1] > s[1:]).all()


def test_edm_loss_matches_hand_computation():
    prior = tiny_prior()
    cfg = TrainConfig(bf16=False)
    x0 = torch.rand(4, 1, 8, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loss = edm_loss(prior.model, x0, cfg, g1)
    ln_sigma = cfg.p_mean + cfg.p_std * torch.randn(4, generator=g2)
    sm = ln_sigma.exp().reshape(4, 1, 1, 1)
    n = torch.randn(x0.shape, generator=g2)
    d = prior.model(2 * x0 - 1 + sm * n, sm)
    w = (sm**2 + 0.25) / (sm * 0.5) ** 2
    torch.testing.assert_close(loss, (w * (d - (2 * x0 - 1)) ** 2).mean())


def test_dead_leaves_and_phantoms_are_seeded_and_in_range():
    a = dead_leaves(32, np.random.default_rng(1))
    b = dead_leaves(32, np.random.default_rng(1))
    c = dead_leaves(32, np.random.default_rng(2))
    assert a.shape == (32, 32, 1) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    assert dead_leaves(16, np.random.default_rng(0), channels=3).shape == (16, 16, 3)
    p = ellipse_phantom(64, np.random.default_rng(0))
    assert p.shape == (64, 64, 1) and p.min() >= 0 and p.max() <= 1
    assert np.array_equal(p, ellipse_phantom(64, np.random.default_rng(0)))
    assert p[0, 0, 0] == 0 and p[32, 32, 0] > 0  # body inside, air outside


def test_test_images_are_held_out():
    assert not set(TEST_IMAGES) & set(TRAIN_PHOTOS)
    cam = load_test_image("camera", size=64)
    assert cam.shape == (1, 1, 64, 64) and 0 <= cam.min() and cam.max() <= 1
    assert load_test_image("astronaut", channels=3, size=32).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown test image"):
        load_test_image("brick")


def _image_folder(tmp_path, n=3, size=24):
    from skimage import io

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        io.imsave(folder / f"im{i}.png", (rng.random((size, size)) * 255).astype(np.uint8), check_contrast=False)
    return folder


def test_patch_sampler_on_a_folder_and_phantoms(tmp_path):
    s = PatchSampler(str(_image_folder(tmp_path)), 16, seed=0)
    b = s(5)
    assert b.shape == (5, 1, 16, 16) and b.min() >= 0 and b.max() <= 1
    assert torch.equal(PatchSampler(str(tmp_path / "imgs"), 16, seed=0)(5), b)
    p = PatchSampler("phantoms", 16, seed=0, pool=4)
    assert p(3).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="unknown training data"):
        PatchSampler("nope", 16)


def test_train_writes_a_loadable_prior_and_resumes(tmp_path):
    folder = _image_folder(tmp_path)
    cfg = TrainConfig(data=str(folder), steps=4, batch_size=2, patch_size=16, checkpoint_every=2,
                      unet=TINY.to_dict(), warmup_steps=1)  # fmt: skip
    out = tmp_path / "run"
    train(out, cfg, progress=False, command="test")
    info = json.loads((out / "config.json").read_text())["training"]
    assert info["steps_done"] == 4 and info["finished"] and info["command"] == "test"
    assert (out / "samples.png").is_file() and (out / "checkpoint.pt").is_file()
    cfg.steps = 6
    prior = train(out, cfg, progress=False)
    info2 = json.loads((out / "config.json").read_text())["training"]
    assert info2["steps_done"] == 6 and info2["wall_seconds"] >= info["wall_seconds"]
    assert len((out / "log.jsonl").read_text().splitlines()) == 0  # logs every 50 steps only
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(load_prior(out).denoise(x, 0.3), prior.denoise(x, 0.3), atol=5e-3, rtol=0)


def test_train_init_from_starts_at_the_given_weights_and_records_them(tmp_path):
    folder = _image_folder(tmp_path)
    cfg = TrainConfig(data=str(folder), steps=2, batch_size=2, patch_size=16, checkpoint_every=2,
                      unet=TINY.to_dict(), warmup_steps=1)  # fmt: skip
    train(tmp_path / "a", cfg, progress=False, command="first")
    start = load_prior(tmp_path / "a")
    # Zero steps: the exported prior is exactly the starting one (EMA and model both copied).
    cfg0 = TrainConfig(**{**cfg.__dict__, "steps": 0})
    same = train(tmp_path / "b", cfg0, progress=False, init_from=tmp_path / "a")
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(same.denoise(x, 0.2), start.denoise(x, 0.2))
    cfg.steps = 2
    train(tmp_path / "c", cfg, progress=False, init_from=tmp_path / "a")
    info = json.loads((tmp_path / "c" / "config.json").read_text())["training"]
    assert info["initialised_from"]["source"] == str(tmp_path / "a")
    assert info["initialised_from"]["command"] == "first"
    assert info["total_steps"] == 4 and info["total_wall_seconds"] >= info["wall_seconds"]
    # A chain of fine-tunings keeps the whole history: 2 + 2 + 2 steps.
    train(tmp_path / "chain", cfg, progress=False, init_from=tmp_path / "c")
    info_d = json.loads((tmp_path / "chain" / "config.json").read_text())["training"]
    assert info_d["initialised_from"]["steps_done"] == 4 and info_d["total_steps"] == 6
    assert info_d["total_wall_seconds"] >= info["total_wall_seconds"]
    other = TrainConfig(**{**cfg.__dict__, "unet": {**TINY.to_dict(), "channels": 16}})
    with pytest.raises(ValueError, match="has U-Net"):
        train(tmp_path / "d", other, progress=False, init_from=tmp_path / "a")


def test_background_workers_draw_seeded_distinct_batches():
    s = PatchSampler("phantoms", 16, seed=3, pool=4)
    a = [b.clone() for b, _ in zip(_batches(s, 2, workers=2), range(4))]
    again = [b.clone() for b, _ in zip(_batches(PatchSampler("phantoms", 16, seed=3, pool=4), 2, workers=2), range(4))]
    assert all(b.shape == (2, 1, 16, 16) for b in a)
    # each worker reseeds from (seed, worker id): the same run draws the same batches, the workers differ
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not torch.equal(a[0], a[1])


def test_phantom_pool_mixes_sizes_so_whole_phantoms_fit_a_patch():
    s = PatchSampler("phantoms", 16, seed=0, pool=40)
    sides = {img.shape[0] for img in s.pool}
    assert min(sides) >= 16 and max(sides) <= 32 and len(sides) > 5


def test_budget_steps_fits_the_budget_and_freezes_once_the_decay_starts():
    cfg = TrainConfig(steps=1000, lr_decay_fraction=0.2)
    # 100 steps in 10 s, 100 s budget: (98 - 10 - 10) s left at 0.1 s/step -> 780 more
    assert budget_steps(cfg, 100, 0, 10.0, 100.0) == 880
    # past the start of the decay (80 % of 1000) the total is kept, so the decay runs to its end
    assert budget_steps(cfg, 900, 0, 95.0, 100.0) == 1000
    # a budget already spent still allows one more step (the run ends cleanly)
    assert budget_steps(cfg, 100, 0, 500.0, 100.0) == 101


def test_train_with_a_time_budget_and_workers_finishes_and_records_it(tmp_path):
    cfg = TrainConfig(data="phantoms", steps=10**6, batch_size=2, patch_size=16, checkpoint_every=1000,
                      unet=TINY.to_dict(), warmup_steps=1)  # fmt: skip
    train(tmp_path / "o", cfg, progress=False, workers=1, time_budget=12.0)
    info = json.loads((tmp_path / "o" / "config.json").read_text())["training"]
    assert info["finished"] and info["steps_done"] == info["steps"] < 10**6
    assert info["wall_seconds"] <= 12.0


def test_train_rejects_a_missing_gpu_and_negative_workers(tmp_path):
    cfg = TrainConfig(data="phantoms", steps=1, batch_size=2, patch_size=16, unet=TINY.to_dict())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train(tmp_path / "o", cfg, progress=False, device="cuda")
    with pytest.raises(ValueError, match="workers must be"):
        train(tmp_path / "o", cfg, progress=False, workers=-1)


def test_train_cli_reports_bad_data(tmp_path):
    r = CliRunner().invoke(app, ["train", "--output", str(tmp_path / "o"), "--data", "no-such-thing"])
    assert r.exit_code == 2 and "neither a built-in data set" in r.output


@pytest.mark.parametrize("option", ["--channel-mult", "--attn-levels"])
def test_train_cli_reports_bad_integer_lists(tmp_path, option):
    r = CliRunner().invoke(app, ["train", "--output", str(tmp_path / "o"), option, "1,two"])
    assert r.exit_code == 2 and f"{option} takes comma-separated integers, got '1,two'" in r.output
    assert not (tmp_path / "o").exists()


def test_train_cli_runs(tmp_path):
    folder = _image_folder(tmp_path)
    r = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "o"), "--data", str(folder), "--steps", "2",
                                 "--batch-size", "2", "--patch-size", "16", "--channels", "8",
                                 "--channel-mult", "1,2", "--num-res-blocks", "1", "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "trained 2/2 steps" in r.output
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["training"]["command"].startswith("invdiff ")


def test_load_prior_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown prior 'nope'"):
        load_prior("nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prior(bad)


def test_shipped_default_prior_loads_offline():
    assert shipped_priors()["natural-gray"]
    prior = load_prior("natural-gray")
    assert set(SHIPPED) >= {"natural-gray", "natural-rgb", "phantoms"}
    cfg = prior.config["training"]
    assert cfg["data"] == "natural-gray" and cfg["steps_done"] > 0
    # a trained denoiser removes noise from a held-out image
    x = load_test_image("camera", size=64)
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    err_in = (noisy - x).square().mean()
    err_out = (prior.denoise(noisy, 0.1) - x).square().mean()
    assert err_out < 0.5 * err_in


@pytest.mark.parametrize("task, baseline", [("deblur", "wiener"), ("inpaint", "biharmonic")])
def test_demo_writes_outputs_and_metrics(tmp_path, task, baseline):
    from invdiff.cli.demo import run_demo

    m = run_demo(tmp_path / "d", task=task, size=64, steps=3, samples=2)
    for f in ("truth.png", "measurement.png", "restored.png", "std.png", "comparison.png", "sample_1.png",
              f"baseline_{baseline}.png"):  # fmt: skip
        assert (tmp_path / "d" / f).is_file()
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert saved["restored"]["psnr"] == pytest.approx(m["restored"]["psnr"])
    assert saved["nfe"] == 3 and 5 < saved[baseline]["psnr"] < 60
    assert saved["sigma_y"] == (0.02 if task == "deblur" else 0.01)
    # the blurry photo for 'invdiff restore': the truth's size, blurred (not a copy) and 8-bit
    from skimage import io

    blurry, sharp = io.imread(tmp_path / "d" / "blurry.png"), io.imread(tmp_path / "d" / "sharp.png")
    assert blurry.shape == sharp.shape == (256, 256) and blurry.dtype == np.uint8
    err = ((blurry / 255.0 - sharp / 255.0) ** 2).mean()
    assert 18 < -10 * np.log10(err) < 30  # measured 23.6 dB


def test_demo_wiener_baseline_is_tuned_against_the_truth():
    """The oracle Wiener deconvolution beats the blurred measurement itself and its worst balance."""
    from invdiff.cli.demo import WIENER_BALANCES, _baseline
    from invdiff.operators import Blur, Gaussian, gaussian_kernel

    x = load_test_image("camera", size=64)
    op = Blur(gaussian_kernel(2.0), padding="circular")
    y = Gaussian(0.02).sample(op(x), generator=torch.Generator().manual_seed(0))
    name, est = _baseline("deblur", y, op, x, None, 4)
    assert name == "wiener" and est.shape == x.shape
    assert psnr(est, x) > psnr(y.clamp(0, 1), x) + 0.5
    from skimage.restoration import wiener

    worst = wiener(y[0, 0].double().numpy(), op.kernel[0].double().numpy(), WIENER_BALANCES[0], clip=False)
    assert psnr(est, x) > psnr(torch.from_numpy(worst).float()[None, None].clamp(0, 1), x)


def test_demo_rejects_an_unknown_task(tmp_path):
    from invdiff.cli.demo import run_demo

    with pytest.raises(ValueError, match="unknown demo task 'blur'; choose one of deblur, inpaint, sr"):
        run_demo(tmp_path / "d", task="blur")


def test_priors_cli_lists_and_describes(tmp_path, monkeypatch):
    r = CliRunner().invoke(app, ["priors"])
    assert r.exit_code == 0
    assert "natural-gray" in r.output and "shipped" in r.output and "phantoms" in r.output
    r = CliRunner().invoke(app, ["priors", "natural-gray"])
    assert r.exit_code == 0 and "UNetPrior" in r.output and "trained" in r.output and "command:" in r.output
    r = CliRunner().invoke(app, ["priors", "natural-rgb"])
    assert r.exit_code == 0 and "natural-rgb: UNetPrior" in r.output and "RGB" in r.output
    # an installation without a shipped prior's weights says how to make them
    import invdiff.priors.registry as registry

    monkeypatch.setattr(registry, "WEIGHTS", tmp_path)
    r = CliRunner().invoke(app, ["priors", "natural-rgb"])
    assert r.exit_code == 2 and "has no weights" in r.output and "invdiff train --data natural-rgb" in r.output


def test_optimiser_step_skips_a_non_finite_gradient_and_clips_the_rest():
    from invdiff.train.common import optimiser_step

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    assert not optimiser_step(opt, (w * torch.tensor([1.0, float("nan"), 1.0])).sum(), 0.1, 1.0)
    assert torch.equal(w.detach(), torch.ones(3)) and not opt.state  # weights and Adam state untouched
    assert optimiser_step(opt, (100 * w).sum(), 0.1, 1.0)
    assert torch.isfinite(w).all() and (w < 1).all()


def test_a_colour_run_can_start_from_a_gray_prior(tmp_path):
    gray = tiny_prior(seed=1)
    gray.save(tmp_path / "gray")
    rgb_unet = {**TINY.to_dict(), "in_channels": 3, "out_channels": 3}
    cfg = TrainConfig(data="natural-rgb", steps=0, batch_size=2, patch_size=16, unet=rgb_unet, warmup_steps=1)
    rgb = train(tmp_path / "rgb", cfg, progress=False, init_from=tmp_path / "gray")
    # a gray image repeated in three channels is denoised exactly as the gray prior does it
    x = torch.rand(2, 1, 16, 16)
    want = load_prior(tmp_path / "gray").denoise(x, 0.3)
    torch.testing.assert_close(rgb.denoise(x.repeat(1, 3, 1, 1), 0.3), want.repeat(1, 3, 1, 1), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="has U-Net"):
        wide = {**rgb_unet, "channels": 16}
        train(tmp_path / "w", TrainConfig(**{**cfg.__dict__, "unet": wide}), progress=False, init_from=tmp_path / "gray")
