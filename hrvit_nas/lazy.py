"""The one way a package face exports names whose modules are heavy (torch, matplotlib, optuna).

``hrvit-nas --help`` imports every package's CLI module, and each of those imports its package face;
faces that imported their models eagerly would make the help page pay for torch. Names listed here
load on first attribute access (PEP 562) and are then cached on the package.

A face may export a name its submodule also has (``reports.study_data``, ``training.rank_check``,
``search.hypervolume``): importing the submodule makes Python set the package attribute to the
module, which would then shadow the exported function, depending on what was imported first. The
face always keeps the exported object instead (so ``import reports.study_data as m`` gives the
function too; inside a package, import such a module's names with ``from reports.study_data import``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable, Iterable, Mapping


def lazy_exports(package: str, modules: Mapping[str, Iterable[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """``__getattr__`` for ``package`` loading each name from its module in ``modules`` ({module: names}),
    and the sorted names for ``__all__``. Use: ``__getattr__, _lazy = lazy_exports(__name__, {...})``."""
    owner = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = owner.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    class Face(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in owner and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                value = getattr(importlib.import_module(owner[name]), name)  # the exported name wins
            super().__setattr__(name, value)

    face = sys.modules[package]
    face.__class__ = Face
    for name in owner:  # submodules imported before the face was set up
        if isinstance(face.__dict__.get(name), types.ModuleType):
            delattr(face, name)
    return __getattr__, sorted(owner)
