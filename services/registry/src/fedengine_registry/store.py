"""The registry's SQL (the only module that knows it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from fedcommon.messages.v1 import DeviceEnrolled

SCHEMA = "registry"


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    status: str
    public_key: bytes | None
    heartbeat_sequence: int
    enrolled_sent_at: datetime | None


async def get_device(conn: psycopg.AsyncConnection, device_id: str) -> DeviceRow | None:
    cursor = await conn.execute(
        "SELECT device_id, status, public_key, heartbeat_sequence, enrolled_sent_at "
        "FROM registry.devices WHERE device_id = %s FOR UPDATE",
        (device_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    return DeviceRow(row[0], row[1], row[2] and bytes(row[2]), row[3], row[4])


async def upsert_enrolled(conn: psycopg.AsyncConnection, message: DeviceEnrolled) -> None:
    await conn.execute(
        """
        INSERT INTO registry.devices (device_id, device_name, device_type, privacy_level,
            capabilities, public_key, fleet, status, last_heartbeat_at, battery_pct,
            enrolled_sent_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, 'online', now(), %s, %s)
        ON CONFLICT (device_id) DO UPDATE SET
            device_name = EXCLUDED.device_name, device_type = EXCLUDED.device_type,
            privacy_level = EXCLUDED.privacy_level, capabilities = EXCLUDED.capabilities,
            public_key = COALESCE(EXCLUDED.public_key, registry.devices.public_key),
            fleet = EXCLUDED.fleet, status = 'online', last_heartbeat_at = now(),
            battery_pct = EXCLUDED.battery_pct, enrolled_sent_at = EXCLUDED.enrolled_sent_at,
            updated_at = now()
        """,
        (
            message.device_id,
            message.device_name,
            message.device_type.value,
            message.privacy_level.value,
            Jsonb(message.capabilities.model_dump()),
            message.public_key,
            message.fleet,
            message.capabilities.battery_pct if message.capabilities.has_battery else None,
            message.sent_at,
        ),
    )


async def record_heartbeat(
    conn: psycopg.AsyncConnection, *, device_id: str, sequence: int, battery_pct: float | None
) -> None:
    await conn.execute(
        "UPDATE registry.devices SET status = 'online', last_heartbeat_at = now(), "
        "heartbeat_sequence = %s, battery_pct = COALESCE(%s, battery_pct), updated_at = now() "
        "WHERE device_id = %s",
        (sequence, battery_pct, device_id),
    )


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

    One atomic UPDATE, so several registry instances may run the timer side by side.
    """
    cursor = await conn.execute(
        "UPDATE registry.devices SET status = 'offline', updated_at = now() "
        "WHERE status = 'online' AND last_heartbeat_at < now() - make_interval(secs => %s) "
        "RETURNING device_id",
        (offline_after_s,),
    )
    return [row[0] for row in await cursor.fetchall()]


async def log_event(
    conn: psycopg.AsyncConnection, *, device_id: str, kind: str, issued_by: str | None
) -> None:
    await conn.execute(
        "INSERT INTO registry.device_events (device_id, kind, issued_by) VALUES (%s, %s, %s)",
        (device_id, kind, issued_by),
    )
