"""Services meet only on topics, and the CLI starts them by module name: no service or CLI
module imports another service's package, and the shared libraries import none at all.

What two processes need lives in libs/ (fedcommon, fedprivacy). Every ``.py`` of each package
is parsed with ``ast``, so an ``import`` inside a function, a ``from X import y`` and an
``importlib.import_module("X")`` are all seen; a module name in a string that goes to a
launcher (``python -m fedengine_privacy``) is not an import and is allowed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("registry", "coordinator", "aggregator", "simulator", "gateway", "privacy")
SERVICE_PACKAGES = frozenset(f"fedengine_{service}" for service in SERVICES)
# package import name -> its source folder; each may import only itself among SERVICE_PACKAGES.
PACKAGES = {
    **{f"fedengine_{s}": ROOT / "services" / s / "src" / f"fedengine_{s}" for s in SERVICES},
    "fedengine": ROOT / "cli" / "src" / "fedengine",
    "fedcommon": ROOT / "libs" / "fedcommon" / "src" / "fedcommon",
    "fedprivacy": ROOT / "libs" / "fedprivacy" / "src" / "fedprivacy",
}
# fedprivacy needs numpy alone (its [accounting] extra adds dp-accounting and scipy), so it
# does not import fedcommon either; the schema's bounds are passed in as numbers.
ALSO_FORBIDDEN = {"fedprivacy": frozenset({"fedcommon"})}
_DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement (or dynamic import call) and where it is."""

    module: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.module}"


def _top(module: str) -> str:
    return module.partition(".")[0]


def imports_in(source: str, path: str) -> list[Import]:
    """Return every absolute import in ``source``, at any depth (functions, classes, ifs)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, path, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(node.module, path, node.lineno))
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else None
            if isinstance(function, ast.Name):
                name = function.id
            first = node.args[0]
            if (
                name in _DYNAMIC_IMPORTS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.append(Import(first.value, path, node.lineno))
    return sorted(found, key=lambda statement: statement.line)


def _sources(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


def forbidden_imports(package: str) -> list[str]:
    """Return "path:line: imports X" for each import of a package ``package`` may not use."""
    forbidden = (SERVICE_PACKAGES - {package}) | ALSO_FORBIDDEN.get(package, frozenset())
    found = []
    for path in _sources(package):
        relative = str(path.relative_to(ROOT))
        for statement in imports_in(path.read_text(), relative):
            if _top(statement.module) in forbidden:
                found.append(str(statement))
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_a_package_imports_no_other_service(package: str) -> None:
    # Execute
    found = forbidden_imports(package)

    # Assert
    assert found == []


def test_every_package_is_scanned() -> None:
    # Assert: a moved or renamed folder would otherwise leave nothing to check, and pass.
    assert {package: len(_sources(package)) > 1 for package in PACKAGES} == dict.fromkeys(
        PACKAGES, True
    )
    assert {p.parent.parent.name for p in (ROOT / "services").glob("*/src/fedengine_*")} == set(
        SERVICES
    )


def test_every_form_of_import_is_found_and_module_names_in_strings_are_not() -> None:
    # Prepare
    source = (
        "import fedengine_registry\n"
        "import fedengine_gateway.app as app\n"
        "from fedengine_privacy.core import ledger\n"
        "from . import sibling\n"
        "def launch():\n"
        "    from fedengine_coordinator.settings import Settings\n"
        "    importlib.import_module('fedengine_aggregator.bench')\n"
        "    return ['python', '-m', 'fedengine_simulator']\n"
    )

    # Execute
    found = [(i.module, i.line) for i in imports_in(source, "example.py")]

    # Assert
    assert found == [
        ("fedengine_registry", 1),
        ("fedengine_gateway.app", 2),
        ("fedengine_privacy.core", 3),
        ("fedengine_coordinator.settings", 6),
        ("fedengine_aggregator.bench", 7),
    ]


def test_the_cli_names_the_services_it_launches_in_strings() -> None:
    # Assert: the CLI does launch services (by module name), so the check above is about
    # how it reaches them, not a package that never mentions them.
    text = "\n".join(path.read_text() for path in _sources("fedengine"))
    assert "fedengine_aggregator.bench" in text
    assert 'f"fedengine_{name}"' in text
