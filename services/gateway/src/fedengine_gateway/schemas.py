"""HTTP schemas (XCreate / XPublic), separate from bus messages; input forbids unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedcommon.messages.v1 import (
    DeviceCapabilities,
    DeviceType,
    ModelArchitecture,
    PrivacyLevel,
    TaskSpec,
)

T = TypeVar("T")


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_name: str = Field(min_length=1, max_length=200)
    device_type: DeviceType
    privacy_level: PrivacyLevel = PrivacyLevel.NONE
    device_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,200}$")
    capabilities: DeviceCapabilities = Field(default_factory=DeviceCapabilities)
    public_key: str | None = Field(
        default=None, description="Ed25519 public key, 64 hex characters (raw 32 bytes)"
    )

    @field_validator("public_key")
    @classmethod
    def _hex_key(cls, value: str | None) -> str | None:
        if value is not None and (
            len(value) != 64 or not all(c in "0123456789abcdefABCDEF" for c in value)
        ):
            raise ValueError("public_key must be 64 hex characters (a raw Ed25519 key)")
        return value


class TaskCreate(BaseModel):
    """A task as the original design's examples post it; everything but the name has a default."""

    model_config = ConfigDict(extra="forbid")

    task_name: str = Field(min_length=1, max_length=200)
    model_architecture: ModelArchitecture = ModelArchitecture.MLP
    dataset: str = "digits"
    rounds: int = Field(default=10, ge=1, le=10_000)
    devices_per_round: int | None = Field(default=None, ge=1)
    min_devices: int = Field(default=1, ge=1)
    participating_devices: list[str] | None = None
    learning_rate: float = Field(default=0.3, gt=0, le=10)
    local_epochs: int = Field(default=5, ge=1, le=100)
    batch_size: int = Field(default=16, ge=1, le=4096)
    seed: int = 0
    round_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    patience: int | None = Field(default=None, ge=1)
    min_improvement: float = Field(default=1e-3, ge=0)
    max_update_norm: float = Field(default=100.0, gt=0)
    max_round_retries: int = Field(default=2, ge=0, le=100)
    device_wait_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _devices(self) -> TaskCreate:
        if self.devices_per_round is None:
            self.devices_per_round = (
                len(self.participating_devices) if self.participating_devices else 10
            )
        return self

    def to_spec(self) -> TaskSpec:
        """Return the bus form; raises ``ValueError`` on cross-field problems."""
        return TaskSpec.model_validate(self.model_dump())


class Accepted(BaseModel):
    id: str
    location: str
    status: str = "accepted"
    private_key: str | None = Field(
        default=None, description="Only when the gateway generated the device key: shown once"
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
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    latest_accuracy: float | None


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


class CleanupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_s: float | None = Field(default=None, ge=0)
