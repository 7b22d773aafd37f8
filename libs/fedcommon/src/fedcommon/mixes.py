"""Mixes of named shares, as operators write them: ``"mobile:0.6,iot:0.4"`` (a simulated
fleet's device types, privacy levels or failure kinds). Parsed by the CLI, to refuse a bad one
before anything starts, and by the simulator, which acts on it."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)


def parse_mix(text: str, choices: type[S], what: str) -> dict[S, float]:
    """Parse ``"mobile:0.6,iot:0.4"`` into shares that sum to 1 (refusing unknown names,
    negative or non-finite shares, and a mix that sums to 0, with the reason)."""
    shares: dict[S, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition(":")
        try:
            key = choices(name.strip())
        except ValueError:
            raise ValueError(f"{what}: unknown name {name.strip()!r} in {text!r}") from None
        try:
            share = float(value) if sep else 1.0
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not a number in {text!r}") from None
        if not math.isfinite(share) or share < 0:
            raise ValueError(f"{what}: share {value!r} must be a finite number >= 0")
        shares[key] = shares.get(key, 0.0) + share
    total = sum(shares.values())
    if total <= 0:
        raise ValueError(f"{what}: {text!r} gives no share to anything")
    return {key: share / total for key, share in shares.items() if share > 0}
