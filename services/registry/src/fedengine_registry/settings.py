"""The registry's one Settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon.settings import KafkaSettings, PostgresSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REGISTRY_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)  # type: ignore[arg-type]
    offline_after_s: float = Field(default=15.0, gt=0)
    check_interval_s: float = Field(default=1.0, gt=0)
    metrics_port: int = 0
    # faust's own web server; it binds even when unused (broker.md), so pin it to loopback.
    web_port: int = Field(default=0, ge=0, le=65535)
    # 1 under Tansu: its ListOffsets LATEST is only right for one-record batches, and faust
    # recovers the heartbeat table up to that offset (broker.md). Normal batching on Kafka.
    producer_max_batch_size: int = Field(default=16384, ge=1)
    table_standby_replicas: int = Field(default=0, ge=0)
    run_dir: Path | None = Field(default=None, validation_alias="FEDENGINE_RUN_DIR")
    log_json: bool = False
