"""The simulator's one Settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon.messages.v1 import Partitioning
from fedcommon.settings import KafkaSettings, PostgresSettings, TrustSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SIMULATOR_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    fleet: str = Field(default="sim", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    devices: int = Field(default=10, ge=1, le=100_000)
    dataset: str = "digits"
    partitioning: Partitioning = Partitioning.IID
    alpha: float = Field(default=0.5, gt=0)
    seed: int = 0
    heartbeat_s: float = Field(default=5.0, gt=0)
    home: Path = Field(default=Path(".fedengine"), validation_alias="FEDENGINE_HOME")
    metrics_port: int = 0
    run_dir: Path | None = Field(default=None, validation_alias="FEDENGINE_RUN_DIR")
    log_json: bool = False
