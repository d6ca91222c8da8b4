"""The models package's layering: the core never imports the lab, and core modules form no
import circle (module-level or inside functions); models imports neither dicom_node nor
workers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import models

PACKAGE = Path(models.__file__).resolve().parent
CORE = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
LAB = sorted(p.stem for p in (PACKAGE / "lab").glob("*.py") if p.stem != "__init__")


def _imports(path: Path) -> set[str]:
    """Every module named by an ``import`` anywhere in the file (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _core_edges() -> dict[str, set[str]]:
    edges = {}
    for stem in CORE + ["__init__"]:
        found = _imports(PACKAGE / f"{stem}.py")
        edges[stem] = {name.split(".")[1] for name in found
                       if name.startswith("models.") and name.split(".")[1] in CORE}
    return edges


def test_core_and_lab_modules_exist():
    assert {"bundle", "fast", "heatmap", "networks", "picard"} <= set(CORE)
    assert {"bench", "bundles", "evaluate", "metrics", "phantom", "train"} <= set(LAB)


@pytest.mark.parametrize("stem", CORE + ["__init__"])
def test_core_never_imports_the_lab_or_other_packages(stem):
    found = _imports(PACKAGE / f"{stem}.py")
    bad = sorted(n for n in found if n.startswith(("models.lab", "dicom_node", "workers")))
    assert not bad, f"models/{stem}.py imports {bad}"


@pytest.mark.parametrize("stem", LAB)
def test_lab_imports_no_other_packages(stem):
    found = _imports(PACKAGE / "lab" / f"{stem}.py")
    bad = sorted(n for n in found if n.startswith(("dicom_node", "workers", "argparse")))
    assert not bad, f"models/lab/{stem}.py imports {bad}"


def test_core_imports_form_no_circle():
    edges = _core_edges()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail(f"import circle among core modules: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for stem in CORE:
        if stem not in state:
            visit(stem, [stem])


@pytest.mark.parametrize("module", [f"models.{s}" for s in CORE] + ["models"])
def test_each_core_module_imports_first_and_alone(module):
    code = (f"import sys, {module}; "
            "lab = sorted(m for m in sys.modules if m.startswith('models.lab')); "
            "assert not lab, lab")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
