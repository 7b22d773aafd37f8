"""The aggregator's one Settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon.settings import KafkaSettings, PostgresSettings, TrustSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGGREGATOR_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    deadline_check_s: float = Field(default=0.05, gt=0)
    # Records read before their round's opening (on another topic) wait this long, this many
    # at most; each holds its topic's commits back while it waits.
    unplaced_max_records: int = Field(default=10_000, ge=1)
    unplaced_max_age_s: float = Field(default=60.0, gt=0)
    # ... and this many bytes of records at most (whoever writes to a topic could otherwise
    # fill the aggregator's memory with records of rounds that never open).
    unplaced_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    metrics_port: int = 0
    # Where the metrics listen: loopback locally; a container sets 0.0.0.0 to be scraped.
    metrics_host: str = "127.0.0.1"
    run_dir: Path | None = Field(default=None, validation_alias="FEDENGINE_RUN_DIR")
    log_json: bool = False
