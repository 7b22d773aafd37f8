"""The ids this gateway process issued lately, so that a read right after a create can wait.

The coordinator projects a task some milliseconds after the gateway published its creation;
a client that starts the task at once would get 404 in between. Only ids this process issued
(and the broker acknowledged) are worth waiting for: any other id that is not in the projection
is unknown, and gets 404 at once. The record is bounded in count and in age, so a burst of
creations can never grow it without limit; it holds nothing that cannot be lost (a restarted
gateway answers 404 at once, as before).
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID

# Long enough for any projection lag short of an outage; past it a missing id is unknown.
DEFAULT_TTL_S = 120.0
DEFAULT_MAX_IDS = 10_000


class IssuedIds:
    """A bounded, expiring record of issued ids; the caller passes the clock (monotonic s)."""

    def __init__(self, *, ttl_s: float = DEFAULT_TTL_S, max_ids: int = DEFAULT_MAX_IDS) -> None:
        if ttl_s <= 0 or max_ids <= 0:
            raise ValueError("ttl_s and max_ids must be positive")
        self._ttl_s = ttl_s
        self._max_ids = max_ids
        # id -> when it expires; insertion order is expiry order (one TTL for all).
        self._expiry: OrderedDict[UUID, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, issued: UUID, *, now: float) -> None:
        """Record ``issued``; the oldest ids go first when the record is full."""
        self._forget_expired(now)
        self._expiry.pop(issued, None)
        self._expiry[issued] = now + self._ttl_s
        while len(self._expiry) > self._max_ids:
            self._expiry.popitem(last=False)

    def pending(self, candidate: UUID, *, now: float) -> bool:
        """Return whether ``candidate`` was issued here and its projection is worth waiting for."""
        self._forget_expired(now)
        return candidate in self._expiry

    def discard(self, seen: UUID) -> None:
        """Forget ``seen`` (its projection exists): later reads need not wait for it."""
        self._expiry.pop(seen, None)

    def _forget_expired(self, now: float) -> None:
        while self._expiry:
            oldest, expires = next(iter(self._expiry.items()))
            if expires > now:
                return
            del self._expiry[oldest]
