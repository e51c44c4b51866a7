"""The CLI's task table: task name + options -> operator, and its error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invdiff.operators import MRI, Blur, Downsampling, Inpainting, Tomography
from invdiff.cli.tasks import TASKS, build_operator, parse_kernel

SHAPE = (1, 1, 32, 32)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_builds_an_operator_that_runs(task):
    shape = (1, 3, 32, 32) if task == "colorize" else SHAPE
    op = build_operator(task, shape, seed=1)
    y = op(torch.rand(shape))
    assert torch.isfinite(y).all()


def test_inpaint_options():
    op = build_operator("inpaint", SHAPE, {"random_mask": 0.25}, seed=0)
    assert isinstance(op, Inpainting)
    assert float(1 - op.mask.float().mean()) == pytest.approx(0.25, abs=0.02)
    box = build_operator("inpaint", SHAPE, {"box": 8})
    assert int((box.mask == 0).sum()) == 64
    # same seed, same random mask; other seed, other mask
    a = build_operator("inpaint", SHAPE, {"random_mask": 0.5}, seed=3).mask
    assert torch.equal(a, build_operator("inpaint", SHAPE, {"random_mask": 0.5}, seed=3).mask)
    assert not torch.equal(a, build_operator("inpaint", SHAPE, {"random_mask": 0.5}, seed=4).mask)


def test_inpaint_mask_file(tmp_path):
    from skimage import io

    m = np.zeros((32, 32), np.uint8)
    m[:4] = 255  # white = the region to fill
    io.imsave(tmp_path / "m.png", m, check_contrast=False)
    op = build_operator("inpaint", SHAPE, {"mask": str(tmp_path / "m.png")})
    assert int((op.mask == 0).sum()) == 4 * 32 and int(op.mask[..., :4, :].sum()) == 0
    io.imsave(tmp_path / "known.png", 255 - m, check_contrast=False)  # nonzero = known
    assert torch.equal(build_operator("inpaint", SHAPE, {"mask_known": str(tmp_path / "known.png")}).mask, op.mask)
    with pytest.raises(ValueError, match="mask .*m.png"):
        build_operator("inpaint", (1, 1, 16, 16), {"mask": str(tmp_path / "m.png")})


def test_kernels(tmp_path):
    g = parse_kernel("gaussian:2.0")
    assert g.shape[0] % 2 == 1 and float(g.sum()) == pytest.approx(1.0, abs=1e-6)
    m1 = parse_kernel("motion:15,0.5", torch.Generator().manual_seed(0))
    m2 = parse_kernel("motion:15,0.5", torch.Generator().manual_seed(0))
    assert m1.shape == (15, 15) and torch.equal(m1, m2)
    np.save(tmp_path / "k.npy", np.array([[0.0, 2.0], [1.0, 1.0]]))
    k = parse_kernel(str(tmp_path / "k.npy"))
    torch.testing.assert_close(k, torch.tensor([[0.0, 0.5], [0.25, 0.25]]))
    op = build_operator("deblur", SHAPE, {"kernel": "gaussian:1.5"})
    assert isinstance(op, Blur)


def test_sr_mri_ct_types():
    assert isinstance(build_operator("sr", SHAPE, {"scale": 2, "filter": "box"}), Downsampling)
    assert isinstance(build_operator("mri", SHAPE, {"acceleration": 8, "center_fraction": 0.04}), MRI)
    assert isinstance(build_operator("ct", SHAPE, {"angles": 12}), Tomography)


@pytest.mark.parametrize(
    "task, shape, options, message",
    [
        ("warp", SHAPE, {}, "unknown task 'warp'; choose one of inpaint"),
        ("sr", SHAPE, {"kernel": "gaussian:1"}, "task sr takes no option(s) kernel; its options: scale, filter"),
        ("inpaint", SHAPE, {"random_mask": 0.5, "box": 4}, "one of --random-mask, --box, --mask"),
        ("inpaint", SHAPE, {"random_mask": 1.5}, "fraction of missing pixels"),
        ("inpaint", SHAPE, {"box": 40}, "--box 40 must be between 1"),
        ("inpaint", SHAPE, {"mask": "no/such.png"}, "mask file no/such.png not found"),
        ("deblur", SHAPE, {"kernel": "gaussian:-1"}, "positive width"),
        ("deblur", SHAPE, {"kernel": "motion:31"}, "give size and intensity"),
        ("deblur", SHAPE, {"kernel": "gaussian:abc"}, "parameters must be numbers"),
        ("deblur", SHAPE, {"kernel": "nosuchfile.png"}, "neither gaussian:SIGMA"),
        ("deblur", (1, 1, 8, 8), {"kernel": "gaussian:3.0"}, "larger than the image"),
        ("sr", (1, 1, 30, 30), {"scale": 4}, "must be divisible by it"),
        ("sr", SHAPE, {"filter": "lanczos"}, "--filter must be box or bicubic"),
        ("mri", SHAPE, {"acceleration": 0.5}, "--acceleration must be at least 1"),
        ("ct", (1, 1, 32, 16), {}, "ct needs square images"),
        ("ct", SHAPE, {"angles": 0}, "--angles must be a positive"),
        ("colorize", SHAPE, {}, "colorize needs RGB images, got 1 channel"),
    ],
)
def test_errors_say_what_is_wrong(task, shape, options, message):
    with pytest.raises(ValueError) as e:
        build_operator(task, shape, options)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
