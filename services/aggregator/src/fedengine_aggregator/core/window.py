"""The open-round window: what the aggregator holds in memory between round.opened and result.

Pure bookkeeping with explicit times passed in, so deadlines are testable without a clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from fedcommon.arrays import NDArrays
from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.messages.v1 import RoundAggregated, RoundFailed, RoundOpened, UpdateMetrics
from fedengine_aggregator.core.fedavg import WeightedUpdate

RoundResult = RoundAggregated | RoundFailed


class Outcome(StrEnum):
    WAIT = "wait"
    AGGREGATE = "aggregate"
    FAIL = "fail"


@dataclass
class Accepted:
    num_examples: int
    arrays: NDArrays
    metrics: UpdateMetrics
    size_bytes: int
    message_id: UUID | None = None


@dataclass
class OpenRound:
    opened: RoundOpened
    partition: int
    first_offset: int
    accepted: dict[str, Accepted] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    # When this aggregator first read the round: bounds how long a round (and with it the
    # offsets it holds back) can stay open, whatever deadline its definition claims.
    received_at: datetime | None = None
    _rejected_ids: set[UUID] = field(default_factory=set)
    # A close under way (guards against a concurrent one).
    closing: bool = False
    # The result, fixed once the close began, and whether it is on the log: a close that met
    # an outage is retried with this same message.
    result: RoundResult | None = None
    published: bool = False

    @property
    def finishing(self) -> bool:
        """Whether the round takes no more updates (its close has begun)."""
        return self.closing or self.result is not None

    @property
    def round_id(self) -> UUID:
        if self.opened.round_id is None:
            raise ValueError("OpenRound: round.opened carries no round_id")
        return self.opened.round_id

    def outcome(self, now: datetime) -> Outcome:
        """Decide whether the round can close now."""
        if self.closing:
            return Outcome.WAIT
        if self.result is not None:
            return Outcome.AGGREGATE if isinstance(self.result, RoundAggregated) else Outcome.FAIL
        if len(self.accepted) == len(self.opened.participants):
            return Outcome.AGGREGATE
        if now >= self.deadline:
            if len(self.accepted) >= self.opened.min_updates:
                return Outcome.AGGREGATE
            return Outcome.FAIL
        return Outcome.WAIT

    def weighted_updates(self) -> list[WeightedUpdate]:
        return [WeightedUpdate(a.num_examples, a.arrays) for a in self.accepted.values()]

    @property
    def deadline(self) -> datetime:
        if self.received_at is None:
            return self.opened.deadline
        return min(self.opened.deadline, self.received_at + timedelta(seconds=MAX_TIMEOUT_S))

    def count_rejection(self, message_id: UUID, reason: str) -> None:
        """Count a rejection once per message (a redelivered one is not a second offence)."""
        if message_id not in self._rejected_ids:
            self._rejected_ids.add(message_id)
            self.rejected[reason] += 1

    def redelivered(self, device_id: str, message_id: UUID) -> bool:
        """Whether ``message_id`` is the update already accepted from ``device_id``."""
        accepted = self.accepted.get(device_id)
        return accepted is not None and accepted.message_id == message_id

    def bytes_up(self) -> int:
        return sum(a.size_bytes for a in self.accepted.values())

    def dropped(self) -> list[str]:
        return [p.device_id for p in self.opened.participants if p.device_id not in self.accepted]

    def mean_train_loss(self) -> float:
        total = sum(a.num_examples for a in self.accepted.values())
        if not total:
            return float("nan")
        return sum(a.metrics.train_loss * a.num_examples for a in self.accepted.values()) / total


def safe_commit_offset(open_rounds: list[OpenRound], *, partition: int, next_offset: int) -> int:
    """Return the offset to commit on ``partition``: never past a record an open round needs."""
    needed = [r.first_offset for r in open_rounds if r.partition == partition]
    return min([next_offset, *needed])
