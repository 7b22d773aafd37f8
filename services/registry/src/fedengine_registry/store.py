"""The registry's SQL (the only module that knows it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from fedcommon.messages.v1 import EnrolmentTokenIssued
from fedengine_registry.core.device_batches import EnrolmentWrite, StoredDevice
from fedengine_registry.core.enrolment import Token
from fedengine_registry.core.heartbeats import DeviceHeartbeat, HeartbeatDevice

SCHEMA = "registry"


# A device id's enrolment lock (transaction-scoped): one of 1,024 advisory locks, chosen by the
# id's hash, so that a batch of thousands of new devices holds at most 1,024 locks (PostgreSQL's
# lock table is shared and bounded); ids that share one are merely serialised together.
_DEVICE_LOCK = "pg_advisory_xact_lock(hashtext('registry.devices'), hashtext(%s) & 1023)"
_DEVICE_LOCKS = (
    "SELECT pg_advisory_xact_lock(hashtext('registry.devices'), lock) FROM "
    "(SELECT DISTINCT hashtext(id) & 1023 AS lock FROM unnest(%s::text[]) AS id) AS locks "
    "ORDER BY lock"
)


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    status: str
    public_key: bytes | None
    heartbeat_sequence: int
    enrolled_sent_at: datetime | None


async def get_device(conn: psycopg.AsyncConnection, device_id: str) -> DeviceRow | None:
    """Return a device, locked for this transaction, also when it does not exist yet.

    FOR UPDATE locks only a row that exists: two first enrolments of one device id (two
    registry instances, or a record sent under another key to another partition) would both
    see no device and the later commit would overwrite the first, key and all, unchecked. A
    transaction-scoped advisory lock on the id serialises them, so the second sees the first.
    """
    await conn.execute(f"SELECT {_DEVICE_LOCK}", (device_id,))
    cursor = await conn.execute(
        "SELECT device_id, status, public_key, heartbeat_sequence, enrolled_sent_at "
        "FROM registry.devices WHERE device_id = %s FOR UPDATE",
        (device_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    return DeviceRow(row[0], row[1], row[2] and bytes(row[2]), row[3], row[4])


async def get_batch_devices(
    conn: psycopg.AsyncConnection, device_ids: Sequence[str]
) -> dict[str, StoredDevice]:
    """Return the devices of ``device_ids`` that exist, each locked for this transaction, also
    those that do not exist yet (their enrolment locks, as ``get_device`` takes one).

    The enrolment locks are taken first, in lock order, then the rows, in id order: the order
    ``get_device`` takes them in, so two batches (or a batch and one enrolment) never wait on
    each other in a cycle.
    """
    ids = sorted(set(device_ids))
    await conn.execute(_DEVICE_LOCKS, (ids,))
    cursor = await conn.execute(
        "SELECT device_id, status, public_key, enrolled_sent_at, enrolment_token_id, "
        "heartbeat_sequence, heartbeat_message_id FROM registry.devices "
        "WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE",
        (ids,),
    )
    return {
        row[0]: StoredDevice(
            status=row[1],
            public_key=row[2] and bytes(row[2]),
            enrolled_sent_at=row[3],
            enrolment_token_id=row[4],
            last_sequence=row[5],
            last_message_id=row[6],
        )
        for row in await cursor.fetchall()
    }


async def get_tokens(conn: psycopg.AsyncConnection, token_ids: Sequence[UUID]) -> dict[UUID, Token]:
    """Return the tokens of ``token_ids`` that exist, locked (in id order) so that two
    enrolments cannot both take a token's last place; each token's ``enrolled`` counts every
    device enrolled with it now."""
    ids = sorted(set(token_ids))
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT token_id, fleet, public_key, expires_at, max_devices, revoked_at IS NOT NULL "
        "FROM registry.enrolment_tokens WHERE token_id = ANY(%s::uuid[]) "
        "ORDER BY token_id FOR UPDATE",
        (ids,),
    )
    rows = await cursor.fetchall()
    cursor = await conn.execute(
        "SELECT enrolment_token_id, count(*) FROM registry.devices "
        "WHERE enrolment_token_id = ANY(%s::uuid[]) GROUP BY enrolment_token_id",
        (ids,),
    )
    counts = {row[0]: row[1] for row in await cursor.fetchall()}
    return {
        row[0]: Token(
            fleet=row[1],
            public_key=bytes(row[2]),
            expires_at=row[3],
            max_devices=row[4],
            revoked=row[5],
            enrolled=counts.get(row[0], 0),
        )
        for row in rows
    }


async def upsert_enrolments(
    conn: psycopg.AsyncConnection, enrolments: Sequence[EnrolmentWrite]
) -> None:
    """Store each device's enrolment (pipelined): online, seen now, with the key in force."""
    if not enrolments:
        return
    async with conn.cursor() as cursor:
        await cursor.executemany(
            """
            INSERT INTO registry.devices (device_id, device_name, device_type, privacy_level,
                capabilities, public_key, fleet, status, last_heartbeat_at, battery_pct,
                enrolled_sent_at, enrolment_token_id)
            VALUES (%s, %s, %s, %s, %s, %s, %s, 'online', now(), %s, %s, %s)
            ON CONFLICT (device_id) DO UPDATE SET
                device_name = EXCLUDED.device_name, device_type = EXCLUDED.device_type,
                privacy_level = EXCLUDED.privacy_level, capabilities = EXCLUDED.capabilities,
                public_key = COALESCE(EXCLUDED.public_key, registry.devices.public_key),
                fleet = EXCLUDED.fleet, status = 'online', last_heartbeat_at = now(),
                battery_pct = EXCLUDED.battery_pct, enrolled_sent_at = EXCLUDED.enrolled_sent_at,
                enrolment_token_id = EXCLUDED.enrolment_token_id, updated_at = now()
            """,
            [
                (
                    m.device_id,
                    m.device_name,
                    m.device_type.value,
                    m.privacy_level.value,
                    Jsonb(m.capabilities.model_dump()),
                    write.public_key,
                    m.fleet,
                    m.capabilities.battery_pct if m.capabilities.has_battery else None,
                    m.sent_at,
                    m.enrolment_token_id,
                )
                for write in enrolments
                for m in (write.message,)
            ],
        )


async def record_heartbeat(
    conn: psycopg.AsyncConnection,
    *,
    device_id: str,
    sequence: int,
    battery_pct: float | None,
    charging: bool | None = None,
    network: str | None = None,
) -> None:
    """Mark the device online; what the heartbeat does not tell keeps its last value."""
    await conn.execute(
        "UPDATE registry.devices SET status = 'online', last_heartbeat_at = now(), "
        "heartbeat_sequence = %s, battery_pct = COALESCE(%s, battery_pct), "
        "charging = COALESCE(%s, charging), network = COALESCE(%s, network), updated_at = now() "
        "WHERE device_id = %s",
        (sequence, battery_pct, charging, network, device_id),
    )


_HEARTBEAT_DEVICES = (
    "SELECT device_id, status, public_key, heartbeat_sequence, heartbeat_message_id "
    "FROM registry.devices WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE"
)


async def get_heartbeat_devices(
    conn: psycopg.AsyncConnection, device_ids: Sequence[str]
) -> dict[str, HeartbeatDevice]:
    """Return the devices of ``device_ids`` that exist, each locked for this transaction.

    One query locks every row, in id order (two batches lock in the same order, never in a
    cycle). An id with no row is looked up again under its enrolment lock (``get_device``), as
    a heartbeat handled alone is: an enrolment being committed meanwhile is waited for.
    """
    ids = sorted(set(device_ids))
    found = await _heartbeat_devices(conn, ids)
    missing = [device_id for device_id in ids if device_id not in found]
    if missing:
        await conn.execute(_DEVICE_LOCKS, (missing,))
        found.update(await _heartbeat_devices(conn, missing))
    return found


async def _heartbeat_devices(
    conn: psycopg.AsyncConnection, ids: list[str]
) -> dict[str, HeartbeatDevice]:
    cursor = await conn.execute(_HEARTBEAT_DEVICES, (ids,))
    return {
        row[0]: HeartbeatDevice(
            public_key=row[2] and bytes(row[2]),
            last_sequence=row[3],
            last_message_id=row[4],
            removed=row[1] == "removed",
            offline=row[1] == "offline",
        )
        for row in await cursor.fetchall()
    }


async def record_heartbeats(
    conn: psycopg.AsyncConnection, heartbeats: Sequence[DeviceHeartbeat]
) -> None:
    """Store each device's newest heartbeat in one statement: online, seen now, its sequence;
    a hint no heartbeat told keeps its last value."""
    if not heartbeats:
        return
    await conn.execute(
        """
        UPDATE registry.devices AS d SET status = 'online', last_heartbeat_at = now(),
            heartbeat_sequence = u.sequence, heartbeat_message_id = u.message_id,
            battery_pct = COALESCE(u.battery_pct, d.battery_pct),
            charging = COALESCE(u.charging, d.charging),
            network = COALESCE(u.network, d.network), updated_at = now()
        FROM unnest(%s::text[], %s::bigint[], %s::uuid[], %s::float8[], %s::boolean[],
            %s::text[]) AS u(device_id, sequence, message_id, battery_pct, charging, network)
        WHERE d.device_id = u.device_id
        """,
        (
            [h.device_id for h in heartbeats],
            [h.sequence for h in heartbeats],
            [h.message_id for h in heartbeats],
            [h.battery_pct for h in heartbeats],
            [h.charging for h in heartbeats],
            [h.network for h in heartbeats],
        ),
    )


async def count_by_status(conn: psycopg.AsyncConnection) -> list[tuple[str, int]]:
    cursor = await conn.execute("SELECT status, count(*) FROM registry.devices GROUP BY status")
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def mark_removed(conn: psycopg.AsyncConnection, device_id: str) -> bool:
    cursor = await conn.execute(
        "UPDATE registry.devices SET status = 'removed', removed_at = now(), updated_at = now() "
        "WHERE device_id = %s AND status <> 'removed'",
        (device_id,),
    )
    return cursor.rowcount == 1


async def restore(conn: psycopg.AsyncConnection, device_id: str) -> bool:
    """Bring a removed device back as offline (its next heartbeat brings it online)."""
    cursor = await conn.execute(
        "UPDATE registry.devices SET status = 'offline', removed_at = NULL, updated_at = now() "
        "WHERE device_id = %s AND status = 'removed'",
        (device_id,),
    )
    return cursor.rowcount == 1


async def mark_silent_offline(
    conn: psycopg.AsyncConnection, *, offline_after_s: float
) -> list[str]:
    """Mark online devices silent for longer than ``offline_after_s`` offline; return them.

    One atomic UPDATE, so several registry instances may run the timer side by side. The
    silent devices are found through the index of online devices by last heartbeat (not by
    reading every device), and a row a heartbeat batch holds is skipped, not waited for: that
    device has just been heard from.
    """
    cursor = await conn.execute(
        "UPDATE registry.devices SET status = 'offline', updated_at = now() "
        "WHERE device_id IN ("
        "  SELECT device_id FROM registry.devices"
        "  WHERE status = 'online' AND last_heartbeat_at < now() - make_interval(secs => %s)"
        "  ORDER BY device_id FOR UPDATE SKIP LOCKED"
        ") "
        "RETURNING device_id",
        (offline_after_s,),
    )
    return [row[0] for row in await cursor.fetchall()]


async def log_events(
    conn: psycopg.AsyncConnection, events: Sequence[tuple[str, str, str | None]]
) -> None:
    """Record ``(device_id, kind, issued_by)`` events in their order (pipelined)."""
    if not events:
        return
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO registry.device_events (device_id, kind, issued_by) VALUES (%s, %s, %s)",
            list(events),
        )


async def log_event(
    conn: psycopg.AsyncConnection, *, device_id: str, kind: str, issued_by: str | None
) -> None:
    await conn.execute(
        "INSERT INTO registry.device_events (device_id, kind, issued_by) VALUES (%s, %s, %s)",
        (device_id, kind, issued_by),
    )


async def insert_token(conn: psycopg.AsyncConnection, message: EnrolmentTokenIssued) -> bool:
    """Record a token; False when its id is taken (a token is issued once and never changed)."""
    cursor = await conn.execute(
        "INSERT INTO registry.enrolment_tokens "
        "(token_id, fleet, public_key, expires_at, max_devices, issued_by) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (token_id) DO NOTHING",
        (
            message.token_id,
            message.fleet,
            message.public_key,
            message.expires_at,
            message.max_devices,
            message.issued_by,
        ),
    )
    return cursor.rowcount == 1


async def revoke_token(
    conn: psycopg.AsyncConnection, token_id: UUID, *, issued_by: str | None
) -> bool | None:
    """Revoke a token: True when this revoked it, False when it was already, None if unknown."""
    cursor = await conn.execute(
        "SELECT revoked_at IS NOT NULL FROM registry.enrolment_tokens "
        "WHERE token_id = %s FOR UPDATE",
        (token_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    if row[0]:
        return False
    await conn.execute(
        "UPDATE registry.enrolment_tokens SET revoked_at = now(), revoked_by = %s "
        "WHERE token_id = %s",
        (issued_by, token_id),
    )
    return True
