"""``invdiff restore`` on real files: the input is the measurement (the blurry, small, damaged, noisy photo or scan).

The photos are scikit-image's, the scans pydicom's and nibabel's test files; each runs
through the command line with few steps, and the checks are what a user would look at:
the output's size and channels, what it kept of the input, where it was scored, the noise
level it used.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data, io
from typer.testing import CliRunner

from invdiff.cli import app
from invdiff.io import read_image
from invdiff.operators import Blur, gaussian_kernel

FAST = ["--steps", "3", "--samples", "2", "--quiet"]


def run(*args):
    return CliRunner().invoke(app, ["restore", *map(str, args)])


def save(path, image: np.ndarray) -> None:
    """A float image in [0, 1] as an 8-bit PNG (gray, RGB or RGBA)."""
    io.imsave(path, np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), check_contrast=False)


def png(path) -> np.ndarray:
    return io.imread(path).astype(np.float64) / 255


def metrics(out, name: str) -> dict:
    return json.loads((out / name / "metrics.json").read_text())


def blurred_photo(tmp_path, sigma=1.5, h=72, w=88, noise=0.01):
    """A crop of the held-out camera photo blurred as a camera blurs (a 'valid' convolution), 8-bit, and its truth."""
    k = gaussian_kernel(sigma)
    r = k.shape[0] // 2
    sharp = data.camera()[100 : 100 + h + 2 * r, 150 : 150 + w + 2 * r] / 255.0
    x = torch.from_numpy(sharp).float()[None, None]
    y = Blur(k, padding="valid")(x) + noise * torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0))
    save(tmp_path / "blurry.png", y[0, 0].numpy())
    (tmp_path / "truth").mkdir()
    save(tmp_path / "truth" / "blurry.png", sharp[r:-r, r:-r])
    return tmp_path / "blurry.png", tmp_path / "truth"


def test_a_blurry_photo_is_deblurred_not_blurred_again(tmp_path):
    blurry, truth = blurred_photo(tmp_path)
    out = tmp_path / "out"
    r = run(blurry, "--task", "deblur", "--kernel", "gaussian:1.5", "-o", out, "--steps", "20", "--samples", "2",
            "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    restored = png(out / "blurry" / "restored.png")
    assert restored.shape == (72, 88)  # the photo's size, not padded nor cropped
    row = metrics(out, "blurry")
    # scored against nothing: no truth was given, and the blurry input is no truth
    assert row["truth"] == "none" and "psnr" not in row and "ssim" not in row and row["mode"] == "real"
    assert row["method"] == "diffpir" and row["sigma_y_source"] == "auto" and 0.002 < row["sigma_y"] < 0.05
    assert "PSNR" not in r.output
    # with the truth: sharper than the input, and no band of artefacts along the borders
    out2 = tmp_path / "out2"
    r = run(blurry, "--task", "deblur", "--kernel", "gaussian:1.5", "-o", out2, "--ground-truth", truth,
            "--steps", "20", "--samples", "2", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    row = metrics(out2, "blurry")
    sharp = png(truth / "blurry.png")
    blurry_psnr = -10 * np.log10(((png(blurry) - sharp) ** 2).mean())
    assert row["psnr"] > blurry_psnr + 1.0, (row["psnr"], blurry_psnr)
    err = (png(out2 / "blurry" / "restored.png") - sharp) ** 2
    band = np.ones_like(err, dtype=bool)
    band[16:-16, 16:-16] = False
    assert np.sqrt(err[band].mean()) <= 1.5 * np.sqrt(err[~band].mean())


def test_clock_motion_real_motion_blur_with_a_kernel_file(tmp_path):
    """scikit-image's clock_motion.png is a photo with real horizontal motion blur; the kernel is a file."""
    import os

    import skimage

    photo = os.path.join(os.path.dirname(skimage.__file__), "data", "clock_motion.png")
    kernel = np.zeros((1, 15))
    kernel[0] = 1.0
    np.save(tmp_path / "line.npy", kernel)
    out = tmp_path / "out"
    r = run(photo, "--task", "deblur", "--kernel", tmp_path / "line.npy", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    assert png(out / "clock_motion" / "restored.png").shape == io.imread(photo).shape[:2]
    assert "psnr" not in metrics(out, "clock_motion")


def test_a_small_photo_is_upscaled_to_scale_times_its_size(tmp_path):
    small = data.chelsea()[100:137, 150:195] / 255.0  # 37 x 45 RGB: neither side divisible by anything
    save(tmp_path / "small.png", small)
    out = tmp_path / "out"
    r = run(tmp_path / "small.png", "--task", "sr", "--scale", "4", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    big = png(out / "small" / "restored.png")
    assert big.shape == (148, 180, 3)  # RGB in, natural-rgb chosen, RGB out
    # the output, shrunk again, is close to the input
    import torch.nn.functional as F

    down = F.avg_pool2d(torch.from_numpy(big).permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0).numpy()
    assert np.abs(down - small).mean() < 0.08


def scratched(tmp_path):
    """An RGB photo crop with white scratches; the mask is white where the scratches are."""
    photo = data.astronaut()[60:124, 190:254] / 255.0
    holes = np.zeros(photo.shape[:2], bool)
    holes[20:23, 5:60] = True
    holes[5:60, 40:42] = True
    damaged = photo.copy()
    damaged[holes] = 1.0
    save(tmp_path / "photo.png", damaged)
    save(tmp_path / "mask.png", holes.astype(float))  # white = fill
    save(tmp_path / "known.png", (~holes).astype(float))  # the old convention: nonzero = known
    rgba = np.concatenate([damaged, (~holes).astype(float)[..., None]], axis=-1)
    (tmp_path / "rgba").mkdir()
    save(tmp_path / "rgba" / "photo.png", rgba)  # transparent where the scratches are (same name: same seed)
    return photo, holes


def test_scratches_are_filled_from_a_white_is_fill_mask_or_an_alpha_channel(tmp_path):
    photo, holes = scratched(tmp_path)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(tmp_path / "photo.png", "--task", "inpaint", "--mask", tmp_path / "mask.png", "-o", a,
               *FAST).exit_code == 0  # fmt: skip
    restored = png(a / "photo" / "restored.png")
    assert restored.shape == photo.shape
    # the known pixels are kept (up to the noise estimated in them: a textured 8-bit crop reads about 0.017),
    # the white scratches are replaced by something like the photo
    assert np.abs(restored[~holes] - photo[~holes]).mean() < 0.05
    exact = tmp_path / "exact"
    assert run(tmp_path / "photo.png", "--task", "inpaint", "--mask", tmp_path / "mask.png", "--sigma-y", "0.002",
               "-o", exact, "--steps", "20", "--samples", "1", "--quiet").exit_code == 0  # fmt: skip
    kept = png(exact / "photo" / "restored.png")
    assert np.abs(kept[~holes] - photo[~holes]).mean() < 0.01
    assert np.abs(restored[holes] - 1.0).mean() > 0.2
    assert np.abs(restored[holes] - photo[holes]).mean() < np.abs(1.0 - photo[holes]).mean()
    # the same holes given the old way, or as transparency, give the same restoration
    assert run(tmp_path / "photo.png", "--task", "inpaint", "--mask-known", tmp_path / "known.png", "-o", b,
               *FAST).exit_code == 0  # fmt: skip
    r = run(tmp_path / "rgba" / "photo.png", "--task", "inpaint", "-o", c, *FAST)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(png(b / "photo" / "restored.png"), restored)
    np.testing.assert_allclose(png(c / "photo" / "restored.png"), restored, atol=2 / 255)


def test_inpaint_without_holes_and_simulation_options_get_one_line(tmp_path):
    photo, _ = scratched(tmp_path)
    cases = [
        (["--task", "inpaint"], "inpaint needs the region to fill"),
        (["--task", "inpaint", "--random-mask", "0.5"], "--random-mask only apply with --simulate"),
        (["--task", "inpaint", "--box", "8"], "--box only apply with --simulate"),
        (["--task", "deblur", "--kernel", "motion:9,0.5"], "only applies with --simulate"),
        (["--task", "ct", "--angles", "30"], "--angles only apply with --simulate"),
        (["--task", "denoise", "--sigma-y", "loud"], "--sigma-y takes a noise std"),
        (["--task", "inpaint", "--mask", tmp_path / "nope.png"], "mask file"),
    ]
    for args, message in cases:
        r = run(tmp_path / "photo.png", *args, "-o", tmp_path / "o", *FAST)
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
    full = tmp_path / "full.png"
    save(full, np.ones((32, 32)))
    r = run(tmp_path / "photo.png", "--task", "inpaint", "--mask", full, "-o", tmp_path / "o", *FAST)
    assert r.exit_code != 0 and "mask " in r.output  # 32x32 mask for a 64x64 photo


def test_a_noisy_photo_is_denoised_with_its_noise_estimated(tmp_path):
    clean = data.camera()[200:264, 200:264] / 255.0
    noisy = clean + 0.05 * np.random.default_rng(0).standard_normal(clean.shape)
    save(tmp_path / "noisy.png", np.clip(noisy, 0, 1))
    out = tmp_path / "out"
    r = run(tmp_path / "noisy.png", "--task", "denoise", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    row = metrics(out, "noisy")
    assert row["sigma_y_source"] == "auto" and 0.04 < row["sigma_y"] < 0.06, row["sigma_y"]
    assert png(out / "noisy" / "restored.png").shape == (64, 64)
    given = run(tmp_path / "noisy.png", "--task", "denoise", "--sigma-y", "0.05", "-o", tmp_path / "g", *FAST)
    assert given.exit_code == 0 and metrics(tmp_path / "g", "noisy")["sigma_y_source"] == "given"


def test_a_gray_photo_is_colorized_to_rgb(tmp_path):
    save(tmp_path / "gray.png", data.camera()[:48, :40] / 255.0)
    out = tmp_path / "out"
    r = run(tmp_path / "gray.png", "--task", "colorize", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    rgb = png(out / "gray" / "restored.png")
    assert rgb.shape == (48, 40, 3)
    # its gray is the input's
    assert np.abs(rgb.mean(axis=-1) - data.camera()[:48, :40] / 255.0).mean() < 0.03


def test_mr_dicom_and_nifti_scans_are_mapped_onto_the_prior_and_back(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    nib = pytest.importorskip("nibabel")
    import os

    from pydicom.data import get_testdata_file

    mr = get_testdata_file("MR_small.dcm")
    out = tmp_path / "mr"
    r = run(mr, "--task", "denoise", "-o", out, *FAST)  # no --window: MR is not in HU
    assert r.exit_code == 0, r.output
    row = metrics(out, "MR_small")
    lo, hi = row["intensity_window"]
    source = read_image(mr).data
    assert lo < float(source.median()) < hi
    restored = read_image(out / "MR_small" / "restored.dcm").data
    assert restored.shape == source.shape
    # back in the scan's units, not clipped to the window
    assert abs(float(restored.mean()) - float(source.mean())) < 0.1 * float(source.std())
    assert float(restored.max()) > hi  # not clipped to the percentile window
    del pydicom

    anat = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
    out = tmp_path / "nii"
    r = run(anat, "--task", "denoise", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    back = nib.load(out / "anatomical" / "restored.nii.gz")
    original = nib.load(anat)
    assert back.shape == original.shape[:3] if len(original.shape) > 3 else back.shape == original.shape
    got, want = back.get_fdata(), np.asarray(original.dataobj, dtype=np.float64).reshape(back.shape)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.85  # 3 steps of a prior trained on photos


def test_a_sinogram_file_is_restored_like_degrades_measurement(tmp_path):
    """The sinogram 'invdiff degrade --task ct' writes, given as a plain file, restores as --measured restores it."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    save(tmp_path / "phantom.png", resize(shepp_logan_phantom(), (32, 32)))
    meas = tmp_path / "meas"
    r = CliRunner().invoke(app, ["degrade", str(tmp_path / "phantom.png"), "--task", "ct", "--angles", "20",
                                 "-o", str(meas), "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--method", "pigdm", *FAST]
    assert run(meas, "--measured", "-o", a, *common).exit_code == 0  # the sidecar's sigma_y: degrade's 0.01
    r = run(meas / "phantom.npy", "--task", "ct", "--sigma-y", "0.01", "-o", b, *common)
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(png(b / "phantom" / "restored.png"), png(a / "phantom" / "restored.png"), atol=1 / 255)
    assert png(b / "phantom" / "restored.png").shape == (32, 32)
    r = run(meas / "phantom.npy", "--task", "ct", "-o", tmp_path / "c", *FAST)  # auto noise: not for sinograms
    assert r.exit_code == 2 and "--task ct needs --sigma-y" in r.output and len(r.output.strip().splitlines()) == 1


def test_memory_cap_refuses_or_avoids_the_dense_ct_svd_without_building_it(tmp_path, monkeypatch):
    """DDRM on CT needs a dense SVD (views x detectors x pixels); under a cap it is refused, or avoided, unbuilt."""
    from invdiff.operators import Tomography

    def never(self, *a, **k):
        raise AssertionError("the dense SVD was built")

    monkeypatch.setattr(Tomography, "svd", never)
    sino = Tomography(60, image_size=64)(torch.rand(1, 1, 64, 64)).numpy()  # ddrm: about 1.8 GiB, pigdm 0.9
    np.save(tmp_path / "sino.npy", sino / 40.0)
    r = run(tmp_path / "sino.npy", "--task", "ct", "--sigma-y", "0.01", "--method", "ddrm", "--max-memory", "1.5G",
            "-o", tmp_path / "a", *FAST)  # fmt: skip
    assert r.exit_code == 1 and "ddrm would need about" in r.output and "methods that fit: pigdm" in r.output
    assert "Traceback" not in r.output
    r = run(tmp_path / "sino.npy", "--task", "ct", "--sigma-y", "0.01", "--max-memory", "1.5G", "-o", tmp_path / "b",
            *FAST)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert metrics(tmp_path / "b", "sino")["method"] == "pigdm"  # the first method that fits, instead of ddrm
    r = run(tmp_path / "sino.npy", "--task", "ct", "--sigma-y", "0.01", "--max-memory", "lots", "-o", tmp_path / "c")
    assert r.exit_code == 2 and "--max-memory" in r.output
