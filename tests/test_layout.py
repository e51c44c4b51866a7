"""The architecture's arrows, read from the source with ``ast``: every import points down.

    cli -> medical, train -> core (invdiff/ top, samplers/) -> operators, priors

``medical`` and ``train`` do not import each other; the core imports no wing, not
lazily inside a function nor through a re-export; ``operators`` and ``priors`` import
only themselves; and no two modules of a package import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's source lives (pyproject's package-dir).
SOURCES = {"invdiff": ROOT / "invdiff", "invdiff.operators": ROOT / "operators", "invdiff.priors": ROOT / "priors"}

# What each layer may import (itself always).
LAYER_MAY_IMPORT = {
    "cli": {"medical", "train", "core", "operators", "priors"},
    "medical": {"core", "operators", "priors"},
    "train": {"core", "operators", "priors"},
    "core": {"operators", "priors"},
    "operators": set(),
    "priors": set(),
}


def module_name(path: Path) -> str:
    """The dotted name ``path`` installs as."""
    for package, src in sorted(SOURCES.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(src):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([package, *parts])
    raise AssertionError(f"{path} is in no package")


def layer(module: str) -> str | None:
    """The layer of an ``invdiff...`` module, or None for a third-party one."""
    parts = module.split(".")
    if parts[0] != "invdiff":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] == "__main__":  # `python -m invdiff`: an entry point like the console script, nothing imports it
        return "cli"
    if parts[1] in ("cli", "medical", "train", "operators", "priors"):
        return parts[1]
    return "core"


def all_modules() -> dict[str, Path]:
    found = {}
    for src in SOURCES.values():
        for path in src.rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports_of(path: Path, module: str) -> list[tuple[tuple[str, ...], int]]:
    """Every import in ``path`` (lazy ones and ``importlib.import_module`` / ``__import__`` of a
    string too), as candidate absolute names, most specific first, with line numbers."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [((alias.name,), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                assert node.level - 1 < len(parts), f"{path}:{node.lineno}: relative import beyond the top package"
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import x` imports the submodule pkg.x when there is one, else pkg itself.
            out += [((f"{base}.{alias.name}", base), node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                out.append(((node.args[0].value,), node.lineno))
    return out


def internal_edges() -> dict[str, set[tuple[str, int]]]:
    modules = all_modules()
    edges = {}
    for name, path in modules.items():
        targets = set()
        for candidates, line in imports_of(path, name):
            for target in candidates:
                # Resolve to the longest known module prefix (`invdiff.operators.Blur` -> `invdiff.operators`).
                parts = target.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts:
                    targets.add((".".join(parts), line))
                    break
        edges[name] = targets
    return edges


def test_the_wings_and_the_core_exist():
    modules = all_modules()
    for name in ("invdiff.cli.commands", "invdiff.cli.batch", "invdiff.cli.tasks", "invdiff.cli.demo",
                 "invdiff.medical.ct", "invdiff.medical.mri", "invdiff.medical.monai",
                 "invdiff.train.pixel", "invdiff.train.latent",
                 "invdiff.restore", "invdiff.methods", "invdiff.io", "invdiff.samplers.ddrm"):  # fmt: skip
        assert name in modules, name
    assert layer("invdiff.samplers.dps") == "core" and layer("invdiff.medical.ct") == "medical"


def test_every_arrow_points_down():
    wrong = []
    for source, targets in internal_edges().items():
        src_layer = layer(source)
        for target, line in targets:
            dst_layer = layer(target)
            if dst_layer != src_layer and dst_layer not in LAYER_MAY_IMPORT[src_layer]:
                wrong.append(f"{source}:{line} ({src_layer}) imports {target} ({dst_layer})")
    assert not wrong, "imports that point up or across:\n" + "\n".join(wrong)


def test_no_import_cycles():
    # A package's __init__ importing its submodules is an edge like any other, so a submodule that
    # imports a name back from its package closes a cycle (the __init__ has not finished running).
    edges = {m: {t for t, _ in ts if t != m} for m, ts in internal_edges().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def plant(tmp_path, monkeypatch, files: dict[str, str]) -> None:
    """Point the checker at a planted tree: ``{"invdiff/restore.py": source, "priors/bad.py": ...}``."""
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package, folder in (("invdiff", "invdiff"), ("invdiff.priors", "priors"), ("invdiff.operators", "operators")):
        monkeypatch.setitem(SOURCES, package, tmp_path / folder)


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """A planted core module that imports the CLI lazily or through importlib, and a priors module that
    imports invdiff, are caught."""
    plant(tmp_path, monkeypatch, {
        "invdiff/__init__.py": "", "invdiff/cli/__init__.py": "", "invdiff/cli/batch.py": "def file_seed(): ...\n",
        "invdiff/restore.py": "def f():\n    from .cli.batch import file_seed\n",
        "invdiff/volume.py": "import importlib\nbatch = importlib.import_module('invdiff.cli.batch')\n",
        "priors/__init__.py": "", "priors/bad.py": "from invdiff import restore\n",
    })  # fmt: skip
    with pytest.raises(AssertionError) as err:
        test_every_arrow_points_down()
    assert "invdiff.restore:2 (core) imports invdiff.cli.batch (cli)" in str(err.value)
    assert "invdiff.volume:2 (core) imports invdiff.cli.batch (cli)" in str(err.value)
    assert "invdiff.priors.bad:1 (priors) imports invdiff.restore (core)" in str(err.value)


def test_the_checker_catches_a_cycle(tmp_path, monkeypatch):
    plant(tmp_path, monkeypatch, {"priors/__init__.py": "", "priors/latent.py": "def f():\n    from .loaders import g\n",
                                  "priors/loaders.py": "from .latent import f\n"})  # fmt: skip
    with pytest.raises(pytest.fail.Exception, match="import cycle: invdiff.priors.latent -> invdiff.priors.loaders"):
        test_no_import_cycles()


def test_the_top_level_api():
    import invdiff

    for name in ("restore", "restore_volume", "METHODS", "Result", "operators", "priors", "datasets"):
        assert hasattr(invdiff, name), name
    assert invdiff.operators.__name__ == "invdiff.operators" and invdiff.priors.__name__ == "invdiff.priors"


def test_the_checker_catches_a_cycle_through_a_package(tmp_path, monkeypatch):
    """``invdiff/__init__`` imports ``restore``, which imports a name back from ``invdiff``: a cycle."""
    plant(tmp_path, monkeypatch, {
        "invdiff/__init__.py": "from .restore import restore\nfrom .volume import restore_volume\n",
        "invdiff/volume.py": "def restore_volume(): ...\n", "invdiff/restore.py": "from invdiff import restore_volume\n",
    })  # fmt: skip
    with pytest.raises(pytest.fail.Exception, match="import cycle: invdiff -> invdiff.restore -> invdiff"):
        test_no_import_cycles()
