"""The registry's enrolment rules hold under concurrency: two registry instances (or one
record routed to another partition by its key, which nobody checks) handling enrolments of the
same new device at once, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import AsyncConnectionPool

from fedcommon import codec, enrolment_tokens, signing
from fedcommon import db as fedcommon_db
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import DeviceEnrolled, DeviceType
from fedcommon.settings import KafkaSettings, PostgresSettings
from fedengine_registry.handlers import Registry
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@dataclass
class _Record:
    topic: str = "fed.devices"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    value: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class _Relay:
    def wake(self) -> None:
        pass


@dataclass
class _Context:
    """What Registry.handle uses of a ServiceContext: the pool, the Kafka settings, the relay."""

    pool: AsyncConnectionPool
    kafka: KafkaSettings
    relay: _Relay = field(default_factory=_Relay)
    name: str = "registry"


async def _waiting_on_locks(conn: psycopg.AsyncConnection, count: int) -> None:
    for _ in range(500):
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = await cursor.fetchone()
        if row is not None and row[0] >= count:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{count} transaction(s) never waited on a lock")


async def test_two_first_enrolments_of_one_device_at_once_cannot_both_win(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: a token, and two enrolments of one new device id with different keys; the
    # second is older (a replay, or an attacker with a token racing the device's first one).
    fleet = f"race{uuid.uuid4().hex[:6]}"
    token = enrolment_tokens.issue(fleet, coordinator_key=b"\x01" * 32)
    await db.execute(
        "INSERT INTO registry.enrolment_tokens (token_id, fleet, public_key, expires_at, "
        "max_devices) VALUES (%s, %s, %s, %s, 5)",
        (token.token_id, fleet, token.public_key, datetime.now(UTC) + timedelta(hours=1)),
    )
    device_id = f"race-{uuid.uuid4().hex[:8]}"
    owner, intruder = signing.generate_private_key(), signing.generate_private_key()

    def enrolment(key: Ed25519PrivateKey, sent_at: datetime) -> DeviceEnrolled:
        return enrolment_tokens.sign_enrolment(
            DeviceEnrolled(
                producer="pytest",
                device_id=device_id,
                device_name="race",
                device_type=DeviceType.IOT,
                public_key=signing.public_key_bytes(key),
                sent_at=sent_at,
            ),
            device_key=key,
            token=token,
        )

    now = datetime.now(UTC)
    first, second = enrolment(owner, now), enrolment(intruder, now - timedelta(seconds=5))
    pool = await _pool(stack)
    registry = Registry(_Context(pool=pool, kafka=stack.kafka))  # type: ignore[arg-type]
    locker = await psycopg.AsyncConnection.connect(stack.database_url)
    try:
        # Execute: hold the token's row so that both handlers have read "no such device"
        # before either goes on; then let them go.
        await locker.execute(
            "SELECT 1 FROM registry.enrolment_tokens WHERE token_id = %s FOR UPDATE",
            (token.token_id,),
        )
        one = asyncio.create_task(registry.handle(first, _Record(value=codec.encode(first))))
        await _waiting_on_locks(db, 1)
        two = asyncio.create_task(registry.handle(second, _Record(value=codec.encode(second))))
        await _waiting_on_locks(db, 2)
        await locker.commit()
        results = await asyncio.gather(one, two, return_exceptions=True)
    finally:
        await locker.close()
        await pool.close()

    # Assert: the first enrolment holds; the older one with another key is refused, as it
    # would be had it come a moment later.
    assert results[0] is None
    assert isinstance(results[1], ProtocolViolation), results
    cursor = await db.execute(
        "SELECT public_key FROM registry.devices WHERE device_id = %s", (device_id,)
    )
    row = await cursor.fetchone()
    assert row is not None and bytes(row[0]) == signing.public_key_bytes(owner)


async def _pool(stack: Stack) -> AsyncConnectionPool:
    return await fedcommon_db.open_pool(
        PostgresSettings(DATABASE_URL=stack.database_url, DATABASE_POOL_MAX=4), name="race"
    )
