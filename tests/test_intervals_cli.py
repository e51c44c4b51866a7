"""``invdiff calibrate`` and ``invdiff restore --interval [--calibration]``: bounds written, checked, refused.

Tiny crops of the camera photo (16x16, DDRM at 3 steps, 2 samples) keep it fast; the
coverage these reach says nothing about the method (the calibration benchmark does).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data, io
from typer.testing import CliRunner

from invdiff.cli import app

SIZE = 16
FAST = ["--steps", "3", "--samples", "2", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def crops(folder, n: int, top: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    img = data.camera()
    for k in range(n):
        i, j = top + 40 * (k // 8), 40 + 50 * (k % 8)
        io.imsave(folder / f"c{k:02d}.png", img[i : i + SIZE, j : j + SIZE], check_contrast=False)
    return folder


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    clean = crops(root / "clean", 10, top=100)
    out = root / "cal.json"
    r = cli("calibrate", clean, "--task", "inpaint", "--random-mask", "0.5", "--sigma-y", "0.02", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_calibrate_writes_a_calibration(calibration):
    path, output = calibration
    d = json.loads(path.read_text())
    assert d["format"] == "invdiff-calibration"
    assert (d["method"], d["steps"], d["samples"], d["task"], d["operator"]) == ("ddrm", 3, 2, "inpaint", "Inpainting")
    assert d["prior"] == "natural-gray" and d["sigma_y"] == pytest.approx(0.02) and d["n_images"] == 10
    assert d["n_pixels"] == 10 * SIZE * SIZE
    assert d["scales"]["0.90"] is not None and d["scales"]["0.95"] is None  # 10 images: 0.9 yes, 0.95 no
    assert d["coverage"]["0.90"] >= 0.9 and 0 <= d["raw_coverage"]["0.90"] <= 1
    assert "10 images, ddrm 3 steps x 2 samples" in output and "calibrated 90 % = mean +-" in output


def test_restore_with_calibration_writes_bounds_and_coverage(calibration, tmp_path):
    path, _ = calibration
    clean = crops(tmp_path / "test", 2, top=300)
    out = tmp_path / "out"
    r = cli("restore", clean, "--simulate", "--task", "inpaint", "--random-mask", "0.5", "--sigma-y", "0.02",
            "--calibration", path, "-o", out, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    cal = json.loads(path.read_text())
    for name in ("c00", "c01"):
        row = json.loads((out / name / "metrics.json").read_text())
        assert (row["method"], row["steps"], row["samples"]) == ("ddrm", 3, 2)  # the calibration's
        assert row["interval_level"] == 0.9 and row["interval_calibrated"] is True
        assert row["interval_scale"] == pytest.approx(cal["scales"]["0.90"])
        assert 0 <= row["coverage"] <= 1 and row["interval_width_mean"] > 0
        lo, hi = (io.imread(out / name / f"{b}.png").astype(float) for b in ("lo", "hi"))
        assert lo.shape == hi.shape == (SIZE, SIZE) and (lo <= hi).all() and (lo < hi).any()
        lo, hi = (np.load(out / name / f"{b}.npy") for b in ("lo", "hi"))  # the bounds themselves
        assert lo.shape == hi.shape == (1, 1, SIZE, SIZE) and (hi - lo).mean() == pytest.approx(
            row["interval_width_mean"], rel=1e-5)


def test_calibration_sets_the_noise_level_when_none_is_given(calibration, tmp_path):
    path, _ = calibration
    clean = crops(tmp_path / "test", 1, top=300)
    out = tmp_path / "out"
    r = cli("restore", clean, "--simulate", "--task", "inpaint", "--random-mask", "0.5", "--calibration", path,
            "-o", out, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((out / "c00" / "metrics.json").read_text())["sigma_y"] == pytest.approx(0.02)


def test_calibrate_on_too_few_images_says_so(tmp_path):
    clean = crops(tmp_path / "few", 3)
    r = cli("calibrate", clean, "--task", "inpaint", "-o", tmp_path / "few.json", *FAST)
    assert r.exit_code == 1 and "0.9 needs at least 9 images, got 3" in r.output


def test_raw_interval_on_a_real_photo_has_no_coverage(tmp_path):
    clean = crops(tmp_path / "in", 1, top=200)
    out = tmp_path / "out"
    r = cli("restore", clean / "c00.png", "--task", "denoise", "--interval", "0.8", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    row = json.loads((out / "c00" / "metrics.json").read_text())
    assert row["interval_level"] == 0.8 and row["interval_calibrated"] is False
    assert "coverage" not in row and "interval_scale" not in row and row["truth"] == "none"
    assert (out / "c00" / "lo.png").is_file() and (out / "c00" / "hi.png").is_file()


def test_interval_defaults_to_eight_samples(tmp_path):
    clean = crops(tmp_path / "in", 1, top=200)
    out = tmp_path / "out"
    r = cli("restore", clean / "c00.png", "--task", "denoise", "--interval", "0.9", "--steps", "2", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "c00" / "metrics.json").read_text())["samples"] == 8


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--interval", "1.5"], "--interval: interval level must be a number in (0, 1)"),
        (["--interval", "0.9", "--samples", "1"], "--interval needs at least 2 samples"),
        (["--calibration", "CAL", "--method", "dps"], "was made for --method ddrm, not dps"),
        (["--calibration", "CAL", "--steps", "5"], "was made for --steps 3, not 5"),
        (["--calibration", "CAL", "--interval", "0.99"], "level 0.99 needs at least 99"),
        (["--calibration", "MISSING"], "--calibration: calibration file"),
    ],
)
def test_interval_errors(calibration, tmp_path, extra, message):
    path, _ = calibration
    clean = crops(tmp_path / "in", 1)
    extra = [str(path) if e == "CAL" else str(tmp_path / "none.json") if e == "MISSING" else e for e in extra]
    r = cli("restore", clean, "--simulate", "--task", "inpaint", "--sigma-y", "0.02", "-o", tmp_path / "o", *extra)
    assert r.exit_code != 0
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_calibration_for_another_task_or_noise_is_refused(calibration, tmp_path):
    path, _ = calibration
    clean = crops(tmp_path / "in", 1)
    r = cli("restore", clean, "--simulate", "--task", "deblur", "--kernel", "gaussian:1.0", "--sigma-y", "0.02",
            "--calibration", path, "-o", tmp_path / "o")  # fmt: skip
    assert r.exit_code != 0 and "was made for --task inpaint, not deblur" in r.output
    r = cli("restore", clean, "--simulate", "--task", "inpaint", "--sigma-y", "0.1", "--calibration", path,
            "-o", tmp_path / "o2", "--quiet")  # fmt: skip
    assert r.exit_code == 1 and "was made for sigma_y 0.02" in r.output  # the file fails; the run says why


def test_calibrate_errors(tmp_path):
    clean = crops(tmp_path / "in", 2)
    for extra, message in (
        (["--samples", "1"], "--samples must be at least 2"),
        (["--kernel", "auto"], "--kernel auto estimates a real photo's blur"),
        (["-o", tmp_path / "cal.txt"], "must name a .json file"),
        (["--method", "nope"], "unknown method 'nope'"),
    ):
        task = ["--task", "deblur"] if "--kernel" in extra else ["--task", "inpaint"]
        r = cli("calibrate", clean, *task, *extra)
        assert r.exit_code != 0 and message in r.output, (extra, r.output)


def test_bad_calibration_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": 1}))
    clean = crops(tmp_path / "in", 1)
    r = cli("restore", clean, "--simulate", "--task", "inpaint", "--sigma-y", "0.02", "--calibration", bad,
            "-o", tmp_path / "o")  # fmt: skip
    assert r.exit_code != 0 and "not an invdiff calibration" in r.output
    assert len(r.output.strip().splitlines()) == 1
