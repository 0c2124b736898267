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
    assert "BROKEN" not in out.stdout and "3 kept, 0 broken" in out.stdout


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
                found += [f"{f.relative_to(SRC)}: {a.name}" for a in node.names if re.match(r"_[a-z]", a.name)]
    assert not found, found
