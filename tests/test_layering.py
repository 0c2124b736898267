"""The layering is checked, not described: the import contract (pyproject's [tool.importlinter]), no circles
among the page's ES modules, no module importing another module's private names."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tumorseg"


def test_the_import_contract_holds():
    """Layers from front ends down to readers, the runtime free of torch/nn/train, no circles (lint-imports)."""
    pytest.importorskip("importlinter", reason="the dev extra's import-linter")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=SRC.parents[1],
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout and "4 kept, 0 broken" in out.stdout


def test_the_page_modules_import_no_circle():
    static = SRC / "app" / "static"
    deps = {
        f.name: set(re.findall(r'^import [^;]*? from "\./([\w.]+\.js)";', f.read_text(), re.M))
        for f in static.glob("*.js")
    }
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError(" -> ".join([*stack[stack.index(m) :], m]))
        if m in seen:
            return
        stack.append(m)
        for d in deps.get(m, ()):
            visit(d)
        stack.pop()
        seen.add(m)

    assert deps["main.js"], "the page's entry module imports the others"
    for m in deps:
        visit(m)


def test_no_module_imports_another_modules_private_names():
    found = []
    for f in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tumorseg")):
                found += [f"{f.relative_to(SRC)}: {a.name}" for a in node.names if re.match(r"_[A-Za-z]", a.name)]
        found += _private_attribute_uses(f)
    assert not found, found


def _private_attribute_uses(f: Path) -> list[str]:
    """``module._name`` where ``module`` was imported from tumorseg (``from . import x`` / ``import tumorseg.x``)."""
    tree = ast.parse(f.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tumorseg")):
            modules |= {a.asname or a.name for a in node.names if a.name.islower() and "." not in a.name}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("tumorseg") and a.asname}
    return [
        f"{f.relative_to(SRC)}: {n.value.id}.{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules
        and re.match(r"_[A-Za-z]", n.attr)
    ]  # fmt: skip


FRONT_ENDS = (
    "tumorseg",
    "tumorseg.cli.main",
    "tumorseg.cli.args",
    "tumorseg.cli.predict",
    "tumorseg.inference",
    "tumorseg.followup.run",
    "tumorseg.pacs.usecases",
    "tumorseg.pacs.client",
    "tumorseg.app.server",
    "tumorseg.batch.job",
)
HEAVY = ("torch", "onnx", "matplotlib", "safetensors")


def test_importing_every_front_end_loads_no_torch_network_or_lab():
    """Issue 45: a contract cannot tell an eager import from a lazy one, so a fresh interpreter checks what importing
    the CLI, the app, the Predictor, follow-up and PACS actually loads."""
    code = (
        "import importlib, sys\n"
        f"for m in {FRONT_ENDS!r}: importlib.import_module(m)\n"
        "from tumorseg import Predictor\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        "or m.startswith(('tumorseg.nn', 'tumorseg.train')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SRC.parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"front ends import {out.stdout.strip()}"


@pytest.mark.parametrize("module", ["cli/main.py", "cli/args.py", "__init__.py"])
def test_an_eager_torch_import_in_the_front_door_breaks_the_contract(tmp_path, module):
    """Issue 45: an `import torch` planted at the top of the console script's modules kept every contract before."""
    import os
    import shutil

    pytest.importorskip("importlinter", reason="the dev extra's import-linter")
    shutil.copytree(SRC, tmp_path / "src" / "tumorseg", ignore=shutil.ignore_patterns("static", "models"))
    shutil.copy(SRC.parents[1] / "pyproject.toml", tmp_path / "pyproject.toml")
    f = tmp_path / "src" / "tumorseg" / module
    text = f.read_text()
    anchor = "from __future__ import annotations\n" if "from __future__" in text else '"""\n'  # after the docstring
    f.write_text(text.replace(anchor, anchor + "\nimport torch\n", 1))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    name = ".".join(["tumorseg", *Path(module).with_suffix("").parts]).removesuffix(".__init__")
    assert out.returncode != 0 and f"{name} is not allowed to import torch" in out.stdout, out.stdout[-2000:]
