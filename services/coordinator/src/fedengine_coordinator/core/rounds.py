"""Transitions of a round try: its result applied, its failure, and its opening."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

from fedcommon import lifecycle, topics
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import (
    ModelPublished,
    Participant,
    RoundCompleted,
    StopReason,
    TaskState,
)
from fedengine_coordinator.core import (
    federated_evaluation,
    local_privacy,
    secure_aggregation,
    selection,
    spend,
    strategy,
)
from fedengine_coordinator.core.effects import (
    AdvanceTask,
    ApplyResult,
    CloseRound,
    CompleteRound,
    Effect,
    Emit,
    Ignored,
    InsertRound,
    LogEvent,
    OpenEvaluation,
    OpenRound,
    SetWaiting,
    StepServerOptimizer,
)
from fedengine_coordinator.core.events import (
    DevicesOffered,
    FailureReceived,
    ModelApplied,
    ResultReceived,
)
from fedengine_coordinator.core.opening import new_try, open_messages
from fedengine_coordinator.core.state import Round, RoundStatus, State
from fedengine_coordinator.core.transition import PRODUCER, Decision, judge, move, required


def on_result(state: State, event: ResultReceived) -> Decision:
    round_ = state.round
    if round_ is None or round_.status != RoundStatus.OPEN:
        return Decision(state, [Ignored(f"result for round {event.result.round_id} not open")])
    _check_task(round_, event.result.task_id)
    if state.task is None:
        return Decision(state, [Ignored(f"result for round {round_.round_id} of no task")])
    task = state.task
    if strategy.optimizer_for(task.spec.strategy) is not None:
        return Decision(state, [StepServerOptimizer(task, round_, event.result)])
    return Decision(state, [ApplyResult(task, round_, event.result)])


def on_applied(state: State, event: ModelApplied) -> Decision:
    task = required(state.task, event)
    round_ = required(state.round, event)
    result = event.result
    # Time differences only: no datetime arithmetic that a far-off sent_at could overflow.
    duration = (event.now - result.sent_at).total_seconds() + result.duration_s
    clip = spend.next_clip(task, round_, result)
    key = str(task.task_id)
    effects: list[Effect] = [
        CompleteRound(
            round_.round_id,
            model_version_out=event.version,
            accuracy=event.accuracy,
            loss=event.loss,
            train_loss=result.train_loss,
            num_examples=result.num_examples,
            aggregated=list(result.participants),
            dropped=list(result.dropped),
            rejected=dict(result.rejected),
            bytes_up=result.bytes_up,
            # A DP round's would show how many devices it drew.
            bytes_down=0
            if round_.sample_rate is not None
            else event.model_in_size * len(round_.participants),
            duration_s=duration,
        ),
        AdvanceTask(
            task.task_id,
            round_number=round_.round_number,
            model_version=event.version,
            dp_clip_norm=clip,
        ),
        Emit(
            topics.MODELS,
            key,
            ModelPublished(
                producer=PRODUCER,
                task_id=task.task_id,
                version=event.version,
                sha256=event.sha256,
                size_bytes=event.size_bytes,
            ),
        ),
        Emit(
            topics.EVENTS,
            key,
            RoundCompleted(
                producer=PRODUCER,
                round_id=round_.round_id,
                task_id=task.task_id,
                round_number=round_.round_number,
                model_version=event.version,
                accuracy=event.accuracy,
                loss=event.loss,
            ),
        ),
    ]
    task = replace(task, current_round=round_.round_number, model_version=event.version)
    if clip is not None:
        task = replace(task, dp_clip_norm=clip)
    round_ = replace(round_, status=RoundStatus.COMPLETED)
    done = round_.round_number
    if task.spec.evaluated_by_devices:
        # The devices judge the new version first when it is due (the stopping rules read
        # their verdict); between evaluations there is nothing new to judge.
        if federated_evaluation.due(task.spec, done):
            effects.append(OpenEvaluation(task, done, event.version))
        elif lifecycle.opens_round(task.state):
            effects.append(OpenRound(task, done + 1))
        return Decision(State(task, round_), effects)
    accuracies = [*event.history] + ([] if event.accuracy is None else [event.accuracy])
    task, judged = judge(task, rounds_done=done, accuracies=accuracies)
    return Decision(State(task, round_), effects + judged)


def on_failure(state: State, event: FailureReceived) -> Decision:
    round_ = state.round
    if round_ is None or round_.status != RoundStatus.OPEN:
        return Decision(state, [Ignored("failure of a round that is not open")])
    if event.task_id is not None:
        _check_task(round_, event.task_id)
    task = state.task
    if task is None:
        return Decision(state, [Ignored(f"failure of round {round_.round_id} of no task")])
    failure = event.failure
    rejected = dict(event.rejected)
    needed = task.spec.strategy.params.min_updates
    if round_.sample_rate is not None:
        # A DP round's failure text and counts would say how many devices it drew and how
        # many answered: the aggregator's log has them, the published record does not.
        failure = f"the DP round failed ({event.source.value})"
        rejected = {}
    elif event.received is not None and event.received < needed:
        # The aggregator counts updates; why that many were needed is the strategy's.
        failure = f"{failure} (strategy {task.spec.strategy.name} needs at least {needed})"
    effects: list[Effect] = [
        CloseRound(
            round_.round_id,
            RoundStatus.FAILED,
            failure,
            rejected=rejected,
            source=event.source,
        ),
        LogEvent(
            task.task_id,
            "round_failed",
            detail=f"round {round_.round_number} attempt {round_.attempt}: {failure}",
        ),
    ]
    round_ = replace(round_, status=RoundStatus.FAILED)
    if round_.attempt >= task.spec.max_round_retries:
        task, moved = move(
            task,
            TaskState.FAILED,
            StopReason.ROUND_FAILED,
            detail=f"round {round_.round_number} failed {round_.attempt + 1} times, "
            f"the last: {failure}",
        )
        effects += moved
    elif lifecycle.opens_round(task.state):
        effects.append(OpenRound(task, round_.round_number))
    return Decision(State(task, round_), effects)


def on_offered(state: State, event: DevicesOffered) -> Decision:
    """Open a try of ``event.round_number`` with the eligible devices, or wait for devices, or
    fail the task when the wait is over.

    A task waits for devices that are not there (too few online, allowed, charged) up to
    ``device_wait_s``; for devices that are there but busy in other tasks' rounds, or that it
    yields to tasks that queued before it (first come, first served), up to
    ``queue_wait_s``."""
    task = state.task
    if task is None or not lifecycle.opens_round(task.state):
        return Decision(state, [])
    spec = task.spec
    allowed = set(spec.participating_devices) if spec.participating_devices else None
    # A local-DP device whose budget one more round would pass is not asked.
    spent = set(event.exhausted) | local_privacy.at_task_cap(
        event.candidates, asks=event.asks, planned_rounds=spec.rounds
    )
    pool = selection.eligible(event.candidates, busy=set(event.busy) | spent, allowed=allowed)
    ahead = selection.yields_to(pool, event.waiting, event.candidates)
    if len(pool) < spec.min_devices or ahead:
        return _wait(state, event, pool=len(pool), ahead=ahead, spent=spent, allowed=allowed)
    effects: list[Effect] = []
    if task.waiting_since is not None:
        effects.append(SetWaiting(task.task_id, None))
        task = replace(task, waiting_since=None)
    if spec.privacy is not None:
        # A DP try draws its own devices, secretly, and waits for its spend (spend.py).
        return spend.request_spend(replace(state, task=task), pool, event, effects)
    chosen = selection.select(
        pool,
        count=selection.asked(spec.devices_per_round, spec.over_selection),
        rng=selection.round_rng(
            seed=spec.seed, round_number=event.round_number, attempt=event.attempt
        ),
    )
    round_ = new_try(task, event, (c.device_id for c in chosen))
    effects.append(InsertRound(round_))
    participants = [Participant(device_id=c.device_id, public_key=c.public_key) for c in chosen]
    effects += open_messages(
        task,
        round_,
        participants,
        model_sha256=event.model_sha256,
        param_shapes=event.param_shapes,
        deadline=secure_aggregation.deadlines(spec, now=event.now).train,
        graph_seed=event.graph_seed,
        local_dp=local_privacy.assign(
            round_.participants,
            levels={c.device_id: c.privacy_level for c in chosen},
            settings=event.local_dp,
        ),
    )
    return Decision(State(task, round_), effects)


def _wait(
    state: State,
    event: DevicesOffered,
    *,
    pool: int,
    ahead: int,
    spent: set[str],
    allowed: set[str] | None,
) -> Decision:
    task = required(state.task, event)
    spec = task.spec
    # Queued: enough devices are there, busy elsewhere or yielded to earlier tasks.
    there = len(selection.eligible(event.candidates, busy=spent, allowed=allowed))
    queued = ahead > 0 or there >= spec.min_devices
    why = f"{pool} eligible, {spec.min_devices} needed"
    if there > pool:
        why += f"; {there - pool} more busy in other tasks' rounds"
    if ahead:
        why += f"; yielding to {ahead} {'task' if ahead == 1 else 'tasks'} queued before it"
    if task.waiting_since is None:
        waiting: list[Effect] = [
            SetWaiting(task.task_id, event.now),
            LogEvent(task.task_id, "waiting_for_devices", detail=why),
        ]
        return Decision(replace(state, task=replace(task, waiting_since=event.now)), waiting)
    limit = spec.queue_wait_s if queued else spec.device_wait_s
    if (event.now - task.waiting_since).total_seconds() > limit:
        task, moved = move(
            task,
            TaskState.FAILED,
            StopReason.TOO_FEW_DEVICES,
            detail=f"round {event.round_number}: {why}, for more than {limit:g} s "
            f"({'queue_wait_s' if queued else 'device_wait_s'})",
        )
        return Decision(replace(state, task=task), moved)
    return Decision(state, [])


def _check_task(round_: Round, task_id: UUID) -> None:
    """A round result must name the round's own task: the round id alone is not proof."""
    if round_.task_id != task_id:
        raise ProtocolViolation(f"round {round_.round_id} does not belong to task {task_id}")
