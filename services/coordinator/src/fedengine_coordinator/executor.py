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

from fedcommon import arrays, model_files, models, outbox
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
    CloseEvaluation,
    CloseRound,
    CompleteRound,
    Effect,
    Emit,
    Ignored,
    InsertEvaluation,
    InsertRound,
    InsertTask,
    LogEvent,
    OpenEvaluation,
    OpenRound,
    RecordEvaluationResult,
    SetTaskState,
    SetWaiting,
    StepServerOptimizer,
    TallyEvaluation,
)
from fedengine_coordinator.core.events import (
    DevicesOffered,
    EvaluationOffered,
    EvaluationTallied,
    Event,
    ModelApplied,
    ModelBuilt,
)
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
        decided and carried out at once, before the effects after it. Returns the state.

        The messages to send (``Emit``) go to the outbox together at the end, in their order
        and in the same transaction: nothing in it reads the outbox, and one statement for a
        round's dozen messages is one wait on the database instead of a dozen."""
        emits: list[Emit] = []
        state = await self._run(conn, state, event, emits)
        await outbox.enqueue_many(
            conn,
            schema=store.SCHEMA,
            settings=self.kafka,
            messages=[(e.base, e.key, e.message) for e in emits],
        )
        return state

    async def _run(
        self, conn: psycopg.AsyncConnection, state: State, event: Event, emits: list[Emit]
    ) -> State:
        state, effects = machine.decide(state, event)
        for effect in effects:
            if isinstance(effect, Emit):
                emits.append(effect)
                continue
            answer = await self._execute(conn, effect)
            if answer is not None:
                state = await self._run(conn, state, answer, emits)
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
                await outbox.enqueue_many(
                    conn, schema=store.SCHEMA, settings=self.kafka, messages=[(base, key, message)]
                )
            case BuildInitialModel():
                return await _build(conn, effect)
            case ApplyResult() | StepServerOptimizer():
                return await _apply(conn, effect)
            case OpenRound():
                return await _offer(conn, effect)
            case InsertEvaluation(evaluation=evaluation):
                await store.insert_evaluation(conn, evaluation)
                logger.info(
                    "task %s: %d devices asked to evaluate version %d",
                    evaluation.task_id,
                    len(evaluation.devices),
                    evaluation.model_version,
                )
            case RecordEvaluationResult():
                await store.record_evaluation_result(
                    conn,
                    evaluation_id=effect.evaluation_id,
                    device_id=effect.device_id,
                    num_examples=effect.num_examples,
                    loss=effect.loss,
                    metrics=effect.metrics,
                )
            case CloseEvaluation():
                await store.close_evaluation(
                    conn,
                    evaluation_id=effect.evaluation_id,
                    task_id=effect.task_id,
                    round_number=effect.round_number,
                    status=effect.status,
                    answered=effect.answered,
                    num_examples=effect.num_examples,
                    loss=effect.loss,
                    accuracy=effect.accuracy,
                    metrics=effect.metrics,
                )
                logger.info(
                    "evaluation %s %s: %d answered, accuracy %s",
                    effect.evaluation_id,
                    effect.status,
                    effect.answered,
                    "none" if effect.accuracy is None else f"{effect.accuracy:.4f}",
                )
            case OpenEvaluation():
                return await _offer_evaluation(conn, effect)
            case TallyEvaluation(evaluation=evaluation, final=final):
                return EvaluationTallied(
                    results=await store.evaluation_results(conn, evaluation.evaluation_id),
                    history=tuple(await store.accuracies(conn, evaluation.task_id, federated=True)),
                    final=final,
                )
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
        "round %s applied as version %d: central accuracy %s",
        effect.round_id,
        effect.model_version_out,
        "none (no central data)" if effect.accuracy is None else f"{effect.accuracy:.4f}",
    )


async def _build(conn: psycopg.AsyncConnection, effect: BuildInitialModel) -> ModelBuilt:
    """Store version 0: the built-in model built from the task's seed, or a copy of the
    uploaded model the task names (its tensor order written into the file).

    Raises
    ------
    LookupError
        The uploaded model was never stored.
    ValueError
        Its sha256 is not the one the task names, or the file is not a model.
    """
    spec = effect.spec
    if spec.initial_model is not None:
        uploaded_sha, uploaded = await store.get_uploaded_model(conn, spec.initial_model.model_id)
        if uploaded_sha != spec.initial_model.sha256:
            raise ValueError(
                f"initial model {spec.initial_model.model_id} has sha256 {uploaded_sha}, not "
                f"the {spec.initial_model.sha256} the task names"
            )
        data = model_files.write(*model_files.read(uploaded))
    else:
        data = models.to_safetensors(evaluation.built_in(spec, seed=spec.seed))
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
    if arrays.shapes_of(delta) != model_files.shapes(data) or not all(
        np.isfinite(a).all() for a in delta
    ):
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

    def apply_and_evaluate() -> tuple[bytes, bytes | None, evaluation.Evaluation | None]:
        # Named tensors only: the model's code is needed just for central evaluation, which a
        # task on an uploaded model (no central data) does not have.
        names, current = model_files.read(data)
        state_out = None
        if optimizer is not None:
            step = strategy.server_step(optimizer, current, delta, state_in)
            updated, state_out = step.model, step.state
        else:
            updated = evaluation.apply_delta(current, delta)
        scores = evaluation.evaluate_central(spec, updated)
        return model_files.write(names, updated), state_out, scores

    history = await store.accuracies(conn, task.task_id, federated=spec.evaluated_by_devices)
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
        accuracy=None if scores is None else scores.accuracy,
        loss=None if scores is None else scores.loss,
        history=tuple(history),
        now=datetime.now(UTC),
    )


async def _offer(conn: psycopg.AsyncConnection, effect: OpenRound) -> DevicesOffered:
    task = effect.task
    spec = task.spec
    reads = await store.offer_reads(
        conn,
        task_id=task.task_id,
        model_version=task.model_version,
        round_number=effect.round_number,
        waiting_since=task.waiting_since,
    )
    candidates = reads.candidates
    return DevicesOffered(
        round_number=effect.round_number,
        candidates=candidates,
        busy=frozenset(reads.busy),
        exhausted=frozenset(reads.exhausted),
        asks=reads.asks,
        local_dp=await local_privacy.settings_for(spec, (c.privacy_level for c in candidates)),
        attempt=reads.attempt,
        model_sha256=reads.model_sha256,
        param_shapes=model_files.shapes(reads.model),
        round_id=uuid4(),
        now=datetime.now(UTC),
        # Only a DP task's draw uses it; from the OS's entropy, never stored (core/spend.py).
        secret_seed=secrets.randbits(128) if spec.privacy is not None else 0,
        # Only a secure task's try uses it: its SecAgg+ graph, never predictable from anything
        # public (core/secure_aggregation.py). A DP try draws its own when approved.
        graph_seed=draw_graph_seed(spec) if spec.privacy is None else None,
        waiting=reads.waiting,
    )


async def _offer_evaluation(
    conn: psycopg.AsyncConnection, effect: OpenEvaluation
) -> EvaluationOffered:
    task = effect.task
    return EvaluationOffered(
        round_number=effect.round_number,
        model_version=effect.model_version,
        candidates=await store.online_candidates(conn),
        busy=frozenset(await store.busy_devices(conn)),
        model_sha256=await store.get_model_digest(conn, task.task_id, effect.model_version),
        evaluation_id=uuid4(),
        now=datetime.now(UTC),
        history=tuple(await store.accuracies(conn, task.task_id, federated=True)),
    )


def draw_graph_seed(spec: TaskSpec) -> bytes | None:
    """A fresh SecAgg+ graph seed from the OS's entropy for a secure task's try, else None."""
    if spec.secure_aggregation is None:
        return None
    return secrets.token_bytes(secure_aggregation.GRAPH_SEED_BYTES)
