"""``invdiff restore`` over folders: outputs, metrics, bad files, resume, one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from skimage import io
from typer.testing import CliRunner

from invdiff.cli import app

FAST = ["--steps", "2", "--samples", "2", "--quiet"]


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        io.imsave(d / f"img{i}.png", (rng.random((32, 32)) * 255).astype(np.uint8), check_contrast=False)
    return d


def run(*args):
    """``invdiff restore`` in evaluation mode (``--simulate``) unless the inputs are degrade's measurements."""
    args = [str(a) for a in args]
    mode = [] if "--measured" in args else ["--simulate"]
    return CliRunner().invoke(app, ["restore", *args, *mode])


def test_restores_a_folder_and_writes_outputs_and_metrics(folder, tmp_path):
    out = tmp_path / "out"
    r = run(folder, "--task", "inpaint", "--random-mask", "0.5", "-o", out, "--save-samples", *FAST)
    assert r.exit_code == 0, r.output
    assert "2 restored, 0 already done, 0 failed" in r.output
    for name in ("img0", "img1"):
        for f in ("restored.png", "std.png", "measurement.npy", "measurement.png", "comparison.png",
                  "samples/sample_1.png", "metrics.json"):  # fmt: skip
            assert (out / name / f).is_file(), f
        row = json.loads((out / name / "metrics.json").read_text())
        assert row["nfe"] == 2 and 0 < row["psnr"] < 60 and row["truth"] == "input"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["name"] for r in rows] == ["img0", "img1"]
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["images"] == 2
    assert summary["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))


def test_rerun_skips_finished_files_and_overwrite_redoes_them(folder, tmp_path):
    out = tmp_path / "out"
    assert run(folder, "--task", "denoise", "-o", out, *FAST).exit_code == 0
    stamp = (out / "img0" / "restored.png").stat().st_mtime_ns
    r = run(folder, "--task", "denoise", "-o", out, *FAST)
    assert "0 restored, 2 already done" in r.output
    assert (out / "img0" / "restored.png").stat().st_mtime_ns == stamp
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 2  # no duplicates
    r = run(folder, "--task", "denoise", "-o", out, "--overwrite", *FAST)
    assert "2 restored, 0 already done" in r.output


def test_a_bad_file_is_reported_and_the_rest_finish(folder, tmp_path):
    (folder / "broken.png").write_bytes(b"not a png")
    io.imsave(folder / "colour.png", np.zeros((32, 32, 3), np.uint8), check_contrast=False)
    np.save(folder / "nan.npy", np.full((32, 32), np.nan, np.float32))
    out = tmp_path / "out"
    r = run(folder, "--task", "sr", "--scale", "2", "--prior", "natural-gray", "-o", out, *FAST)
    assert r.exit_code == 1
    assert "2 restored, 0 already done, 3 failed" in r.output
    assert "failed: broken:" in r.output and "corrupt" in r.output
    assert "failed: colour: " in r.output and "3 channel(s) but the prior models 1" in r.output
    assert "use --prior natural-rgb" in r.output  # the prior that fits, not the one that does not
    assert "failed: nan: " in r.output and "NaN" in r.output
    assert (out / "img0" / "metrics.json").is_file() and not (out / "broken").exists()


def test_ground_truth_folder_is_matched_by_name(folder, tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    for f in folder.iterdir():
        (gt / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    assert run(folder, "--task", "deblur", "--kernel", "gaussian:1.0", "--ground-truth", gt, "-o", out,
               *FAST).exit_code == 0  # fmt: skip
    assert json.loads((out / "img1" / "metrics.json").read_text())["truth"].endswith("img1.png")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "warp"], "unknown task 'warp'"),
        (["--task", "inpaint", "--method", "magic"], "unknown method 'magic'"),
        (["--task", "inpaint", "--prior", "no-such-prior"], "unknown prior 'no-such-prior'"),
        (["--task", "inpaint", "--kernel", "gaussian:2"], "--kernel does not apply to --task inpaint"),
        (["--task", "deblur", "--kernel", "blob:3"], "neither gaussian:SIGMA"),
        (["--task", "inpaint", "--device", "cuda"], "torch sees no CUDA device"),
        (["--task", "inpaint", "--device", "gpu"], "unknown device 'gpu'; use cpu, cuda or cuda:N"),
        (["--task", "inpaint", "--ground-truth", "/no/such/dir"], "--ground-truth /no/such/dir does not exist"),
        (["--task", "deblur", "--method", "repaint"], "method 'repaint' needs an inpainting operator"),
        (["--task", "ct", "--dose", "1000", "--method", "ddrm"], "method 'ddrm' needs an operator with an SVD"),
        (["--task", "ct", "--window", "lungs"], "window 'lungs' is neither a name"),
    ],
)
def test_wrong_input_gets_one_clear_line(folder, tmp_path, args, message):
    r = run(folder, "-o", tmp_path / "out", *args, *FAST)
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output


def test_missing_input_and_unwritable_output(folder, tmp_path):
    r = run(tmp_path / "nothing.png", "--task", "denoise", *FAST)
    assert r.exit_code == 2 and "nothing.png" in r.output and "Traceback" not in r.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run(folder, "--task", "denoise", "-o", blocker / "sub", *FAST)
    assert r.exit_code == 2 and "cannot write to the output folder" in r.output


def test_degrade_then_restore_measured_equals_the_simulated_run(folder, tmp_path):
    meas = tmp_path / "meas"
    r = CliRunner().invoke(app, ["degrade", str(folder), "--task", "inpaint", "--random-mask", "0.6",
                                 "--sigma-y", "0.02", "-o", str(meas), "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    side = json.loads((meas / "img0.json").read_text())
    assert side["task"] == "inpaint" and side["sigma_y"] == 0.02 and side["options"] == {"random_mask": 0.6}
    # restoring the saved measurement gives exactly what the simulated run gives (same y, operator, seed)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(meas, "--measured", "--ground-truth", folder, "-o", a, *FAST).exit_code == 0
    assert run(folder, "--task", "inpaint", "--random-mask", "0.6", "--sigma-y", "0.02", "-o", b,
               *FAST).exit_code == 0  # fmt: skip
    ra = json.loads((a / "img0" / "metrics.json").read_text())
    rb = json.loads((b / "img0" / "metrics.json").read_text())
    assert ra["psnr"] == pytest.approx(rb["psnr"], abs=1e-9)
    assert np.array_equal(np.load(a / "img0" / "measurement.npy"), np.load(b / "img0" / "measurement.npy"))
    # without a ground truth a measured run has no quality metrics, and says so
    c = tmp_path / "c"
    assert run(meas, "--measured", "-o", c, *FAST).exit_code == 0
    row = json.loads((c / "img1" / "metrics.json").read_text())
    assert row["truth"] == "none" and "psnr" not in row


def test_measured_input_without_sidecar_is_reported(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    np.save(d / "lone.npy", np.zeros((1, 1, 32, 32), np.float32))
    r = run(d, "--measured", "-o", tmp_path / "o", *FAST)
    assert r.exit_code == 1 and "no sidecar lone.json beside it" in r.output


def test_measured_and_task_flags_conflict(folder, tmp_path):
    r = run(folder, "--measured", "--task", "sr", "-o", tmp_path / "o", *FAST)
    assert r.exit_code == 2 and "--task cannot be used with --measured" in r.output
    r = run(folder, "-o", tmp_path / "o", *FAST)
    assert r.exit_code == 2 and "--task is required" in r.output


def test_torchrun_shards_inputs_across_two_cpu_processes(folder, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from skimage import io as skio

    skio.imsave(folder / "img2.png", np.zeros((32, 32), np.uint8), check_contrast=False)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun ships with torch"
    out = tmp_path / "out"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29531", "-m", "invdiff", "restore", str(folder),
           "--task", "denoise", "-o", str(out), "--steps", "2", "--samples", "2", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("3 restored, 0 already done, 0 failed") == 1
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["name"] for r in rows] == ["img0", "img1", "img2"]  # merged by rank 0, in input order
    # each image was restored exactly once (one rank each)
    assert all((out / n / "metrics.json").is_file() for n in ("img0", "img1", "img2"))


def test_more_wrong_inputs_get_one_line(folder, tmp_path):
    small = np.full((8, 8), 255, np.uint8)
    io.imsave(tmp_path / "small_mask.png", small, check_contrast=False)
    np.save(tmp_path / "bad_kernel.npy", np.array([[-1.0, 1.0]]))
    cases = [
        (["restore", folder, "--task", "inpaint", "--mask", tmp_path / "small_mask.png"], "mask "),
        (["restore", folder, "--task", "deblur", "--kernel", tmp_path / "bad_kernel.npy"], "non-negative"),
        (["degrade", folder, "--task", "nope"], "unknown task 'nope'"),
        (["degrade", folder, "--task", "sr", "--box", "3"], "--box does not apply to --task sr"),
        (["degrade", folder, "--task", "sr", "--prior", "nowhere"], "unknown prior 'nowhere'"),
        (["degrade", tmp_path / "missing_dir", "--task", "sr"], "missing_dir"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(app, [*map(str, args), "-o", str(tmp_path / "o"), "--quiet"])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (args, r.output)


def test_bench_outside_a_checkout_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["bench"])
    assert r.exit_code == 2 and "from the root of an invdiff checkout" in r.output


def test_stack_operators_batches_what_can_be_batched():
    import torch

    from invdiff.operators import Blur, Inpainting
    from invdiff.cli.tasks import build_operator, stack_operators

    shape = (1, 1, 16, 16)
    blur = [build_operator("deblur", shape, {"kernel": "gaussian:1.5"}, seed=s) for s in (1, 2)]
    assert stack_operators(blur) is blur[0]
    masks = [build_operator("inpaint", shape, {"random_mask": 0.5}, seed=s) for s in (1, 2, 3)]
    stacked = stack_operators(masks)
    assert isinstance(stacked, Inpainting)
    x = torch.rand(3, *shape[1:])
    torch.testing.assert_close(stacked(x), torch.cat([op(x[i : i + 1]) for i, op in enumerate(masks)]))
    motion = [build_operator("deblur", shape, {"kernel": "motion:7,0.5"}, seed=s) for s in (1, 2)]
    assert isinstance(motion[0], Blur) and stack_operators(motion) is None  # random kernels differ per file
    assert stack_operators([blur[0], masks[0]]) is None


def test_batch_size_restores_files_together_with_the_same_measurements(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        io.imsave(d / f"img{i}.png", (rng.random((32, 32)) * 255).astype(np.uint8), check_contrast=False)
    io.imsave(d / "big.png", (rng.random((48, 48)) * 255).astype(np.uint8), check_contrast=False)
    (d / "broken.png").write_bytes(b"not a png")
    one, many = tmp_path / "one", tmp_path / "many"
    assert run(d, "--task", "inpaint", "--random-mask", "0.5", "-o", one, *FAST).exit_code == 1
    r = run(d, "--task", "inpaint", "--random-mask", "0.5", "-o", many, "--batch-size", "8", *FAST)
    assert r.exit_code == 1 and "4 restored, 0 already done, 1 failed" in r.output
    assert "failed: broken:" in r.output
    for name in ("img0", "img1", "img2", "big"):
        # Each file's measurement (its mask and noise) is the same whatever the batch size.
        np.testing.assert_array_equal(np.load(one / name / "measurement.npy"), np.load(many / name / "measurement.npy"))
        row = json.loads((many / name / "metrics.json").read_text())
        if name == "big":  # the only 48x48 image: restored on its own
            assert "batched_with" not in row
        else:
            assert row["batched_with"] == 3
        assert 5 < row["psnr"] < 60
    r = run(d, "--task", "inpaint", "-o", many, "--batch-size", "0", *FAST)
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--batch-size must be a positive integer" in r.output


@pytest.mark.parametrize("task, expected", [("ct", "phantoms"), ("mri", "phantoms"), ("colorize", "natural-rgb")])
def test_restore_default_prior_follows_the_task(tmp_path, monkeypatch, task, expected):
    import invdiff.priors

    asked = []

    def fake_load_prior(name, **options):
        asked.append(name)
        raise ValueError("stop here")

    monkeypatch.setattr(invdiff.priors, "load_prior", fake_load_prior)
    img = tmp_path / "a.png"
    img.write_bytes(b"")  # never read: loading the prior comes first
    r = CliRunner().invoke(app, ["restore", str(img), "--task", task, "--sigma-y", "0.01", "-o", str(tmp_path / "o"),
                                 "--quiet"])  # fmt: skip
    assert r.exit_code == 2 and "stop here" in r.output
    assert asked == [expected]


def test_progress_lines_without_a_terminal(folder, tmp_path, monkeypatch):
    """Under CliRunner stderr is not a terminal: the bars cannot draw, so plain lines with the time left appear."""
    import invdiff.cli.commands as cli_app

    monkeypatch.setattr(cli_app, "PROGRESS_EVERY", 0.0)
    r = run(folder, "--task", "inpaint", "--random-mask", "0.5", "-o", tmp_path / "out", "--steps", "3",
            "--samples", "1")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("image ")]
    # a file's first step has no pace yet: the time elapsed only; later steps say the time left
    assert "image 1/2, step 1/3:" in lines[0] and "s elapsed" in lines[0] and "s left" not in lines[0]
    assert any(ln.startswith("image 1/2, step 2/3:") and "s left" in ln for ln in lines)
    assert any(ln.startswith("image 2/2, step 3/3:") for ln in lines)
    quiet = run(folder, "--task", "inpaint", "--random-mask", "0.5", "-o", tmp_path / "q", *FAST)
    assert not any(ln.startswith("image ") for ln in quiet.output.splitlines())


def test_time_left_ignores_the_time_before_a_files_first_step(monkeypatch):
    """A blind deblur fits kernels for minutes before its first step: the pace counts from that step."""
    import invdiff.cli.commands as cli_app

    monkeypatch.setattr(cli_app, "PROGRESS_EVERY", 0.0)
    lines, now = [], [0.0]
    monkeypatch.setattr(cli_app.typer, "echo", lambda text, err=False: lines.append(text))
    ticker = cli_app._Ticker(2, 100, clock=lambda: now[0])
    now[0] = 130.0  # the kernel's estimate, then step 1
    ticker.step(1)
    assert lines[-1] == "image 1/2, step 1/100: 130 s elapsed"
    now[0] = 140.0  # ten steps later: 1 s a step, 89 steps to go, and one more file of (140 + 89) s
    ticker.step(11)
    assert lines[-1] == "image 1/2, step 11/100: 140 s elapsed, about 318 s left"
    ticker.next_file()  # the second file takes what the first took on average
    now[0] = 400.0
    ticker.step(1)
    assert lines[-1] == "image 2/2, step 1/100: 400 s elapsed"
    now[0] = 402.0
    ticker.step(3)
    assert lines[-1] == "image 2/2, step 3/100: 402 s elapsed, about 97 s left"


def test_version_1_sidecars_keep_their_mask_meaning(tmp_path):
    """Sidecars written before masks meant 'white = fill' (version 1: nonzero = known) rebuild the same operator."""
    import torch

    from invdiff.cli.batch import operator_from_sidecar

    m = np.zeros((32, 32), np.uint8)
    m[:, :8] = 255
    io.imsave(tmp_path / "m.png", m, check_contrast=False)
    side = {"task": "inpaint", "options": {"mask": str(tmp_path / "m.png")}, "seed": 0, "image_shape": [1, 1, 32, 32],
            "original_size": [32, 32]}  # fmt: skip
    old, _ = operator_from_sidecar({**side, "invdiff_sidecar": 1})
    new, _ = operator_from_sidecar({**side, "invdiff_sidecar": 2})
    assert int(old.mask.sum()) == 32 * 8  # version 1: the white columns were the known ones
    assert torch.equal(new.mask, 1 - old.mask)  # version 2: they are the holes
