"""Task lifecycle: which command is allowed in which state, and what it leads to.

Shared by the coordinator (which decides) and the gateway (which refuses a command that cannot
apply with 409 instead of accepting it).
"""

from __future__ import annotations

from enum import StrEnum

from fedcommon.messages.v1 import TaskState

FINISHED = frozenset({TaskState.COMPLETED, TaskState.CANCELLED, TaskState.FAILED})


class Command(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


_TRANSITIONS: dict[tuple[TaskState, Command], TaskState] = {
    (TaskState.CREATED, Command.START): TaskState.RUNNING,
    (TaskState.RUNNING, Command.PAUSE): TaskState.PAUSED,
    (TaskState.PAUSED, Command.RESUME): TaskState.RUNNING,
    (TaskState.CREATED, Command.CANCEL): TaskState.CANCELLED,
    (TaskState.RUNNING, Command.CANCEL): TaskState.CANCELLED,
    (TaskState.PAUSED, Command.CANCEL): TaskState.CANCELLED,
}


def next_state(state: TaskState, command: Command) -> TaskState | None:
    """Return the state ``command`` moves a task in ``state`` to, or None if not allowed."""
    return _TRANSITIONS.get((state, command))


def opens_round(state: TaskState) -> bool:
    """Whether a task in ``state`` may open a new round (a paused task finishes its round only)."""
    return state == TaskState.RUNNING
