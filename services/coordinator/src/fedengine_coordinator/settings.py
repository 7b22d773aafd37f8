"""The coordinator's one Settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon.settings import KafkaSettings, PostgresSettings, TrustSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COORDINATOR_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    tick_s: float = Field(default=0.5, gt=0)
    # A round with no result this long after its deadline is taken as lost and re-issued.
    lost_round_grace_s: float = Field(default=10.0, ge=0)
    # An evaluation past its deadline closes this long after this process first found it so:
    # answers that reached the log in time but wait behind a restart or a database outage
    # (the consumer rejoining its group, up to the session timeout; retrying the database,
    # up to its backoff cap) are read first.
    evaluation_grace_s: float = Field(default=10.0, ge=0)
    # A DP try whose privacy spend has no answer this long after it was asked fails its task
    # (the privacy service answers even what it cannot account; silence means it is gone).
    spend_timeout_s: float = Field(default=600.0, gt=0)
    # Threads torch may use for central evaluation. One: the coordinator evaluates a small
    # model once a round, and torch's default (a thread per core) made it 5-70 ms instead of
    # about 1.4 ms on a loaded 2-core machine, every round on the round's path.
    torch_threads: int = Field(default=1, ge=1)
    metrics_port: int = 0
    # Where the metrics listen: loopback locally; a container sets 0.0.0.0 to be scraped.
    metrics_host: str = "127.0.0.1"
    run_dir: Path | None = Field(default=None, validation_alias="FEDENGINE_RUN_DIR")
    log_json: bool = False
