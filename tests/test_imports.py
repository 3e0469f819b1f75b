"""reasonlab's internal import graph: no circle, and the layers docs/architecture.md draws.

The graph is read from the source with `ast`, not by importing it: every ``import`` and ``from ...
import`` naming a reasonlab module, at module level or inside a function, relative or absolute.
``from . import x`` counts as importing the submodule ``x`` when there is one, else the package;
``from .pkg import name`` as importing ``pkg`` (its ``__init__``). Importing a module also runs its
parent packages' ``__init__``, but Python runs those first whoever imports, so that is not an edge.
Imports under ``if TYPE_CHECKING:`` count too: they never run, but a reader follows them as any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reasonlab"

# Bottom to top: a module imports only modules of its own layer or lower ones. A module's layer is
# that of the longest dotted prefix of its name listed here (a package covers everything in it);
# "" is the top package's own __init__.
LAYERS = [
    # `console` (terminal output: progress lines, rates as text, tables) imports nothing of ours, and
    # both the commands and the experiments print through it
    ("basics", "errors jsonl config softmax memory compute outdir trackers remote console".split()),
    ("core", "template tasks rewards plugins model engine rollout_vllm runtime".split()),
    ("runs and evaluation", ["run", "evaluate"]),
    ("trainers and services", ["train", "rl", "serve", "quick"]),
    ("experiments", ["lab"]),
    ("commands", ["cli", "selection", "options", "__main__", ""]),
]


def module_names(root: Path) -> dict[str, Path]:
    """Every module under the package folder `root`, by dotted name (a package by its own name)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph(root: Path = SRC) -> dict[str, dict[str, int]]:
    """{module: {module it imports: the line of the first such import}} for the package at `root`."""
    names = module_names(root)
    top = root.name

    def known(name: str) -> str:  # a name that is no module (a typo, a gone module): its nearest package
        while name not in names and "." in name:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text(), str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names if a.name.split(".")[0] == top]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] == top:
                    targets = [
                        f"{base}.{a.name}" if f"{base}.{a.name}" in names else known(base) for a in node.names
                    ]
            for target in targets:
                if target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One circle of imports as the path [a, b, ..., a], or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]], root: Path = SRC) -> str:
    """A circle as lines a reader can follow: which file imports which module, at which line."""
    names = module_names(root)
    return "\n".join(
        f"  {names[a].relative_to(root.parent)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:])
    )


def layer_of(module: str) -> int:
    """The index in LAYERS of `module` (a dotted name starting with "reasonlab")."""
    name = module.partition(".")[2]
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or (prefix and name.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (i, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: give it one in LAYERS (tests/test_imports.py)")
    return best[0]


def violations(graph: dict[str, dict[str, int]], root: Path = SRC) -> dict[tuple[str, str], str]:
    """Every edge from a module to one of a higher layer, with a line saying where."""
    names = module_names(root)
    found = {}
    for module, edges in graph.items():
        for target, line in edges.items():
            if layer_of(target) > layer_of(module):
                found[module, target] = (
                    f"  {names[module].relative_to(root.parent)}:{line}: {module} "
                    f"({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                )
    return found


def test_the_graph_reads_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\nfrom .sub import thing\nimport pkg.c\n",
        "b.py": "def f():\n    from .sub.d import x\n    from pkg import c\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import y\nimport os\n",
        "sub/__init__.py": "thing = 1\n",
        "sub/d.py": "from .. import a, nothing\nfrom ..gone import z\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert {m: set(e) for m, e in graph.items()} == {
        "pkg": set(),
        "pkg.a": {"pkg.b", "pkg.sub", "pkg.c"},
        "pkg.b": {"pkg.sub.d", "pkg.c"},
        "pkg.c": {"pkg.sub"},  # under TYPE_CHECKING too
        "pkg.sub": set(),
        "pkg.sub.d": {"pkg.a", "pkg"},  # `nothing` is no module: the package; `..gone` neither
    }
    cycle = find_cycle(graph)
    assert cycle == ["pkg.a", "pkg.b", "pkg.sub.d", "pkg.a"]
    assert describe(cycle, graph, pkg).splitlines() == [
        "  pkg/a.py:1 imports pkg.b",
        "  pkg/b.py:2 imports pkg.sub.d",
        "  pkg/sub/d.py:1 imports pkg.a",
    ]


def test_no_import_circle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "reasonlab's modules import each other in a circle:\n" + describe(cycle, graph)


def test_every_module_imports_only_its_layer_or_lower_ones():
    found = violations(import_graph())
    new = [line for _, line in sorted(found.items())]
    assert not new, "imports from a higher layer (docs/architecture.md):\n" + "\n".join(new)
