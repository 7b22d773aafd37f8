"""What ``decide`` asks the shell to do, as plain data, in the order it must be done.

Two kinds:

- writes (``InsertTask`` ... ``Emit``): the shell carries each out in the handler's one
  transaction; ``Emit`` goes to the outbox, so a message leaves only if the state it follows
  from was committed;
- requests (``BuildInitialModel``, ``ApplyResult``, ``StepServerOptimizer``, ``OpenRound``):
  work the core cannot do without I/O, a clock or heavy compute. The shell does it and feeds
  the answer back to ``decide`` as the event of the matching name (``ModelBuilt``,
  ``ModelApplied`` for both ways of applying a round, ``DevicesOffered``), in the same
  transaction. A request is always the last effect of a
  decision, so the answer sees every write before it.

``Ignored`` writes nothing; it says why an event changed nothing, for the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from fedcommon.messages.v1 import Envelope, RoundAggregated, StopReason, TaskSpec, TaskState
from fedengine_coordinator.core.events import FailureSource
from fedengine_coordinator.core.state import Evaluation, Round, RoundStatus, Task


@dataclass(frozen=True)
class InsertTask:
    task_id: UUID
    spec: TaskSpec
    created_by: str


@dataclass(frozen=True)
class SetTaskState:
    """Move the task to ``state``; a finishing state also stamps when it finished."""

    task_id: UUID
    state: TaskState
    stop_reason: StopReason | None = None


@dataclass(frozen=True)
class SetWaiting:
    task_id: UUID
    since: datetime | None


@dataclass(frozen=True)
class AdvanceTask:
    """Record that ``round_number`` was applied and produced ``model_version``."""

    task_id: UUID
    round_number: int
    model_version: int
    # Adaptive clipping: the C of the task's next DP round (None: unchanged).
    dp_clip_norm: float | None = None


@dataclass(frozen=True)
class LogEvent:
    """A line of the task's event log (what the gateway shows as the task's history)."""

    task_id: UUID
    kind: str
    issued_by: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class InsertRound:
    round: Round


@dataclass(frozen=True)
class CloseRound:
    """End an open try without a result (``failed`` or ``abandoned``)."""

    round_id: UUID
    status: RoundStatus
    failure: str
    rejected: dict[str, int] = field(default_factory=dict)
    # Set for a failed try: where its failure was seen, for the failed-rounds metric.
    source: FailureSource | None = None


@dataclass(frozen=True)
class CompleteRound:
    """Store a try's result: the model version it produced and what it cost."""

    round_id: UUID
    model_version_out: int
    # Central evaluation's (None: the task has no central data).
    accuracy: float | None
    loss: float | None
    train_loss: float
    num_examples: int
    aggregated: list[str]
    dropped: list[str]
    rejected: dict[str, int]
    bytes_up: int
    bytes_down: int
    duration_s: float


@dataclass(frozen=True)
class ApproveRound:
    """Open a try that waited for its privacy spend, under the approval it got."""

    round_id: UUID
    approval_id: UUID
    epsilon_spent: float
    noise_multiplier: float
    deadline: datetime


@dataclass(frozen=True)
class Emit:
    """Write ``message`` to the outbox for topic ``base`` (unprefixed) under ``key``."""

    base: str
    key: str
    message: Envelope


@dataclass(frozen=True)
class BuildInitialModel:
    """Request: build, store and digest model version 0 of a new task (-> ``ModelBuilt``)."""

    task_id: UUID
    spec: TaskSpec


@dataclass(frozen=True)
class ApplyResult:
    """Request: check the aggregate fits the model, add it to the round's input version,
    evaluate and store the new version (-> ``ModelApplied``)."""

    task: Task
    round: Round
    result: RoundAggregated


@dataclass(frozen=True)
class StepServerOptimizer:
    """Request: as ``ApplyResult``, but the new version is the task's server optimizer's step
    from the round's input version and the optimizer state stored with it; the new state is
    stored with the new version (-> the same ``ModelApplied``, so nothing after it differs)."""

    task: Task
    round: Round
    result: RoundAggregated


@dataclass(frozen=True)
class OpenRound:
    """Request: gather what opening a try of ``round_number`` needs (-> ``DevicesOffered``).

    ``task`` is the task as decided, so the shell needs no second look at it.
    """

    task: Task
    round_number: int


@dataclass(frozen=True)
class InsertEvaluation:
    evaluation: Evaluation


@dataclass(frozen=True)
class RecordEvaluationResult:
    """Keep one device's answer (a second answer of the same device is dropped)."""

    evaluation_id: UUID
    device_id: str
    num_examples: int
    loss: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class CloseEvaluation:
    """End an evaluation: ``completed`` with its example-weighted means (None when nobody
    answered), or ``abandoned`` (its task ended under it); the round that produced the version
    gets the federated metrics."""

    evaluation_id: UUID
    task_id: UUID
    round_number: int
    status: str
    answered: int = 0
    num_examples: int = 0
    loss: float | None = None
    accuracy: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenEvaluation:
    """Request: gather what asking devices to evaluate ``model_version`` needs
    (-> ``EvaluationOffered``)."""

    task: Task
    round_number: int
    model_version: int


@dataclass(frozen=True)
class TallyEvaluation:
    """Request: read back every answer of the evaluation (-> ``EvaluationTallied``); ``final``:
    its deadline passed, so the tally closes it."""

    evaluation: Evaluation
    final: bool


@dataclass(frozen=True)
class Ignored:
    why: str


Write = (
    InsertTask
    | SetTaskState
    | SetWaiting
    | AdvanceTask
    | LogEvent
    | InsertRound
    | CloseRound
    | CompleteRound
    | ApproveRound
    | Emit
    | InsertEvaluation
    | RecordEvaluationResult
    | CloseEvaluation
)
Request = (
    BuildInitialModel
    | ApplyResult
    | StepServerOptimizer
    | OpenRound
    | OpenEvaluation
    | TallyEvaluation
)
Effect = Write | Request | Ignored
