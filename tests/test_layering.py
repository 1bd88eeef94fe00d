"""The house as drawn (docs/architecture.md): which parts of edgenas may import which, read from the source.

Every import counts, those inside functions included (they run when the function does): a module may
import lazily to keep `edgenas --help` fast, never to hide a dependency the layering forbids.
`from edgenas import load_device` counts as importing the module that defines `load_device`.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgenas"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@cache
def _lazy_names(package: str) -> dict[str, str]:
    """A package `__init__`'s lazy attribute table (`_LAZY = {"name": "module", ...}`)."""
    path = _modules().get(package)
    if path is None or path.name != "__init__.py":
        return {}
    return dict(re.findall(r'"(\w+)":\s*"(edgenas[\w.]*)"', path.read_text()))


@cache
def imports(module: str) -> frozenset[str]:
    """Every module and outside package `module` imports (edgenas modules by full name, others by top name)."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name if a.name.startswith("edgenas") else a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("edgenas"):
                found.add(source.split(".")[0])
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                lazy = _lazy_names(source).get(alias.name)
                found.add(full if full in _modules() else lazy or source)
    return frozenset(m for m in found if m != module)


def _part(module: str) -> str:
    """The part of the house a module belongs to: `edgenas.search.base` -> `search`, `edgenas.space` -> `space`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edgenas"


def reachable(module: str) -> set[str]:
    """Every edgenas module `module` imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for m in imports(todo.pop()):
            if m in _modules() and m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _in(part: str) -> list[str]:
    return [m for m in _modules() if _part(m) == part]


def test_the_source_is_read():
    assert "edgenas.search.base" in _modules() and "edgenas.space" in imports("edgenas.search.base")
    assert "edgenas.devices.base" in imports("edgenas.cli.devices") or "edgenas.devices" in imports("edgenas.cli.devices")


@pytest.mark.parametrize("module", _in("search"))
def test_search_imports_nothing_that_builds_or_runs_models(module):
    forbidden = {"nn", "supernet", "data", "train", "export", "devices", "latency", "store", "pipeline", "deploy",
                 "cli", "accuracy"}
    bad = sorted(m for m in reachable(module) if _part(m) in forbidden)
    assert not bad, f"{module} imports {bad}"
    outside = {m for m in [module, *reachable(module)] for m in imports(m) if not m.startswith("edgenas")}
    # differentiable search holds its architecture logits in torch and runs the supernet it is given
    # (`Supernet.mixed_forward`), importing no part that builds one; every other strategy is numpy only
    allowed = {"torch"} if module == "edgenas.search.differentiable" else set()
    assert not outside & ({"torch", "onnx", "onnxruntime", "tensorflow"} - allowed), f"{module} reaches {outside}"


@pytest.mark.parametrize("module", ["edgenas.space", "edgenas.genome", "edgenas.stats", "edgenas.memory",
                                    *_in("devices")])
def test_no_torch_below_the_models(module):
    """The space, genome, statistics and devices (which handle model files) never import torch."""
    outside = {m for m in [module, *reachable(module)] for m in imports(m) if not m.startswith("edgenas")}
    assert "torch" not in outside, f"{module} reaches torch"


def test_nothing_imports_the_cli():
    bad = sorted(m for m in _modules() if _part(m) != "cli" and any(_part(i) == "cli" for i in imports(m)))
    assert not bad, f"{bad} import edgenas.cli: only the CLI chains stages"


def test_the_device_agent_imports_nothing_from_edgenas():
    assert not [m for m in imports("edgenas.devices.agent") if m.startswith("edgenas")]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules():
    # A module's own packages are imported before it in any case (Python runs `edgenas/devices/__init__.py`
    # before `edgenas/devices/fleet.py`), so an import of one of them adds no edge.
    graph = {m: {i for i in imports(m) if i in _modules() and not m.startswith(i + ".")} for m in _modules()}
    assert _cycles(graph) == []


def test_no_two_parts_import_each_other():
    graph: dict[str, set[str]] = {}
    for m in _modules():
        if _part(m) == "edgenas":  # the package's own __init__ (version, lazy names) is not a part
            continue
        graph.setdefault(_part(m), set()).update(_part(i) for i in imports(m) if i in _modules()
                                                 and _part(i) not in (_part(m), "edgenas"))
    assert _cycles(graph) == []


def test_cycles_are_found():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


@pytest.mark.parametrize("module", _in("imports"))
def test_imports_depend_on_nothing_above_the_files_they_write(module):
    """Other tools' files come in as a supernet checkpoint (train), an accuracy predictor (accuracy) and a latency
    table and predictor (latency): nothing that searches, deploys, exports, measures or chains stages."""
    forbidden = {"search", "deploy", "export", "devices", "pipeline", "cli", "data", "store"}
    bad = sorted(m for m in imports(module) if _part(m) in forbidden)
    assert not bad, f"{module} imports {bad}"
