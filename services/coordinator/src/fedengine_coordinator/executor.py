"""The shell's hands: carry out the core's effects inside the handler's one transaction.

Writes go to the coordinator's tables and the outbox; requests (building, applying, selecting)
are answered here and fed straight back to ``decide``. Metrics and logs are written here too,
from the effects, so that the core stays free of them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime
from uuid import uuid4

import numpy as np
import psycopg
from prometheus_client import Counter, Histogram

from fedcommon import arrays, models, outbox
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import TaskSpec
from fedcommon.settings import KafkaSettings
from fedengine_coordinator import local_privacy, store
from fedengine_coordinator.core import evaluation, machine, secure_aggregation, strategy
from fedengine_coordinator.core.effects import (
    AdvanceTask,
    ApplyResult,
    ApproveRound,
    BuildInitialModel,
    CloseRound,
    CompleteRound,
    Effect,
    Emit,
    Ignored,
    InsertRound,
    InsertTask,
    LogEvent,
    OpenRound,
    SetTaskState,
    SetWaiting,
    StepServerOptimizer,
)
from fedengine_coordinator.core.events import DevicesOffered, Event, ModelApplied, ModelBuilt
from fedengine_coordinator.core.state import State

logger = logging.getLogger(__name__)

ROUNDS_COMPLETED = Counter("fedengine_rounds_completed_total", "Rounds applied to the model")
ROUNDS_FAILED = Counter("fedengine_rounds_failed_total", "Round attempts that failed", ["why"])
BYTES_DOWN = Counter("fedengine_model_bytes_down_total", "Model bytes sent to participants")
ROUND_LATENCY = Histogram(
    "fedengine_round_seconds",
    "Round open to model applied",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)


class Superseded(Exception):
    """The task this decision creates was created meanwhile: none of the decision applies."""


class Executor:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka

    async def run(self, conn: psycopg.AsyncConnection, state: State, event: Event) -> State:
        """Decide on ``event`` and carry out the effects in order; a request's answer is
        decided and carried out at once, before the effects after it. Returns the state."""
        state, effects = machine.decide(state, event)
        for effect in effects:
            answer = await self._execute(conn, effect)
            if answer is not None:
                state = await self.run(conn, state, answer)
        return state

    async def _execute(self, conn: psycopg.AsyncConnection, effect: Effect) -> Event | None:
        match effect:
            case InsertTask(task_id=task_id, spec=spec, created_by=created_by):
                if not await store.insert_task(
                    conn, task_id=task_id, spec=spec, created_by=created_by
                ):
                    raise Superseded(f"task {task_id} exists")
            case SetTaskState(task_id=task_id, state=state, stop_reason=reason):
                await store.set_state(conn, task_id, state, stop_reason=reason)
                logger.info(
                    "task %s -> %s%s", task_id, state.value, f" ({reason.value})" if reason else ""
                )
            case SetWaiting(task_id=task_id, since=since):
                await store.set_waiting(conn, task_id, since)
            case AdvanceTask():
                await store.advance_task(
                    conn,
                    effect.task_id,
                    round_number=effect.round_number,
                    model_version=effect.model_version,
                    dp_clip_norm=effect.dp_clip_norm,
                )
            case LogEvent(task_id=task_id, kind=kind, issued_by=issued_by, detail=detail):
                await store.log_event(conn, task_id, kind, issued_by=issued_by, detail=detail)
            case InsertRound(round=round_):
                await store.insert_round(conn, round_)
                logger.info(
                    "task %s round %d attempt %d opened with %d devices",
                    round_.task_id,
                    round_.round_number,
                    round_.attempt,
                    len(round_.participants),
                )
            case CloseRound():
                await store.close_round(
                    conn,
                    round_id=effect.round_id,
                    status=effect.status,
                    failure=effect.failure,
                    rejected=effect.rejected,
                )
                if effect.source is not None:
                    ROUNDS_FAILED.labels(effect.source.value).inc()
            case CompleteRound():
                await _complete(conn, effect)
            case ApproveRound():
                await store.approve_round(
                    conn,
                    round_id=effect.round_id,
                    approval_id=effect.approval_id,
                    epsilon_spent=effect.epsilon_spent,
                    noise_multiplier=effect.noise_multiplier,
                    deadline=effect.deadline,
                )
            case Emit(base=base, key=key, message=message):
                await outbox.enqueue(
                    conn,
                    schema=store.SCHEMA,
                    settings=self.kafka,
                    base=base,
                    key=key,
                    message=message,
                )
            case BuildInitialModel():
                return await _build(conn, effect)
            case ApplyResult() | StepServerOptimizer():
                return await _apply(conn, effect)
            case OpenRound():
                return await _offer(conn, effect)
            case Ignored(why=why):
                logger.info("ignored: %s", why)
        return None


async def _complete(conn: psycopg.AsyncConnection, effect: CompleteRound) -> None:
    await store.complete_round(
        conn,
        round_id=effect.round_id,
        model_version_out=effect.model_version_out,
        accuracy=effect.accuracy,
        loss=effect.loss,
        train_loss=effect.train_loss,
        num_examples=effect.num_examples,
        aggregated=effect.aggregated,
        dropped=effect.dropped,
        rejected=effect.rejected,
        bytes_up=effect.bytes_up,
        bytes_down=effect.bytes_down,
        duration_s=effect.duration_s,
    )
    ROUNDS_COMPLETED.inc()
    BYTES_DOWN.inc(effect.bytes_down)
    ROUND_LATENCY.observe(max(0.0, effect.duration_s))
    logger.info(
        "round %s applied as version %d: accuracy %.4f loss %.4f",
        effect.round_id,
        effect.model_version_out,
        effect.accuracy,
        effect.loss,
    )


async def _build(conn: psycopg.AsyncConnection, effect: BuildInitialModel) -> ModelBuilt:
    spec = effect.spec
    model = evaluation.new_model(spec.model_architecture, spec.dataset, seed=spec.seed)
    data = models.to_safetensors(model)
    digest = models.sha256_hex(data)
    await store.insert_model(
        conn, task_id=effect.task_id, version=0, sha256=digest, data=data, round_number=None
    )
    return ModelBuilt(sha256=digest, size_bytes=len(data))


async def _apply(
    conn: psycopg.AsyncConnection, effect: ApplyResult | StepServerOptimizer
) -> ModelApplied:
    """Apply the round's aggregate to the version it trained from (x + delta, or the task's
    server optimizer's step from the state stored with that version), evaluate, and store the
    result with the optimizer's new state.

    Raises
    ------
    InvalidMessage
        The aggregate does not decode, does not fit the model, or is not finite.
    ValueError
        The stored optimizer state is missing or not the optimizer's, or the step overflows.
    """
    task, round_, result = effect.task, effect.round, effect.result
    spec = task.spec
    _, data = await store.get_model(conn, task.task_id, round_.model_version_in)
    delta = arrays.from_bytes(result.delta)  # InvalidMessage when malformed
    if arrays.shapes_of(delta) != evaluation.param_shapes(
        spec.model_architecture, spec.dataset
    ) or not all(np.isfinite(a).all() for a in delta):
        raise ProtocolViolation("round result's delta does not fit the model or is not finite")
    optimizer = None
    state_in: bytes | None = None
    if isinstance(effect, StepServerOptimizer):
        optimizer = strategy.optimizer_for(spec.strategy)
        if optimizer is None:
            raise ValueError(f"strategy {spec.strategy.name} has no server optimizer")
        state_in = await store.get_optimizer_state(conn, task.task_id, round_.model_version_in)
        if state_in is None and round_.model_version_in > 0:
            # Only version 0 comes before any step: starting again from zero would silently
            # forget every round's momentum.
            raise ValueError(
                f"model version {round_.model_version_in} of task {task.task_id} has no "
                f"{spec.strategy.name} state"
            )

    def apply_and_evaluate() -> tuple[bytes, bytes | None, evaluation.Evaluation]:
        model = models.load_into(
            evaluation.new_model(spec.model_architecture, spec.dataset, seed=spec.seed), data
        )
        state_out = None
        if optimizer is not None:
            step = strategy.server_step(optimizer, models.get_arrays(model), delta, state_in)
            models.set_arrays(model, step.model)
            state_out = step.state
        else:
            model = evaluation.apply_delta(model, delta)
        return models.to_safetensors(model), state_out, evaluation.evaluate(model, spec.dataset)

    history = await store.accuracies(conn, task.task_id)
    new_data, state_out, scores = await asyncio.to_thread(apply_and_evaluate)
    version = round_.model_version_in + 1
    digest = models.sha256_hex(new_data)
    await store.insert_model(
        conn,
        task_id=task.task_id,
        version=version,
        sha256=digest,
        data=new_data,
        round_number=round_.round_number,
        optimizer_state=state_out,
    )
    return ModelApplied(
        result=result,
        version=version,
        sha256=digest,
        size_bytes=len(new_data),
        model_in_size=len(data),
        accuracy=scores.accuracy,
        loss=scores.loss,
        history=tuple(history),
        now=datetime.now(UTC),
    )


async def _offer(conn: psycopg.AsyncConnection, effect: OpenRound) -> DevicesOffered:
    task = effect.task
    spec = task.spec
    candidates = await store.online_candidates(conn)
    return DevicesOffered(
        round_number=effect.round_number,
        candidates=candidates,
        busy=frozenset(await store.busy_devices(conn)),
        exhausted=frozenset(await store.exhausted_devices(conn, task.task_id)),
        asks=await store.asks(conn, task.task_id),
        local_dp=await local_privacy.settings_for(spec, (c.privacy_level for c in candidates)),
        attempt=await store.next_attempt(conn, task.task_id, effect.round_number),
        model_sha256=await store.get_model_digest(conn, task.task_id, task.model_version),
        param_shapes=evaluation.param_shapes(spec.model_architecture, spec.dataset),
        round_id=uuid4(),
        now=datetime.now(UTC),
        # Only a DP task's draw uses it; from the OS's entropy, never stored (core/spend.py).
        secret_seed=secrets.randbits(128) if spec.privacy is not None else 0,
        # Only a secure task's try uses it: its SecAgg+ graph, never predictable from anything
        # public (core/secure_aggregation.py). A DP try draws its own when approved.
        graph_seed=draw_graph_seed(spec) if spec.privacy is None else None,
    )


def draw_graph_seed(spec: TaskSpec) -> bytes | None:
    """A fresh SecAgg+ graph seed from the OS's entropy for a secure task's try, else None."""
    if spec.secure_aggregation is None:
        return None
    return secrets.token_bytes(secure_aggregation.GRAPH_SEED_BYTES)
