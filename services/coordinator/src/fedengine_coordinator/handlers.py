"""The coordinator's shell: commands and round results in, rounds and model versions out.

Every handler runs in one transaction that locks the task row (and the round a result names),
records the message as processed, lets ``core.machine.decide`` choose what follows, and has
the executor store it and write its follow-up messages to the outbox.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

import psycopg
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from fedcommon import background, db, lifecycle, model_files
from fedcommon.errors import InvalidMessage, ProtocolViolation
from fedcommon.failures import Failure, classify, describe
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    AnyMessage,
    CleanupRequested,
    EvaluationSubmitted,
    LocalDpAssigned,
    ModelUploaded,
    PrivacySpendApproved,
    PrivacySpendRefused,
    PrivacySpendRequested,
    RoundAggregated,
    RoundFailed,
    TaskCancelRequested,
    TaskCreateRequested,
    TaskPauseRequested,
    TaskResumeRequested,
    TaskStartRequested,
    TaskState,
)
from fedcommon.service import ServiceContext, ServiceParts
from fedengine_coordinator import local_privacy, store
from fedengine_coordinator.core import federated_evaluation
from fedengine_coordinator.core.events import (
    CommandReceived,
    CreateReceived,
    ErrorRaised,
    EvaluationDue,
    EvaluationReceived,
    Event,
    FailureReceived,
    FailureSource,
    ResultReceived,
    SpendApproved,
    SpendRefused,
    SpendTimedOut,
    Ticked,
)
from fedengine_coordinator.core.state import RoundStatus, State
from fedengine_coordinator.executor import Executor, Superseded, draw_graph_seed
from fedengine_coordinator.settings import Settings

logger = logging.getLogger(__name__)

UNKNOWN_EVALUATIONS = Counter(
    "fedengine_evaluations_unknown_total",
    "evaluation.submitted naming no evaluation this coordinator ever opened",
)
TASKS_FAILED_BY_ERROR = Counter(
    "fedengine_tasks_failed_by_error_total", "Tasks failed because their processing raised"
)

_COMMANDS: dict[type, Command] = {
    TaskStartRequested: Command.START,
    TaskPauseRequested: Command.PAUSE,
    TaskResumeRequested: Command.RESUME,
    TaskCancelRequested: Command.CANCEL,
}


async def _task_state(conn: psycopg.AsyncConnection, task_id: UUID) -> State:
    """Lock the task, then its open evaluation; the round in play is its open round."""
    task = await store.lock_task(conn, task_id)
    if task is None:
        return State(None)
    return State(
        task,
        await store.open_round_of(conn, task_id),
        await store.lock_open_evaluation(conn, task_id),
    )


async def _round_state(conn: psycopg.AsyncConnection, round_id: UUID) -> State:
    """Lock the round, then (while it is open) its task: the order every round event keeps."""
    round_ = await store.lock_round(conn, round_id)
    if round_ is None or round_.status != RoundStatus.OPEN:
        return State(None, round_)
    return State(await store.lock_task(conn, round_.task_id), round_)


async def _awaiting_state(conn: psycopg.AsyncConnection, round_id: UUID) -> State:
    """Lock a try that waits for its privacy spend, then its task (the order round events
    keep); a try that no longer waits comes without its task, and the answer is ignored."""
    round_ = await store.lock_round(conn, round_id)
    if round_ is None or round_.status != RoundStatus.AWAITING_SPEND:
        return State(None, round_)
    return State(await store.lock_task(conn, round_.task_id), round_)


async def _approved(
    conn: psycopg.AsyncConnection, state: State, approval: PrivacySpendApproved
) -> SpendApproved:
    """The approval with what opening its try needs (nothing, for a try no longer waiting)."""
    round_, task = state.round, state.task
    if round_ is None or task is None:
        return SpendApproved(approval, {}, "", [], datetime.now(UTC))
    spec = task.spec
    levels = await store.privacy_levels(conn, list(round_.participants))
    digest, data = await store.get_model(conn, task.task_id, round_.model_version_in)
    return SpendApproved(
        approval,
        public_keys=await store.public_keys(conn, list(round_.participants)),
        model_sha256=digest,
        param_shapes=model_files.shapes(data),
        now=datetime.now(UTC),
        privacy_levels=levels,
        local_dp=await local_privacy.settings_for(spec, levels.values()),
        graph_seed=draw_graph_seed(spec),
    )


async def _keep_upload(conn: psycopg.AsyncConnection, message: ModelUploaded) -> None:
    """Keep an uploaded model, checked again here: whoever can write to fed.tasks as the
    gateway could send anything.

    Raises
    ------
    InvalidMessage
        The bytes are not a model (BadModelFile) or not their stated sha256.
    """
    try:
        tensors = model_files.inspect(message.data)
    except model_files.BadModelFile as exc:
        raise InvalidMessage(f"model.uploaded {message.model_id}: {exc}") from exc
    if hashlib.sha256(message.data).hexdigest() != message.sha256:
        raise InvalidMessage(f"model.uploaded {message.model_id}: sha256 does not match")
    stored = await store.insert_uploaded_model(
        conn,
        model_id=message.model_id,
        sha256=message.sha256,
        data=message.data,
        tensors=[t.as_json() for t in tensors],
        name=message.name,
        uploaded_by=message.uploaded_by,
    )
    logger.info(
        "uploaded model %s (%d tensors, %d bytes) by %s%s",
        message.model_id,
        len(tensors),
        len(message.data),
        message.uploaded_by,
        "" if stored else ": already kept",
    )


class Coordinator:
    def __init__(self, context: ServiceContext, settings: Settings) -> None:
        self.context = context
        self.settings = settings
        self.executor = Executor(context.kafka)
        # When this process first found each open evaluation past its deadline (monotonic
        # seconds): it closes evaluation_grace_s later (federated_evaluation.closable).
        self._overdue_since: dict[UUID, float] = {}

    async def handle(self, message: AnyMessage, record: ConsumerRecord) -> None:
        try:
            async with self.context.pool.connection() as conn, conn.transaction():
                if not await db.mark_processed(
                    conn, schema=store.SCHEMA, message_id=message.message_id
                ):
                    logger.info("duplicate %s %s skipped", message.type, message.message_id)
                    return
                await self._dispatch(conn, message, record)
        except Exception as exc:
            task_id = getattr(message, "task_id", None)
            if classify(exc) != Failure.UNEXPECTED or task_id is None:
                raise
            # Isolation: an error in one task's processing fails that task, with the reason,
            # instead of dead-lettering its messages one by one and stopping the service.
            if not await self._fail_after_error(task_id, exc, message_id=message.message_id):
                raise
        self.context.relay.wake()

    async def _dispatch(
        self, conn: psycopg.AsyncConnection, message: AnyMessage, record: ConsumerRecord
    ) -> None:
        state: State
        event: Event
        match message:
            case TaskCreateRequested():
                state = State(await store.lock_task(conn, message.task_id))
                event = CreateReceived(message.task_id, message.spec, message.issued_by)
            case (
                TaskStartRequested()
                | TaskPauseRequested()
                | TaskResumeRequested()
                | TaskCancelRequested()
            ):
                state = await _task_state(conn, message.task_id)
                event = CommandReceived(_COMMANDS[type(message)], message.issued_by)
            case RoundAggregated(round_id=round_id) if round_id is not None:
                state = await _round_state(conn, round_id)
                event = ResultReceived(message)
            case RoundFailed(round_id=round_id) if round_id is not None:
                state = await _round_state(conn, round_id)
                event = FailureReceived(
                    message.task_id,
                    message.reason,
                    dict(message.rejected),
                    received=message.received,
                )
            case RoundAggregated() | RoundFailed():
                return
            case PrivacySpendApproved(round_id=round_id) if round_id is not None:
                state = await _awaiting_state(conn, round_id)
                event = await _approved(conn, state, message)
            case PrivacySpendRefused(round_id=round_id) if round_id is not None:
                state = await _awaiting_state(conn, round_id)
                event = SpendRefused(message)
            case EvaluationSubmitted():
                task_id = await store.task_of_evaluation(conn, message.evaluation_id)
                if task_id is None:
                    # Any device credential can send these: counted, logged quietly.
                    UNKNOWN_EVALUATIONS.inc()
                    logger.debug("evaluation for unknown evaluation %s", message.evaluation_id)
                    return
                state = await _task_state(conn, task_id)
                keys = await store.public_keys(conn, [message.device_id])
                # Late or not by when it reached the log: an answer read after a restart or an
                # outage came in time all the same.
                received = federated_evaluation.received_at(
                    processed=datetime.now(UTC), logged_ms=record.timestamp
                )
                event = EvaluationReceived(message, keys.get(message.device_id), now=received)
            case ModelUploaded():
                await _keep_upload(conn, message)
                return
            case PrivacySpendRequested() | LocalDpAssigned():
                return  # our own messages, on the topic we share with the privacy service
            case CleanupRequested():
                deleted = await store.cleanup_models(conn, retention_s=message.retention_s)
                logger.info("cleanup by %s deleted %d model versions", message.issued_by, deleted)
                return
            case _:
                raise ProtocolViolation(f"the coordinator does not handle {message.type}")
        try:
            await self.executor.run(conn, state, event)
        except Superseded as exc:
            logger.info("%s: %s", message.type, exc)

    async def _fail_after_error(
        self, task_id: UUID, exc: BaseException, *, message_id: UUID | None = None
    ) -> bool:
        """Fail ``task_id`` (if it exists and is not finished) because its processing raised
        ``exc``; record the message as handled. Returns whether the task exists."""
        logger.error("task %s failed: %s", task_id, describe(exc), exc_info=exc)
        async with self.context.pool.connection() as conn, conn.transaction():
            task = await store.lock_task(conn, task_id, validate=False)
            if task is None:
                return False
            if message_id is not None:
                await db.mark_processed(conn, schema=store.SCHEMA, message_id=message_id)
            state = State(
                task,
                await store.open_round_of(conn, task_id),
                await store.lock_open_evaluation(conn, task_id),
            )
            await self.executor.run(conn, state, ErrorRaised(describe(exc)))
        if task.state not in lifecycle.FINISHED:
            TASKS_FAILED_BY_ERROR.inc()
        self.context.relay.wake()
        return True

    async def tick(self) -> None:
        """Close overdue evaluations, open rounds for waiting tasks, re-issue lost rounds, fail
        unanswered spends.

        An evaluation past its deadline closes ``evaluation_grace_s`` after this process
        first found it so; a round whose result never came is re-issued; a task whose
        privacy spend got no answer within ``spend_timeout_s`` fails with that reason.

        Each task is handled on its own: an error in one fails that task (its reason in the
        event log) and never keeps the others from their turn. An outage ends the tick; the
        next one retries.
        """
        async with self.context.pool.connection() as conn:
            running = await store.tasks_in_state(conn, TaskState.RUNNING)
            overdue = await store.overdue_rounds(conn, grace_s=self.settings.lost_round_grace_s)
            unanswered = await store.overdue_spends(conn, timeout_s=self.settings.spend_timeout_s)
            evaluated = await store.overdue_evaluations(conn)
        closing, self._overdue_since = federated_evaluation.closable(
            [evaluation_id for _, evaluation_id in evaluated],
            self._overdue_since,
            now=time.monotonic(),
            grace_s=self.settings.evaluation_grace_s,
        )
        for task_id, evaluation_id in evaluated:
            if evaluation_id in closing:
                await self._isolated(
                    task_id, functools.partial(self._evaluation_due, task_id, evaluation_id)
                )
        for task_id, round_id in overdue:
            await self._isolated(task_id, functools.partial(self._lost_round, round_id))
        for task_id, round_id in unanswered:
            await self._isolated(task_id, functools.partial(self._spend_timed_out, round_id))
        for task_id in running:
            await self._isolated(task_id, functools.partial(self._continue_task, task_id))
        self.context.relay.wake()

    async def _isolated(self, task_id: UUID, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except Exception as exc:
            if classify(exc) == Failure.TRANSIENT:
                raise
            await self._fail_after_error(task_id, exc)

    async def _lost_round(self, round_id: UUID) -> None:
        lost = FailureReceived(None, "no result by deadline", source=FailureSource.LOST)
        async with self.context.pool.connection() as conn, conn.transaction():
            await self.executor.run(conn, await _round_state(conn, round_id), lost)

    async def _spend_timed_out(self, round_id: UUID) -> None:
        timed_out = SpendTimedOut(self.settings.spend_timeout_s)
        async with self.context.pool.connection() as conn, conn.transaction():
            await self.executor.run(conn, await _awaiting_state(conn, round_id), timed_out)

    async def _evaluation_due(self, task_id: UUID, evaluation_id: UUID) -> None:
        async with self.context.pool.connection() as conn, conn.transaction():
            state = await _task_state(conn, task_id)
            await self.executor.run(conn, state, EvaluationDue(evaluation_id))

    async def _continue_task(self, task_id: UUID) -> None:
        async with self.context.pool.connection() as conn, conn.transaction():
            await self.executor.run(conn, await _task_state(conn, task_id), Ticked())


def build(context: ServiceContext, settings: Settings) -> ServiceParts:
    coordinator = Coordinator(context, settings)

    async def ticker() -> None:
        await background.every("coordinator.tick", settings.tick_s, coordinator.tick)

    return ServiceParts(handle=coordinator.handle, background=(ticker,))
