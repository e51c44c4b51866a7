"""Device placement, checked without a GPU.

Every sampler, on every kind of operator, with trained, analytic and latent
priors, runs under :class:`device_probe.DeviceProbe`, which fails as soon as a
tensor made without ``device=`` meets the data (a cpu/cuda mismatch on a GPU).
The probe itself is checked first: it must catch a planted mistake and let the
correct forms through.
"""

from __future__ import annotations

import pytest
import torch
from device_probe import DeviceMismatch, DeviceProbe

from invdiff import METHODS, restore
from invdiff.devices import resolve_device
from invdiff.restore import check_method
from invdiff.priors import GaussianMixturePrior, GaussianPrior, load_prior
from invdiff.cli.tasks import build_operator

# -- the probe itself ------------------------------------------------------------------------------


def test_probe_catches_a_tensor_made_without_device():
    data = torch.rand(2, 3)
    with pytest.raises(DeviceMismatch, match="without device="), DeviceProbe():
        _ = data + torch.zeros(2, 3)
    with pytest.raises(DeviceMismatch), DeviceProbe():
        ramp = torch.linspace(0, 1, 3) * 2  # derived from a default-device tensor: still marked
        _ = data * ramp
    with pytest.raises(DeviceMismatch), DeviceProbe():
        data.add_(torch.ones(3).to(torch.float64).float())  # a dtype change is not a move


def test_probe_lets_the_correct_forms_through():
    data = torch.rand(2, 3)
    with DeviceProbe():
        _ = data + torch.zeros(2, 3, device=data.device)
        _ = data + torch.zeros(2, 3).to(data.device)  # .to returns the same tensor here, and clears it
        _ = data + torch.randn(2, 3).to(data)
        _ = data + torch.zeros_like(data) + data.new_ones(3)
        _ = data * torch.tensor(2.0)  # 0-d CPU tensors mix with CUDA tensors in torch
        scale = torch.linspace(0, 1, 3) ** 2  # work among default-device tensors only is fine
        _ = float(scale.sum())


# -- device names ------------------------------------------------------------------------------------


def test_device_names_are_checked_before_any_work():
    from benchmarks.__main__ import main

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'; use cpu, cuda or cuda:N"):
        resolve_device("gpu")
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match="asked for, but torch sees"):
        resolve_device(missing)
    with pytest.raises(SystemExit):  # argparse: usage and one error line, before any suite starts
        main(["priors", "--quick", "--device", missing])


# -- samplers on operators and priors ------------------------------------------------------------------

SHAPE = (1, 1, 16, 16)
TASKS = {
    "inpaint": ("inpaint", {"random_mask": 0.5}),
    "deblur": ("deblur", {"kernel": "gaussian:1.0"}),
    "sr": ("sr", {"scale": 2}),
    "mri": ("mri", {"acceleration": 2}),
    "ct": ("ct", {"angles": 8}),
}


def _problem(task: str, shape=SHAPE, seed: int = 0):
    name, options = TASKS[task]
    op = build_operator(name, shape, options, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = op(x)
    return op, y + 0.02 * torch.randn(y.shape, generator=g, dtype=y.dtype)


def _run(prior, op, y, method: str) -> None:
    with DeviceProbe():
        restore(y, op, prior, method=method, steps=2, sigma_y=0.02, samples=2, seed=0)


PIXEL = [m for m in METHODS if m not in ("latent_dps", "psld")]


@pytest.fixture(scope="module")
def gray():
    return load_prior("natural-gray")


@pytest.mark.parametrize("task", list(TASKS))
def test_samplers_keep_to_the_data_device(gray, task):
    op, y = _problem(task)
    ran = []
    for method in PIXEL:
        try:
            check_method(method, op, y)
        except ValueError:
            continue
        _run(gray, op, y, method)
        ran.append(method)
    assert "dps" in ran and len(ran) >= 4


def test_nonlinear_operator_keeps_to_the_data_device(gray):
    from invdiff.operators import Saturation

    op = Saturation(alpha=2.0)
    y = op(torch.rand(SHAPE))
    for method in ("dps", "score_ald", "daps"):
        _run(gray, op, y, method)


def test_analytic_priors_keep_to_the_data_device():
    n = 16
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    cov = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    shape = (1, 4, 4)
    means = torch.rand(2, n, generator=g, dtype=torch.float64)
    priors = [GaussianPrior(means[0], cov, shape=shape),
              GaussianMixturePrior(torch.tensor([0.4, 0.6]), means, torch.stack([cov, 2 * cov]), shape=shape)]  # fmt: skip
    op, y = _problem("inpaint", shape=(1, *shape))
    for prior in priors:
        for method in ("ddrm", "dps", "pigdm", "ddnm"):
            _run(prior, op, y, method)


def test_latent_samplers_keep_to_the_data_device():
    prior = load_prior("latent-gray")
    op, y = _problem("inpaint", shape=(1, 1, 32, 32))
    for method in ("latent_dps", "psld"):
        _run(prior, op, y, method)


def test_benchmark_runner_keeps_to_the_data_device(gray):
    """The images suite's runner, deepinv's samplers and the cost-floor timings included (what --device runs)."""
    from benchmarks import images
    from invdiff.datasets import load_test_image

    x = load_test_image("camera", channels=1, size=16)
    plan = images.Plan("quick", ("camera",), 16, (0,), 2, {m: (2,) for m in images.QUICK_STEPS},
                       deepinv=("ddrm", "dps", "pigdm", "diffpir"), tv_iters=(3, 2), tv_lambdas=(1e-2,),
                       scaling=("ddrm", 2, (1, 2)), net_reps=1, lpips=False)  # fmt: skip
    tasks = [t for t in images.TASKS if t.name in ("inpaint-random", "sr4-bicubic", "saturation")]
    with DeviceProbe():
        data = images.run_suite(plan, gray, {"camera": x}, tasks=tasks, figures_dir=None, log=lambda m: None)
    # the runner records a failing method as a row with its error instead of stopping, so look at the rows
    errors = [(r["task"], r["family"], r["method"], r["error"]) for r in data["rows"] if "error" in r]
    assert not errors
    assert {r["family"] for r in data["rows"]} >= {"classical", "invdiff", "deepinv"}
