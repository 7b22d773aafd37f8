"""The aggregator's shell: keeps open rounds in memory, the Kafka log is their buffer.

Offsets on fed.updates are committed per partition only up to the round.opened record of the
oldest round still open there, so a restarted aggregator re-reads every open round whole.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import Counter, Histogram

from fedcommon import arrays, background, kafka, topics
from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.errors import InvalidMessage
from fedcommon.failures import describe
from fedcommon.messages.v1 import (
    AnyMessage,
    RoundAggregated,
    RoundFailed,
    RoundOpened,
    UpdateSubmitted,
)
from fedcommon.service import ServiceContext, ServiceParts
from fedengine_aggregator import store
from fedengine_aggregator.core import fedavg
from fedengine_aggregator.core.validation import Rejected, RejectReason, validate_update
from fedengine_aggregator.core.window import (
    Accepted,
    OpenRound,
    Outcome,
    RoundResult,
    safe_commit_offset,
)
from fedengine_aggregator.settings import Settings

logger = logging.getLogger(__name__)

PRODUCER = "aggregator"
UPDATES_ACCEPTED = Counter("fedengine_updates_accepted_total", "Updates accepted")
UPDATES_REJECTED = Counter("fedengine_updates_rejected_total", "Updates rejected", ["reason"])
ROUNDS_CLOSED = Counter("fedengine_rounds_closed_total", "Rounds closed", ["outcome"])
BYTES_UP = Counter("fedengine_update_bytes_total", "Bytes of accepted updates")
ROUND_SECONDS = Histogram(
    "fedengine_round_aggregation_seconds",
    "round.opened to result",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)


class Aggregator:
    """Open rounds by round_id, plus the ids of rounds already closed."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.open: dict[UUID, OpenRound] = {}
        self.closed: set[UUID] = set()

    async def handle(self, message: AnyMessage, record: ConsumerRecord) -> None:
        if isinstance(message, RoundOpened):
            await self._on_opened(message, record)
        elif isinstance(message, UpdateSubmitted):
            await self._on_update(message, record)
        else:
            logger.debug("ignoring %s", message.type)

    async def _on_opened(self, message: RoundOpened, record: ConsumerRecord) -> None:
        if message.round_id is None:
            raise InvalidMessage("round.opened without round_id")
        if message.round_id in self.open or message.round_id in self.closed:
            return
        async with self.context.pool.connection() as conn:
            if await store.is_closed(conn, message.round_id):
                self.closed.add(message.round_id)
                return
        self.open[message.round_id] = OpenRound(
            message, record.partition, record.offset, received_at=datetime.now(UTC)
        )
        logger.info(
            "round %d (attempt %d) of task %s open: %d participants, min %d",
            message.round_number,
            message.attempt,
            message.task_id,
            len(message.participants),
            message.min_updates,
        )

    async def _on_update(self, message: UpdateSubmitted, record: ConsumerRecord) -> None:
        """Validate, record the verdict, then count it in memory.

        The database write comes first: if it meets an outage, the consume loop retries this
        record, and nothing in memory has changed yet, so the retry sees the same round.
        """
        round_id = message.round_id
        state = self.open.get(round_id) if round_id is not None else None
        if state is not None and state.redelivered(message.device_id, message.message_id):
            # The very message already counted, read again after a rebalance or a restart: at
            # least once delivery, not a device sending twice.
            logger.debug("redelivered update %s skipped", message.message_id)
            return
        try:
            if (round_id is not None and round_id in self.closed) or (state and state.finishing):
                raise Rejected(RejectReason.LATE, "round already closed")
            if state is None:
                raise Rejected(RejectReason.UNKNOWN_ROUND, f"no open round {round_id}")
            decoded = validate_update(
                state.opened, message, already_accepted=message.device_id in state.accepted
            )
        except Rejected as rejected:
            async with self.context.pool.connection() as conn:
                await store.record_result(
                    conn,
                    message,
                    partition=record.partition,
                    offset=record.offset,
                    status="rejected",
                    reason=rejected.reason.value,
                    detail=rejected.detail,
                )
            if state is not None and not state.finishing:
                state.count_rejection(message.message_id, rejected.reason.value)
            UPDATES_REJECTED.labels(rejected.reason.value).inc()
            logger.warning(
                "rejected update from %s for task %s round %d: %s",
                message.device_id,
                message.task_id,
                message.round_number,
                rejected,
                extra={"client_id": message.device_id, "round_id": round_id},
            )
            return
        async with self.context.pool.connection() as conn:
            await store.record_result(
                conn, message, partition=record.partition, offset=record.offset, status="accepted"
            )
        state.accepted[message.device_id] = Accepted(
            message.num_examples, decoded, message.metrics, len(message.update), message.message_id
        )
        UPDATES_ACCEPTED.inc()
        # The update is in; closing the round is the deadline loop's job too, so an outage
        # while closing is left to it instead of re-handling (and refusing) this update.
        await background.run_step("aggregator.close", lambda: self.close_due(datetime.now(UTC)))

    async def close_due(self, now: datetime) -> None:
        """Close every round whose updates are all in or whose deadline has passed.

        An error closing one round never keeps the others from closing; the first is raised
        afterwards (for the caller's error policy), the others are logged here.
        """
        errors: list[Exception] = []
        for state in list(self.open.values()):
            outcome = state.outcome(now)
            if outcome == Outcome.WAIT:
                continue
            try:
                await self._close(state, outcome, now)
            except Exception as exc:
                if errors:
                    logger.warning("closing round %s failed too: %s", state.round_id, exc)
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _close(self, state: OpenRound, outcome: Outcome, now: datetime) -> None:
        """Build the round's result once, publish it once, then record the round closed.

        An outage anywhere in here leaves the round open with its result fixed: the next try
        (the deadline loop) publishes that same message, or only records it. ``closing`` keeps
        a concurrent close out while one is under way.
        """
        state.closing = True
        try:
            if state.result is None:
                state.result = self._result(state, outcome, now)
            # A result that could not be built is a failure, whatever was hoped for.
            outcome = (
                Outcome.AGGREGATE if isinstance(state.result, RoundAggregated) else Outcome.FAIL
            )
            if not state.published:
                # Publish first: if we crash before recording the round closed, the round is
                # re-read and re-published, and the coordinator ignores the second copy.
                await kafka.publish(
                    self.context.producer,
                    self.context.kafka,
                    topics.ROUNDS,
                    key=str(state.opened.task_id),
                    message=state.result,
                )
                state.published = True
            async with self.context.pool.connection() as conn:
                await store.close_round(
                    conn,
                    round_id=state.round_id,
                    task_id=state.opened.task_id,
                    round_number=state.opened.round_number,
                    attempt=state.opened.attempt,
                    outcome=outcome.value,
                    participants=sorted(state.accepted),
                    dropped=state.dropped(),
                    rejected=state.result.rejected,
                    bytes_up=state.bytes_up(),
                )
        finally:
            state.closing = False
        self._closed(state, outcome, now)

    def _result(self, state: OpenRound, outcome: Outcome, now: datetime) -> RoundResult:
        opened = state.opened
        if outcome == Outcome.AGGREGATE:
            try:
                delta = fedavg.aggregate(state.weighted_updates())
                return RoundAggregated(
                    **_about(state),
                    model_version=opened.model_version,
                    delta=arrays.to_bytes(list(delta)),
                    participants=sorted(state.accepted),
                    dropped=state.dropped(),
                    rejected=dict(state.rejected),
                    num_examples=sum(a.num_examples for a in state.accepted.values()),
                    train_loss=state.mean_train_loss(),
                    bytes_up=state.bytes_up(),
                    duration_s=min(max(0.0, (now - opened.sent_at).total_seconds()), MAX_TIMEOUT_S),
                )
            except (ValueError, ArithmeticError) as exc:  # ValidationError is a ValueError
                # Retrying would build the same thing: the round fails, with the reason.
                logger.error("round %s cannot be aggregated: %s", state.round_id, describe(exc))
                return self._failed(state, f"aggregation failed: {describe(exc)}"[:500])
        return self._failed(
            state, f"{len(state.accepted)} of {opened.min_updates} updates by the deadline"
        )

    def _failed(self, state: OpenRound, reason: str) -> RoundFailed:
        return RoundFailed(
            **_about(state),
            reason=reason,
            received=len(state.accepted),
            rejected=dict(state.rejected),
        )

    def _closed(self, state: OpenRound, outcome: Outcome, now: datetime) -> None:
        opened = state.opened
        bytes_up = state.bytes_up()
        del self.open[state.round_id]
        self.closed.add(state.round_id)
        ROUNDS_CLOSED.labels(outcome.value).inc()
        BYTES_UP.inc(bytes_up)
        ROUND_SECONDS.observe(max(0.0, (now - opened.sent_at).total_seconds()))
        logger.info(
            "round %d of task %s %s: %d accepted, rejected %s",
            opened.round_number,
            opened.task_id,
            outcome.value,
            len(state.accepted),
            dict(state.rejected),
        )

    def commit_position(self, tp: TopicPartition, next_offset: int) -> int:
        return safe_commit_offset(
            list(self.open.values()), partition=tp.partition, next_offset=next_offset
        )


def _about(state: OpenRound) -> dict[str, Any]:
    """The fields every result of ``state``'s round carries."""
    opened = state.opened
    return {
        "producer": PRODUCER,
        "round_id": state.round_id,
        "correlation_id": opened.message_id,
        "task_id": opened.task_id,
        "round_number": opened.round_number,
        "attempt": opened.attempt,
    }


def build(context: ServiceContext, settings: Settings) -> ServiceParts:
    aggregator = Aggregator(context)

    async def deadlines() -> None:
        await background.every(
            "aggregator.deadlines",
            settings.deadline_check_s,
            lambda: aggregator.close_due(datetime.now(UTC)),
        )

    return ServiceParts(
        handle=aggregator.handle,
        background=(deadlines,),
        commit_position=aggregator.commit_position,
    )
