"""The coordinator's shell: commands and round results in, rounds and model versions out.

Every handler runs in one transaction that locks the task row, records the message as
processed and writes its follow-up messages to the outbox.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import numpy as np
import psycopg
from aiokafka import ConsumerRecord
from prometheus_client import Counter, Histogram

from fedcommon import arrays, background, db, lifecycle, models, outbox, topics
from fedcommon.errors import ProtocolViolation
from fedcommon.failures import Failure, classify, describe
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    AnyMessage,
    CleanupRequested,
    Envelope,
    ModelPublished,
    Participant,
    RoundAggregated,
    RoundCompleted,
    RoundFailed,
    RoundOpened,
    RoundStarted,
    StopReason,
    TaskCancelRequested,
    TaskCreateRequested,
    TaskPauseRequested,
    TaskResumeRequested,
    TaskStartRequested,
    TaskState,
    TaskStateChanged,
    TrainRequested,
)
from fedcommon.service import ServiceContext, ServiceParts
from fedengine_coordinator import store
from fedengine_coordinator.core import evaluation, selection, stopping
from fedengine_coordinator.settings import Settings

logger = logging.getLogger(__name__)

PRODUCER = "coordinator"
ROUNDS_COMPLETED = Counter("fedengine_rounds_completed_total", "Rounds applied to the model")
ROUNDS_FAILED = Counter("fedengine_rounds_failed_total", "Round attempts that failed", ["why"])
BYTES_DOWN = Counter("fedengine_model_bytes_down_total", "Model bytes sent to participants")
TASKS_FAILED_BY_ERROR = Counter(
    "fedengine_tasks_failed_by_error_total", "Tasks failed because their processing raised"
)
ROUND_LATENCY = Histogram(
    "fedengine_round_seconds",
    "Round open to model applied",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)

_COMMANDS: dict[type, Command] = {
    TaskStartRequested: Command.START,
    TaskPauseRequested: Command.PAUSE,
    TaskResumeRequested: Command.RESUME,
    TaskCancelRequested: Command.CANCEL,
}


class Coordinator:
    def __init__(self, context: ServiceContext, settings: Settings) -> None:
        self.context = context
        self.settings = settings

    async def _emit(
        self, conn: psycopg.AsyncConnection, base: str, key: str, message: Envelope
    ) -> None:
        await outbox.enqueue(
            conn,
            schema=store.SCHEMA,
            settings=self.context.kafka,
            base=base,
            key=key,
            message=message,
        )

    async def _state_changed(
        self,
        conn: psycopg.AsyncConnection,
        task_id: UUID,
        state: TaskState,
        stop_reason: StopReason | None = None,
        *,
        detail: str | None = None,
        issued_by: str | None = None,
    ) -> None:
        """Move the task to ``state`` and announce it; an ending (completed, failed, cancelled)
        is also the task's last event, naming the stop reason and ``detail``, in the same
        transaction as the state it records."""
        await store.set_state(conn, task_id, state, stop_reason=stop_reason)
        if state in lifecycle.FINISHED:
            await store.log_event(
                conn,
                task_id,
                state.value,
                issued_by=issued_by,
                detail=stopping.end_detail(stop_reason, detail),
            )
        await self._emit(
            conn,
            topics.EVENTS,
            str(task_id),
            TaskStateChanged(
                producer=PRODUCER, task_id=task_id, state=state, stop_reason=stop_reason
            ),
        )
        logger.info(
            "task %s -> %s%s",
            task_id,
            state.value,
            f" ({stop_reason.value})" if stop_reason else "",
        )

    async def handle(self, message: AnyMessage, record: ConsumerRecord) -> None:
        try:
            async with self.context.pool.connection() as conn, conn.transaction():
                if not await db.mark_processed(
                    conn, schema=store.SCHEMA, message_id=message.message_id
                ):
                    logger.info("duplicate %s %s skipped", message.type, message.message_id)
                    return
                await self._dispatch(conn, message)
        except Exception as exc:
            task_id = getattr(message, "task_id", None)
            if classify(exc) != Failure.UNEXPECTED or task_id is None:
                raise
            # Isolation: an error in one task's processing fails that task, with the reason,
            # instead of dead-lettering its messages one by one and stopping the service.
            if not await self._fail_after_error(task_id, exc, message_id=message.message_id):
                raise
        self.context.relay.wake()

    async def _dispatch(self, conn: psycopg.AsyncConnection, message: AnyMessage) -> None:
        if isinstance(message, TaskCreateRequested):
            await self._create(conn, message)
        elif type(message) in _COMMANDS:
            await self._command(conn, message, _COMMANDS[type(message)])  # type: ignore[arg-type]
        elif isinstance(message, RoundAggregated):
            await self._aggregated(conn, message)
        elif isinstance(message, RoundFailed):
            await self._round_failed(
                conn,
                message.round_id,
                why="aggregator",
                failure=message.reason,
                rejected=message.rejected,
                task_id=message.task_id,
            )
        elif isinstance(message, CleanupRequested):
            deleted = await store.cleanup_models(conn, retention_s=message.retention_s)
            logger.info("cleanup by %s deleted %d model versions", message.issued_by, deleted)
        else:
            raise ProtocolViolation(f"the coordinator does not handle {message.type}")

    async def _fail_after_error(
        self, task_id: UUID, exc: BaseException, *, message_id: UUID | None = None
    ) -> bool:
        """Fail ``task_id`` (if it exists and is not finished) because its processing raised
        ``exc``; record the message as handled. Returns whether the task was failed."""
        logger.error("task %s failed: %s", task_id, describe(exc), exc_info=exc)
        async with self.context.pool.connection() as conn, conn.transaction():
            task = await store.lock_task(conn, task_id, validate=False)
            if task is None:
                return False
            if message_id is not None:
                await db.mark_processed(conn, schema=store.SCHEMA, message_id=message_id)
            if task.state in lifecycle.FINISHED:
                return True
            open_round = await store.open_round_of(conn, task_id)
            if open_round is not None:
                await store.fail_round(
                    conn, round_id=open_round.round_id, status="abandoned", failure="task failed"
                )
            await self._state_changed(
                conn, task_id, TaskState.FAILED, StopReason.ERROR, detail=describe(exc)
            )
        TASKS_FAILED_BY_ERROR.inc()
        self.context.relay.wake()
        return True

    async def _create(self, conn: psycopg.AsyncConnection, message: TaskCreateRequested) -> None:
        spec = message.spec
        if not await store.insert_task(
            conn, task_id=message.task_id, spec=spec, created_by=message.issued_by
        ):
            return
        model = evaluation.new_model(spec.model_architecture, spec.dataset, seed=spec.seed)
        data = models.to_safetensors(model)
        digest = models.sha256_hex(data)
        await store.insert_model(
            conn, task_id=message.task_id, version=0, sha256=digest, data=data, round_number=None
        )
        await store.log_event(conn, message.task_id, "created", issued_by=message.issued_by)
        await self._emit(
            conn,
            topics.MODELS,
            str(message.task_id),
            ModelPublished(
                producer=PRODUCER,
                task_id=message.task_id,
                version=0,
                sha256=digest,
                size_bytes=len(data),
            ),
        )
        await self._emit(
            conn,
            topics.EVENTS,
            str(message.task_id),
            TaskStateChanged(producer=PRODUCER, task_id=message.task_id, state=TaskState.CREATED),
        )

    async def _command(
        self,
        conn: psycopg.AsyncConnection,
        message: TaskStartRequested
        | TaskPauseRequested
        | TaskResumeRequested
        | TaskCancelRequested,
        command: Command,
    ) -> None:
        task = await store.lock_task(conn, message.task_id)
        if task is None:
            logger.warning("%s for unknown task %s ignored", command.value, message.task_id)
            return
        target = lifecycle.next_state(task.state, command)
        if target is None:
            await store.log_event(
                conn,
                task.task_id,
                f"{command.value}_ignored",
                issued_by=message.issued_by,
                detail=f"not allowed in state {task.state.value}",
            )
            return
        await store.log_event(conn, task.task_id, command.value, issued_by=message.issued_by)
        if target == TaskState.CANCELLED:
            open_round = await store.open_round_of(conn, task.task_id)
            if open_round is not None:
                await store.fail_round(
                    conn, round_id=open_round.round_id, status="abandoned", failure="task cancelled"
                )
            await self._state_changed(
                conn,
                task.task_id,
                target,
                StopReason.CANCELLED,
                detail=None if open_round is None else f"round {open_round.round_number} abandoned",
                issued_by=message.issued_by,
            )
            return
        await self._state_changed(conn, task.task_id, target)
        if target == TaskState.RUNNING and await store.open_round_of(conn, task.task_id) is None:
            await self._open_round(conn, task.task_id, round_number=task.current_round + 1)

    async def _open_round(
        self, conn: psycopg.AsyncConnection, task_id: UUID, *, round_number: int
    ) -> None:
        """Select devices and open a try of a round, or wait for devices (device_wait_s).

        The attempt number comes from the stored tries of that round, so a round that failed
        while the task was paused is re-tried, not re-created.
        """
        task = await store.lock_task(conn, task_id)
        if task is None or not lifecycle.opens_round(task.state):
            return
        spec = task.spec
        now = datetime.now(UTC)
        allowed = set(spec.participating_devices) if spec.participating_devices else None
        pool = selection.eligible(
            await store.online_candidates(conn),
            busy=await store.busy_devices(conn),
            allowed=allowed,
        )
        if len(pool) < spec.min_devices:
            if task.waiting_since is None:
                await store.set_waiting(conn, task_id, now)
                await store.log_event(
                    conn,
                    task_id,
                    "waiting_for_devices",
                    detail=f"{len(pool)} eligible, {spec.min_devices} needed",
                )
            elif (now - task.waiting_since).total_seconds() > spec.device_wait_s:
                await self._state_changed(
                    conn,
                    task_id,
                    TaskState.FAILED,
                    StopReason.TOO_FEW_DEVICES,
                    detail=f"{len(pool)} eligible devices for round {round_number}, "
                    f"{spec.min_devices} needed, for more than {spec.device_wait_s:g} s",
                )
            return
        if task.waiting_since is not None:
            await store.set_waiting(conn, task_id, None)
        attempt = await store.next_attempt(conn, task_id, round_number)
        chosen = selection.select(
            pool,
            count=spec.devices_per_round,
            rng=selection.round_rng(seed=spec.seed, round_number=round_number, attempt=attempt),
        )
        digest = await store.get_model_digest(conn, task_id, task.model_version)
        shapes = evaluation.param_shapes(spec.model_architecture, spec.dataset)
        round_id = uuid4()
        deadline = now + timedelta(seconds=spec.round_timeout_s)
        participants = [c.device_id for c in chosen]
        await store.insert_round(
            conn,
            round_id=round_id,
            task_id=task_id,
            round_number=round_number,
            attempt=attempt,
            participants=participants,
            model_version_in=task.model_version,
            deadline=deadline,
        )
        key = str(task_id)
        await self._emit(
            conn,
            topics.UPDATES,
            key,
            RoundOpened(
                producer=PRODUCER,
                round_id=round_id,
                task_id=task_id,
                round_number=round_number,
                attempt=attempt,
                model_version=task.model_version,
                participants=[
                    Participant(device_id=c.device_id, public_key=c.public_key) for c in chosen
                ],
                min_updates=min(spec.min_devices, len(chosen)),
                deadline=deadline,
                param_shapes=shapes,
                max_update_norm=spec.max_update_norm,
            ),
        )
        for device_id in participants:
            await self._emit(
                conn,
                topics.DEVICE_COMMANDS,
                device_id,
                TrainRequested(
                    producer=PRODUCER,
                    round_id=round_id,
                    task_id=task_id,
                    device_id=device_id,
                    round_number=round_number,
                    model_version=task.model_version,
                    model_sha256=digest,
                    deadline=deadline,
                    model_architecture=spec.model_architecture,
                    dataset=spec.dataset,
                    learning_rate=spec.learning_rate,
                    local_epochs=spec.local_epochs,
                    batch_size=spec.batch_size,
                    seed=spec.seed,
                ),
            )
        await self._emit(
            conn,
            topics.EVENTS,
            key,
            RoundStarted(
                producer=PRODUCER,
                round_id=round_id,
                task_id=task_id,
                round_number=round_number,
                attempt=attempt,
                participants=participants,
            ),
        )
        logger.info(
            "task %s round %d attempt %d opened with %d devices",
            task_id,
            round_number,
            attempt,
            len(participants),
        )

    async def _aggregated(self, conn: psycopg.AsyncConnection, message: RoundAggregated) -> None:
        if message.round_id is None:
            return
        round_row = await store.lock_round(conn, message.round_id)
        if round_row is None or round_row.status != "open":
            logger.info("result for round %s not open; ignored", message.round_id)
            return
        _check_task(round_row, message.task_id)
        task = await store.lock_task(conn, round_row.task_id)
        if task is None:
            return
        spec = task.spec
        _, data = await store.get_model(conn, task.task_id, round_row.model_version_in)
        delta = arrays.from_bytes(message.delta)  # InvalidMessage when malformed
        if arrays.shapes_of(delta) != evaluation.param_shapes(
            spec.model_architecture, spec.dataset
        ) or not all(np.isfinite(a).all() for a in delta):
            raise ProtocolViolation("round result's delta does not fit the model or is not finite")

        def apply_and_evaluate() -> tuple[bytes, evaluation.Evaluation]:
            model = evaluation.new_model(spec.model_architecture, spec.dataset, seed=spec.seed)
            model = evaluation.apply_delta(models.load_into(model, data), delta)
            return models.to_safetensors(model), evaluation.evaluate(model, spec.dataset)

        new_data, result = await asyncio.to_thread(apply_and_evaluate)
        version = round_row.model_version_in + 1
        digest = models.sha256_hex(new_data)
        bytes_down = len(data) * len(round_row.participants)
        await store.insert_model(
            conn,
            task_id=task.task_id,
            version=version,
            sha256=digest,
            data=new_data,
            round_number=round_row.round_number,
        )
        # Time differences only: no datetime arithmetic that a far-off sent_at could overflow.
        duration = (datetime.now(UTC) - message.sent_at).total_seconds() + message.duration_s
        await store.complete_round(
            conn,
            round_id=round_row.round_id,
            model_version_out=version,
            accuracy=result.accuracy,
            loss=result.loss,
            train_loss=message.train_loss,
            num_examples=message.num_examples,
            aggregated=message.participants,
            dropped=message.dropped,
            rejected=message.rejected,
            bytes_up=message.bytes_up,
            bytes_down=bytes_down,
            duration_s=duration,
        )
        await store.advance_task(
            conn, task.task_id, round_number=round_row.round_number, model_version=version
        )
        ROUNDS_COMPLETED.inc()
        BYTES_DOWN.inc(bytes_down)
        ROUND_LATENCY.observe(max(0.0, duration))
        key = str(task.task_id)
        await self._emit(
            conn,
            topics.MODELS,
            key,
            ModelPublished(
                producer=PRODUCER,
                task_id=task.task_id,
                version=version,
                sha256=digest,
                size_bytes=len(new_data),
            ),
        )
        await self._emit(
            conn,
            topics.EVENTS,
            key,
            RoundCompleted(
                producer=PRODUCER,
                round_id=round_row.round_id,
                task_id=task.task_id,
                round_number=round_row.round_number,
                model_version=version,
                accuracy=result.accuracy,
                loss=result.loss,
            ),
        )
        logger.info(
            "task %s round %d applied: accuracy %.4f loss %.4f",
            task.task_id,
            round_row.round_number,
            result.accuracy,
            result.loss,
        )
        accuracies = await store.accuracies(conn, task.task_id)
        reason = stopping.stop_reason(
            spec, rounds_done=round_row.round_number, accuracies=accuracies
        )
        if reason is not None:
            await self._state_changed(
                conn,
                task.task_id,
                TaskState.COMPLETED,
                reason,
                detail=stopping.explain(
                    spec, reason, rounds_done=round_row.round_number, accuracies=accuracies
                ),
            )
        elif lifecycle.opens_round(task.state):
            await self._open_round(conn, task.task_id, round_number=round_row.round_number + 1)

    async def _round_failed(
        self,
        conn: psycopg.AsyncConnection,
        round_id: UUID | None,
        *,
        why: str,
        failure: str,
        rejected: dict[str, int] | None = None,
        task_id: UUID | None = None,
    ) -> None:
        if round_id is None:
            return
        round_row = await store.lock_round(conn, round_id)
        if round_row is None or round_row.status != "open":
            return
        if task_id is not None:
            _check_task(round_row, task_id)
        task = await store.lock_task(conn, round_row.task_id)
        if task is None:
            return
        await store.fail_round(
            conn, round_id=round_id, status="failed", failure=failure, rejected=rejected
        )
        ROUNDS_FAILED.labels(why).inc()
        await store.log_event(
            conn,
            task.task_id,
            "round_failed",
            detail=f"round {round_row.round_number} attempt {round_row.attempt}: {failure}",
        )
        if round_row.attempt >= task.spec.max_round_retries:
            await self._state_changed(
                conn,
                task.task_id,
                TaskState.FAILED,
                StopReason.ROUND_FAILED,
                detail=f"round {round_row.round_number} failed {round_row.attempt + 1} times, "
                f"the last: {failure}",
            )
        elif lifecycle.opens_round(task.state):
            await self._open_round(
                conn,
                task.task_id,
                round_number=round_row.round_number,
            )

    async def tick(self) -> None:
        """Open rounds for tasks waiting on devices; re-issue rounds whose result never came.

        Each task is handled on its own: an error in one fails that task (its reason in the
        event log) and never keeps the others from their turn. An outage ends the tick; the
        next one retries.
        """
        async with self.context.pool.connection() as conn:
            running = await store.tasks_in_state(conn, TaskState.RUNNING)
            overdue = await store.overdue_rounds(conn, grace_s=self.settings.lost_round_grace_s)
        for task_id, round_id in overdue:
            await self._isolated(task_id, functools.partial(self._lost_round, round_id))
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
        async with self.context.pool.connection() as conn, conn.transaction():
            await self._round_failed(conn, round_id, why="lost", failure="no result by deadline")

    async def _continue_task(self, task_id: UUID) -> None:
        async with self.context.pool.connection() as conn, conn.transaction():
            task = await store.lock_task(conn, task_id)
            if (
                task is None
                or task.state != TaskState.RUNNING
                or await store.open_round_of(conn, task_id) is not None
            ):
                return
            await self._open_round(conn, task_id, round_number=task.current_round + 1)


def _check_task(round_row: store.RoundRow, task_id: UUID) -> None:
    """A round result must name the round's own task: the round id alone is not proof."""
    if round_row.task_id != task_id:
        raise ProtocolViolation(f"round {round_row.round_id} does not belong to task {task_id}")


def build(context: ServiceContext, settings: Settings) -> ServiceParts:
    coordinator = Coordinator(context, settings)

    async def ticker() -> None:
        await background.every("coordinator.tick", settings.tick_s, coordinator.tick)

    return ServiceParts(handle=coordinator.handle, background=(ticker,))
