"""The house as drawn (docs/architecture.md): which parts of edgenas may import which, read from the map's table and
the source.

The rules are the table's last column, parsed here, so the page and the test cannot drift apart: a part that
imports what its row does not name fails, as does a part without a row (a new part adds its row with its code).
Every import counts, those inside functions included (they run when the function does): a module may
import lazily to keep `edgenas --help` fast, never to hide a dependency the layering forbids. A package's lazy
names (`_LAZY = {"name": "module"}` in its `__init__`) count as that package's imports, and
`from edgenas import load_device` counts as importing the module that defines `load_device`.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgenas"
MAP = ROOT.parent / "docs" / "architecture.md"
HEAVY = {"torch", "onnx", "onnxruntime", "tensorflow"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@cache
def _name_table(package: str, table: str) -> dict[str, str]:
    """A package `__init__`'s name -> module table (`_LAZY`: its lazy names), read from the source."""
    path = _modules().get(package)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == table for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


def _lazy_names(package: str) -> dict[str, str]:
    return _name_table(package, "_LAZY")


@cache
def imports(module: str) -> frozenset[str]:
    """Every module and outside package `module` imports (edgenas modules by full name, others by top name)."""
    return frozenset(m for m, _ in _import_statements(module))


@cache
def _import_statements(module: str) -> tuple[tuple[str, str], ...]:
    """(what is imported, the name imported from it or "") for every import statement in `module`."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update((a.name if a.name.startswith("edgenas") else a.name.split(".")[0], "") for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("edgenas"):
                found.add((source.split(".")[0], ""))
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                lazy = _lazy_names(source).get(alias.name)
                found.add((full, "") if full in _modules() else (lazy or source, alias.name))
    return tuple(sorted((m, name) for m, name in found if m != module))


def _part(module: str) -> str:
    """The part of the house a module belongs to: `edgenas.search.loop` -> `search`, `edgenas.space` -> `space`."""
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


def _parts() -> set[str]:
    return {_part(m) for m in _modules()} - {"edgenas"}  # the package's own __init__ (version, lazy names): no part


# ---- the map's table ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    parts: tuple[str, ...]  # the parts the row describes
    may_import: frozenset[str]  # the parts they may import
    torch: bool  # whether the row names torch itself


def _names(text: str) -> list[str]:
    """`space.py`, `nn/` -> space, nn."""
    return [n.removesuffix(".py").rstrip("/") for n in re.findall(r"`([^`]+)`", text)]


@cache
def the_map() -> tuple[frozenset[str], dict[str, Row]]:
    """The plumbing every part may import, and each part's row, read from docs/architecture.md's table."""
    lines = [line for line in MAP.read_text().split("## Parts", 1)[1].splitlines() if line.startswith("|")]
    header = lines[0].split("|")[-2]
    plumbing = frozenset(_names(header.split("plumbing", 1)[1]))
    rows: dict[str, Row] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"docs/architecture.md: a table row needs 3 cells: {line}"
        text = cells[2].replace("**", "")
        while re.search(r"\([^()]*\)", text):
            text = re.sub(r"\s*\([^()]*\)", "", text)  # notes for the reader
        text = text.strip()
        if text == "—":
            names: set[str] = set()
        elif text.startswith("everything"):
            but = text.removeprefix("everything").strip()
            assert not but or but.startswith("but "), f"docs/architecture.md: {text!r}: expected everything but ..."
            names = _parts() - set(re.split(r",\s*", but.removeprefix("but ").strip()) if but else ())
        else:
            names = set(re.split(r",\s*", text))
        unknown = sorted(names - _parts() - {"torch"})
        assert not unknown, f"docs/architecture.md: {unknown} in the row of {cells[0]}: not parts of edgenas/"
        for part in _names(cells[0]):
            assert part not in rows, f"docs/architecture.md: two rows for {part}"
            rows[part] = Row(tuple(_names(cells[0])), frozenset(names - {"torch"}), "torch" in names)
    return plumbing, rows


@cache
def may_use_torch(part: str) -> bool:
    """Whether the table lets `part` reach torch: its row names torch, or a part that may use it."""
    row = the_map()[1][part]
    return row.torch or any(may_use_torch(p) for p in row.may_import if p != part)


def test_the_table_is_read():
    plumbing, rows = the_map()
    assert {"errors", "artifacts", "inputs", "progress", "_lazy", "edgenas"} <= plumbing
    assert rows["search"].may_import == {"space", "genome", "cost", "micro_memory"} and not may_use_torch("search")
    assert rows["space"].may_import == set() and rows["store"].may_import == set()
    assert "cli" not in rows["pipeline"].may_import and "deploy" in rows["pipeline"].may_import
    assert rows["cli"].may_import == _parts()
    assert may_use_torch("nn") and may_use_torch("supernet") and may_use_torch("train")
    assert not any(may_use_torch(p) for p in ("space", "genome", "cost", "micro_memory", "devices", "search", "store"))


def test_the_source_is_read():
    assert "edgenas.search.loop" in _modules() and "edgenas.space" in imports("edgenas.search.loop")
    assert "edgenas.devices.protocol" in imports("edgenas.cli.devices") or "edgenas.devices" in imports("edgenas.cli.devices")
    assert "edgenas.search.rl" in _lazy_names("edgenas.search").values()


def test_every_part_has_a_row_and_every_row_a_part():
    plumbing, rows = the_map()
    missing = sorted(_parts() - set(rows))
    assert not missing, f"parts of edgenas/ without a row in docs/architecture.md's table: {missing}"
    stale = sorted(set(rows) - _parts())
    assert not stale, f"rows of docs/architecture.md's table naming no part of edgenas/: {stale}"
    assert plumbing - {"edgenas"} <= set(rows), "the plumbing has its own row"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_each_module_imports_only_what_its_part_may(module):
    if _part(module) == "edgenas":
        return  # the package's own __init__: its version and lazy top-level names
    plumbing, rows = the_map()
    allowed = rows[_part(module)].may_import | plumbing | {_part(module)}
    lazy = set(_lazy_names(module).values()) if _modules()[module].name == "__init__.py" else set()
    bad = sorted(m for m in imports(module) | lazy if m in _modules() and _part(m) not in allowed)
    assert not bad, (f"{module} imports {bad}: docs/architecture.md's row for {_part(module)} allows "
                     f"{sorted(rows[_part(module)].may_import) or 'no part'} (besides the plumbing)")


@pytest.mark.parametrize("module", sorted(m for m in _modules() if _part(m) != "edgenas" and not may_use_torch(_part(m))))
def test_no_torch_where_the_table_has_none(module):
    """The space, genome, statistics, search and devices (which handle model files) never reach torch, by any path."""
    outside = {m for m in [module, *reachable(module)] for m in imports(m) if not m.startswith("edgenas")}
    assert "torch" not in outside, f"{module} reaches torch"
    if _part(module) == "search":  # the search sees archs and predictors, never a model or a runtime
        assert not outside & HEAVY, f"{module} reaches {sorted(outside & HEAVY)}"


def test_every_edgenas_import_names_a_module():
    """No import of a path that is no module of edgenas (no old paths: nothing keeps them alive)."""
    bad = [f"{module}: {target}" for module in _modules() for target, _ in _import_statements(module)
           if target.startswith("edgenas") and target not in _modules()]
    assert not bad, f"imports of paths that are no module: {bad}"


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


# ---- the same layering as import-linter contracts (pyproject.toml's [tool.importlinter]) -------------------------

def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root`, with root's pyproject.toml."""
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    done = _lint_imports(ROOT.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "broken" in done.stdout and " 0 broken" in done.stdout


@pytest.mark.parametrize("module, line", [("space.py", "import torch"), ("search/loop.py", "import edgenas.train"),
                                          ("store.py", "import edgenas.cli"), ("nn/__init__.py", "import edgenas.train")])
def test_a_broken_layer_breaks_a_contract(tmp_path, module, line):
    """The contracts catch an import the map forbids, one inside a function included."""
    pytest.importorskip("importlinter")
    shutil.copytree(ROOT, tmp_path / "edgenas", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT.parent / "pyproject.toml", tmp_path)
    target = tmp_path / "edgenas" / module
    target.write_text(target.read_text() + f"\n\ndef _late():\n    {line}\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout[-3000:]


# ---- imports inside functions: only deferrals that say why -------------------------------------------------------

DEFERRED = "# deferred:"


def undocumented_imports(source: str) -> list[int]:
    """The lines of `source`'s function-level imports that give no reason: a `# deferred: <why>` comment on the
    import's line, or on the lines directly above the run of import statements it belongs to (one reason may cover a
    run: `import torch`, a blank line, `from edgenas.nn import mixed`). Heavy optional dependencies are deferred at
    the CLI's dispatch or a converter boundary; a light or intra-package import belongs at the module's top."""
    lines = source.splitlines()
    bad: list[int] = []

    def documented(run_head: ast.stmt, node: ast.stmt) -> bool:
        if DEFERRED in lines[node.lineno - 1]:
            return True
        above = run_head.lineno - 2
        while above >= 0 and lines[above].strip().startswith("#"):
            if lines[above].strip().startswith(DEFERRED) and lines[above].strip() != DEFERRED:
                return True
            above -= 1
        return False

    def visit(node: ast.AST, in_function: bool) -> None:
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            head = None
            for stmt in block:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    head = head or stmt
                    if inside and not documented(head, stmt):
                        bad.append(stmt.lineno)
                else:
                    head = None
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(source), False)
    return sorted(bad)


def test_an_import_inside_a_function_without_a_reason_is_found():
    source = ("import os\n\n\ndef f():\n    # deferred: torch is heavy\n    import torch\n\n    from edgenas import nn\n"
              "    x = nn\n    import json\n    return json\n\n\ndef g():\n    if True:\n"
              "        import numpy  # deferred: numpy\n        from edgenas import space\n")
    assert undocumented_imports(source) == [10, 17]


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_import_inside_a_function_says_why_it_is_deferred(module):
    bad = undocumented_imports(_modules()[module].read_text())
    assert not bad, (f"{_modules()[module]}: lines {bad} import inside a function with no '{DEFERRED} <why>' comment: "
                     "move the import to the module's top, or say which heavy dependency it defers")


# ---- `from edgenas import X`: X is a module of edgenas or a name its __init__ defines ---------------------------

def _init_names() -> set[str]:
    """The names `edgenas/__init__.py` binds (its lazy names included)."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    names = set(_lazy_names("edgenas"))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            names |= {e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def stale_edgenas_imports(source: str) -> list[str]:
    """`from edgenas import X` where X is neither a module of edgenas nor a name its `__init__` defines, and
    `import edgenas.a.b` / `from edgenas.a.b import ...` where edgenas.a.b is no module."""
    defined = _init_names()
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == "edgenas":
            bad += [f"from edgenas import {a.name}" for a in node.names
                    if f"edgenas.{a.name}" not in _modules() and a.name not in defined]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("edgenas."):
            if node.module not in _modules():
                bad.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names if a.name.startswith("edgenas.") and a.name not in _modules()]
    return bad


def test_a_stale_name_from_edgenas_is_found():
    assert stale_edgenas_imports("from edgenas import readers, space, load_device, __version__\n"
                                 "import edgenas.gone\nfrom edgenas.search.gone import x\n") == [
        "from edgenas import readers", "import edgenas.gone", "from edgenas.search.gone import ..."]


def test_every_import_from_edgenas_names_what_exists():
    """The package, its tests and tools: a stale `from edgenas import readers` in a test that is skipped here (no
    device, no extra) would only fail where it runs."""
    files = [p for folder in ("edgenas", "tests", "tools") for p in sorted((ROOT.parent / folder).rglob("*.py"))]
    bad = [f"{p.relative_to(ROOT.parent)}: {line}" for p in files for line in stale_edgenas_imports(p.read_text())]
    assert not bad, f"imports of what edgenas does not have: {bad}"
