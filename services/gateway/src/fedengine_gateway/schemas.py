"""HTTP schemas (XCreate / XPublic), separate from bus messages; input forbids unknown fields.

Input models derive from ``fedcommon.constraints.Constrained`` and take their bounds from the
bus schemas' own constants, so that a body the gateway accepts is one every service accepts
(style.md, rule 7; no NUL text, finite floats only, integers inside the columns' ranges).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedcommon import ed25519_keys, signing
from fedcommon.constraints import (
    MAX_BATCH_SIZE,
    MAX_DEVICES_PER_ROUND,
    MAX_LEARNING_RATE,
    MAX_LOCAL_EPOCHS,
    MAX_MODEL_HIDDEN,
    MAX_OVER_SELECTION,
    MAX_PARTICIPATING_DEVICES,
    MAX_ROUND_RETRIES,
    MAX_ROUNDS,
    MAX_SETTING,
    MAX_TIMEOUT_S,
    MAX_TOKEN_DEVICES,
    Constrained,
    DeviceId,
    FleetName,
    Name,
    Seed,
)
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import (
    DatasetName,
    DeviceCapabilities,
    DeviceType,
    FedAvgStrategy,
    FederatedEvaluationSpec,
    InitialModel,
    ModelArchitecture,
    PrivacyLevel,
    PrivacySpec,
    SecureAggregationSpec,
    StrategySpec,
    TaskSpec,
)

T = TypeVar("T")

_PUBLIC_KEY_PATTERN = r"^[0-9a-fA-F]{64}$"
_SIGNATURE_PATTERN = r"^[0-9a-fA-F]{128}$"
# The longest an enrolment token may live.
MAX_TOKEN_LIFETIME_S = 365 * 86_400.0


class CapabilitiesCreate(DeviceCapabilities):
    """The bus ``DeviceCapabilities`` with the same bounds, refusing unknown fields."""

    model_config = ConfigDict(extra="forbid")


def _hex(value: str | None, *, name: str, length: int) -> str | None:
    if value is not None and (
        len(value) != length or not all(c in "0123456789abcdefABCDEF" for c in value)
    ):
        raise ValueError(f"{name} must be {length} hex characters")
    return value


class InitialModelCreate(InitialModel):
    """The bus ``InitialModel`` (an uploaded model's id and sha256), refusing unknown fields."""

    model_config = ConfigDict(extra="forbid")


class DeviceCreate(Constrained):
    """Enrol a device: with the device's own public key and its signature over it, or, as an
    explicit choice, with a key pair the gateway generates (and returns once)."""

    model_config = ConfigDict(extra="forbid")

    device_name: Name
    device_type: DeviceType
    privacy_level: PrivacyLevel = PrivacyLevel.NONE
    device_id: DeviceId | None = None
    capabilities: CapabilitiesCreate = Field(default_factory=CapabilitiesCreate)
    public_key: str | None = Field(
        default=None,
        description="The device's Ed25519 public key, 64 hex characters (raw 32 bytes)",
        json_schema_extra={"pattern": _PUBLIC_KEY_PATTERN},
    )
    key_signature: str | None = Field(
        default=None,
        description=(
            "The device's signature, with that key, over signing.possession_payload(device_id, "
            "public_key): 128 hex characters. Required with public_key."
        ),
        json_schema_extra={"pattern": _SIGNATURE_PATTERN},
    )
    generate_key: bool = Field(
        default=False,
        description="Have the gateway generate the key pair (the private key is returned once)",
    )

    @field_validator("public_key")
    @classmethod
    def _hex_key(cls, value: str | None) -> str | None:
        _hex(value, name="public_key", length=64)
        if value is not None:
            # A small-order or non-canonical key proves nothing: refused here, naming the field
            # and the reason (the 422 never echoes the value; errors.field_errors).
            ed25519_keys.check_public_key(bytes.fromhex(value), name="public_key")
        return value

    @field_validator("key_signature")
    @classmethod
    def _hex_signature(cls, value: str | None) -> str | None:
        return _hex(value, name="key_signature", length=128)

    @model_validator(mode="after")
    def _key_source(self) -> DeviceCreate:
        if self.generate_key:
            if self.public_key is not None or self.key_signature is not None:
                raise ValueError("generate_key excludes public_key and key_signature")
            return self
        if self.public_key is None:
            raise ValueError(
                "send the device's public_key with its key_signature, or set generate_key "
                "to true for a key pair the gateway generates"
            )
        if self.device_id is None or self.key_signature is None:
            raise ValueError(
                "public_key needs device_id and key_signature: the device signs "
                "possession_payload(device_id, public_key) to prove it holds the key"
            )
        try:
            signing.verify(
                public_key=bytes.fromhex(self.public_key),
                signature=bytes.fromhex(self.key_signature),
                payload=signing.possession_payload(
                    device_id=self.device_id, public_key=bytes.fromhex(self.public_key)
                ),
            )
        except ProtocolViolation:
            raise ValueError(
                "key_signature does not verify: it must be the device's signature over "
                "possession_payload(device_id, public_key) with that key"
            ) from None
        return self


class EnrolmentTokenCreate(Constrained):
    model_config = ConfigDict(extra="forbid")

    fleet: FleetName
    expires_in_s: float = Field(
        default=7 * 86_400.0, ge=60.0, le=MAX_TOKEN_LIFETIME_S, description="Lifetime (s)"
    )
    max_devices: int = Field(default=100, ge=1, le=MAX_TOKEN_DEVICES)


class EnrolmentTokenIssuedPublic(BaseModel):
    token_id: UUID
    fleet: str
    expires_at: datetime
    max_devices: int
    token: str = Field(description="The token itself, for the fleet's devices: shown once")
    coordinator_public_key: str = Field(
        description="The key the devices check train requests with (the token carries it too)"
    )
    recorded: bool = Field(
        description="Whether the registry had recorded the token when this answer left"
    )


class EnrolmentTokenPublic(BaseModel):
    token_id: UUID
    fleet: str
    expires_at: datetime
    max_devices: int
    enrolled: int
    issued_by: str | None
    issued_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None


def _spec_errors(exc: ValidationError) -> str:
    """Say what ``TaskSpec`` refused, field by field, without the values."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"])
        what = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)


# Left to TaskSpec unless the body names them: a task on an uploaded initial_model has neither
# built-in model nor data set by default, a built-in task has mlp on digits.
_MODEL_FIELDS = ("model_architecture", "dataset")


class TaskCreate(Constrained):
    """A task as the original design's examples post it; everything but the name has a default.

    The bounds are ``TaskSpec``'s (a unit test compares them field by field), and the body is
    checked against ``TaskSpec`` itself once defaults are filled in, so that its cross-field
    rules refuse a body here with 422 rather than after a 202.
    """

    model_config = ConfigDict(extra="forbid")

    task_name: Name
    model_architecture: ModelArchitecture | None = Field(
        default=ModelArchitecture.MLP,
        description="A built-in model (mlp when absent); none with initial_model",
    )
    dataset: DatasetName | None = Field(
        default="digits",
        description="The built-in model's data set (digits when absent); none with initial_model",
    )
    initial_model: InitialModelCreate | None = Field(
        default=None,
        description='An uploaded model to train, {"model_id": ..., "sha256": ...} as POST '
        "/models answered: the task then names no model_architecture and no dataset, and has "
        "no central evaluation (give it federated_evaluation)",
    )
    model_hidden: int | None = Field(
        default=None,
        ge=1,
        le=MAX_MODEL_HIDDEN,
        description="The built-in mlp's hidden units (64 when absent)",
    )
    standardize: bool = Field(
        default=False,
        description="Standardise the built-in dataset's features by its training split's mean "
        "and standard deviation, on the devices and in central evaluation",
    )
    federated_evaluation: FederatedEvaluationSpec | None = Field(
        default=None,
        description="Devices evaluate each new version on their own held-out data, e.g. "
        '{"every_rounds": 1, "fraction": 1.0, "min_devices": 1, "timeout_s": 30}; their '
        "example-weighted accuracy is the task's and drives target_accuracy and patience",
    )
    rounds: int = Field(default=10, ge=1, le=MAX_ROUNDS)
    devices_per_round: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DEVICES_PER_ROUND,
        description="Defaults to the number of participating_devices (at most the bound), else 10",
    )
    min_devices: int = Field(default=1, ge=1, le=MAX_DEVICES_PER_ROUND)
    participating_devices: list[DeviceId] | None = Field(
        default=None, max_length=MAX_PARTICIPATING_DEVICES
    )
    learning_rate: float = Field(default=0.3, gt=0, le=MAX_LEARNING_RATE)
    local_epochs: int = Field(default=5, ge=1, le=MAX_LOCAL_EPOCHS)
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH_SIZE)
    seed: Seed = 0
    round_timeout_s: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_S)
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    patience: int | None = Field(default=None, ge=1, le=MAX_ROUNDS)
    min_improvement: float = Field(default=1e-3, ge=0, le=1)
    max_update_norm: float = Field(default=100.0, gt=0, le=MAX_SETTING)
    max_round_retries: int = Field(default=2, ge=0, le=MAX_ROUND_RETRIES)
    over_selection: float = Field(
        default=1.0,
        ge=1.0,
        le=MAX_OVER_SELECTION,
        description="Ask this many times devices_per_round devices and close each round once "
        "devices_per_round updates are accepted (1.3 in Bonawitz et al. 2019); not with privacy "
        "or secure_aggregation",
    )
    device_wait_s: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_S)
    queue_wait_s: float = Field(default=3600.0, gt=0, le=MAX_TIMEOUT_S)
    strategy: StrategySpec = Field(
        default_factory=FedAvgStrategy,
        description='How rounds are aggregated and applied, e.g. {"name": "fedadam", '
        '"params": {"eta": 0.01}}; unknown names and parameters are refused. Robust strategies '
        "need min_devices of at least their minimum (krum: 2f + 3).",
    )
    privacy: PrivacySpec | None = Field(
        default=None,
        description='Central differential privacy, e.g. {"epsilon": 1.0, "delta": 1e-5, '
        '"clip_norm": 1.0, "noise_multiplier": "calibrate"}: every round is approved and '
        "charged by the privacy service first, and the task completes "
        "(privacy_budget_exhausted) before it would spend more than epsilon. Needs a strategy "
        "that sums updates (not median, trimmed_mean, krum, multi_krum).",
    )
    secure_aggregation: SecureAggregationSpec | None = Field(
        default=None,
        description="SecAgg+ secure aggregation: devices mask their clipped, quantised "
        "updates so that the aggregator learns only their sum. {} takes every default "
        '(e.g. {"bits": 16, "clip_norm": 10.0, "weight_cap": 1000, "stage_timeout_s": 30.0}; '
        "neighbours and threshold default to about 3 log2 n and a majority of them). Needs "
        "min_devices >= 3 and a strategy that sums updates (not median, trimmed_mean, krum, "
        "multi_krum).",
    )

    @model_validator(mode="after")
    def _as_spec(self) -> TaskCreate:
        if self.devices_per_round is None:
            self.devices_per_round = (
                min(len(self.participating_devices), MAX_DEVICES_PER_ROUND)
                if self.participating_devices
                else 10
            )
        try:
            self.to_spec()
        except ValidationError as exc:
            raise ValueError(_spec_errors(exc)) from None
        return self

    def to_spec(self) -> TaskSpec:
        """Return the bus form; raises ``ValueError`` on cross-field problems."""
        body = self.model_dump()
        for name in _MODEL_FIELDS:
            if name not in self.model_fields_set:
                del body[name]
        return TaskSpec.model_validate(body)


class Accepted(BaseModel):
    id: str
    location: str
    status: str = "accepted"


class DeviceAccepted(Accepted):
    private_key: str | None = Field(
        default=None, description="Only when the gateway generated the device key: shown once"
    )
    coordinator_public_key: str = Field(
        description="The coordinator's Ed25519 key (hex): train requests are signed with it"
    )


class DevicePublic(BaseModel):
    device_id: str
    device_name: str
    device_type: str
    privacy_level: str
    status: str
    capabilities: dict[str, Any]
    public_key: str | None
    fleet: str | None
    battery_pct: float | None
    # From the device's heartbeats, where its platform tells (None: never told).
    charging: bool | None = None
    network: str | None = None
    enrolled_at: datetime
    last_heartbeat_at: datetime | None


class TaskPublic(BaseModel):
    task_id: UUID
    task_name: str
    state: str
    stop_reason: str | None
    current_round: int
    model_version: int
    spec: dict[str, Any]
    # The spec's strategy on its own (FedAvg for tasks created before strategies existed).
    strategy: StrategySpec = Field(default_factory=FedAvgStrategy)
    # The spec's secure aggregation on its own (None: updates travel in the clear).
    secure_aggregation: SecureAggregationSpec | None = None
    # The uploaded model the task started from (None: a built-in model).
    initial_model: InitialModel | None = None
    # The spec's federated evaluation (None: central evaluation only); with it,
    # latest_accuracy is the devices' accuracy.
    federated_evaluation: FederatedEvaluationSpec | None = None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    latest_accuracy: float | None

    @model_validator(mode="before")
    @classmethod
    def _sections_from_spec(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(spec := data.get("spec"), dict):
            return data
        sections = {
            name: spec[name]
            for name in ("strategy", "secure_aggregation", "initial_model", "federated_evaluation")
            if name not in data and spec.get(name) is not None
        }
        return {**data, **sections} if sections else data


class SecureStagePublic(BaseModel):
    """One SecAgg+ stage of a round: who was expected, delivered, dropped or was refused, how
    long it took and the bytes each way (never keys, shares, masks or updates)."""

    stage_name: str
    expected: int
    delivered: int
    dropped: int
    rejected: int
    seconds: float
    bytes_up: int
    bytes_down: int


class RoundPublic(BaseModel):
    round_number: int
    attempt: int
    status: str
    participants: list[str]
    aggregated: list[str] | None
    dropped: list[str] | None
    rejected: dict[str, int] | None
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    num_examples: int | None
    bytes_up: int | None
    bytes_down: int | None
    duration_s: float | None
    opened_at: datetime
    closed_at: datetime | None
    failure: str | None
    # A DP round's cost: the task's epsilon after it, and its noise (None: not a DP round).
    # A DP round shows no participants (amplification by sampling needs them secret).
    epsilon_spent: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    # The round's clipping norm C (adaptive clipping moves it from round to round).
    clip_norm: float | None = None
    # A secure round's SecAgg+ stages, in order (None: no secure aggregation, or a DP round,
    # whose counts would show how many devices it drew).
    secure_stages: list[SecureStagePublic] | None = None
    # The round's federated evaluation: the example-weighted accuracy and loss the devices
    # reported on the version it made, over how many examples and devices (None: not
    # evaluated by devices, not yet, or nobody answered in time).
    fed_accuracy: float | None = None
    fed_loss: float | None = None
    fed_examples: int | None = None
    fed_devices: int | None = None


class EvaluationPublic(BaseModel):
    """One federated evaluation of a model version: how many devices were asked, until when,
    and (once closed) the example-weighted means of what they answered in time."""

    evaluation_id: UUID
    round_number: int
    model_version: int
    asked: int
    deadline: datetime
    status: str
    answered: int
    num_examples: int
    loss: float | None
    accuracy: float | None
    metrics: dict[str, float]
    opened_at: datetime
    closed_at: datetime | None


class TensorPublic(BaseModel):
    """One tensor of a model file: its name, shape and dtype (always F32)."""

    name: str
    shape: list[int]
    dtype: str


class UploadedModelAccepted(BaseModel):
    """A model file checked and sent to the coordinator; GET /models/{model_id} shows it
    once stored, and a task names it as ``initial_model: {model_id, sha256}``."""

    model_id: UUID
    sha256: str
    size_bytes: int
    name: str
    tensors: list[TensorPublic]


class UploadedModelSummary(BaseModel):
    """An uploaded model in a list: its tensors counted (GET /models/{model_id} names them)."""

    model_id: UUID
    sha256: str
    size_bytes: int
    name: str
    tensor_count: int
    uploaded_by: str
    uploaded_at: datetime


class UploadedModelPublic(UploadedModelAccepted):
    """An uploaded model as the coordinator keeps it (its bytes are not listed)."""

    uploaded_by: str
    uploaded_at: datetime


class PrivacyReleasePublic(BaseModel):
    """One approved release: what it cost and what the task had spent after it."""

    approval_id: UUID
    round_number: int
    attempt: int
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    epsilon_after: float
    delta: float
    accountant: str
    released_at: datetime
    # Adaptive clipping: z split between the updates' sum (z_Δ) and the unclipped count (σ_b).
    update_noise_multiplier: float | None = None
    count_noise_std: float | None = None


class PrivacyAuditPublic(BaseModel):
    """One request the privacy service answered (or saw twice), and why."""

    round_number: int
    attempt: int
    requested_by: str
    on_behalf_of: str
    decision: str
    reason: str | None
    epsilon_before: float
    epsilon_after: float | None
    at: datetime


class PrivacyBudgetPublic(BaseModel):
    task_id: UUID
    epsilon_budget: float
    epsilon_spent: float
    epsilon_remaining: float
    delta: float
    accountant: str
    clip_norm: float
    noise_multiplier: float
    calibrated: bool
    planned_rounds: int
    releases: int
    exhausted_at: datetime | None
    created_at: datetime
    # The task's adaptive clipping settings (None: C fixed at clip_norm).
    adaptive_clipping: dict[str, float | None] | None = None
    # Only for one task (?task_id=): its ledger and audit log, oldest first.
    release_log: list[PrivacyReleasePublic] | None = None
    audit: list[PrivacyAuditPublic] | None = None


class DeviceReleasePublic(BaseModel):
    """One round a device was asked to train with local DP-SGD, at the coordinator's settings,
    and the device's ε after it (for that task, and over all its tasks)."""

    task_id: UUID
    round_number: int
    attempt: int
    level: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    epsilon_task_after: float | None
    epsilon_lifetime_after: float | None
    recorded_at: datetime


class DeviceTaskBudgetPublic(BaseModel):
    task_id: UUID
    level: str
    epsilon_budget: float
    epsilon_spent: float | None
    releases: int
    exhausted: bool


class DeviceLedgerPublic(BaseModel):
    """A device's local-DP ledger: what it spent per task and over its lifetime (ε at δ, RDP;
    None where beyond any meaningful guarantee)."""

    device_id: str
    level: str
    delta: float
    epsilon_lifetime_budget: float
    epsilon_lifetime_spent: float | None
    lifetime_exhausted: bool
    tasks: list[DeviceTaskBudgetPublic]
    release_log: list[DeviceReleasePublic]


class TaskEventPublic(BaseModel):
    kind: str
    issued_by: str | None
    detail: str | None
    at: datetime


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class StatusPublic(BaseModel):
    devices: dict[str, int]
    tasks: dict[str, int]
    rounds_completed: int
    updates: dict[str, int]


class CleanupRequest(Constrained):
    model_config = ConfigDict(extra="forbid")

    retention_s: float | None = Field(default=None, ge=0, le=MAX_SETTING)


class ErrorBody(BaseModel):
    """Every error but 422: what went wrong, in one sentence."""

    detail: str


class FieldError(BaseModel):
    """One problem with the request: where (``loc``), what (``msg``) and its kind (``type``).

    The offending value is never echoed back.
    """

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """A 422: the fields that failed and why."""

    detail: list[FieldError]


class DependencyState(BaseModel):
    """One dependency as the last check saw it."""

    state: Literal["up", "down"]
    seconds: float = Field(description="How long the check took")
    error: str | None = Field(
        default=None, description="Why it is down: the kind of failure, never the server's text"
    )


class Health(BaseModel):
    """Liveness: the process serves (always 200); the dependencies' states are for people."""

    status: Literal["ok"]
    database: DependencyState
    broker: DependencyState
    supervisor: DependencyState | None = Field(
        default=None, description="A local stack's supervisor (null: not checked, a deployment)"
    )


class Readiness(BaseModel):
    """Readiness: 200 when the database and the broker both answer (and, on a local stack, a
    supervisor runs), else 503 naming what is down."""

    status: Literal["ready", "unavailable"]
    detail: str
    down: list[Literal["database", "broker", "supervisor"]]
    database: DependencyState
    broker: DependencyState
    supervisor: DependencyState | None = Field(
        default=None, description="A local stack's supervisor (null: not checked, a deployment)"
    )
