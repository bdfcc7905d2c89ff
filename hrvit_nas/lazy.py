"""The one way a package face exports names whose modules are heavy (torch, matplotlib, optuna).

``hrvit-nas --help`` imports every package's CLI module, and each of those imports its package face;
faces that imported their models eagerly would make the help page pay for torch. Names listed here
load on first attribute access (PEP 562) and are then cached on the package.
"""

from __future__ import annotations

import importlib
import sys
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

    return __getattr__, sorted(owner)
