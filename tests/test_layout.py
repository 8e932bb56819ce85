"""The package's layout: no import circle among lsnet_tf's modules, and the command-line modules
import without TensorFlow (so ``--help`` and usage errors answer at once).

The import graph is read from the source with `ast`: every ``import`` and ``from ... import``,
at module level or inside a function (a lazy import still ties the two modules together),
relative imports resolved, and ``from package import submodule`` counted as importing the
submodule too.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_files(package_dir: str) -> dict[str, str]:
    """``{dotted module name: path}`` of every ``.py`` file under `package_dir` (a package named
    by its folder; ``__init__.py`` is the package itself)."""
    root = os.path.dirname(os.path.abspath(package_dir))
    modules = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def _imported(module: str, path: str, node, modules) -> set[str]:
    """The modules of `modules` that one import statement of `module` imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1 packages
            package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
            parts = package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        # `from x import y` imports x, and x.y when y is a submodule.
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    out = set()
    for name in names:
        while name and name not in modules:  # x.y.function -> x.y; outside the package -> ""
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph(package_dir: str) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, every import statement counted."""
    modules = module_files(package_dir)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(module, path, node, modules)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per group of modules that import each other (strongly
    connected component of more than one module), sorted."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(v):  # Tarjan's algorithm
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
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # a shortest way round, from the group's first module back to it
        start = min(group)
        paths = {w: [start, w] for w in sorted(graph[start] & group)}
        frontier = list(paths)
        while start not in paths:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        cycles.append(paths[start])
    return sorted(cycles)


def test_no_import_cycle_in_lsnet_tf():
    graph = import_graph(os.path.join(REPO, "lsnet_tf"))
    assert "lsnet_tf.data.records" in graph["lsnet_tf.data.pipeline"]  # the graph is read
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (a lazy import counts too):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def _write(root, files: dict):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_detector_finds_a_known_cycle(tmp_path):
    """pkg.a -> pkg.b (`from . import b`) -> pkg.sub.c (in a function) -> pkg.a (relative, two
    levels up); pkg.d imports pkg.a but is outside the cycle."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\n\nfrom . import b\n\nVALUE = 1\n",
        "pkg/b.py": "def f():\n    from pkg.sub import c\n    return c\n",
        "pkg/sub/__init__.py": '"""A subpackage."""\n',
        "pkg/sub/c.py": "import numpy as np\n\nfrom ..a import VALUE\n",
        "pkg/d.py": "import pkg.a\n",
    })
    graph = import_graph(str(tmp_path / "pkg"))
    assert graph["pkg.a"] == {"pkg", "pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    # Without the lazy import there is none.
    _write(tmp_path, {"pkg/b.py": "def f():\n    return None\n"})
    assert import_cycles(import_graph(str(tmp_path / "pkg"))) == []


# Modules whose import (``python -m ... --help``, a usage error) must not load TensorFlow.
LIGHT_MODULES = ("config", "utils.files", "utils.drawing", "data.records", "metrics.evaluation",
                 "training.runs", "training.session", "prepare", "validate", "train", "evaluate",
                 "experiments", "experiments.cli", "predict", "visualize", "export.cli", "curves")


def test_command_line_modules_import_without_tensorflow():
    code = ("import sys\n"
            + "".join(f"import lsnet_tf.{m}\n" for m in LIGHT_MODULES)
            + "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"importing {LIGHT_MODULES} loads {out.stdout.strip()}"
