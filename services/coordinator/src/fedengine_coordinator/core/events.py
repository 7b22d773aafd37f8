"""What ``decide`` reacts to: bus messages, the clock's tick, and answers to its own requests.

Events are plain data. Anything the core may not compute itself (the time, a fresh id, the
devices online, a model's bytes) arrives inside an event, filled in by the shell. The answers
(``ModelBuilt``, ``ModelApplied``, ``DevicesOffered``) follow request effects of the same
names in :mod:`fedengine_coordinator.core.effects`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    EvaluationSubmitted,
    LocalDp,
    PrivacyLevel,
    PrivacySpendApproved,
    PrivacySpendRefused,
    RoundAggregated,
    TaskSpec,
)
from fedengine_coordinator.core.selection import Candidate, WaitingTask


class FailureSource(StrEnum):
    """Where a round failure was seen (a label of the failed-rounds metric)."""

    AGGREGATOR = "aggregator"
    LOST = "lost"


@dataclass(frozen=True)
class CreateReceived:
    task_id: UUID
    spec: TaskSpec
    issued_by: str


@dataclass(frozen=True)
class CommandReceived:
    command: Command
    issued_by: str


@dataclass(frozen=True)
class ResultReceived:
    """The aggregator published a round's aggregate (``State.round`` is the round it names)."""

    result: RoundAggregated


@dataclass(frozen=True)
class FailureReceived:
    """A round try failed: the aggregator said so, or (``task_id`` None) its deadline passed
    with no word at all and the tick took it as lost."""

    task_id: UUID | None
    failure: str
    rejected: dict[str, int] = field(default_factory=dict)
    source: FailureSource = FailureSource.AGGREGATOR
    # How many updates the aggregator had accepted (None: the round was lost).
    received: int | None = None


@dataclass(frozen=True)
class Ticked:
    """The periodic tick: a running task with no open round tries to open one."""


@dataclass(frozen=True)
class ErrorRaised:
    """The task's own processing raised (a stored spec that no longer validates, a bug)."""

    detail: str


@dataclass(frozen=True)
class ModelBuilt:
    """Answer to ``BuildInitialModel``: version 0 is stored."""

    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ModelApplied:
    """Answer to ``ApplyResult`` and ``StepServerOptimizer``: the new version is stored and
    was evaluated.

    ``history`` holds the accuracies the task's stopping rules read (central, or federated
    for a task evaluated by its devices) of the rounds completed before this one, oldest
    first; ``model_in_size`` is the size of the version the round trained from.
    """

    result: RoundAggregated
    version: int
    sha256: str
    size_bytes: int
    model_in_size: int
    # Central evaluation's; None for a task with no central data.
    accuracy: float | None
    loss: float | None
    history: tuple[float, ...]
    now: datetime


@dataclass(frozen=True)
class DevicesOffered:
    """Answer to ``OpenRound``: who could take part, and what a new try would need.

    ``busy`` are devices in another task's open round; ``attempt`` is the next try number of
    ``round_number``; ``round_id`` is the id the try gets if it opens. ``exhausted`` are local-DP
    devices that one more round would take past this task's or their lifetime budget (the
    privacy service's device ledger, which lags its charges a little), ``asks`` how many of
    this task's tries asked each device (the coordinator's own count, without lag), and
    ``local_dp`` the task's DP-SGD settings for each privacy level among the candidates
    (calibrated by the shell).
    """

    round_number: int
    candidates: Sequence[Candidate]
    busy: frozenset[str]
    attempt: int
    model_sha256: str
    param_shapes: list[list[int]]
    round_id: UUID
    now: datetime
    # A DP task draws its devices by Poisson sampling from this secret seed (the shell takes
    # it from the operating system's entropy; it is never stored or sent).
    secret_seed: int = 0
    exhausted: frozenset[str] = frozenset()
    local_dp: Mapping[PrivacyLevel, LocalDp] = field(default_factory=dict)
    # How many tries of this task have asked each device so far.
    asks: Mapping[str, int] = field(default_factory=dict)
    # A task with secure aggregation: the try's SecAgg+ graph seed, 32 bytes of the operating
    # system's entropy (core/secure_aggregation.py); None for any other task.
    graph_seed: bytes | None = None
    # The other running tasks that have waited for devices longer than this one (all that
    # wait, when this one does not): it yields the devices they could use.
    waiting: Sequence[WaitingTask] = ()


@dataclass(frozen=True)
class EvaluationOffered:
    """Answer to ``OpenEvaluation``: who could evaluate, and what the request needs."""

    round_number: int
    model_version: int
    candidates: Sequence[Candidate]
    busy: frozenset[str]
    model_sha256: str
    evaluation_id: UUID
    now: datetime
    # The accuracies of the task's earlier federated evaluations (oldest first), for the
    # stopping rules when the evaluation cannot be held.
    history: tuple[float, ...] = ()


@dataclass(frozen=True)
class EvaluationReceived:
    """A device's evaluation for ``State.evaluation`` (if still open), with the device's
    enrolled key (None: no such device) and when it counts as received
    (``federated_evaluation.received_at``: when it reached the log, not when it was read)."""

    submitted: EvaluationSubmitted
    public_key: bytes | None
    now: datetime


@dataclass(frozen=True)
class EvaluationDue:
    """The tick found evaluation ``evaluation_id`` past its deadline (and its grace): what
    came in is all it gets. Ignored if the task's open evaluation is another one by now."""

    evaluation_id: UUID


@dataclass(frozen=True)
class DeviceEvaluation:
    device_id: str
    num_examples: int
    loss: float
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class EvaluationTallied:
    """Answer to ``TallyEvaluation``: every answer recorded for the evaluation so far, and the
    accuracies of the task's earlier federated evaluations (oldest first)."""

    results: Sequence[DeviceEvaluation]
    history: tuple[float, ...]
    final: bool


@dataclass(frozen=True)
class SpendApproved:
    """The privacy service approved (and charged) the spend of the try in ``State.round``.

    The shell adds what opening the try needs: the drawn devices' keys, the digest of the model
    they train from, the model's shapes, and the time; the drawn devices' privacy levels
    with the task's DP-SGD settings for them; and a secure task's graph seed.
    """

    approval: PrivacySpendApproved
    public_keys: dict[str, bytes]
    model_sha256: str
    param_shapes: list[list[int]]
    now: datetime
    privacy_levels: Mapping[str, PrivacyLevel] = field(default_factory=dict)
    local_dp: Mapping[PrivacyLevel, LocalDp] = field(default_factory=dict)
    # A task with secure aggregation: the try's SecAgg+ graph seed, drawn when it opens (as
    # ``DevicesOffered.graph_seed``); None for any other task.
    graph_seed: bytes | None = None


@dataclass(frozen=True)
class SpendRefused:
    """The privacy service refused the spend of the try in ``State.round``."""

    refusal: PrivacySpendRefused


@dataclass(frozen=True)
class SpendTimedOut:
    """The try in ``State.round`` has waited for its privacy spend longer than the
    coordinator's spend timeout (``timeout_s``, the setting the tick found it past)."""

    timeout_s: float


Event = (
    CreateReceived
    | CommandReceived
    | ResultReceived
    | FailureReceived
    | Ticked
    | ErrorRaised
    | ModelBuilt
    | ModelApplied
    | DevicesOffered
    | SpendApproved
    | SpendRefused
    | SpendTimedOut
    | EvaluationOffered
    | EvaluationReceived
    | EvaluationDue
    | EvaluationTallied
)
