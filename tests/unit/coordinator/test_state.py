"""The statuses the database accepts are exactly the enums' values."""

from __future__ import annotations

import re
from enum import StrEnum
from importlib import resources

import pytest

from fedcommon.messages.v1 import StopReason, TaskState
from fedengine_coordinator.core.state import RoundStatus


def _checked_values(constraint: str) -> set[str]:
    """Return the values ``constraint`` allows, from the newest migration that adds it (a
    later migration drops and re-adds a constraint to widen it)."""
    folder = resources.files("fedengine_coordinator") / "migrations"
    sql = "\n".join(
        entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".sql")
    )
    found = re.findall(rf"ADD CONSTRAINT {constraint}\s+CHECK \(\w+ IN \(([^)]*)\)\)", sql)
    assert found, f"no migration adds {constraint}"
    return set(re.findall(r"'([a-z_]+)'", found[-1]))


@pytest.mark.parametrize(
    ("constraint", "enum"),
    [
        ("tasks_state_check", TaskState),
        ("tasks_stop_reason_check", StopReason),
        ("rounds_status_check", RoundStatus),
    ],
)
def test_each_checked_column_allows_exactly_its_enum(constraint: str, enum: type[StrEnum]) -> None:
    # Execute
    allowed = _checked_values(constraint)

    # Assert
    assert allowed == {member.value for member in enum}
