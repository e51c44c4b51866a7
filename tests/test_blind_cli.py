"""``invdiff restore --task deblur --kernel auto``: the blur is estimated with the image (``BlindBlur``).

Tiny crops of the camera photo (40x40, a 9x9 support, 3 steps, 1 sample) through the
command line: the kernel written beside the outputs, read back by ``--kernel``, one
kernel per file, the progress over every run, and the one-line errors around the flag.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data, io
from typer.testing import CliRunner

from invdiff.cli import app
from invdiff.operators import BlindBlur, Blur, gaussian_kernel

FAST = ["--kernel-size", "9", "--steps", "3", "--samples", "1", "--quiet"]
SIZE = 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(*args):
    return CliRunner().invoke(app, ["restore", *map(str, args)])


def line_kernel(length: int = 7, size: int = 9) -> torch.Tensor:
    """A horizontal motion blur of ``length`` pixels in a ``size x size`` support."""
    k = torch.zeros(size, size)
    k[size // 2, (size - length) // 2 : (size + length) // 2] = 1.0
    return k / k.sum()


def blurry(path, kernel: torch.Tensor, top: int = 100, left: int = 150, noise: float = 0.01):
    """A 40x40 crop of camera blurred as a camera blurs (a 'valid' convolution), with noise, as an 8-bit PNG."""
    r = kernel.shape[-1] // 2
    x = torch.from_numpy(data.camera()[top : top + SIZE + 2 * r, left : left + SIZE + 2 * r] / 255.0).float()
    y = Blur(kernel, padding="valid")(x[None, None])
    y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    io.imsave(path, np.clip(np.rint(y[0, 0].numpy() * 255), 0, 255).astype(np.uint8), check_contrast=False)
    return path


@pytest.fixture
def photo(tmp_path):
    return blurry(tmp_path / "soft.png", gaussian_kernel(1.5, 9))


def test_kernel_auto_writes_the_kernel_and_reads_it_back(photo, tmp_path):
    out = tmp_path / "out"
    r = run(photo, "--task", "deblur", "--kernel", "auto", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    folder = out / "soft"
    assert io.imread(folder / "restored.png").shape == (SIZE, SIZE)  # the photo's size
    k = np.load(folder / "kernel.npy")
    assert k.shape == (9, 9) and k.dtype == np.float32
    assert k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-5)
    i = np.arange(9) - 4
    assert abs((k.sum(1) * i).sum()) <= 1.0 and abs((k.sum(0) * i).sum()) <= 1.0  # centred (whole pixels)
    row = json.loads((folder / "metrics.json").read_text())
    assert (row["kernel"], row["kernel_size"], row["kernel_file"]) == ("auto", 9, "kernel.npy")
    assert isinstance(row["kernel_fills_support"], bool)
    fits = ("gaussian", "line", "line-sharp")
    assert row["kernel_choice"] in fits or row["kernel_choice"].startswith(("classical", "em"))
    assert row["method"] == "diffpir" and row["steps"] == 3 and row["output_size"] == [SIZE, SIZE]
    # the EM rounds, a run for each checked candidate that is not an EM round's (em4's is not: it starts no
    # round) and the final run unless it is the chosen candidate's check run (one sample here); 3 steps each
    em_iters, checked = BlindBlur(9).em_iters, row["kernel_misfits"]
    free = {f"em{i}" for i in range(1, em_iters)}
    runs = em_iters + len(set(checked) - free) + (0 if row["kernel_choice"] in checked else 1)
    assert row["nfe"] == 3 * runs
    # the preview: 8-bit gray, the kernel scaled to its maximum, each tap a square of 23 pixels
    png = io.imread(folder / "kernel.png")
    assert png.dtype == np.uint8 and png.shape == (207, 207)
    np.testing.assert_array_equal(png[::23, ::23], np.rint(255 * k / k.max()).astype(np.uint8))
    # read back: the kernel file restores the same photo as a known blur
    out2 = tmp_path / "out2"
    r = run(photo, "--task", "deblur", "--kernel", folder / "kernel.npy", "-o", out2, "--steps", "3", "--samples", "1",
            "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    row2 = json.loads((out2 / "soft" / "metrics.json").read_text())
    assert row2["kernel"] == str(folder / "kernel.npy") and "kernel_file" not in row2
    assert io.imread(out2 / "soft" / "restored.png").shape == (SIZE, SIZE)
    # the preview is not a kernel to read back
    r = run(photo, "--task", "deblur", "--kernel", folder / "kernel.png", "-o", out2, *FAST[2:])
    assert r.exit_code != 0 and "pass the kernel.npy beside it" in r.output


def test_each_file_gets_its_own_kernel_and_the_progress_counts_every_run(photo, tmp_path):
    from invdiff.cli.batch import PriorChoice, restore_files

    shake = blurry(tmp_path / "shake.png", line_kernel(7))
    out = tmp_path / "out"
    reports: list[tuple[int, int]] = []
    rep = restore_files([str(photo), str(shake)], out, task="deblur", task_options={"kernel": "auto", "kernel_size": 9},
                        prior=PriorChoice(), steps=3, samples=1, batch_size=2,
                        callback=lambda info: reports.append((int(info["i"]), int(info["steps"]))))  # fmt: skip
    assert rep.ok and rep.done == ["soft", "shake"]
    soft, motion = np.load(out / "soft" / "kernel.npy"), np.load(out / "shake" / "kernel.npy")
    # each its own estimate (on 40x40 crops the estimates are too rough to say more of their shapes)
    assert soft.shape == motion.shape == (9, 9) and not np.allclose(soft, motion)
    # per file: the EM rounds' runs, the checks' and the final one, 3 steps each, counted as one bar that never
    # goes back; its total is the runs planned (CHECK_RUNS for the checks), more where more came
    from invdiff.cli.batch import CHECK_RUNS

    planned = 3 * (BlindBlur(9).em_iters + CHECK_RUNS + 1)
    files, start = [], 0
    for j in range(1, len(reports) + 1):  # split where the step count starts again
        if j == len(reports) or reports[j][0] == 0:
            files.append(reports[start:j])
            start = j
    assert len(files) == 2
    for steps in files:
        n = len(steps)
        assert n % 3 == 0 and n >= 3 * (BlindBlur(9).em_iters + 1)
        assert [i for i, _ in steps] == list(range(n))
        assert [s for _, s in steps] == [max(planned, 3 * (k // 3 + 1)) for k in range(n)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "deblur"], "--kernel auto"),
        (["--task", "deblur", "--kernel-size", "9"], "--kernel auto"),
        (["--task", "deblur", "--kernel", "auto", "--simulate"], "--simulate needs the kernel"),
        (["--task", "deblur", "--kernel", "gaussian:1.5", "--kernel-size", "9"], "only with --kernel auto"),
        (["--task", "deblur", "--kernel", "gaussian:1.5", "--kernel-size", "9", "--simulate"], "--kernel-size"),
        (["--task", "deblur", "--kernel", "auto", "--kernel-size", "8"], "--kernel-size must be an odd integer >= 3"),
        (["--task", "deblur", "--kernel", "auto", "--kernel-size", "1"], "--kernel-size must be an odd integer >= 3"),
        (["--task", "deblur", "--kernel", "auto", "--kernel-size", "41"], "--kernel-size 41 is larger than the image"),
        (["--task", "deblur", "--kernel", "auto", "--method", "ddrm"], "use --method dps, pigdm, score_ald, diffpir"),
        (["--task", "deblur", "--kernel", "auto", "--method", "repaint"], "method 'repaint' cannot"),
        (["--task", "sr", "--kernel-size", "9"], "--kernel-size does not apply to --task sr"),
    ],
)
def test_wrong_blind_flags_get_one_line(photo, tmp_path, args, message):
    r = run(photo, "-o", tmp_path / "out", "--steps", "2", "--samples", "1", "--quiet", *args)
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((3, 5, 5)), "need a 2-D array (rows x columns), got shape (3, 5, 5)"),
        (-np.ones((5, 5)), "non-negative array; its smallest value is -1"),
        (np.zeros((5, 5)), "it is all zero"),
        (np.where(np.eye(5) > 0, np.nan, 1.0), "NaN or infinite"),
    ],
)
def test_a_kernel_file_that_is_no_kernel_gets_one_line_naming_it(photo, tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    r = run(photo, "--task", "deblur", "--kernel", tmp_path / "bad.npy", "-o", tmp_path / "out", "--quiet")
    assert r.exit_code != 0
    assert f"kernel file {tmp_path / 'bad.npy'}: " in r.output and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_memory_cap_prices_the_blind_runs_without_crashing(photo, tmp_path):
    r = run(photo, "--task", "deblur", "--kernel", "auto", "--max-memory", "300M", "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 1
    # priced as the 'valid' blur of an image larger than the photo by the support less one
    assert "failed: soft: diffpir would need about" in r.output and "48x48 image" in r.output, r.output


def test_a_kernel_filling_its_support_is_flagged():
    from invdiff.cli.batch import fills_support

    line = torch.zeros(1, 9, 9)
    line[0, 4, 1:8] = 1 / 7  # 7 of 9 pixels: reaches within one pixel of both sides
    assert fills_support(line)
    blob = gaussian_kernel(0.8, 9)[None]
    assert not fills_support(blob / blob.sum() * (blob > 0.01))
    tall = torch.zeros(1, 9, 9)
    tall[0, :, 4] = 1 / 9
    assert fills_support(tall)
