"""Poll the broker slowly while nothing arrives, quickly while records flow.

A consumer keeps one fetch request outstanding per broker; the broker holds it up to
fetch.max.wait.ms when there is nothing to return. The round path pays that wait per hop
(design.md, "Latency"), so it is a few ms, and then an idle consumer asks the broker 200
times a second: measured, an idle stack spent about half a core on it, most of it in the
broker (docs/benchmarks.md, "Idle cost"). After ``idle_after_s`` without a record the wait
goes up to ``idle_ms``; the first record brings it back down. A broker that answers a fetch
as soon as data arrives (Kafka does) makes the first hop after idleness no slower; one that
holds the request its full wait makes it up to ``idle_ms`` slower, once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

logger = logging.getLogger(__name__)


def set_fetch_max_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> bool:
    """Change a started consumer's fetch wait; False where this aiokafka has no such knob.

    aiokafka (0.14) has no public setter: its Fetcher reads ``_fetch_max_wait_ms`` each time
    it builds a FetchRequest. tests/unit/fedcommon/test_fetch_pacing.py fails if that
    changes; here a missing attribute only leaves the wait as it was.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    fetcher._fetch_max_wait_ms = wait_ms
    return True


@dataclass
class FetchPacing:
    """Which fetch wait a consumer should have, from when it last got records."""

    busy_ms: int
    idle_ms: int
    idle_after_s: float
    _last_records_at: float | None = field(default=None, init=False)
    _idle: bool = field(default=False, init=False)

    def observe(self, got_records: bool, now: float) -> int | None:
        """Note one poll's outcome; return the wait to switch to, or None to keep the current."""
        if got_records or self._last_records_at is None:
            self._last_records_at = now
            if got_records and self._idle:
                self._idle = False
                return self.busy_ms
            return None
        if not self._idle and now - self._last_records_at >= self.idle_after_s:
            self._idle = True
            return self.idle_ms
        return None

    def handled(self, now: float) -> None:
        """A batch was just handled: the quiet spell counts from here, not from its arrival
        (a device training for longer than ``idle_after_s`` is busy, not idle)."""
        self._last_records_at = now

    def apply(self, consumer: AIOKafkaConsumer, got_records: bool, now: float) -> None:
        wait_ms = self.observe(got_records, now)
        if wait_ms is not None and not set_fetch_max_wait(consumer, wait_ms):
            logger.warning("this aiokafka cannot change the fetch wait; it stays as it was")
