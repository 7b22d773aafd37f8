"""Every bus message, version 1 (style.md, rules 4-7).

Events are past tense, commands are requests (``*_requested``). Bus models ignore unknown fields
so that an old consumer tolerates a newer producer; a breaking change gets a ``v2`` module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeviceType(StrEnum):
    MOBILE = "mobile"
    IOT = "iot"
    DESKTOP = "desktop"
    CLOUD = "cloud"


class PrivacyLevel(StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    REMOVED = "removed"


class TaskState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class StopReason(StrEnum):
    MAX_ROUNDS = "max_rounds"
    TARGET_ACCURACY = "target_accuracy"
    CONVERGED = "converged"
    TOO_FEW_DEVICES = "too_few_devices"
    ROUND_FAILED = "round_failed"
    CANCELLED = "cancelled"


class ModelArchitecture(StrEnum):
    MLP = "mlp"
    CNN = "cnn"


class Partitioning(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Envelope(_Frozen):
    """Fields every message carries; all set at construction."""

    schema_version: Literal[1] = 1
    message_id: UUID = Field(default_factory=uuid4)
    correlation_id: UUID | None = None
    round_id: UUID | None = None
    sent_at: datetime = Field(default_factory=utc_now)
    producer: str


# --- shared value objects ------------------------------------------------------------------


class DeviceCapabilities(_Frozen):
    compute_gflops: float = Field(default=10.0, gt=0)
    memory_mb: int = Field(default=2048, gt=0)
    bandwidth_mbps: float = Field(default=20.0, gt=0)
    has_battery: bool = True
    battery_pct: float = Field(default=100.0, ge=0, le=100)


class TaskSpec(_Frozen):
    """What a federated task trains, on what, and when it stops."""

    task_name: str = Field(min_length=1, max_length=200)
    model_architecture: ModelArchitecture = ModelArchitecture.MLP
    dataset: Literal["digits"] = "digits"
    rounds: int = Field(default=10, ge=1, le=10_000)
    devices_per_round: int = Field(default=10, ge=1)
    min_devices: int = Field(default=1, ge=1)
    participating_devices: list[str] | None = None
    learning_rate: float = Field(default=0.3, gt=0, le=10)
    local_epochs: int = Field(default=5, ge=1, le=100)
    batch_size: int = Field(default=16, ge=1, le=4096)
    seed: int = 0
    round_timeout_s: float = Field(default=30.0, gt=0)
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    patience: int | None = Field(default=None, ge=1)
    min_improvement: float = Field(default=1e-3, ge=0)
    max_update_norm: float = Field(default=100.0, gt=0)
    max_round_retries: int = Field(default=2, ge=0)
    device_wait_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _check_devices(self) -> TaskSpec:
        if self.min_devices > self.devices_per_round:
            raise ValueError("min_devices must not exceed devices_per_round")
        if self.participating_devices is not None and not self.participating_devices:
            raise ValueError("participating_devices, when given, must not be empty")
        return self


class Participant(_Frozen):
    device_id: str
    public_key: bytes


class UpdateMetrics(_Frozen):
    train_loss: float
    train_accuracy: float
    duration_s: float = Field(ge=0)


# --- fed.devices ---------------------------------------------------------------------------


class DeviceEnrolled(Envelope):
    type: Literal["device.enrolled"] = "device.enrolled"
    device_id: str = Field(min_length=1, max_length=200)
    device_name: str = Field(min_length=1, max_length=200)
    device_type: DeviceType
    privacy_level: PrivacyLevel = PrivacyLevel.NONE
    capabilities: DeviceCapabilities = Field(default_factory=DeviceCapabilities)
    public_key: bytes | None = None
    fleet: str | None = None
    issued_by: str | None = None


class HeartbeatSent(Envelope):
    type: Literal["device.heartbeat_sent"] = "device.heartbeat_sent"
    device_id: str
    sequence: int = Field(ge=0)
    battery_pct: float | None = Field(default=None, ge=0, le=100)
    signature: bytes


class DeviceRemoved(Envelope):
    type: Literal["device.removed"] = "device.removed"
    device_id: str
    issued_by: str | None = None


# --- fed.tasks (commands) ------------------------------------------------------------------


class TaskCreateRequested(Envelope):
    type: Literal["task.create_requested"] = "task.create_requested"
    task_id: UUID
    spec: TaskSpec
    issued_by: str


class TaskStartRequested(Envelope):
    type: Literal["task.start_requested"] = "task.start_requested"
    task_id: UUID
    issued_by: str


class TaskPauseRequested(Envelope):
    type: Literal["task.pause_requested"] = "task.pause_requested"
    task_id: UUID
    issued_by: str


class TaskResumeRequested(Envelope):
    type: Literal["task.resume_requested"] = "task.resume_requested"
    task_id: UUID
    issued_by: str


class TaskCancelRequested(Envelope):
    type: Literal["task.cancel_requested"] = "task.cancel_requested"
    task_id: UUID
    issued_by: str


class CleanupRequested(Envelope):
    type: Literal["tasks.cleanup_requested"] = "tasks.cleanup_requested"
    retention_s: float = Field(ge=0)
    issued_by: str


# --- fed.device.commands and fed.models ----------------------------------------------------


class TrainRequested(Envelope):
    type: Literal["train.requested"] = "train.requested"
    task_id: UUID
    device_id: str
    round_number: int = Field(ge=1)
    model_version: int = Field(ge=0)
    model_sha256: str
    deadline: datetime
    model_architecture: ModelArchitecture
    dataset: str
    learning_rate: float
    local_epochs: int
    batch_size: int
    seed: int


class ModelPublished(Envelope):
    type: Literal["model.published"] = "model.published"
    task_id: UUID
    version: int = Field(ge=0)
    sha256: str
    size_bytes: int = Field(ge=0)


# --- fed.updates ---------------------------------------------------------------------------


class RoundOpened(Envelope):
    type: Literal["round.opened"] = "round.opened"
    task_id: UUID
    round_number: int = Field(ge=1)
    attempt: int = Field(ge=0)
    model_version: int = Field(ge=0)
    participants: list[Participant]
    min_updates: int = Field(ge=1)
    deadline: datetime
    param_shapes: list[list[int]]
    max_update_norm: float = Field(gt=0)


class UpdateSubmitted(Envelope):
    type: Literal["update.submitted"] = "update.submitted"
    task_id: UUID
    device_id: str
    round_number: int = Field(ge=1)
    model_version: int = Field(ge=0)
    num_examples: int = Field(gt=0)
    update: bytes
    metrics: UpdateMetrics
    signature: bytes


# --- fed.rounds ----------------------------------------------------------------------------


class RoundAggregated(Envelope):
    type: Literal["round.aggregated"] = "round.aggregated"
    task_id: UUID
    round_number: int
    attempt: int
    model_version: int
    delta: bytes
    participants: list[str]
    dropped: list[str]
    rejected: dict[str, int]
    num_examples: int
    train_loss: float
    bytes_up: int
    duration_s: float


class RoundFailed(Envelope):
    type: Literal["round.failed"] = "round.failed"
    task_id: UUID
    round_number: int
    attempt: int
    reason: str
    received: int
    rejected: dict[str, int]


# --- fed.events ----------------------------------------------------------------------------


class TaskStateChanged(Envelope):
    type: Literal["task.state_changed"] = "task.state_changed"
    task_id: UUID
    state: TaskState
    stop_reason: StopReason | None = None


class RoundStarted(Envelope):
    type: Literal["round.started"] = "round.started"
    task_id: UUID
    round_number: int
    attempt: int
    participants: list[str]


class RoundCompleted(Envelope):
    type: Literal["round.completed"] = "round.completed"
    task_id: UUID
    round_number: int
    model_version: int
    accuracy: float
    loss: float


class DeviceStatusChanged(Envelope):
    type: Literal["device.status_changed"] = "device.status_changed"
    device_id: str
    status: DeviceStatus


AnyMessage = Annotated[
    DeviceEnrolled
    | HeartbeatSent
    | DeviceRemoved
    | TaskCreateRequested
    | TaskStartRequested
    | TaskPauseRequested
    | TaskResumeRequested
    | TaskCancelRequested
    | CleanupRequested
    | TrainRequested
    | ModelPublished
    | RoundOpened
    | UpdateSubmitted
    | RoundAggregated
    | RoundFailed
    | TaskStateChanged
    | RoundStarted
    | RoundCompleted
    | DeviceStatusChanged,
    Field(discriminator="type"),
]

ALL_MESSAGE_TYPES: tuple[type[Envelope], ...] = (
    DeviceEnrolled,
    HeartbeatSent,
    DeviceRemoved,
    TaskCreateRequested,
    TaskStartRequested,
    TaskPauseRequested,
    TaskResumeRequested,
    TaskCancelRequested,
    CleanupRequested,
    TrainRequested,
    ModelPublished,
    RoundOpened,
    UpdateSubmitted,
    RoundAggregated,
    RoundFailed,
    TaskStateChanged,
    RoundStarted,
    RoundCompleted,
    DeviceStatusChanged,
)
