"""Shared helpers for the benchmarks: the machine they ran on, JSON and markdown outputs, ``RESULTS.md``.

Each benchmark ``<name>`` writes ``results/<name>.json`` (every number) and
``results/<name>.md`` (its section); ``assemble_results`` joins all sections into
``RESULTS.md``, so benchmarks added later only write their own two files.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "results"
RESULTS_MD = ROOT / "RESULTS.md"


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    """The checked-out commit (read only), or ``None`` outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the OS does not say): other work on the machine."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where and when a benchmark ran: CPU model, cores, torch threads and version, accelerator, UTC date, load."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One markdown line for a ``machine()`` dict."""
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads)"
    commit = f", commit {info['git_commit']}" if info.get("git_commit") else ""
    return f"{where}; torch {info['torch']}, device `{info['device']}`; run {info['date_utc']}{commit}."


def _jsonable(v: Any) -> Any:
    """Tensors to lists, non-finite floats to strings (JSON has no NaN)."""
    if isinstance(v, torch.Tensor):
        return _jsonable(v.tolist())
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n", encoding="utf-8")
    return path


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant figures, ``None`` to an em dash."""
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are passed through ``fmt``."""
    cells = [[fmt(c).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def write_section(name: str, markdown: str) -> Path:
    """Write ``results/<name>.md`` (one ``## ...`` section) and rebuild ``RESULTS.md``; return the section's path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    assemble_results()
    return path


def assemble_results() -> Path:
    """Join every ``results/*.md`` section, in name order (a suite before its variants), into ``RESULTS.md``."""
    sections = sorted(RESULTS_DIR.glob("*.md"), key=lambda p: p.stem)  # "priors" before "priors-dps"
    head = (
        "# invdiff benchmark results\n\n"
        "Generated by `python -m benchmarks <name>`; do not edit by hand. "
        "Each section comes from `benchmarks/results/<name>.md`, its numbers from `<name>.json`.\n"
    )
    body = "\n".join(p.read_text(encoding="utf-8").rstrip() + "\n" for p in sections)
    RESULTS_MD.write_text(head + "\n" + body, encoding="utf-8")
    return RESULTS_MD


README = ROOT.parent / "README.md"
README_BEGIN = "<!-- benchmarks:begin (generated by python -m benchmarks images; do not edit by hand) -->"
README_END = "<!-- benchmarks:end -->"


def update_readme(block: str, path: Path = README) -> bool:
    """Replace the text between the README's benchmark markers with ``block``; ``False`` if the markers are absent."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(README_BEGIN)] + "\n" + block.strip() + "\n" + text[end:]
    path.write_text(new, encoding="utf-8")
    return True
