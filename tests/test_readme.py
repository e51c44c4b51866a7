"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    text = README.read_text()
    section = text.split("## In Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 13
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert result.samples.shape == (4, 1, 1, 128, 128)
    assert result.nfe == 20 and torch.isfinite(result.mean).all()
    assert float(result.std.mean()) > 0


def test_readme_uncertainty_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Uncertainty", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    r, cal = scope["r"], scope["cal"]
    assert (tmp_path / "ddrm-inpaint.json").is_file() and cal.n_images == 12
    lo, hi = scope["lo"], scope["hi"]
    assert lo.shape == hi.shape == (1, 1, 64, 64) and (hi >= lo).all()
    assert 0.0 <= r.coverage(scope["x"], 0.9) <= 1.0
