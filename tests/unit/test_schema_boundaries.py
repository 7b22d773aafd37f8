"""A service reads another service's tables only through the views the owner declares in its
own migrations (``<schema>.<name>_public``), so that a change of schema cannot silently break a
reader: the owner sees the view it must keep, and PostgreSQL refuses to drop a column one uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ("registry", "coordinator", "aggregator", "simulator", "privacy")
# A schema-qualified name in SQL text; "fedengine_registry" has no word boundary before
# "registry", so module paths do not match.
QUALIFIED = re.compile(r"\b(" + "|".join(SCHEMAS) + r")\.([a-z_][a-z0-9_]*)\b")
SERVICES = ("registry", "coordinator", "aggregator", "simulator", "gateway", "privacy")


def _sources(service: str) -> list[Path]:
    package = ROOT / "services" / service / "src" / f"fedengine_{service}"
    return sorted([*package.rglob("*.py"), *package.rglob("*.sql")])


def _declared_views() -> set[str]:
    declared = set()
    for schema in SCHEMAS:
        for sql in (ROOT / "services" / schema / "src" / f"fedengine_{schema}").rglob("*.sql"):
            for name in re.findall(r"CREATE OR REPLACE VIEW (\w+_public)", sql.read_text()):
                declared.add(f"{schema}.{name}")
    return declared


def _foreign_reads(service: str) -> list[tuple[str, str]]:
    found = []
    for path in _sources(service):
        for line in path.read_text().splitlines():
            for schema, name in QUALIFIED.findall(line):
                if schema != service:
                    found.append((f"{schema}.{name}", f"{path.relative_to(ROOT)}: {line.strip()}"))
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_reads_other_schemas_only_through_their_public_views(service: str) -> None:
    # Prepare
    declared = _declared_views()

    # Execute
    reads = _foreign_reads(service)

    # Assert: every foreign name is a view its owner declares.
    assert [where for name, where in reads if name not in declared] == []


def test_the_readers_that_exist_are_found() -> None:
    # Assert: the check sees the gateway's projections and the coordinator's selection (a
    # regex that matched nothing would pass the test above for every service).
    assert {name for name, _ in _foreign_reads("gateway")} >= {
        "registry.devices_public",
        "coordinator.tasks_public",
        "aggregator.device_results_public",
    }
    assert {name for name, _ in _foreign_reads("coordinator")} == {
        "registry.devices_public",
        "privacy.device_exhaustion_public",
    }
