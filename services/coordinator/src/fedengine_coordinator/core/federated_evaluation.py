"""Federated evaluation: devices judge a new model version on their own held-out data.

For a task with ``federated_evaluation``, a round's applied version is evaluated by devices
when it is due (every ``every_rounds`` rounds, and after the last); the task waits for the
evaluation before its next round, because the stopping rules read its verdict::

    round applied -> OpenEvaluation -> EvaluationOffered -> evaluation open (evaluate.requested
        to a fraction of the eligible devices) | skipped (too few devices: no verdict)
    open: EvaluationReceived (checked: the device was asked, in time, signed) ->
          RecordEvaluationResult (+ TallyEvaluation once every device asked may have
          answered) -> EvaluationTallied -> all answered?
    open: EvaluationDue (the tick, past the deadline and a grace) -> TallyEvaluation(final)
    closed: the example-weighted means become the round's federated metrics -> stop or next

The services never run a user's model, so this is the only verdict a task on an uploaded
model can have. Pure: the shell loads, verifies nothing, stores and sends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

from fedcommon import lifecycle, signing, topics
from fedcommon.constraints import MAX_DEVICES_PER_ROUND
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import EvaluateRequested, RoundEvaluated, TaskSpec
from fedengine_coordinator.core import selection
from fedengine_coordinator.core.effects import (
    CloseEvaluation,
    Effect,
    Emit,
    Ignored,
    InsertEvaluation,
    LogEvent,
    RecordEvaluationResult,
    TallyEvaluation,
)
from fedengine_coordinator.core.events import (
    DeviceEvaluation,
    EvaluationDue,
    EvaluationOffered,
    EvaluationReceived,
    EvaluationTallied,
)
from fedengine_coordinator.core.state import Evaluation, State, Task
from fedengine_coordinator.core.transition import PRODUCER, Decision, judge, required

# The selection stream of an evaluation: apart from every training try's (attempt >= 0).
_EVALUATION_STREAM = 2**31 - 1
ACCURACY = "accuracy"


def due(spec: TaskSpec, round_number: int) -> bool:
    """Whether the version ``round_number`` produced is evaluated by devices."""
    settings = spec.federated_evaluation
    if settings is None:
        return False
    return round_number % settings.every_rounds == 0 or round_number >= spec.rounds


def how_many(pool_size: int, *, fraction: float, min_devices: int) -> int:
    """The number of devices asked: the fraction of the pool, at least ``min_devices``, at
    most MAX_DEVICES_PER_ROUND (a round's own bound, and what round.evaluated can report: a
    fleet of 100 000 simulated devices at the default fraction 1.0 would otherwise be asked
    whole, and its tally could not be sent)."""
    wanted = max(min_devices, math.ceil(fraction * pool_size))
    return min(pool_size, MAX_DEVICES_PER_ROUND, wanted)


def on_offered(state: State, event: EvaluationOffered) -> Decision:
    task = required(state.task, event)
    settings = task.spec.federated_evaluation
    if settings is None or state.evaluation is not None:
        return Decision(state, [Ignored(f"no evaluation to open for task {task.task_id}")])
    spec = task.spec
    allowed = set(spec.participating_devices) if spec.participating_devices else None
    pool = selection.eligible(event.candidates, busy=set(event.busy), allowed=allowed)
    if len(pool) < settings.min_devices:
        skipped = LogEvent(
            task.task_id,
            "evaluation_skipped",
            detail=f"version {event.model_version}: {len(pool)} eligible devices, "
            f"{settings.min_devices} needed",
        )
        task, judged = judge(task, rounds_done=event.round_number, accuracies=event.history)
        return Decision(replace(state, task=task), [skipped, *judged])
    chosen = selection.select(
        pool,
        count=how_many(len(pool), fraction=settings.fraction, min_devices=settings.min_devices),
        rng=selection.round_rng(
            seed=spec.seed, round_number=event.round_number, attempt=_EVALUATION_STREAM
        ),
    )
    evaluation = Evaluation(
        evaluation_id=event.evaluation_id,
        task_id=task.task_id,
        round_number=event.round_number,
        model_version=event.model_version,
        devices=tuple(c.device_id for c in chosen),
        deadline=event.now + timedelta(seconds=settings.timeout_s),
    )
    effects: list[Effect] = [InsertEvaluation(evaluation)]
    for device_id in evaluation.devices:
        request = EvaluateRequested(
            producer=PRODUCER,
            task_id=task.task_id,
            evaluation_id=evaluation.evaluation_id,
            device_id=device_id,
            round_number=evaluation.round_number,
            model_version=evaluation.model_version,
            model_sha256=event.model_sha256,
            deadline=evaluation.deadline,
            model_architecture=spec.model_architecture,
            dataset=spec.dataset,
            model_hidden=spec.model_hidden,
            standardize=spec.standardize,
            batch_size=spec.batch_size,
            seed=spec.seed,
        )
        effects.append(Emit(topics.DEVICE_COMMANDS, device_id, request))
    return Decision(replace(state, evaluation=evaluation), effects)


def refusal(evaluation: Evaluation | None, event: EvaluationReceived) -> str | None:
    """Why a device's evaluation does not count (None: it counts)."""
    submitted = event.submitted
    if evaluation is None or evaluation.evaluation_id != submitted.evaluation_id:
        return f"evaluation {submitted.evaluation_id} is not open"
    if submitted.task_id != evaluation.task_id:
        return f"evaluation {evaluation.evaluation_id} is not of task {submitted.task_id}"
    if submitted.device_id not in evaluation.devices:
        return f"device {submitted.device_id} was not asked"
    if (submitted.round_number, submitted.model_version) != (
        evaluation.round_number,
        evaluation.model_version,
    ):
        return "round or model version differs from the request's"
    if event.now > evaluation.deadline:
        return "late: after the evaluation's deadline"
    if event.public_key is None:
        return f"device {submitted.device_id} has no enrolled key"
    payload = signing.evaluation_payload(
        task_id=submitted.task_id,
        evaluation_id=submitted.evaluation_id,
        device_id=submitted.device_id,
        round_number=submitted.round_number,
        model_version=submitted.model_version,
        num_examples=submitted.num_examples,
        loss=submitted.loss,
        metrics=submitted.metrics,
    )
    try:
        signing.verify(public_key=event.public_key, signature=submitted.signature, payload=payload)
    except ProtocolViolation:  # signing.verify raises only this
        return "bad signature"
    return None


def on_received(state: State, event: EvaluationReceived) -> Decision:
    evaluation = state.evaluation
    why = refusal(evaluation, event)
    if why is not None or evaluation is None:
        return Decision(
            state, [Ignored(f"evaluation from {event.submitted.device_id} refused: {why}")]
        )
    submitted = event.submitted
    record = RecordEvaluationResult(
        evaluation.evaluation_id,
        submitted.device_id,
        submitted.num_examples,
        submitted.loss,
        dict(submitted.metrics),
    )
    # Read every answer back only when this one may be the last: tallying on each answer would
    # read k rows for the k-th, O(n^2) over an evaluation of n devices (minutes at 10 000).
    if evaluation.answered + 1 < len(evaluation.devices):
        return Decision(state, [record])
    return Decision(state, [record, TallyEvaluation(evaluation, final=False)])


def on_due(state: State, event: EvaluationDue) -> Decision:
    if state.evaluation is None or state.evaluation.evaluation_id != event.evaluation_id:
        return Decision(state, [])
    return Decision(state, [TallyEvaluation(state.evaluation, final=True)])


def received_at(*, processed: datetime, logged_ms: int | None) -> datetime:
    """When an answer counts as received: when it reached the log, if that was before it was
    processed.

    A coordinator that was down, or waited out a database outage, processes answers after the
    fact; judged by that time, answers that came in time would be refused as late, and the
    outage would become lost work. The log time is the record's timestamp, which its producer
    sets: a device that backdates it can at most have its own late answer counted while the
    evaluation is still open (as answering in time would have); it reopens nothing and
    speaks for no other device. A missing or negative timestamp leaves the processing time.
    """
    if logged_ms is None or logged_ms < 0:
        return processed
    return min(processed, datetime.fromtimestamp(logged_ms / 1000, UTC))


def closable(
    overdue: Sequence[UUID], seen: Mapping[UUID, float], *, now: float, grace_s: float
) -> tuple[list[UUID], dict[UUID, float]]:
    """Which overdue evaluations close now, and when each still open was first seen overdue.

    ``overdue`` are the evaluations past their deadline, ``seen`` when (``now``'s clock, in
    seconds) this process first found each of them so. One closes ``grace_s`` after that, not
    at once: after a restart or an outage the consumer may still hold answers that reached the
    log in time (:func:`received_at`), and the tick, which runs from the first moment the
    database answers, must not close the evaluation before they are read.
    """
    first_seen = {evaluation_id: seen.get(evaluation_id, now) for evaluation_id in overdue}
    due = [e for e in overdue if now - first_seen[e] >= grace_s]
    return due, {e: t for e, t in first_seen.items() if e not in due}


def on_tallied(state: State, event: EvaluationTallied) -> Decision:
    task = required(state.task, event)
    evaluation = required(state.evaluation, event)
    if not event.final and len(event.results) < len(evaluation.devices):
        return Decision(state, [])
    means = weighted_means(event.results)
    examples = sum(r.num_examples for r in event.results)
    accuracy = means.pop(ACCURACY, None)
    loss = means.pop("loss", None)
    effects: list[Effect] = [
        CloseEvaluation(
            evaluation.evaluation_id,
            task.task_id,
            evaluation.round_number,
            "completed",
            answered=len(event.results),
            num_examples=examples,
            loss=loss,
            accuracy=accuracy,
            metrics=means,
        ),
        Emit(
            topics.EVENTS,
            str(task.task_id),
            RoundEvaluated(
                producer=PRODUCER,
                task_id=task.task_id,
                evaluation_id=evaluation.evaluation_id,
                round_number=evaluation.round_number,
                model_version=evaluation.model_version,
                devices=len(event.results),
                num_examples=examples,
                loss=loss,
                accuracy=accuracy,
            ),
        ),
    ]
    if not event.results:
        effects.append(
            LogEvent(
                task.task_id,
                "evaluation_unanswered",
                detail=f"version {evaluation.model_version}: none of "
                f"{len(evaluation.devices)} devices answered in time",
            )
        )
    accuracies = [*event.history] + ([] if accuracy is None else [accuracy])
    state = replace(state, evaluation=None)
    if task.state in lifecycle.FINISHED:
        return Decision(state, effects)
    task, judged = judge(task, rounds_done=evaluation.round_number, accuracies=accuracies)
    return Decision(replace(state, task=task), effects + judged)


def abandon(task: Task, evaluation: Evaluation | None) -> list[Effect]:
    """Close an open evaluation whose task ended under it."""
    if evaluation is None:
        return []
    return [
        CloseEvaluation(
            evaluation.evaluation_id, task.task_id, evaluation.round_number, "abandoned"
        )
    ]


def weighted_means(results: Sequence[DeviceEvaluation]) -> dict[str, float]:
    """The example-weighted mean of the loss (as ``loss``) and of each metric over the devices
    that reported it (a metric only some devices report is averaged over those)."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for result in results:
        for name, value in {**result.metrics, "loss": result.loss}.items():
            sums[name] = sums.get(name, 0.0) + value * result.num_examples
            weights[name] = weights.get(name, 0) + result.num_examples
    return {name: sums[name] / weights[name] for name in sums}
