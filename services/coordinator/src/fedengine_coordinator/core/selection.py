"""Device selection for a round: eligible, not busy, battery-aware, reproducible."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcommon.messages.v1 import PrivacyLevel

MIN_BATTERY_PCT = 20.0


@dataclass(frozen=True)
class Candidate:
    device_id: str
    public_key: bytes
    battery_pct: float | None
    # Its enrolled privacy level: low, medium and high train with local DP-SGD.
    privacy_level: PrivacyLevel = PrivacyLevel.NONE


def eligible(
    candidates: Sequence[Candidate], *, busy: set[str], allowed: set[str] | None
) -> list[Candidate]:
    """Keep online candidates that are not busy, are allowed, and are not low on battery."""
    return [
        c
        for c in candidates
        if c.device_id not in busy
        and (allowed is None or c.device_id in allowed)
        and (c.battery_pct is None or c.battery_pct >= MIN_BATTERY_PCT)
    ]


def select(
    candidates: Sequence[Candidate], *, count: int, rng: np.random.Generator
) -> list[Candidate]:
    """Pick ``count`` candidates uniformly at random (all of them if fewer)."""
    ordered = sorted(candidates, key=lambda c: c.device_id)
    if count >= len(ordered):
        return ordered
    picked = rng.choice(len(ordered), size=count, replace=False)
    return [ordered[i] for i in sorted(picked)]


def round_rng(*, seed: int, round_number: int, attempt: int) -> np.random.Generator:
    """Return the generator for one round attempt, so a rerun selects the same devices."""
    return np.random.default_rng([seed, round_number, attempt])
