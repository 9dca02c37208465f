"""The package's import graph: no cycles, dependencies one way, no hidden imports.

Parses every module of ``allegro_jax`` with :mod:`ast` (nothing is imported) and checks

* no cycle between modules, nor between subpackages (imports inside functions count: a
  deferred import hides a cycle from Python, not from this test);
* every import goes down the layers of :data:`LAYERS` (config → data → nn → io →
  train / md → parallel → lammps → cli), never up nor sideways between peers;
* imports inside functions only where they are meant to be lazy: the CLI entry points
  (start-up time of ``allegro-jax --help`` and of every MPI rank), the package's lazy
  ``__getattr__``, and the optional or slow third-party dependencies of :data:`LAZY_OK`;
* nothing of the repository outside the package: no import of :data:`NOT_LIBRARY`
  (``experiments``, ``benchmarks``, ``tests``), and their helpers (``runinfo``) are not in it.

``test_checker_*`` plant a cycle, an upward import and a deferred import in a throw-away
package and show that the checks fail on them.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "allegro_jax"

#: Subpackages (or top-level modules) by layer, lowest first. A module may import its own
#: subpackage and any lower layer; peers in one layer do not import each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"_version", "_malloc", "units", "config", "compiling", "sharding"}),
    frozenset({"data"}),
    frozenset({"nn"}),
    frozenset({"io"}),
    frozenset({"train", "md"}),
    frozenset({"parallel"}),
    frozenset({"lammps"}),
    frozenset({"cli", "__init__"}),
)

#: Modules that may import parts of the package inside functions: command-line entry points
#: (a subcommand's machinery is imported when it runs) and the lazy top-level namespace.
LAZY_MODULES = frozenset({"__init__", "cli", "train.cli", "md.cli", "lammps.runner"})

#: Third-party modules that may be imported inside functions: optional extras and imports
#: that cost seconds (jax-md compiles on import).
LAZY_OK = frozenset(
    {
        "torch",
        "nequip",
        "lammps",
        "lammps_jax",
        "mpi4py",
        "matplotlib",
        "mlip",
        "matscipy",
        "jax_md",
    }
)


#: Top-level folders of the repository that are not the library: it never imports them.
NOT_LIBRARY = frozenset({"experiments", "benchmarks", "tests", "examples"})


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # importing module, relative to the package ("train.loop", "__init__")
    target: str  # imported module of the package, or a third-party top-level name
    line: int
    deferred: bool  # inside a function
    internal: bool


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def parse_imports(root: Path) -> tuple[set[str], list[Import]]:
    """All modules of the package at ``root`` and every import statement in them."""
    package = root.name
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    found = []
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = [] if name == "__init__" else name.split(".")
        anchor = here if is_package else here[:-1]

        def resolve(module: str | None, level: int, anchor=anchor) -> list[str]:
            if level:
                base = anchor[: len(anchor) - (level - 1)] if level > 1 else anchor
                return base + (module.split(".") if module else [])
            return module.split(".") if module else []

        def visit(node: ast.AST, deferred: bool, name=name, resolve=resolve) -> None:
            for child in ast.iter_child_nodes(node):
                inner = deferred or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                targets: list[tuple[list[str], bool]] = []  # (dotted parts, absolute-ish)
                if isinstance(child, ast.Import):
                    targets = [(a.name.split("."), False) for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = resolve(child.module, child.level)
                    relative = child.level > 0
                    for alias in child.names:
                        targets.append((base + [alias.name], relative))
                for parts, relative in targets:
                    if relative or parts[0] == package:
                        inner_parts = parts if relative else parts[1:]
                        # the longest prefix that is a module ("from pkg import name")
                        target = None
                        for n in range(len(inner_parts), 0, -1):
                            candidate = ".".join(inner_parts[:n])
                            if candidate in modules:
                                target = candidate
                                break
                        target = target or "__init__"
                        if target != name:
                            found.append(Import(name, target, child.lineno, deferred, True))
                    else:
                        found.append(Import(name, parts[0], child.lineno, deferred, False))
                visit(child, inner)

        visit(ast.parse(path.read_text(), str(path)), False)
    return modules, found


def subpackage(module: str) -> str:
    return module.split(".")[0]


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if subpackage(module) in names:
            return i
    raise KeyError(f"{module}: its subpackage is in no layer of LAYERS")


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return cycles


def _edges(imports: list[Import], key=lambda m: m) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for imp in imports:
        # a package's __init__ re-exports its modules: an edge into it from one of its own
        # modules is Python's import of the parent package, not a dependency
        if imp.internal and imp.target != "__init__" and key(imp.source) != key(imp.target):
            edges[key(imp.source)].add(key(imp.target))
        elif imp.internal and imp.source == "__init__" and key(imp.target) != "__init__":
            edges["__init__"].add(key(imp.target))
    return edges


def module_cycles(root: Path) -> list[list[str]]:
    _, imports = parse_imports(root)
    internal = [
        i
        for i in imports
        if i.internal
        # a subpackage's __init__ importing its own modules is not a dependency of theirs
        and not (i.target == subpackage(i.source) and "." in i.source)
    ]
    return find_cycles(_edges(internal))


def subpackage_cycles(root: Path) -> list[list[str]]:
    _, imports = parse_imports(root)
    return find_cycles(_edges([i for i in imports if i.internal], key=subpackage))


def upward_imports(root: Path) -> list[str]:
    _, imports = parse_imports(root)
    bad = []
    for imp in imports:
        if not imp.internal or subpackage(imp.source) == subpackage(imp.target):
            continue
        if imp.target == "__init__" and imp.source == "__init__":
            continue
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if dst >= src:
            where = "up" if dst > src else "sideways"
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} ({where})")
    return bad


def deferred_imports(root: Path) -> list[str]:
    _, imports = parse_imports(root)
    bad = []
    for imp in imports:
        if not imp.deferred or imp.source in LAZY_MODULES:
            continue
        if not imp.internal and imp.target in LAZY_OK:
            continue
        bad.append(f"{imp.source}:{imp.line} imports {imp.target} inside a function")
    return bad


def test_no_module_cycles():
    assert module_cycles(PACKAGE) == []


def test_no_subpackage_cycles():
    assert subpackage_cycles(PACKAGE) == []


def test_dependencies_go_down_the_layers():
    assert upward_imports(PACKAGE) == []


def test_imports_inside_functions_only_where_lazy():
    assert deferred_imports(PACKAGE) == []


def imports_outside_the_library(root: Path) -> list[str]:
    _, imports = parse_imports(root)
    return [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for imp in imports
        if not imp.internal and imp.target in NOT_LIBRARY
    ]


def test_the_library_imports_no_experiment_benchmark_or_test_code():
    assert imports_outside_the_library(PACKAGE) == []


def test_experiment_helpers_live_outside_the_library():
    modules, _ = parse_imports(PACKAGE)
    assert "runinfo" not in modules  # experiments/runinfo.py (issue 16)
    assert (PACKAGE.parent / "experiments" / "runinfo.py").exists()


def test_every_subpackage_has_a_layer():
    modules, _ = parse_imports(PACKAGE)
    for module in modules:
        layer_of(module)


# ---- the checker itself fails where it should --------------------------------------------


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "allegro_jax"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    root = _plant(
        tmp_path,
        {
            "train/__init__.py": "",
            "train/loop.py": "from allegro_jax.train.evaluate import evaluate\n",
            "train/evaluate.py": "def evaluate():\n    from .loop import run\n",
        },
    )
    assert module_cycles(root) == [["train.evaluate", "train.loop"]]
    assert deferred_imports(root) == ["train.evaluate:2 imports train.loop inside a function"]


def test_checker_finds_a_subpackage_cycle_and_an_upward_import(tmp_path):
    root = _plant(
        tmp_path,
        {
            "md/__init__.py": "",
            "md/calc.py": "from allegro_jax.train import export\n",
            "train/__init__.py": "",
            "train/export.py": "import allegro_jax.md.calc\n",
            "nn/__init__.py": "",
            "nn/model.py": "from ..parallel.mesh import make_mesh\n",
            "parallel/__init__.py": "",
            "parallel/mesh.py": "make_mesh = None\n",
        },
    )
    assert module_cycles(root) == [["md.calc", "train.export"]]
    assert subpackage_cycles(root) == [["md", "train"]]
    assert sorted(upward_imports(root)) == [
        "md.calc:1 imports train.export (sideways)",
        "nn.model:1 imports parallel.mesh (up)",
        "train.export:1 imports md.calc (sideways)",
    ]


def test_checker_passes_a_clean_package(tmp_path):
    root = _plant(
        tmp_path,
        {
            "config.py": "import numpy\n",
            "nn/__init__.py": "from .model import make_model\n",
            "nn/model.py": "from ..config import X\nfrom . import radial\n",
            "nn/radial.py": "def f():\n    import torch\n",
        },
    )
    assert module_cycles(root) == subpackage_cycles(root) == []
    assert upward_imports(root) == deferred_imports(root) == []
    assert imports_outside_the_library(root) == []


def test_checker_finds_an_import_of_experiment_code(tmp_path):
    root = _plant(
        tmp_path,
        {
            "config.py": "from experiments.runinfo import cpu_model\n",
            "io/__init__.py": "",
            "io/model.py": "def f():\n    import benchmarks.floor\n",
        },
    )
    assert sorted(imports_outside_the_library(root)) == [
        "config:1 imports experiments",
        "io.model:2 imports benchmarks",
    ]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
