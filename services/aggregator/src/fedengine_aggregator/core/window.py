"""The open-round window: what the aggregator holds in memory between round.opened and result.

Pure bookkeeping with explicit times passed in, so deadlines are testable without a clock. A
round is a sequence of stages (:mod:`.stages`); the update exchange (:mod:`.exchange`) is the
one every round has, and today's only one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from fedcommon.messages.v1 import RoundAggregated, RoundFailed, RoundOpened
from fedengine_aggregator.core.offsets import Holds
from fedengine_aggregator.core.protocol import Outgoing, RoundProtocol
from fedengine_aggregator.core.stages import UPDATES_STAGE, Progress, RoundStages, Stage, StageSpec

RoundResult = RoundAggregated | RoundFailed


@dataclass(frozen=True)
class StageStart:
    """A later stage that began: what it sends, and the checkpoint stored with it, in one
    transaction. ``position`` is the stage's place in the round's plan (1 = the first).
    Fixed once built: a store that met an outage is retried with these same bytes, never
    built again."""

    position: int
    stage_name: str
    started_at: datetime
    expected: list[str]
    checkpoint: bytes | None
    outgoing: list[Outgoing]


class Outcome(StrEnum):
    WAIT = "wait"
    NEXT = "next"  # a stage ended and the next began: hand in its held records, then ask again
    AGGREGATE = "aggregate"
    FAIL = "fail"


@dataclass
class OpenRound:
    """One open round: its stages, its updates so far, and what it keeps on the log.

    ``stages`` holds records that came before their stage as ``Any``: the shell decides
    what it keeps of them (the message and where it lay).
    """

    opened: RoundOpened
    stages: RoundStages[Any]
    # The round's protocol (:mod:`.protocol`): its records, accumulator and result.
    exchange: RoundProtocol
    holds: Holds = field(default_factory=Holds)
    rejected: Counter[str] = field(default_factory=Counter)
    _rejected_ids: set[UUID] = field(default_factory=set)
    # A close under way (guards against a concurrent one).
    closing: bool = False
    # The result, fixed once the close began: a close that met an outage is retried with this
    # same message (stored in the outbox with the round's close, never built twice).
    result: RoundResult | None = None
    # A later stage that began but is not stored yet (an outage): stored first.
    unsent: StageStart | None = None

    @classmethod
    def begin(
        cls,
        opened: RoundOpened,
        plan: list[StageSpec],
        exchange: RoundProtocol,
        *,
        topic: str,
        partition: int,
        offset: int,
    ) -> OpenRound:
        """Open the round read at ``offset`` of ``topic``/``partition``, holding that record."""
        state = cls(opened, RoundStages(plan), exchange)
        state.holds.hold(topic, partition, offset)
        return state

    @property
    def finishing(self) -> bool:
        """Whether the round takes no more records (its close has begun)."""
        return self.closing or self.result is not None

    @property
    def round_id(self) -> UUID:
        if self.opened.round_id is None:
            raise ValueError("OpenRound: round.opened carries no round_id")
        return self.opened.round_id

    @property
    def updates(self) -> Stage:
        """The update exchange stage (``ValueError`` before the round has reached it)."""
        stage = self.stages.stage(UPDATES_STAGE)
        if stage is None:
            raise ValueError(f"round {self.round_id}: the update exchange has not begun")
        return stage

    def outcome(self, now: datetime) -> Outcome:
        """Take one step through the stages; say whether the round can close now."""
        if self.closing:
            return Outcome.WAIT
        if self.result is not None:
            return Outcome.AGGREGATE if isinstance(self.result, RoundAggregated) else Outcome.FAIL
        progress = self.stages.advance(now)
        return {
            Progress.WAIT: Outcome.WAIT,
            Progress.NEXT: Outcome.NEXT,
            Progress.COMPLETE: Outcome.AGGREGATE,
            Progress.FAIL: Outcome.FAIL,
        }[progress]

    def count_rejection(self, message_id: UUID, reason: str) -> None:
        """Count a rejection once per message (a redelivered one is not a second offence)."""
        if message_id not in self._rejected_ids:
            self._rejected_ids.add(message_id)
            self.rejected[reason] += 1

    def participants(self) -> list[str]:
        """The devices whose update counted (a secure round's: whose masked input did)."""
        return self.exchange.contributors(self.stages)

    def dropped(self) -> list[str]:
        """The round's participants whose update did not count, in the order they were chosen."""
        counted = set(self.participants())
        return [p.device_id for p in self.opened.participants if p.device_id not in counted]
