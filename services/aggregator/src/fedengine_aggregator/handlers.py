"""The aggregator's shell: keeps open rounds in memory, the Kafka log is their buffer.

A round runs a protocol (``core.protocol``: the plain update exchange, DP-FedAvg or SecAgg+,
chosen from its round.opened by ``core.protocols``) through a sequence of stages
(``core.stages``). The shell has no branch for any protocol: it routes each record to its
round and stage, runs the checks every record gets (round open, stage under way, late), hands
it to the protocol, writes the verdicts the protocol asks for, stores a later stage's start
with what it sends (and its checkpoint) in one transaction, and closes the round with the
result the protocol builds. Offsets are committed per topic and partition only up to the first
record an open round (or a record parked before its round opened) still needs, so a restarted
aggregator re-reads every topic its open rounds use, from there.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from uuid import UUID

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import Counter, Histogram

from fedcommon import background, outbox, topics
from fedcommon.errors import InvalidMessage
from fedcommon.failures import describe
from fedcommon.messages.v1 import AnyMessage, RoundAggregated, RoundOpened
from fedcommon.service import ServiceContext, ServiceParts
from fedengine_aggregator import store
from fedengine_aggregator.core import protocols, results, round_machine
from fedengine_aggregator.core.catalog import Params
from fedengine_aggregator.core.offsets import Unplaced, safe_commit_offset
from fedengine_aggregator.core.results import PRODUCER
from fedengine_aggregator.core.round_machine import (
    Close,
    Decision,
    RecordRead,
    StoreStage,
    Tick,
    WriteVerdict,
)
from fedengine_aggregator.core.window import OpenRound, Outcome, RoundResult, StageStart
from fedengine_aggregator.settings import Settings
from fedprivacy import mechanisms

logger = logging.getLogger(__name__)

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

# A stage resumed after a restart is not decided sooner than this: its records, which the
# restarted consumer reads again from the round's first held offset, must be in first.
RESUME_GRACE = timedelta(seconds=5)

# A stage's record as the shell keeps it while it waits for its stage or its round.
StageRecord = tuple[AnyMessage, ConsumerRecord]


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
            max_items=settings.unplaced_max_records,
            max_age_s=settings.unplaced_max_age_s,
            max_bytes=settings.unplaced_max_bytes,
        )

    async def handle(self, message: AnyMessage, record: ConsumerRecord) -> None:
        if isinstance(message, RoundOpened):
            await self._on_opened(message, record)
        elif isinstance(message, protocols.RECORD_TYPES):
            if await self._on_record(message, record):
                # The record counted (or answered for its sender, refused): closing the round
                # (or moving it on) is the deadline loop's job too, so an outage while closing
                # is left to it instead of re-handling (and refusing) this record.
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
            protocol, reason = protocols.protocol_for(message)
        except ValueError as exc:
            raise InvalidMessage(f"round {message.round_id}: {describe(exc)}") from exc
        now = datetime.now(UTC)
        state = OpenRound.begin(
            message,
            protocol.plan(received_at=now),
            protocol,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        await self._resume(state)
        self.open[message.round_id] = state
        logger.info(
            "round %d (attempt %d) of task %s open: %d participants, min %d, %s, %s",
            message.round_number,
            message.attempt,
            message.task_id,
            len(message.participants),
            message.min_updates,
            strategy,
            type(protocol).__name__,
        )
        if reason is not None:
            # Fails at once, with the reason, through the same close as any other round; an
            # outage while closing leaves it to the deadline loop, with this result fixed.
            logger.warning("round %s refused: %s", message.round_id, reason)
            state.result = results.failed(state, reason, producer=PRODUCER)
            await background.run_step("aggregator.close", lambda: self.close_due(now))

    async def _resume(self, state: OpenRound) -> None:
        """Put a round read again after a restart back in the later stage it had begun (its
        checkpoint), so that no stage is decided twice and nothing sent is sent again with
        other bytes. A round that had not passed its first stage starts afresh."""
        specs = state.stages.specs
        if len(specs) == 1:
            return  # one stage: nothing begins later, nothing was stored
        async with self.context.pool.connection() as conn:
            checkpoint = await store.latest_checkpoint(conn, state.round_id)
        if checkpoint is None:
            return
        if not 2 <= checkpoint.stage <= len(specs):
            raise InvalidMessage(f"round {state.round_id}: checkpoint of stage {checkpoint.stage}")
        name = specs[checkpoint.stage - 1].name
        try:
            state.exchange.restore(name, checkpoint.server_state)
        except ValueError as exc:
            raise InvalidMessage(f"round {state.round_id}: checkpoint: {exc}") from exc
        by_id = {p.device_id: p for p in state.opened.participants}
        state.stages.resume(
            name,
            expected={d: by_id[d] for d in checkpoint.expected if d in by_id},
            started_at=checkpoint.started_at,
            not_before=datetime.now(UTC) + RESUME_GRACE,
        )
        logger.info("round %s resumed at stage %s", state.round_id, name)

    async def _take_unplaced(self, round_id: UUID) -> None:
        """Hand the round the records of it read (on other topics) before its opening, in the
        order they came; they count as if they had come after it. What an outage interrupts
        goes back, for the retry of the round.opened record."""
        parked = self.unplaced.take(round_id)
        for index, item in enumerate(parked):
            message, record = item.item
            try:
                await self._on_record(message, record, may_park=False)
            except Exception:
                self.unplaced.put_back(round_id, parked[index:])
                raise

    async def _on_record(
        self, message: AnyMessage, record: ConsumerRecord, *, may_park: bool = True
    ) -> bool:
        """Park a record until its round opens, or let the round decide it
        (``round_machine.on_record``) and carry the effects out in order. True if it counted or
        answered for its sender (its stage may be over)."""
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
                    (message, record),
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    now=datetime.now(UTC),
                    size=len(record.value or b""),
                )
            ):
                return False
        decision = round_machine.on_record(
            state,
            RecordRead(
                message,
                record.topic,
                record.partition,
                record.offset,
                closed=round_id is not None and round_id in self.closed,
                item=(message, record),
            ),
        )
        for effect in decision.effects:
            if isinstance(effect, WriteVerdict):
                await self._write_verdict(message, record, effect)
            elif state is not None:
                round_machine.apply(state, message, effect)
        if decision.refused is not None:
            self._refused(message, decision)
        elif any(isinstance(e, WriteVerdict) and not e.private for e in decision.effects):
            UPDATES_ACCEPTED.inc()  # (a DP round's count would show how many it drew)
        return decision.counted or decision.answered

    async def _write_verdict(
        self, message: AnyMessage, record: ConsumerRecord, verdict: WriteVerdict
    ) -> None:
        if not isinstance(message, protocols.RECORD_TYPES):
            raise InvalidMessage(f"{message.type} is no stage record")
        rejected = verdict.rejected
        async with self.context.pool.connection() as conn:
            await store.record_verdict(
                conn,
                message,
                partition=record.partition,
                offset=record.offset,
                status=verdict.status,
                reason=rejected.reason.value if rejected else None,
                detail=rejected.detail if rejected else None,
                private=verdict.private,
            )

    @staticmethod
    def _refused(message: AnyMessage, decision: Decision) -> None:
        rejected = decision.refused
        if rejected is None:
            return
        if not any(isinstance(e, WriteVerdict) and e.private for e in decision.effects):
            # A DP round's counts would show how many devices it drew: not counted.
            UPDATES_REJECTED.labels(rejected.reason.value).inc()
        device_id = getattr(message, "device_id", None)
        logger.warning(
            "rejected %s from %s for round %s: %s",
            message.type,
            device_id,
            message.round_id,
            rejected,
            extra={"client_id": device_id, "round_id": message.round_id},
        )

    async def close_due(self, now: datetime) -> None:
        """Move every open round on through its stages; close those whose last stage ended.

        Records parked too long for a round that never opened are refused first. An error
        with one round never keeps the others from going on; the first is raised afterwards
        (for the caller's error policy), the others are logged here.
        """
        errors: list[Exception] = []
        for message, record in self.unplaced.expire(now):
            try:
                await self._on_record(message, record, may_park=False)
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
        """Advance ``state`` as far as it goes now (``round_machine.on_tick``, step by step):
        a stage that began is stored before its held records are handed in."""
        while True:
            step = round_machine.on_tick(state, Tick(now))
            if step is None:
                return Outcome.WAIT
            if isinstance(step, Close):
                return step.outcome
            if isinstance(step, StoreStage):
                await self._store_stage(state, step.start)
                round_machine.stored(state, step.start)
                logger.info("round %s: stage %s begins", state.round_id, step.start.stage_name)
                continue
            for index, (message, record) in enumerate(step.items):
                try:
                    await self._on_record(message, record, may_park=False)
                except Exception:
                    state.stages.return_early(step.items[index:])
                    raise

    async def _store_stage(self, state: OpenRound, start: StageStart) -> None:
        """Store a stage's start (checkpoint, what it sends in the outbox, the log rows of the
        stages before it) in one transaction, once: a checkpoint already there means it was
        stored before (a commit whose answer was lost) and nothing is sent again."""
        opened = state.opened
        async with self.context.pool.connection() as conn, conn.transaction():
            stored = await store.save_checkpoint(
                conn,
                state.round_id,
                store.Checkpoint(
                    start.position, start.started_at, start.expected, start.checkpoint or b""
                ),
            )
            if not stored:
                return
            for item in start.outgoing:
                await outbox.enqueue(
                    conn,
                    schema=store.SCHEMA,
                    settings=self.context.kafka,
                    base=item.base,
                    key=item.key,
                    message=item.message,
                )
            before = state.stages.stages[: start.position - 1]
            for entry in state.exchange.stage_logs(before, now=start.started_at):
                await store.log_stage(
                    conn,
                    round_id=state.round_id,
                    task_id=opened.task_id,
                    round_number=opened.round_number,
                    attempt=opened.attempt,
                    entry=entry,
                    private=state.exchange.private,
                )
        self.context.relay.wake()

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
            opened, protocol = state.opened, state.exchange
            async with self.context.pool.connection() as conn, conn.transaction():
                closed_now = await store.close_round(
                    conn,
                    round_id=state.round_id,
                    task_id=opened.task_id,
                    round_number=opened.round_number,
                    attempt=opened.attempt,
                    outcome=outcome.value,
                    participants=state.participants(),
                    dropped=state.dropped(),
                    rejected=dict(state.rejected),
                    bytes_up=protocol.bytes_up(),
                    private=protocol.private,
                )
                # Another close already stored this round's result (a commit whose answer
                # was lost): never a second one.
                if closed_now:
                    for entry in protocol.stage_logs(state.stages.stages, now=now):
                        await store.log_stage(
                            conn,
                            round_id=state.round_id,
                            task_id=opened.task_id,
                            round_number=opened.round_number,
                            attempt=opened.attempt,
                            entry=entry,
                            private=protocol.private,
                        )
                    if len(state.stages.specs) > 1:
                        await store.drop_checkpoints(conn, state.round_id)
                    await outbox.enqueue(
                        conn,
                        schema=store.SCHEMA,
                        settings=self.context.kafka,
                        base=topics.ROUNDS,
                        key=str(opened.task_id),
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
            # Fresh OS entropy for every release, never the global numpy or torch state.
            return state.exchange.result(state, now=now, rng=mechanisms.os_entropy_rng())
        except (ValueError, ArithmeticError) as exc:  # ValidationError is a ValueError
            # Retrying would build the same thing: the round fails, with the reason.
            logger.error("round %s cannot be aggregated: %s", state.round_id, describe(exc))
            reason = f"aggregation failed: {describe(exc)}"[:500]
            return results.failed(state, reason, producer=PRODUCER)

    def _closed(self, state: OpenRound, outcome: Outcome, now: datetime) -> None:
        opened, protocol = state.opened, state.exchange
        del self.open[state.round_id]
        self.closed.add(state.round_id)
        ROUNDS_CLOSED.labels(outcome.value).inc()
        if not protocol.private:
            BYTES_UP.inc(protocol.bytes_up())
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
