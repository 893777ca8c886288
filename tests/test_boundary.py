"""The architecture, checked: only `cim_plugin/pycil/` may import PyCIL (its top-level packages `models`,
`utils`, `convs`, `trainer`) or `cim_plugin.pycil`; the method package imports neither the adapter nor the
benchmark. Imports are read with `ast` (every import statement, also inside functions)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cim_plugin"
PYCIL_TOP = {"models", "utils", "convs", "trainer"}


def imported_modules(path: Path, root: Path = PACKAGE):
    """(line, absolute dotted name) of every module an import statement in `path` (under the package
    folder `root`) names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(("cim_plugin",) + path.relative_to(root).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield node.lineno, module
            for alias in node.names:  # `from cim_plugin import pycil` names a module too
                yield node.lineno, f"{module}.{alias.name}"


def forbidden(name: str, inside_method: bool) -> bool:
    top = name.split(".")[0]
    if top in PYCIL_TOP or name == "cim_plugin.pycil" or name.startswith("cim_plugin.pycil."):
        return True
    return inside_method and (name == "cim_plugin.bench" or name.startswith("cim_plugin.bench."))


def violations(root: Path = PACKAGE):
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "pycil":
            continue
        for line, name in imported_modules(path, root):
            if forbidden(name, inside_method=rel.parts[0] == "method"):
                found.append(f"{rel}:{line} imports {name}")
    return found


def test_only_the_pycil_package_imports_pycil():
    assert violations() == [], "modules outside cim_plugin/pycil/ import PyCIL or the adapter"


def test_the_packages_show_the_architecture():
    for package in ("method", "pycil", "bench", "datasets"):
        assert (PACKAGE / package / "__init__.py").is_file()
    for package in ("memory", "masks", "codec"):
        assert (PACKAGE / "method" / package / "__init__.py").is_file()
    assert (PACKAGE / "method" / "cim.py").is_file() and (PACKAGE / "pycil" / "mixin.py").is_file()


@pytest.mark.parametrize("source", [
    "from models.icarl import iCaRL", "import utils.inc_net", "from convs import resnet", "import trainer",
    "from cim_plugin.pycil import learner_class", "from ..pycil.host import import_pycil",
    "from .. import pycil", "from cim_plugin import pycil",
])
def test_the_check_catches_a_pycil_import(tmp_path, source):
    """Each spelling of a forbidden import, put in a method module, is reported."""
    module = tmp_path / "method" / "leak.py"
    module.parent.mkdir()
    module.write_text(f"def f():\n    {source}\n")
    assert len(violations(tmp_path)) >= 1
