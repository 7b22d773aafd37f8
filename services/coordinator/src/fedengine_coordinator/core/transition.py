"""What every transition shares: the decision's shape and the move of a task to a new state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple, TypeVar

from fedcommon import lifecycle, topics
from fedcommon.messages.v1 import StopReason, TaskState, TaskStateChanged
from fedengine_coordinator.core import stopping
from fedengine_coordinator.core.effects import Effect, Emit, LogEvent, OpenRound, SetTaskState
from fedengine_coordinator.core.events import Event
from fedengine_coordinator.core.state import Round, State, Task

PRODUCER = "coordinator"

_T = TypeVar("_T")


class Decision(NamedTuple):
    """``decide``'s answer; a tuple, so that ``state, effects = decide(...)`` reads as such."""

    state: State
    effects: list[Effect]


def open_round_of(state: State) -> Round | None:
    """The round in play (open, or awaiting its privacy spend): a closed one neither blocks nor
    is closed again."""
    return state.round if state.round and state.round.in_play else None


def move(
    task: Task,
    target: TaskState,
    reason: StopReason | None = None,
    *,
    detail: str | None = None,
    issued_by: str | None = None,
) -> tuple[Task, list[Effect]]:
    """Move ``task`` to ``target`` and announce it; an ending is also the task's last logged
    event, naming the stop reason and ``detail``."""
    effects: list[Effect] = [SetTaskState(task.task_id, target, reason)]
    if target in lifecycle.FINISHED:
        effects.append(
            LogEvent(
                task.task_id,
                target.value,
                issued_by=issued_by,
                detail=stopping.end_detail(reason, detail),
            )
        )
    effects.append(
        Emit(
            topics.EVENTS,
            str(task.task_id),
            TaskStateChanged(
                producer=PRODUCER, task_id=task.task_id, state=target, stop_reason=reason
            ),
        )
    )
    return replace(task, state=target), effects


def judge(
    task: Task, *, rounds_done: int, accuracies: Sequence[float]
) -> tuple[Task, list[Effect]]:
    """After ``rounds_done`` rounds and their accuracies (the ones the task's stopping rules
    read): complete the task if a rule says so, else open the next round (only while it runs;
    a paused task opens it on resume)."""
    reason = stopping.stop_reason(task.spec, rounds_done=rounds_done, accuracies=accuracies)
    if reason is not None:
        detail = stopping.explain(task.spec, reason, rounds_done=rounds_done, accuracies=accuracies)
        return move(task, TaskState.COMPLETED, reason, detail=detail)
    if lifecycle.opens_round(task.state):
        return task, [OpenRound(task, rounds_done + 1)]
    return task, []


def required(value: _T | None, event: Event) -> _T:
    """An answer to the core's own request comes with what the request was made for."""
    if value is None:
        raise ValueError(f"{type(event).__name__} without the task and round it answers")
    return value
