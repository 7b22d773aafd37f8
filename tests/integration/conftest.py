"""One real stack per test session: Tansu, PostgreSQL and every service as its own process.

PostgreSQL is the server named by TEST_DATABASE_URL (a fresh database is created on it) or, by
default, an embedded PostgreSQL under the session's temporary folder. No mocks anywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon import auth, signing, trust
from fedcommon.enrolment_tokens import EnrolmentToken
from fedcommon.settings import KafkaSettings
from fedengine import infra, launcher
from fedengine.sdk import FedEngineClient
from fedengine.settings import LauncherSettings


class TestEnvironment(BaseSettings):
    """What the machine offers the tests (read, never written)."""

    __test__ = False
    model_config = SettingsConfigDict(extra="ignore")
    database_url: SecretStr | None = Field(default=None, validation_alias="TEST_DATABASE_URL")


@dataclass
class Stack:
    settings: LauncherSettings
    stack: launcher.Stack
    kafka: KafkaSettings
    database_url: str
    secret: str
    fleet: str
    # An operator's token for fleet "manual", with which the tests' own devices enrol.
    enrolment_token: EnrolmentToken

    def token(self, role: auth.Role = auth.Role.ADMIN, subject: str = "pytest") -> str:
        return auth.issue_token(secret=self.secret, subject=subject, role=role)

    def signer(self, service: str) -> trust.Signer:
        """Sign as ``service`` with the key ``fedengine up`` generated for it."""
        raw = bytes.fromhex(launcher.service_keys(self.settings)[service])
        return trust.Signer(service, signing.private_key_from_bytes(raw))

    @property
    def coordinator_public_key(self) -> str:
        return launcher.public_keys(launcher.service_keys(self.settings))["coordinator"]

    @property
    def aggregator_public_key(self) -> str:
        return launcher.public_keys(launcher.service_keys(self.settings))["aggregator"]

    def client(self, role: auth.Role = auth.Role.ADMIN) -> FedEngineClient:
        return FedEngineClient(self.stack.gateway_url, self.token(role))


def start_stack(settings: LauncherSettings, database_url: str, fleet: launcher.Fleet) -> Stack:
    """``fedengine up`` with ``fleet``, and a token for the tests' own devices (fleet "manual")."""
    running = launcher.up(settings, log=lambda *_: None, fleets=[fleet])
    secret, _ = launcher.jwt_secret(settings)
    kafka = KafkaSettings(
        bootstrap_servers=running.bootstrap_servers, topic_prefix=running.topic_prefix
    )
    token = launcher.issue_enrolment_token(
        running.gateway_url, secret, "manual", max_devices=100_000
    )
    return Stack(
        settings, running, kafka, database_url, secret, fleet.name, EnrolmentToken.decode(token)
    )


def _drop_database(server_url: str, database_url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_database(server_url: str) -> str:
    name = f"fedengine_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("fedengine-home")
    environment = TestEnvironment()
    pgdata: Path | None = None
    if environment.database_url is not None:
        database_url = _fresh_database(environment.database_url.get_secret_value())
    else:
        pgdata = home / "pgdata"
        _, database_url = infra.start_postgres(pgdata)
    settings = LauncherSettings(
        FEDENGINE_HOME=home,
        DATABASE_URL=database_url,
        KAFKA_TOPIC_PREFIX=f"t{uuid.uuid4().hex[:8]}.",
        FEDENGINE_GATEWAY_PORT=infra.free_port(),
        service_env={
            "REGISTRY_OFFLINE_AFTER_S": "4",
            # Heartbeats well inside the offline window, so no shared device flaps offline.
            "SIMULATOR_HEARTBEAT_S": "1",
            "COORDINATOR_LOST_ROUND_GRACE_S": "5",
        },
    )
    try:
        yield start_stack(
            settings,
            database_url,
            launcher.Fleet(name=f"f{uuid.uuid4().hex[:6]}", devices=8, seed=1),
        )
    finally:
        launcher.down(settings)
        if pgdata is not None:
            infra.stop_postgres(pgdata)
        elif environment.database_url is not None:
            _drop_database(environment.database_url.get_secret_value(), database_url)


@pytest_asyncio.fixture(loop_scope="session")
async def client(stack: Stack) -> AsyncIterator[FedEngineClient]:
    async with stack.client() as api:
        yield api


@pytest_asyncio.fixture(loop_scope="session")
async def db(stack: Stack) -> AsyncIterator[psycopg.AsyncConnection]:
    conn = await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def fleet(stack: Stack) -> str:
    """A simulated fleet of 8 IID devices shared by the tests that only need trainers."""
    return stack.fleet
