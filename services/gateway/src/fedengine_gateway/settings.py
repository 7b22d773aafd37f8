"""The gateway's one Settings class."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon.constraints import MAX_SETTING
from fedcommon.settings import KafkaSettings, PostgresSettings, TrustSettings

PLACEHOLDER_SECRETS = frozenset({"changeme", "secret", "change-me-please-change-me-please"})
# What a model.uploaded record carries besides the file (its envelope, the name, the uploader),
# plus the record's own overhead, key and signature headers: a file up to the broker's record
# limit less this always fits one record.
MODEL_UPLOAD_HEADROOM_BYTES = 64 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    jwt_secret: SecretStr = Field(validation_alias="FEDENGINE_JWT_SECRET")
    environment: Literal["local", "production"] = Field(
        default="local", validation_alias="FEDENGINE_ENVIRONMENT"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    cleanup_retention_s: float = Field(default=0.0, ge=0, le=MAX_SETTING)
    # The largest request body accepted; larger ones get 413 before anything parses them.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_page_size: int = 500
    # How long a request waits for the projection of an id this process issued: an enrolment
    # token's answer, and a read or command on a task created here a moment ago. Milliseconds
    # usually; 5 s was passed on a 2-core machine under load (the README's newcomer path, its
    # start right after the creation, got 404 once), and the wait ends as soon as it is there.
    projection_wait_s: float = Field(default=30.0, ge=0, le=60)
    # The longest a command waits for the broker's acknowledgement before answering 503.
    command_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # The bound on each dependency check of /health, /ready and the check before a command;
    # /ready must answer within 2 s while a server is down, and the two checks run at once.
    health_timeout_s: float = Field(default=1.0, gt=0, le=10)
    # How far a device's signed request (X-Device-Sent-At) may be from this gateway's clock,
    # either way: it bounds how long a captured request can be replayed.
    device_request_window_s: float = Field(default=300.0, gt=0, le=3600)
    run_dir: Path | None = Field(default=None, validation_alias="FEDENGINE_RUN_DIR")
    # The lock a local stack's supervisor holds (`fedengine up` sets it): /ready answers 503
    # naming the supervisor while nobody holds it, since nothing would restart a crashed
    # service. Unset (docker-compose, Kubernetes: their orchestrator restarts): no such check.
    supervisor_lock: Path | None = None
    log_json: bool = False

    @property
    def max_model_bytes(self) -> int:
        """The largest model file POST /models takes: it travels in one Kafka record."""
        return max(self.kafka.max_message_bytes - MODEL_UPLOAD_HEADROOM_BYTES, 0)

    @model_validator(mode="after")
    def _reject_weak_secret(self) -> Settings:
        secret = self.jwt_secret.get_secret_value()
        if len(secret) < 32:
            raise ValueError("FEDENGINE_JWT_SECRET must be at least 32 characters")
        if self.environment != "local" and secret in PLACEHOLDER_SECRETS:
            raise ValueError("FEDENGINE_JWT_SECRET is a placeholder; set a real secret")
        if "coordinator" not in self.trust.service_keys:
            # Devices get it at enrolment, to check their train requests with.
            raise ValueError("FEDENGINE_SERVICE_KEYS must name the coordinator's public key")
        return self
