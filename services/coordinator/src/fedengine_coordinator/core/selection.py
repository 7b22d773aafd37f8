"""Device selection for a round: eligible, not busy, battery-aware, reproducible."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcommon.constraints import MAX_DEVICES_PER_ROUND
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


def asked(devices_per_round: int, over_selection: float) -> int:
    """How many devices a round asks: ``devices_per_round`` times ``over_selection``, rounded
    up, within the bound on a round's participants."""
    return min(MAX_DEVICES_PER_ROUND, math.ceil(devices_per_round * over_selection - 1e-9))


def round_rng(*, seed: int, round_number: int, attempt: int) -> np.random.Generator:
    """Return the generator for one round attempt, so a rerun selects the same devices."""
    return np.random.default_rng([seed, round_number, attempt])


@dataclass(frozen=True)
class WaitingTask:
    """Another running task that waits for devices, and has waited longer than the one
    deciding: what it may use and how many it needs."""

    allowed: frozenset[str] | None
    min_devices: int


def yields_to(
    pool: Sequence[Candidate], waiting: Sequence[WaitingTask], candidates: Sequence[Candidate]
) -> int:
    """How many of the tasks that waited longer would take devices from ``pool``: each that
    could use one of them and could open a round once devices are free (enough of the online
    devices are allowed to it). Tasks queue first come, first served, so that a task that
    just finished a round does not take its devices straight back while others wait (ten tasks
    on ten devices: eight had failed with too_few_devices). A task that could not open a round
    even with every device free (too few allowed, online and charged) is not yielded to."""
    ids = {c.device_id for c in pool}
    count = 0
    for other in waiting:
        usable = ids if other.allowed is None else ids & other.allowed
        if not usable:
            continue
        allowed = None if other.allowed is None else set(other.allowed)
        # Devices it could have once free: online, allowed to it, charged enough.
        if len(eligible(candidates, busy=set(), allowed=allowed)) >= other.min_devices:
            count += 1
    return count
