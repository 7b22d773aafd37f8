"""Shared sub-settings that every service composes into its one ``Settings`` class.

The variable names (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, ``FEDENGINE_HOME``...) are the
ones a platform team sets in docker-compose or Kubernetes; only ``settings.py`` modules read the
environment (style.md, rule 27).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon import signing, trust

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def default_home() -> Path:
    """FEDENGINE_HOME when unset: one absolute place, whatever the working directory."""
    return Path.home() / ".fedengine"


class KafkaSettings(BaseSettings):
    """How to reach the broker and how to talk to it."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = Field(default=4, ge=1)
    # Kafka's broker minimum is 6 s; Tansu accepts less, but what passes here must pass there.
    session_timeout_ms: int = Field(default=6000, ge=6000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    # The round path pays this wait per hop (design.md, "Latency"): keep it a few ms.
    fetch_max_wait_ms: int = Field(default=5, ge=0)
    linger_ms: int = Field(default=0, ge=0)
    # One setting drives topic max.message.bytes and the client limits together.
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)


class PostgresSettings(BaseSettings):
    """Where the state lives."""

    model_config = SettingsConfigDict(extra="ignore")

    url: SecretStr = Field(validation_alias="DATABASE_URL")
    pool_min_size: int = Field(default=1, validation_alias="DATABASE_POOL_MIN", ge=1)
    pool_max_size: int = Field(default=5, validation_alias="DATABASE_POOL_MAX", ge=1)
    # How long a caller waits for a connection before the database counts as unavailable (an
    # outage: services retry, the gateway answers 503).
    pool_timeout_s: float = Field(default=5.0, validation_alias="DATABASE_POOL_TIMEOUT_S", gt=0)


class TrustSettings(BaseSettings):
    """The service identities: this service's private key and every service's public key.

    ``fedengine up`` generates them under FEDENGINE_HOME; deployments provide them through the
    environment (docker-compose and the Kubernetes manifests show how; ``fedengine keys``
    prints a set).
    """

    model_config = SettingsConfigDict(extra="ignore")

    # This service's Ed25519 private key, 64 hex characters (raw 32 bytes). Every service that
    # produces service messages needs one; the simulator, which plays devices, does not.
    service_key: SecretStr | None = Field(default=None, validation_alias="FEDENGINE_SERVICE_KEY")
    # Every service's public key, as JSON: {"registry": "<64 hex characters>", ...}.
    service_keys: dict[str, str] = Field(validation_alias="FEDENGINE_SERVICE_KEYS")

    @field_validator("service_keys")
    @classmethod
    def _raw_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for name, key in value.items():
            if len(bytes.fromhex(key)) != signing.KEY_BYTES:
                raise ValueError(f"FEDENGINE_SERVICE_KEYS[{name}] must be 64 hex characters")
        return value

    def signer(self, name: str) -> trust.Signer:
        """Return this service's signer; fail at start-up when its key is missing or not its own."""
        if self.service_key is None:
            raise ValueError(f"FEDENGINE_SERVICE_KEY is not set; {name} signs what it produces")
        key = signing.private_key_from_bytes(bytes.fromhex(self.service_key.get_secret_value()))
        if self.service_keys.get(name) != signing.public_key_bytes(key).hex():
            raise ValueError(f"FEDENGINE_SERVICE_KEY is not {name}'s key in FEDENGINE_SERVICE_KEYS")
        return trust.Signer(name, key)

    def verifier(self, *, prefix: str, window_s: float) -> trust.Verifier:
        return trust.Verifier(
            public_keys={name: bytes.fromhex(key) for name, key in self.service_keys.items()},
            prefix=prefix,
            window=timedelta(seconds=window_s),
        )
