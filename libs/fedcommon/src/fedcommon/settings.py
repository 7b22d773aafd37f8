"""Shared sub-settings that every service composes into its one ``Settings`` class.

The variable names (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, ``FEDENGINE_HOME``...) are the
ones a platform team sets in docker-compose or Kubernetes; only ``settings.py`` modules read the
environment (style.md, rule 27).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon import ed25519_keys, signing, trust

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]


def default_home() -> Path:
    """FEDENGINE_HOME when unset: one absolute place, whatever the working directory."""
    return Path.home() / ".fedengine"


class KafkaSettings(BaseSettings):
    """How to reach the broker and how to talk to it."""

    # Errors never echo the input: it may be a password.
    model_config = SettingsConfigDict(
        env_prefix="KAFKA_", extra="ignore", hide_input_in_errors=True
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = Field(default=4, ge=1)
    # Kafka's broker minimum is 6 s; Tansu accepts less, but what passes here must pass there.
    session_timeout_ms: int = Field(default=6000, ge=6000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    # The round path pays this wait per hop (design.md, "Latency"): keep it a few ms.
    fetch_max_wait_ms: int = Field(default=5, ge=0)
    # ... and after this long without a record, this longer wait (fedcommon.fetch_pacing): an
    # idle consumer polling every few ms was most of an idle stack's CPU.
    idle_fetch_max_wait_ms: int = Field(default=200, ge=0, le=10_000)
    # Longer than a round usually waits between its hops (local training, a round's deadline
    # of 30 s by default), so that a running task's consumers stay awake between rounds' hops.
    idle_after_s: float = Field(default=30.0, gt=0)
    linger_ms: int = Field(default=0, ge=0)
    # One setting drives topic max.message.bytes and the client limits together.
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    # Whether a service creates missing topics at start-up. A deployment with ACLs sets it
    # false: its init job creates the topics as the admin, so services need no CREATE right.
    create_topics: bool = True

    # Security, for every client (fedcommon.kafka.client_options). PLAINTEXT suits only the
    # local broker, which has neither working SASL nor TLS (docs/security.md).
    security_protocol: SecurityProtocol = "PLAINTEXT"
    # SCRAM only: PLAIN would send the password itself, and needs TLS to be safe at all.
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # PEM files. Without a CA file the system's trusted CAs verify the broker.
    ssl_cafile: Path | None = None
    # A client certificate (mutual TLS), where the broker asks for one: both files or neither.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None  # of an encrypted key file
    # False skips only the name check; the broker's certificate chain is still verified.
    ssl_check_hostname: bool = True

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("sasl_username", "sasl_password", "ssl_password", mode="before")
    @classmethod
    def _printable(cls, value: object, info: ValidationInfo) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw == "":
            return None  # an empty variable counts as unset
        if isinstance(raw, str) and any(not c.isprintable() for c in raw):
            raise ValueError(f"{_env(info.field_name)} must be printable text")
        return value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _readable_file(cls, value: object, info: ValidationInfo) -> object:
        if value is None or value == "":
            return None
        name = _env(info.field_name)
        text = str(value)
        if any(not c.isprintable() for c in text):
            raise ValueError(f"{name} must be printable")
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{name}={text} is not a file")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{name}={text} cannot be read: {exc.strerror}") from exc
        return path

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        protocol = f"KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
        if self.uses_sasl:
            if self.sasl_username is None or self.sasl_password is None:
                raise ValueError(f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        elif self.sasl_username is not None or self.sasl_password is not None:
            # Credentials that would silently go unused: refuse rather than connect without.
            raise ValueError(f"KAFKA_SASL_USERNAME/PASSWORD are set but {protocol} uses no SASL")
        tls_files = {
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.ssl_keyfile,
            "KAFKA_SSL_PASSWORD": self.ssl_password,
        }
        given = [name for name, value in tls_files.items() if value is not None]
        if given and not self.uses_tls:
            raise ValueError(f"{', '.join(given)} set but {protocol} uses no TLS")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together: set both")
        if self.ssl_password is not None and self.ssl_keyfile is None:
            raise ValueError("KAFKA_SSL_PASSWORD is set but there is no KAFKA_SSL_KEYFILE")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")


def _env(field: str | None) -> str:
    return f"KAFKA_{(field or '').upper()}"


class PostgresSettings(BaseSettings):
    """Where the state lives."""

    model_config = SettingsConfigDict(extra="ignore")

    url: SecretStr = Field(validation_alias="DATABASE_URL")
    pool_min_size: int = Field(default=1, validation_alias="DATABASE_POOL_MIN", ge=1)
    pool_max_size: int = Field(default=5, validation_alias="DATABASE_POOL_MAX", ge=1)
    # How long a caller waits for a connection before the database counts as unavailable (an
    # outage: services retry, the gateway answers 503).
    pool_timeout_s: float = Field(default=5.0, validation_alias="DATABASE_POOL_TIMEOUT_S", gt=0)
    # How long a connection beyond the pool's minimum stays open unused (psycopg_pool's 10
    # minutes by default): start-up's concurrent jobs open a second connection per service, and
    # each server process holds about 10 MB.
    pool_max_idle_s: float = Field(default=60.0, validation_alias="DATABASE_POOL_MAX_IDLE_S", gt=0)


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
            ed25519_keys.check_public_key(
                bytes.fromhex(key), name=f"FEDENGINE_SERVICE_KEYS[{name}]"
            )
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


class DataSettings(BaseSettings):
    """Where the data sets that no Python package carries are found (fedcommon.datasets).

    Unset, the loader looks where ``make install`` puts them (under the virtual environment)
    and then where Debian's packages do; set, it looks there only, so that a wrong path is an
    error rather than a silent fall back to another copy.
    """

    model_config = SettingsConfigDict(extra="ignore")

    # A folder holding the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...); any
    # MNIST-format copy works.
    fashion_mnist_dir: Path | None = Field(
        default=None, validation_alias="FEDENGINE_FASHION_MNIST_DIR"
    )
