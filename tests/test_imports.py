"""The package plan, read from the source: no import cycles, no import of a higher package, and
cross-package imports through the package faces (docs/architecture.md, "The import rule").

Every ``import`` statement counts, also those inside functions: a deferred import hides a cycle or a
back-reference from Python's start-up, not from a reader.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("hrvit_nas", "hrvit_space", "profiling", "search", "training", "reports")
ORDER_TEXT = " < ".join(ORDER)
# The command-line modules glue every package together; only they may import upwards.
ROOF = ("hrvit_nas/demo.py", "hrvit_nas/cli.py")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "search.study"
    path: str  # its file, relative to the repository root
    line: int
    target: str  # imported module, e.g. "profiling.device"
    names: tuple[str, ...]  # the names of a ``from target import ...``; () for ``import target``

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def statement(self) -> str:
        return f"from {self.target} import {', '.join(self.names)}" if self.names else f"import {self.target}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in ORDER for path in sorted((ROOT / package).rglob("*.py"))}


MODULES = project_modules()


def parse_imports(name: str, path: Path, root: Path = ROOT) -> list[Import]:
    rel = path.relative_to(root).as_posix()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
        if isinstance(node, ast.Import):
            found += [Import(name, rel, node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            found.append(Import(name, rel, node.lineno, target, tuple(alias.name for alias in node.names)))
    return [imp for imp in found if imp.target.split(".")[0] in ORDER]


IMPORTS = [imp for name, path in MODULES.items() for imp in parse_imports(name, path)]


def top(module: str) -> str:
    return module.split(".")[0]


def is_roof(imp: Import) -> bool:
    return imp.path in ROOF or imp.path.endswith("/cli.py")


def module_edges(imp: Import) -> set[str]:
    """Project modules ``imp`` loads: the target, and for ``from package import submodule`` the submodule."""
    edges = {imp.target} if imp.target in MODULES else set()
    edges |= {f"{imp.target}.{name}" for name in imp.names if f"{imp.target}.{name}" in MODULES}
    return edges - {imp.source}


def find_cycles(imports: list[Import]) -> list[list[Import]]:
    """One cycle per strongly connected component of the module graph, as the imports that close it."""
    graph = nx.DiGraph()
    for imp in imports:
        for target in module_edges(imp):
            if not graph.has_edge(imp.source, target):
                graph.add_edge(imp.source, target, imp=imp)
    components = sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)
    return [[graph.edges[edge]["imp"] for edge in nx.find_cycle(graph.subgraph(c), c[0])] for c in components]


def test_no_import_cycle_between_modules():
    problems = []
    for cycle in find_cycles(IMPORTS):
        chain = " -> ".join([cycle[0].source, *(imp.target for imp in cycle)])
        steps = "; ".join(f"{imp.where} `{imp.statement}`" for imp in cycle)
        problems.append(f"import cycle {chain} ({steps}): move what both need into a module that neither "
                        "imports, or import the sibling submodule instead of the package face")
    assert not problems, "\n".join(problems)


def test_no_module_imports_a_higher_package():
    problems = [
        f"{imp.where}: `{imp.statement}` imports {top(imp.target)}, above {top(imp.source)} in {ORDER_TEXT}; "
        f"move the code it needs down into {top(imp.source)} (or lower), or call it from a cli.py"
        for imp in IMPORTS
        if ORDER.index(top(imp.target)) > ORDER.index(top(imp.source)) and not is_roof(imp)
    ]
    assert not problems, "\n".join(problems)


def test_cross_package_imports_go_through_the_package_face():
    problems = []
    for imp in IMPORTS:
        package = top(imp.target)
        if package == top(imp.source):
            continue
        if imp.target != package:
            names = ", ".join(name for name in imp.names if f"{imp.target}.{name}" not in MODULES) or "..."
            problems.append(f"{imp.where}: `{imp.statement}` reaches into {imp.target}; write "
                            f"`from {package} import {names}` (export it from {package}/__init__.py)")
        elif not imp.names:
            problems.append(f"{imp.where}: `import {package}`: name what you use, `from {package} import NAME`")
    assert not problems, "\n".join(problems)


def enclosing_packages(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_no_module_imports_its_own_package_face():
    """A face imports its modules (eagerly or lazily), so a module importing its face is a cycle in waiting."""
    problems = [
        f"{imp.where}: `{imp.statement}` imports the face of its own package {imp.target}; "
        f"import from the sibling module that defines it ({imp.target}.<module>)"
        for imp in IMPORTS
        if not imp.path.endswith("__init__.py") and imp.target in enclosing_packages(imp.source)
        and set(imp.names) - {"__version__"}  # the version lives in the face by convention
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", ORDER)
def test_every_name_imported_from_a_face_is_exported_there(package):
    exported = set(importlib.import_module(package).__all__)
    problems = [
        f"{imp.where}: `{imp.statement}`: {name} is not in {package}.__all__; export it in {package}/__init__.py"
        for imp in IMPORTS
        if imp.target == package and top(imp.source) != package
        for name in imp.names
        if name not in exported
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", ORDER)
def test_every_face_export_resolves(package):
    face = importlib.import_module(package)
    missing = [name for name in face.__all__ if not hasattr(face, name)]
    assert not missing, f"{package}/__init__.py lists {missing} in __all__ but they do not load"


def test_help_imports_neither_torch_nor_matplotlib():
    """The CLI mounts every package's sub-commands; the help page must not pay for the heavy libraries."""
    code = ("import sys, contextlib, io\nfrom hrvit_nas.cli import build_parser\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    build_parser().parse_args(['--help'])\n"
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert loaded.strip() == "[]", f"`hrvit-nas --help` imported {loaded.strip()}; load them lazily (hrvit_nas.lazy_exports)"


def test_a_face_name_shared_with_a_submodule_is_the_exported_object():
    """``reports.study_data`` is a function and a module: importing the module first (as reports.export
    does) must not turn ``from reports import study_data`` into the module (the demo crashed on it)."""
    code = ("import reports.export, training.rank_check, search.hypervolume\n"
            "from reports import study_data\nfrom training import rank_check\nfrom search import hypervolume\n"
            "print([callable(f) and not hasattr(f, '__path__') and type(f).__name__ for f in (study_data, rank_check, hypervolume)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['function', 'function', 'function']"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """Guard of the guard: a cycle hidden in a function body is still a cycle."""
    source = tmp_path / "hrvit_space" / "probe.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from . import config\n    from profiling.latency import x\n")
    imports = parse_imports("hrvit_space.probe", source, root=tmp_path)
    assert [(imp.line, imp.target, imp.names) for imp in imports] == [
        (2, "hrvit_space", ("config",)), (3, "profiling.latency", ("x",))]
    back = Import("hrvit_space.config", "hrvit_space/config.py", 1, "hrvit_space.probe", ())
    MODULES["hrvit_space.probe"] = source
    try:
        assert [len(cycle) for cycle in find_cycles([*imports, back])] == [2]
    finally:
        del MODULES["hrvit_space.probe"]
