"""What the lifecycle state machine reads: one task, the round in play, and their statuses.

These records are what the shell loads (locked) from PostgreSQL and what ``decide`` returns
changed; the store maps them to and from rows, so a status never travels as free text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from fedcommon.messages.v1 import TaskSpec, TaskState


class RoundStatus(StrEnum):
    """A round try's status; ``coordinator.rounds.status`` is CHECKed to these values.

    A DP task's try is first ``awaiting_spend``: its devices are drawn, its privacy spend is
    asked for; approved, it opens; refused, it is ``abandoned`` and the task completes.
    A try is ``open`` until its result is applied (``completed``), the aggregator reports it
    short or its deadline passes (``failed``: the round is re-tried), or its task ends under it
    (``abandoned``: never re-tried).
    """

    AWAITING_SPEND = "awaiting_spend"
    OPEN = "open"
    COMPLETED = "completed"
    FAILED = "failed"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class Task:
    task_id: UUID
    spec: TaskSpec
    state: TaskState
    # The last round applied to the model (0 before the first), and the model it produced.
    current_round: int
    model_version: int
    # Since when the task has waited for enough eligible devices to open a round.
    waiting_since: datetime | None = None
    # Who created it (the JWT subject): whom a privacy spend is asked on behalf of.
    created_by: str = "unknown"
    # Adaptive clipping: the C of the next DP round (None: the privacy section's clip_norm).
    dp_clip_norm: float | None = None


@dataclass(frozen=True)
class Round:
    """One try (``attempt``) of a round: a failed try is re-issued as a new try, new id."""

    round_id: UUID
    task_id: UUID
    round_number: int
    attempt: int
    status: RoundStatus
    participants: tuple[str, ...]
    model_version_in: int
    # Past it (and a grace) the tick takes the try as lost: a secure task's try includes its
    # three later SecAgg+ stages (core/secure_aggregation.deadlines).
    deadline: datetime
    # A DP try: the Poisson rate its devices were drawn with, and q times the pool drawn from.
    sample_rate: float | None = None
    expected_participants: float | None = None
    # A DP try: the clipping norm C it asked its spend for.
    clip_norm: float | None = None

    @property
    def in_play(self) -> bool:
        """Open, or waiting for its privacy spend: either way the task's current try."""
        return self.status in (RoundStatus.OPEN, RoundStatus.AWAITING_SPEND)


@dataclass(frozen=True)
class Evaluation:
    """A federated evaluation of ``model_version`` (produced by ``round_number``) while it is
    open: the devices asked and until when their answers count (core/federated_evaluation)."""

    evaluation_id: UUID
    task_id: UUID
    round_number: int
    model_version: int
    devices: tuple[str, ...]
    deadline: datetime
    # The answers stored so far (evaluations.answered, counted as each is stored), so that
    # an answer is tallied against all of them only when it may be the last.
    answered: int = 0


@dataclass(frozen=True)
class State:
    """What ``decide`` sees of one task.

    ``task`` is None for a task that does not exist (yet). ``round`` is the round the event
    concerns: the round a result or failure names, else the task's open round (None if none).
    ``evaluation`` is the task's open federated evaluation (None if none).
    """

    task: Task | None
    round: Round | None = None
    # The task's open federated evaluation: the task waits for it before its next round.
    evaluation: Evaluation | None = None
