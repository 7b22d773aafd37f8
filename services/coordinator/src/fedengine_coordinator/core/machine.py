"""The task and round lifecycle as one pure function: ``decide(state, event) -> (state, effects)``.

No I/O, no clock, no randomness but the seeded device selection: everything the outside world
knows comes in with the event (events.py), everything that must happen goes out as effects
(effects.py), and the shell (handlers.py, executor.py) loads, decides, stores and writes the
outbox in one transaction. (Outgoing messages take their id and ``sent_at`` from the envelope's
defaults; no decision reads them.) The task's own states and commands are
``fedcommon.lifecycle`` (shared with the gateway, which refuses impossible commands early);
round tries have :class:`~fedengine_coordinator.core.state.RoundStatus`. Task-level
transitions are here, a round's in rounds.py.

A task's life::

    created --start--> running --pause--> paused --resume--> running
    created/running/paused --cancel--> cancelled (an open round is abandoned)
    running: OpenRound -> DevicesOffered -> round opened | waiting | failed (too_few_devices)
    open round: ResultReceived -> ApplyResult (x + delta) or StepServerOptimizer (FedAvgM,
                FedAdam, FedYogi, FedAdagrad) -> ModelApplied -> completed (max_rounds,
                target_accuracy, converged) | next round (only while running)
    applied, with federated_evaluation due: OpenEvaluation -> ... -> evaluation closed -> the
                same stopping rules on the devices' accuracy (core/federated_evaluation.py);
                no round opens while an evaluation is open
    open round: FailureReceived (aggregator, or lost at the deadline) -> the same round again
                (only while running; a paused task re-tries on resume) | failed (round_failed)
    any unfinished state: ErrorRaised -> failed (error)

A DP task (spend.py) has one more stage before a try opens:

    running, DP: OpenRound -> DevicesOffered -> try awaiting_spend (Poisson-drawn devices,
                 spend request on fed.privacy) -> SpendApproved -> open (as above) |
                 SpendRefused -> abandoned, task completed (privacy_budget_exhausted) or
                 failed (a spend that cannot be accounted) |
                 SpendTimedOut (no answer within COORDINATOR_SPEND_TIMEOUT_S) -> abandoned,
                 task failed

The server optimizer stage is built that way: for a task whose strategy has one,
``rounds.on_result`` asks for ``StepServerOptimizer`` instead of ``ApplyResult``, and the shell
answers it with the same ``ModelApplied`` (core/strategy.py holds the pure step), so that
everything after it (stopping rules, the next round) stays as is.
"""

from __future__ import annotations

from dataclasses import replace

from fedcommon import lifecycle, topics
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import ModelPublished, StopReason, TaskState, TaskStateChanged
from fedengine_coordinator.core import federated_evaluation, rounds, spend
from fedengine_coordinator.core.effects import (
    BuildInitialModel,
    CloseRound,
    Effect,
    Emit,
    Ignored,
    InsertTask,
    LogEvent,
    OpenRound,
)
from fedengine_coordinator.core.events import (
    CommandReceived,
    CreateReceived,
    DevicesOffered,
    ErrorRaised,
    EvaluationDue,
    EvaluationOffered,
    EvaluationReceived,
    EvaluationTallied,
    Event,
    FailureReceived,
    ModelApplied,
    ModelBuilt,
    ResultReceived,
    SpendApproved,
    SpendRefused,
    SpendTimedOut,
    Ticked,
)
from fedengine_coordinator.core.state import RoundStatus, State, Task
from fedengine_coordinator.core.transition import (
    PRODUCER,
    Decision,
    move,
    open_round_of,
    required,
)

__all__ = ["Decision", "decide"]


def decide(state: State, event: Event) -> Decision:
    """Return the task's state after ``event`` and the effects that make it so, in order.

    Parameters
    ----------
    state
        The task (locked by the shell) and the round the event concerns.
    event
        What happened.

    Returns
    -------
    Decision
        The new state and the effects; no effects when the event changes nothing.

    Raises
    ------
    ProtocolViolation
        A round result or failure names another task than its round's.
    """
    match event:
        case CreateReceived():
            return _create(state, event)
        case CommandReceived():
            return _command(state, event)
        case ResultReceived():
            return rounds.on_result(state, event)
        case ModelApplied():
            return rounds.on_applied(state, event)
        case FailureReceived():
            return rounds.on_failure(state, event)
        case Ticked():
            return _ticked(state)
        case ErrorRaised():
            return _error(state, event)
        case ModelBuilt():
            return _built(state, event)
        case DevicesOffered():
            return rounds.on_offered(state, event)
        case SpendApproved():
            return spend.on_approved(state, event)
        case SpendRefused():
            return spend.on_refused(state, event)
        case SpendTimedOut():
            return spend.on_timed_out(state, event)
        case EvaluationOffered():
            return federated_evaluation.on_offered(state, event)
        case EvaluationReceived():
            return federated_evaluation.on_received(state, event)
        case EvaluationDue():
            return federated_evaluation.on_due(state, event)
        case EvaluationTallied():
            return federated_evaluation.on_tallied(state, event)


def _create(state: State, event: CreateReceived) -> Decision:
    if state.task is not None:
        return Decision(state, [Ignored(f"task {event.task_id} exists")])
    task = Task(event.task_id, event.spec, TaskState.CREATED, current_round=0, model_version=0)
    return Decision(
        State(task),
        [
            InsertTask(task.task_id, event.spec, event.issued_by),
            BuildInitialModel(task.task_id, event.spec),
            LogEvent(task.task_id, "created", issued_by=event.issued_by),
            Emit(
                topics.EVENTS,
                str(task.task_id),
                TaskStateChanged(producer=PRODUCER, task_id=task.task_id, state=task.state),
            ),
        ],
    )


def _built(state: State, event: ModelBuilt) -> Decision:
    task = required(state.task, event)
    published = ModelPublished(
        producer=PRODUCER,
        task_id=task.task_id,
        version=0,
        sha256=event.sha256,
        size_bytes=event.size_bytes,
    )
    return Decision(state, [Emit(topics.MODELS, str(task.task_id), published)])


def _command(state: State, event: CommandReceived) -> Decision:
    task = state.task
    if task is None:
        return Decision(state, [Ignored(f"{event.command.value} for an unknown task")])
    target = lifecycle.next_state(task.state, event.command)
    if target is None:
        ignored = LogEvent(
            task.task_id,
            f"{event.command.value}_ignored",
            issued_by=event.issued_by,
            detail=f"not allowed in state {task.state.value}",
        )
        return Decision(state, [ignored])
    effects: list[Effect] = [LogEvent(task.task_id, event.command.value, issued_by=event.issued_by)]
    open_round = open_round_of(state)
    if event.command == Command.CANCEL:
        round_ = state.round
        effects += federated_evaluation.abandon(task, state.evaluation)
        if open_round is not None:
            effects.append(CloseRound(open_round.round_id, RoundStatus.ABANDONED, "task cancelled"))
            round_ = replace(open_round, status=RoundStatus.ABANDONED)
        task, moved = move(
            task,
            target,
            StopReason.CANCELLED,
            detail=None if open_round is None else f"round {open_round.round_number} abandoned",
            issued_by=event.issued_by,
        )
        return Decision(State(task, round_), effects + moved)
    task, moved = move(task, target)
    effects += moved
    # A resumed task whose round (or evaluation) is still open waits for it; one that lost its
    # round while paused opens the next try now.
    if lifecycle.opens_round(task.state) and not _busy(state):
        effects.append(OpenRound(task, task.current_round + 1))
    return Decision(replace(state, task=task), effects)


def _busy(state: State) -> bool:
    """The task has a round in play or an evaluation open: no round opens beside it."""
    return open_round_of(state) is not None or state.evaluation is not None


def _ticked(state: State) -> Decision:
    task = state.task
    if task is None or task.state != TaskState.RUNNING or _busy(state):
        return Decision(state, [])
    return Decision(state, [OpenRound(task, task.current_round + 1)])


def _error(state: State, event: ErrorRaised) -> Decision:
    task = state.task
    if task is None:
        return Decision(state, [Ignored("error in a task that does not exist")])
    if task.state in lifecycle.FINISHED:
        return Decision(state, [])
    effects: list[Effect] = federated_evaluation.abandon(task, state.evaluation)
    round_ = state.round
    open_round = open_round_of(state)
    if open_round is not None:
        effects.append(CloseRound(open_round.round_id, RoundStatus.ABANDONED, "task failed"))
        round_ = replace(open_round, status=RoundStatus.ABANDONED)
    task, moved = move(task, TaskState.FAILED, StopReason.ERROR, detail=event.detail)
    return Decision(State(task, round_, None), effects + moved)
