"""The aggregator's shell: keeps open rounds in memory, the Kafka log is their buffer.

A round is a sequence of stages (``core.stages``); today's is the update exchange alone. Each
accepted update is folded into the round's accumulator as it arrives, and offsets are
committed per topic and partition only up to the first record an open round (or a record
parked before its round opened) still needs, so a restarted aggregator re-reads every topic
its open rounds use, from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

import psycopg
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import Counter, Histogram

from fedcommon import background, outbox, signing, topics
from fedcommon.errors import InvalidMessage, ProtocolViolation
from fedcommon.failures import describe
from fedcommon.messages.v1 import (
    AnyMessage,
    RoundAggregated,
    RoundOpened,
    SecAggDelivered,
    SecAggSubmitted,
    UpdateSubmitted,
)
from fedcommon.service import ServiceContext, ServiceParts
from fedengine_aggregator import store
from fedengine_aggregator.core import dp_fedavg, results, secure_exchange
from fedengine_aggregator.core.catalog import Params
from fedengine_aggregator.core.exchange import (
    UPDATES_STAGE,
    Accepted,
    UpdateExchange,
    plain_plan,
    round_accumulator,
)
from fedengine_aggregator.core.offsets import Unplaced, safe_commit_offset
from fedengine_aggregator.core.secure_exchange import STAGE_NAMES, STAGE_OF_NAME, SecureExchange
from fedengine_aggregator.core.stages import Placement
from fedengine_aggregator.core.stages import Stage as RoundStage
from fedengine_aggregator.core.validation import Rejected, RejectReason, validate_update
from fedengine_aggregator.core.window import OpenRound, Outcome, RoundResult, StageStart
from fedengine_aggregator.settings import Settings
from fedprivacy import mechanisms
from fedprivacy.secagg import InvalidSecAggMessage, Stage, ThresholdNotMet

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

# The topics round.opened comes on: a stage record there follows its round's opening in the
# same partition (both are keyed by task), so one for an unknown round is never parked.
OPENING_TOPICS = frozenset({topics.UPDATES})

# A stage's record as the shell keeps it while it waits for its stage or its round.
StageRecord = tuple[str, AnyMessage, ConsumerRecord]


def stage_of(message: AnyMessage) -> str | None:
    """Which stage ``message`` is a record of (None: it is no stage's). A protocol that adds
    stages names them here and adds its handlers to ``Aggregator.stage_handlers``."""
    if isinstance(message, UpdateSubmitted):
        return UPDATES_STAGE
    if isinstance(message, SecAggSubmitted):
        return STAGE_NAMES[Stage(message.stage)].value
    return None


StageHandler = Callable[[AnyMessage, ConsumerRecord, OpenRound | None, Placement], Awaitable[bool]]


def strategy_for(opened: RoundOpened) -> tuple[str, Params]:
    """The strategy a round aggregates with, as its round.opened names it (FedAvg for one from
    before strategies: the field's default). The aggregator runs the rule alone; a server
    optimizer is the coordinator's, FedProx's mu the devices'."""
    return opened.strategy.name, opened.strategy.params.model_dump(exclude_none=True)


class Aggregator:
    """Open rounds by round_id, the ids of rounds already closed, and records parked before
    their round opened."""

    def __init__(self, context: ServiceContext, settings: Settings) -> None:
        self.context = context
        self.open: dict[UUID, OpenRound] = {}
        self.closed: set[UUID] = set()
        self.unplaced: Unplaced[StageRecord] = Unplaced(
            max_items=settings.unplaced_max_records, max_age_s=settings.unplaced_max_age_s
        )
        # Each stage's handler: it validates a record, records the verdict and counts the
        # sender (``Stage.survive``), or refuses it; True if it counted.
        self.stage_handlers: dict[str, StageHandler] = {UPDATES_STAGE: self._on_update}
        for name in STAGE_NAMES.values():
            self.stage_handlers[name.value] = self._on_secure

    async def handle(self, message: AnyMessage, record: ConsumerRecord) -> None:
        if isinstance(message, RoundOpened):
            await self._on_opened(message, record)
        elif (stage_name := stage_of(message)) is not None:
            if await self._on_record(stage_name, message, record):
                # The record counted; closing the round (or moving it on) is the deadline
                # loop's job too, so an outage while closing is left to it instead of
                # re-handling (and refusing) this record.
                await background.run_step(
                    "aggregator.close", lambda: self.close_due(datetime.now(UTC))
                )
        else:
            logger.debug("ignoring %s", message.type)

    async def _on_opened(self, message: RoundOpened, record: ConsumerRecord) -> None:
        if message.round_id is None:
            raise InvalidMessage("round.opened without round_id")
        if message.round_id in self.closed:
            return
        if message.round_id not in self.open:
            await self._open(message, record)
        if message.round_id in self.open:
            await self._take_unplaced(message.round_id)

    async def _open(self, message: RoundOpened, record: ConsumerRecord) -> None:
        if message.round_id is None:
            raise InvalidMessage("round.opened without round_id")
        async with self.context.pool.connection() as conn:
            if await store.is_closed(conn, message.round_id):
                self.closed.add(message.round_id)
                return
        strategy, _ = strategy_for(message)
        try:
            accumulator = round_accumulator(message)
        except ValueError as exc:
            raise InvalidMessage(f"round {message.round_id}: {describe(exc)}") from exc
        now = datetime.now(UTC)
        # A DP round whose draw came out empty releases pure noise, as without secure
        # aggregation: there is nobody's update to hide.
        wants_secure = message.secure_aggregation is not None and bool(
            message.participants or message.privacy is None
        )
        reason = dp_fedavg.refusal(message) or (
            secure_exchange.refusal(message) if wants_secure else None
        )
        secure: SecureExchange | None = None
        if wants_secure and reason is None:
            try:
                secure = SecureExchange.start(message)
            except ValueError as exc:
                reason = f"secure aggregation: {describe(exc)}"
        plan = (
            secure_exchange.secure_plan(message, received_at=now)
            if secure is not None
            else plain_plan(message, received_at=now)
        )
        state = OpenRound.begin(
            message,
            plan,
            UpdateExchange(accumulator),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            secure=secure,
        )
        if secure is not None:
            await self._resume(state, secure)
        self.open[message.round_id] = state
        logger.info(
            "round %d (attempt %d) of task %s open: %d participants, min %d, %s%s",
            message.round_number,
            message.attempt,
            message.task_id,
            len(message.participants),
            message.min_updates,
            strategy,
            " with central DP" if message.privacy is not None else "",
        )
        if reason is not None:
            # Fails at once, with the reason, through the same close as any other round; an
            # outage while closing leaves it to the deadline loop, with this result fixed.
            logger.warning("round %s refused: %s", message.round_id, reason)
            state.result = results.failed(state, reason, producer=PRODUCER)
            await background.run_step("aggregator.close", lambda: self.close_due(now))

    async def _take_unplaced(self, round_id: UUID) -> None:
        """Hand the round the records of it read (on other topics) before its opening, in the
        order they came; they count as if they had come after it. What an outage interrupts
        goes back, for the retry of the round.opened record."""
        parked = self.unplaced.take(round_id)
        for index, item in enumerate(parked):
            stage_name, message, record = item.item
            try:
                await self._on_record(stage_name, message, record, may_park=False)
            except Exception:
                self.unplaced.put_back(round_id, parked[index:])
                raise

    async def _resume(self, state: OpenRound, secure: SecureExchange) -> None:
        """Put a secure round read again after a restart back in the stage it had begun
        (its checkpoint), so that no stage is decided twice and nothing sent is sent again
        with other bytes. A round that had not passed its first stage starts afresh."""
        async with self.context.pool.connection() as conn:
            checkpoint = await store.latest_checkpoint(conn, state.round_id)
        if checkpoint is None:
            return
        stage = Stage(checkpoint.stage)
        try:
            secure.restore(stage, checkpoint.server_state)
        except InvalidSecAggMessage as exc:
            raise InvalidMessage(f"round {state.round_id}: checkpoint: {exc}") from exc
        by_id = {p.device_id: p for p in state.opened.participants}
        state.stages.resume(
            STAGE_NAMES[stage].value,
            expected={d: by_id[d] for d in checkpoint.expected if d in by_id},
            started_at=checkpoint.started_at,
        )
        logger.info("round %s resumed at stage %s", state.round_id, STAGE_NAMES[stage].value)

    async def _on_record(
        self,
        stage_name: str,
        message: AnyMessage,
        record: ConsumerRecord,
        *,
        may_park: bool = True,
    ) -> bool:
        """Route a stage's record: to its stage if under way, held for a later stage, parked
        until its round opens, or to its stage's handler to be refused. True if it counted."""
        round_id = message.round_id
        state = self.open.get(round_id) if round_id is not None else None
        if state is None:
            base = topics.base_name(self.context.kafka.topic_prefix, record.topic)
            if (
                may_park
                and round_id is not None
                and round_id not in self.closed
                and base is not None
                and base not in OPENING_TOPICS
                and self.unplaced.park(
                    round_id,
                    (stage_name, message, record),
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    now=datetime.now(UTC),
                )
            ):
                return False
            return await self.stage_handlers[stage_name](message, record, None, Placement.UNKNOWN)
        placement = state.stages.place(stage_name)
        if not state.finishing:
            # Whatever becomes of it, a record of an open round stays on the log until the
            # round is closed: a restart re-reads it, and comes to the same verdict.
            state.holds.hold(record.topic, record.partition, record.offset)
            if placement == Placement.EARLY:
                state.stages.hold_early(stage_name, (stage_name, message, record))
                return False
        return await self.stage_handlers[stage_name](message, record, state, placement)

    async def _on_update(
        self,
        message: AnyMessage,
        record: ConsumerRecord,
        state: OpenRound | None,
        placement: Placement,
    ) -> bool:
        """Validate, record the verdict, then fold the update into the round's accumulator.

        The database write comes first: if it meets an outage, the consume loop retries this
        record, and nothing in memory has changed yet, so the retry sees the same round.
        """
        if not isinstance(message, UpdateSubmitted):
            raise InvalidMessage(f"{message.type} is no update")
        round_id = message.round_id
        if state is not None and state.exchange.redelivered(message.device_id, message.message_id):
            # The very message already counted, read again after a rebalance or a restart: at
            # least once delivery, not a device sending twice.
            logger.debug("redelivered update %s skipped", message.message_id)
            return False
        try:
            if (
                (round_id is not None and round_id in self.closed)
                or (state is not None and state.finishing)
                or placement == Placement.LATE
            ):
                raise Rejected(RejectReason.LATE, "round already closed")
            if state is None:
                raise Rejected(RejectReason.UNKNOWN_ROUND, f"no open round {round_id}")
            if state.secure is not None:
                raise Rejected(
                    RejectReason.UNKNOWN_ROUND,
                    f"round {round_id} takes updates masked (secure aggregation), not in the clear",
                )
            stage = state.updates
            decoded = validate_update(
                state.opened,
                message,
                participant=stage.expects(message.device_id),
                already_accepted=stage.delivered(message.device_id),
            )
            try:
                prepared = state.exchange.prepare(decoded, message.num_examples)
            except ValueError as exc:
                raise Rejected(RejectReason.MALFORMED, describe(exc)) from exc
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
                    private=state is not None and state.opened.privacy is not None,
                )
            if state is not None and not state.finishing:
                state.count_rejection(message.message_id, rejected.reason.value)
            if state is None or state.opened.privacy is None:
                # A DP round's counts would show how many devices it drew: not counted.
                UPDATES_REJECTED.labels(rejected.reason.value).inc()
            logger.warning(
                "rejected update from %s for task %s round %d: %s",
                message.device_id,
                message.task_id,
                message.round_number,
                rejected,
                extra={"client_id": message.device_id, "round_id": round_id},
            )
            return False
        async with self.context.pool.connection() as conn:
            await store.record_result(
                conn,
                message,
                partition=record.partition,
                offset=record.offset,
                status="accepted",
                private=state.opened.privacy is not None,
            )
        state.exchange.accept(
            message.device_id,
            prepared,
            Accepted(
                message.num_examples, message.metrics, len(message.update), message.message_id
            ),
        )
        stage.survive(message.device_id)
        if state.opened.privacy is None:
            UPDATES_ACCEPTED.inc()  # (a DP round's count would show how many it drew)
        return True

    async def _on_secure(
        self,
        message: AnyMessage,
        record: ConsumerRecord,
        state: OpenRound | None,
        placement: Placement,
    ) -> bool:
        """Check a SecAgg+ stage message and hand it to the round's protocol state.

        The checks in order: the round (open, secure, this stage under way), the sender
        (expected in this stage: selected, and through the stages before), the size, the
        device's signature over task, round id, stage and payload (so a replay from another
        try or a relabelled message fails), a repeat, then the protocol's own checks. A
        refusal is recorded and counted; the round goes on.
        """
        if not isinstance(message, SecAggSubmitted):
            raise InvalidMessage(f"{message.type} is no secure aggregation message")
        stage = Stage(message.stage)
        secure = state.secure if state is not None else None
        if secure is not None:
            if secure.redelivered(stage, message.device_id, message.message_id):
                logger.debug("redelivered %s skipped", message.message_id)
                return False
            if placement == Placement.LATE and secure.decided_before_restart(stage):
                return False  # counted (or judged) before the restart: read again, not new
        try:
            round_id = message.round_id
            if (
                (round_id is not None and round_id in self.closed)
                or (state is not None and state.finishing)
                or placement == Placement.LATE
            ):
                raise Rejected(RejectReason.LATE, f"stage {STAGE_NAMES[stage]} is over")
            if state is None or secure is None:
                raise Rejected(RejectReason.UNKNOWN_ROUND, f"no open secure round {round_id}")
            if message.task_id != state.opened.task_id or (
                message.round_number != state.opened.round_number
            ):
                raise Rejected(RejectReason.UNKNOWN_ROUND, "task or round number does not match")
            current = state.stages.current
            participant = current.expects(message.device_id)
            if participant is None:
                raise Rejected(
                    RejectReason.NOT_SELECTED,
                    f"{message.device_id} is not expected in stage {STAGE_NAMES[stage]}",
                )
            limit = secure_exchange.max_payload(secure.config, stage)
            if len(message.payload) > limit:
                raise Rejected(RejectReason.TOO_LARGE, f"{len(message.payload)} bytes > {limit}")
            try:
                signing.verify(
                    public_key=participant.public_key,
                    signature=message.signature,
                    payload=signing.secagg_payload(
                        task_id=message.task_id,
                        round_id=state.round_id,
                        device_id=message.device_id,
                        round_number=message.round_number,
                        stage=message.stage,
                        payload=message.payload,
                    ),
                )
            except ProtocolViolation as exc:
                raise Rejected(RejectReason.BAD_SIGNATURE, str(exc)) from exc
            if current.delivered(message.device_id):
                raise Rejected(
                    RejectReason.DUPLICATE, f"{message.device_id} already sent this stage"
                )
            secure.accept(
                stage, message.device_id, message.payload, message.message_id, message.signature
            )
        except Rejected as rejected:
            private = state is not None and state.opened.privacy is not None
            async with self.context.pool.connection() as conn:
                await store.record_secagg_rejection(
                    conn,
                    message,
                    partition=record.partition,
                    offset=record.offset,
                    reason=rejected.reason.value,
                    detail=rejected.detail,
                    private=private,
                )
            if state is not None and not state.finishing:
                state.count_rejection(message.message_id, rejected.reason.value)
                if secure is not None:
                    secure.count_rejection(stage)
            if not private:
                UPDATES_REJECTED.labels(rejected.reason.value).inc()
            logger.warning(
                "rejected %s message from %s for task %s round %d: %s",
                STAGE_NAMES[stage],
                message.device_id,
                message.task_id,
                message.round_number,
                rejected,
                extra={"client_id": message.device_id, "round_id": message.round_id},
            )
            return False
        current.survive(message.device_id)
        return True

    async def close_due(self, now: datetime) -> None:
        """Move every open round on through its stages; close those whose last stage ended.

        Records parked too long for a round that never opened are refused first. An error
        with one round never keeps the others from going on; the first is raised afterwards
        (for the caller's error policy), the others are logged here.
        """
        errors: list[Exception] = []
        for stage_name, message, record in self.unplaced.expire(now):
            try:
                await self._on_record(stage_name, message, record, may_park=False)
            except Exception as exc:
                errors.append(exc)
        for state in list(self.open.values()):
            if state.round_id not in self.open:
                continue
            try:
                outcome = await self._step(state, now)
                if outcome != Outcome.WAIT:
                    await self._close(state, outcome, now)
            except Exception as exc:
                if errors:
                    logger.warning("closing round %s failed too: %s", state.round_id, exc)
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _step(self, state: OpenRound, now: datetime) -> Outcome:
        """Advance ``state`` as far as it goes now, handing each new stage its held records.

        A secure round's new stage first sends what it sends (``_begin_stage``), stored with
        its checkpoint before any record of it is handed in.
        """
        while True:
            if state.unsent is not None:
                await self._store_stage(state, state.unsent)
                state.unsent = None
            held = state.stages.take_early()
            for index, (stage_name, message, record) in enumerate(held):
                try:
                    await self._on_record(stage_name, message, record, may_park=False)
                except Exception:
                    state.stages.return_early(held[index:])
                    raise
            outcome = state.outcome(now)
            if outcome != Outcome.NEXT:
                return outcome
            logger.info("round %s: stage %s begins", state.round_id, state.stages.current.name)
            if state.secure is not None and not self._begin_stage(state, state.secure, now):
                return Outcome.FAIL

    def _begin_stage(self, state: OpenRound, secure: SecureExchange, now: datetime) -> bool:
        """Close the protocol's previous stage and fix what the new one sends (``unsent``);
        False when too few devices are left (the round fails closed, with the reason)."""
        current = state.stages.current
        stage = STAGE_OF_NAME[current.name]
        try:
            deliveries = secure.begin(stage)
        except ThresholdNotMet as exc:
            logger.warning("round %s fails closed: %s", state.round_id, exc)
            state.result = results.failed(state, str(exc)[:500], producer=PRODUCER)
            return False
        state.unsent = StageStart(
            stage=int(stage),
            stage_name=current.name,
            started_at=now,
            expected=list(current.expected),
            server_state=secure.checkpoint(),
            deliveries=deliveries,
        )
        return True

    async def _store_stage(self, state: OpenRound, start: StageStart) -> None:
        """Store a stage's start (checkpoint, its deliveries in the outbox, the previous
        stage's log row) in one transaction, once: a checkpoint already there means it was
        stored before (a commit whose answer was lost) and nothing is sent again."""
        secure = state.secure
        if secure is None:
            raise ValueError(f"round {state.round_id} is not secure")
        opened = state.opened
        previous = state.stages.stages[-2] if len(state.stages.stages) > 1 else None
        async with self.context.pool.connection() as conn, conn.transaction():
            stored = await store.save_checkpoint(
                conn,
                state.round_id,
                store.Checkpoint(start.stage, start.started_at, start.expected, start.server_state),
            )
            if not stored:
                return
            for delivery in start.deliveries:
                await outbox.enqueue(
                    conn,
                    schema=store.SCHEMA,
                    settings=self.context.kafka,
                    base=topics.DEVICE_COMMANDS,
                    key=delivery.device_id,
                    message=SecAggDelivered(
                        message_id=delivery.message_id,
                        producer=PRODUCER,
                        round_id=state.round_id,
                        correlation_id=opened.message_id,
                        sent_at=start.started_at,
                        task_id=opened.task_id,
                        device_id=delivery.device_id,
                        round_number=opened.round_number,
                        stage=delivery.stage.value,
                        payload=delivery.payload,
                    ),
                )
            if previous is not None:
                await self._log_stage(conn, state, previous, ended_at=start.started_at)
        self.context.relay.wake()

    async def _log_stage(
        self,
        conn: psycopg.AsyncConnection,
        state: OpenRound,
        stage: RoundStage,
        *,
        ended_at: datetime,
    ) -> None:
        secure = state.secure
        if secure is None:
            return
        number = STAGE_OF_NAME[stage.name]
        tally = secure.tallies[number]
        began = stage.started_at or state.opened.sent_at
        await store.log_stage(
            conn,
            round_id=state.round_id,
            task_id=state.opened.task_id,
            round_number=state.opened.round_number,
            attempt=state.opened.attempt,
            entry=store.StageLog(
                stage=int(number),
                stage_name=stage.name,
                expected=len(stage.expected),
                delivered=len(stage.survivors),
                rejected=tally.rejected,
                seconds=max(0.0, (ended_at - began).total_seconds()),
                bytes_up=tally.bytes_up,
                bytes_down=tally.bytes_down,
            ),
            private=state.opened.privacy is not None,
        )

    async def _close(self, state: OpenRound, outcome: Outcome, now: datetime) -> None:
        """Build the round's result once, then store it in the outbox in the transaction that
        records the round closed; the relay publishes it.

        Stored once: a crash before that commit released nothing (the result was only in
        memory), and after it the restarted aggregator finds the round closed and builds
        nothing, while the relay sends the stored bytes if they had not gone out. For a DP
        round a second build would be a second, differently noised release that the
        accountant never charged. An outage leaves the round open with its result fixed: the
        next try (the deadline loop) stores that same message. ``closing`` keeps a concurrent
        close out while one is under way.
        """
        state.closing = True
        try:
            if state.result is None:
                # Off the event loop: a robust rule over a large round takes seconds to minutes
                # (Krum is O(n²·params)), during which heartbeats, deadlines and other rounds
                # must go on. ``closing`` already refuses further records of this round.
                state.result = await asyncio.to_thread(self._result, state, outcome, now)
            # A result that could not be built is a failure, whatever was hoped for.
            outcome = (
                Outcome.AGGREGATE if isinstance(state.result, RoundAggregated) else Outcome.FAIL
            )
            async with self.context.pool.connection() as conn, conn.transaction():
                closed_now = await store.close_round(
                    conn,
                    round_id=state.round_id,
                    task_id=state.opened.task_id,
                    round_number=state.opened.round_number,
                    attempt=state.opened.attempt,
                    outcome=outcome.value,
                    participants=state.participants(),
                    dropped=state.dropped(),
                    rejected=dict(state.rejected),
                    bytes_up=(
                        state.secure.bytes_up()
                        if state.secure is not None
                        else state.exchange.bytes_up()
                    ),
                    private=state.opened.privacy is not None,
                )
                if closed_now and state.secure is not None:
                    begun = state.stages.stages
                    for stage, after in zip(begun, [*begun[1:], None], strict=True):
                        ended = after.started_at if after and after.started_at else now
                        await self._log_stage(conn, state, stage, ended_at=ended)
                    await store.drop_checkpoints(conn, state.round_id)
                # Another close already stored this round's result (a commit whose answer
                # was lost): never a second one.
                if closed_now:
                    await outbox.enqueue(
                        conn,
                        schema=store.SCHEMA,
                        settings=self.context.kafka,
                        base=topics.ROUNDS,
                        key=str(state.opened.task_id),
                        message=state.result,
                    )
            self.context.relay.wake()
        finally:
            state.closing = False
        self._closed(state, outcome, now)

    def _result(self, state: OpenRound, outcome: Outcome, now: datetime) -> RoundResult:
        if outcome != Outcome.AGGREGATE:
            return results.failed(state, results.shortfall(state), producer=PRODUCER)
        try:
            if state.secure is not None:
                return self._secure_result(state, state.secure, now)
            if state.opened.privacy is not None:
                # Fresh OS entropy for every release, never the global numpy or torch state.
                return results.private_aggregated(
                    state, producer=PRODUCER, now=now, rng=mechanisms.os_entropy_rng()
                )
            return results.aggregated(state, producer=PRODUCER, now=now)
        except (ValueError, ArithmeticError) as exc:  # ValidationError is a ValueError
            # Retrying would build the same thing: the round fails, with the reason.
            logger.error("round %s cannot be aggregated: %s", state.round_id, describe(exc))
            reason = f"aggregation failed: {describe(exc)}"[:500]
            return results.failed(state, reason, producer=PRODUCER)

    def _secure_result(
        self, state: OpenRound, secure: SecureExchange, now: datetime
    ) -> RoundResult:
        """Unmask the sum and build the round's result; a sum that cannot be unmasked (too
        few shares, a forged share) fails the round closed with the reason, never a wrong sum."""
        try:
            total = secure.finish()
        except (ThresholdNotMet, InvalidSecAggMessage) as exc:
            logger.warning("round %s fails closed: %s", state.round_id, exc)
            return results.failed(state, str(exc)[:500], producer=PRODUCER)
        if state.opened.privacy is not None:
            return results.secure_private_aggregated(
                state, total, producer=PRODUCER, now=now, rng=mechanisms.os_entropy_rng()
            )
        return results.secure_aggregated(state, total, producer=PRODUCER, now=now)

    def _closed(self, state: OpenRound, outcome: Outcome, now: datetime) -> None:
        opened = state.opened
        bytes_up = state.secure.bytes_up() if state.secure else state.exchange.bytes_up()
        del self.open[state.round_id]
        self.closed.add(state.round_id)
        ROUNDS_CLOSED.labels(outcome.value).inc()
        if opened.privacy is None:
            BYTES_UP.inc(bytes_up)
        ROUND_SECONDS.observe(max(0.0, (now - opened.sent_at).total_seconds()))
        logger.info(
            "round %d of task %s %s: %d accepted, rejected %s",
            opened.round_number,
            opened.task_id,
            outcome.value,
            len(state.participants()),
            dict(state.rejected),
        )

    def commit_position(self, tp: TopicPartition, next_offset: int) -> int:
        holds = [state.holds for state in self.open.values()]
        if len(self.unplaced):
            holds.append(self.unplaced.holds())
        return safe_commit_offset(
            holds, topic=tp.topic, partition=tp.partition, next_offset=next_offset
        )


def build(context: ServiceContext, settings: Settings) -> ServiceParts:
    aggregator = Aggregator(context, settings)

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
