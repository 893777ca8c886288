"""The package's import graph, read with `ast`: no module imports itself through others (no circles, counting
imports inside functions too, which only hide a circle), and an import inside a function carries the reason
beside it (a comment on its line or the line above), since a deferred import is a decision to explain."""

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cim_plugin"


def module_name(path: Path, root: Path) -> str:
    parts = ("cim_plugin",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    """module -> the package modules it imports (a `from pkg import name` naming a submodule counts as that
    submodule; any import of a module also imports its parent packages, which run first)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, is_package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # a name inside a module -> that module
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b, a.b.c
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Each strongly connected group of two or more modules (Tarjan), as a sorted list."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unexplained_function_imports(root: Path = PACKAGE) -> List[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here = lines[node.lineno - 1]
                    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
                    if "#" not in here and not above.startswith("#"):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {here.strip()}")
    return sorted(set(found))


def test_the_package_has_no_import_circles():
    assert cycles(import_graph()) == []


def test_every_import_inside_a_function_says_why():
    assert unexplained_function_imports() == []


def _write(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "cim_plugin" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "cim_plugin"


@pytest.mark.parametrize("files", [
    {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .a import x\n"},
    {"__init__.py": "", "a.py": "def f():\n    from .b import y  # deferred\n", "b.py": "from . import a\n"},
    {"__init__.py": "", "p/__init__.py": "from .core import X\n", "p/core.py": "from ..q import Y\n",
     "q.py": "from .p import X\n"},
])
def test_the_check_finds_a_circle(tmp_path, files):
    """A direct circle, one hidden in a function, and one through a package's __init__ are all found."""
    assert cycles(import_graph(_write(tmp_path, files))) != []


def test_the_check_accepts_a_layered_package(tmp_path):
    root = _write(tmp_path, {"__init__.py": "", "p/__init__.py": "from .core import X\nfrom .io import save\n",
                             "p/core.py": "X = 1\n", "p/io.py": "from .core import X\n", "q.py": "from .p import X\n"})
    assert cycles(import_graph(root)) == []


def test_the_check_finds_an_unexplained_import_in_a_function(tmp_path):
    root = _write(tmp_path, {"__init__.py": "", "a.py": "def f():\n    import json\n\n\ndef g():\n"
                                                        "    # optional: matplotlib is slow to import\n"
                                                        "    import matplotlib\n"})
    assert unexplained_function_imports(root) == ["a.py:2: import json"]
