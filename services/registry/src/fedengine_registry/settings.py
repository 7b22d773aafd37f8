"""The registry's one Settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon.settings import KafkaSettings, PostgresSettings, TrustSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REGISTRY_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    offline_after_s: float = Field(default=15.0, gt=0)
    check_interval_s: float = Field(default=1.0, gt=0)
    # How often the devices-by-status gauge counts every device.
    count_interval_s: float = Field(default=5.0, gt=0)
    metrics_port: int = 0
    # Where the metrics listen: loopback locally; a container sets 0.0.0.0 to be scraped.
    metrics_host: str = "127.0.0.1"
    run_dir: Path | None = Field(default=None, validation_alias="FEDENGINE_RUN_DIR")
    log_json: bool = False
