"""Capped exponential backoff, for services and devices alike (no service dependency)."""

from __future__ import annotations


class Backoff:
    """Capped exponential backoff: ``first``, doubling, at most ``cap`` seconds."""

    def __init__(self, *, first: float = 0.2, cap: float = 10.0) -> None:
        if first <= 0 or cap < first:
            raise ValueError("Backoff: need 0 < first <= cap")
        self.first = first
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        delay: float = min(self.first * 2.0**self.failures, self.cap)
        self.failures = min(self.failures + 1, 32)
        return delay

    def reset(self) -> None:
        self.failures = 0
