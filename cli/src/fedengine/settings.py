"""The launcher's settings: what is already running (then it is used) and where to keep state."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon.settings import default_home


class LauncherSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    # One home whatever the working directory: the same secret and state for `fedengine`, the
    # services and the gateway (an absolute default; `fedengine status` prints it).
    home: Path = Field(default_factory=default_home, validation_alias="FEDENGINE_HOME")
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    topic_prefix: str = Field(default="", validation_alias="KAFKA_TOPIC_PREFIX")
    jwt_secret: SecretStr | None = Field(default=None, validation_alias="FEDENGINE_JWT_SECRET")
    gateway_host: str = Field(default="127.0.0.1", validation_alias="FEDENGINE_GATEWAY_HOST")
    gateway_port: int = Field(default=8000, validation_alias="FEDENGINE_GATEWAY_PORT")
    ready_timeout_s: float = Field(default=120.0, validation_alias="FEDENGINE_READY_TIMEOUT_S")
    # Extra environment for the service processes (tests use it to shorten timers).
    service_env: dict[str, str] = Field(default_factory=dict)

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"
