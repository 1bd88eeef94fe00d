"""Lazy attributes for package `__init__` files (a name's module is imported on first use, PEP 562) and moved modules' old
paths."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str], namespace: dict[str, Any]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, resolving each of `names` (name -> module) on first use
    and caching it in the package's `namespace` (its `globals()`)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Old module paths kept importable after a move: importing an old path (`old -> new` in `moved`) gives the
    module at its new path, imported only then. Asked last (after the files), so it never shadows a real module;
    nothing in edgenas imports an old path (tests/test_layering.py), only users' code may."""

    def __init__(self, moved: Mapping[str, str]) -> None:
        self.moved = dict(moved)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in self.moved else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return importlib.import_module(self.moved[spec.name])  # the module itself: one copy, whichever path

    def exec_module(self, module: Any) -> None:
        pass  # already run under its new name
