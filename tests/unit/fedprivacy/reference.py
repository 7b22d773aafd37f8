"""The public DP reference values (../shared/reference) and the tolerances its README states.

Each tolerance rule is one function named after its number in the README's "Recommended
acceptance tolerances", so a failing test names the rule it broke.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REFERENCE = (
    Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "dp_reference_public.json"
)

Entry = dict[str, Any]


@cache
def _entries() -> list[Entry]:
    if not REFERENCE.exists():
        return []
    entries: list[Entry] = json.loads(REFERENCE.read_text())["entries"]
    return entries


# Beside a clone of the project (as CI lays it out) the file is there; a clone alone has none,
# and then every test parametrised over its entries is collected empty (reported as skipped).
NEEDS_REFERENCE = pytest.mark.skipif(
    not REFERENCE.exists(), reason=f"reference values not found at {REFERENCE}"
)


def entries(mechanism: str, status: str | None = None) -> list[Entry]:
    """Return the reference entries of one kind (and status); none if the file is absent."""
    return [
        entry
        for entry in _entries()
        if entry["mechanism"] == mechanism and (status is None or entry.get("status") == status)
    ]


def entry_id(entry: Entry) -> str:
    """Name a parametrised case after the entry's inputs."""
    keys = ("q", "noise_multiplier", "steps", "rounds", "delta", "epsilon0", "k", "epsilon")
    keys += ("target_epsilon",)
    return ",".join(f"{key}={entry[key]}" for key in keys if key in entry)


def value(entry: Entry, field: str) -> float:
    """Read a float field; the string "inf" is infinity."""
    raw = entry[field]
    return math.inf if raw == "inf" else float(raw)


def rule1_sound(epsilon: float, epsilon_pld: float) -> bool:
    """Rule 1: never report less than the PLD upper estimate (minus its discretisation)."""
    return epsilon >= epsilon_pld - max(1e-3, 1e-3 * epsilon_pld)


def rule2_rdp(epsilon: float, epsilon_rdp: float) -> bool:
    """Rule 2: an RDP accountant on DEFAULT_RDP_ORDERS is within 1% below ε = 20."""
    return abs(epsilon / epsilon_rdp - 1) <= 0.01


def rule3_band(epsilon: float, epsilon_rdp: float, epsilon_rdp_opacus: float) -> bool:
    """Rule 3: within 1% of the band spanned by the two RDP libraries."""
    low, high = sorted((epsilon_rdp, epsilon_rdp_opacus))
    return 0.99 * low <= epsilon <= 1.01 * high


def rule5_tight(epsilon: float, epsilon_tight: float) -> bool:
    """Rule 5: a tight accountant lies in [PLD − max(1e-3, 0.1%), PLD + max(0.015, 1%)]."""
    return (
        epsilon_tight - max(1e-3, 1e-3 * epsilon_tight)
        <= epsilon
        <= epsilon_tight + max(0.015, 0.01 * epsilon_tight)
    )


def skipped_ok(epsilon: float) -> bool:
    """A "skipped_meaningless" entry accepts any ε above 100, or inf (a refusal)."""
    return epsilon > 100


def relative_error(actual: float, expected: float) -> float:
    return abs(actual / expected - 1)
