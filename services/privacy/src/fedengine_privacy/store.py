"""The privacy service's SQL: budgets, the append-only ledger and the audit log, and the
append-only device ledger of local DP-SGD."""

from __future__ import annotations

import hashlib
from typing import Literal
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from fedcommon.local_dp import LOCAL_DP_DELTA
from fedcommon.messages.v1 import AdaptiveClipping
from fedengine_privacy.core.device_ledger import DeviceCharge, DeviceRelease
from fedengine_privacy.core.ledger import Budget, Release
from fedprivacy.accountants import Accountant

SCHEMA = "privacy"

AuditDecision = Literal["approved", "refused", "duplicate"]


def _lock_key(task_id: UUID) -> int:
    digest = hashlib.sha256(b"fedengine/privacy/task/" + task_id.bytes).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_task(conn: psycopg.AsyncConnection, task_id: UUID) -> None:
    """Serialise the task's decisions until the transaction ends, even before its budget row
    exists (two first requests must not both fix a budget or both be charged)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(task_id),))


async def get_budget(conn: psycopg.AsyncConnection, task_id: UUID) -> Budget | None:
    cursor = await conn.execute(
        "SELECT epsilon_budget, delta, accountant, clip_norm, noise_multiplier, calibrated, "
        "planned_rounds, exhausted_at IS NOT NULL, adaptive_clipping FROM privacy.budgets "
        "WHERE task_id = %s",
        (task_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    return Budget(
        epsilon=row[0],
        delta=row[1],
        accountant=Accountant(row[2]),
        clip_norm=row[3],
        noise_multiplier=row[4],
        calibrated=row[5],
        planned_rounds=row[6],
        exhausted=row[7],
        adaptive=None if row[8] is None else AdaptiveClipping.model_validate(row[8]),
    )


async def insert_budget(conn: psycopg.AsyncConnection, task_id: UUID, budget: Budget) -> None:
    await conn.execute(
        "INSERT INTO privacy.budgets (task_id, epsilon_budget, delta, accountant, clip_norm, "
        "noise_multiplier, calibrated, planned_rounds, exhausted_at, adaptive_clipping) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END, %s)",
        (
            task_id,
            budget.epsilon,
            budget.delta,
            budget.accountant.value,
            budget.clip_norm,
            budget.noise_multiplier,
            budget.calibrated,
            budget.planned_rounds,
            budget.exhausted,
            None if budget.adaptive is None else Jsonb(budget.adaptive.model_dump(mode="json")),
        ),
    )


async def mark_exhausted(conn: psycopg.AsyncConnection, task_id: UUID) -> None:
    await conn.execute(
        # Stamped once: the table's trigger refuses any other change (migration 003).
        "UPDATE privacy.budgets SET exhausted_at = now() "
        "WHERE task_id = %s AND exhausted_at IS NULL",
        (task_id,),
    )


async def releases(conn: psycopg.AsyncConnection, task_id: UUID) -> list[Release]:
    """The task's ledger, oldest first."""
    cursor = await conn.execute(
        "SELECT round_number, attempt, sample_rate, noise_multiplier, steps "
        "FROM privacy.releases WHERE task_id = %s ORDER BY released_at, round_number, attempt",
        (task_id,),
    )
    return [Release(r[0], r[1], r[2], r[3], r[4]) for r in await cursor.fetchall()]


async def refused_tries(conn: psycopg.AsyncConnection, task_id: UUID) -> set[tuple[int, int]]:
    """The (round, attempt) pairs of the task refused before: a repeat is a duplicate."""
    cursor = await conn.execute(
        "SELECT DISTINCT round_number, attempt FROM privacy.audit_log "
        "WHERE task_id = %s AND decision = 'refused'",
        (task_id,),
    )
    return {(r[0], r[1]) for r in await cursor.fetchall()}


async def insert_release(
    conn: psycopg.AsyncConnection,
    *,
    approval_id: UUID,
    task_id: UUID,
    round_id: UUID | None,
    release: Release,
    budget: Budget,
    epsilon_after: float,
    request_message_id: UUID,
) -> None:
    await conn.execute(
        "INSERT INTO privacy.releases (approval_id, task_id, round_id, round_number, attempt, "
        "mechanism, noise_multiplier, sample_rate, steps, clip_norm, epsilon_after, delta, "
        "accountant, request_message_id, update_noise_multiplier, count_noise_std) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            approval_id,
            task_id,
            round_id,
            release.round_number,
            release.attempt,
            release.mechanism,
            release.noise_multiplier,
            release.sample_rate,
            release.steps,
            budget.clip_norm if release.clip_norm is None else release.clip_norm,
            epsilon_after,
            budget.delta,
            budget.accountant.value,
            request_message_id,
            release.update_noise_multiplier,
            release.count_noise_std,
        ),
    )


async def insert_audit(
    conn: psycopg.AsyncConnection,
    *,
    task_id: UUID,
    round_number: int,
    attempt: int,
    request_message_id: UUID,
    requested_by: str,
    on_behalf_of: str,
    decision: AuditDecision,
    reason: str | None,
    epsilon_before: float,
    epsilon_after: float | None,
) -> None:
    await conn.execute(
        "INSERT INTO privacy.audit_log (task_id, round_number, attempt, request_message_id, "
        "requested_by, on_behalf_of, decision, reason, epsilon_before, epsilon_after) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            task_id,
            round_number,
            attempt,
            request_message_id,
            requested_by,
            on_behalf_of,
            decision,
            reason,
            epsilon_before,
            epsilon_after,
        ),
    )


# --- the device ledger (local DP-SGD) --------------------------------------------------------


def _device_lock_key(device_id: str) -> int:
    digest = hashlib.sha256(b"fedengine/privacy/device/" + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_devices(conn: psycopg.AsyncConnection, device_ids: list[str]) -> None:
    """Serialise charges of these devices until the transaction ends (in sorted order, so two
    transactions charging overlapping devices cannot deadlock)."""
    for device_id in sorted(set(device_ids)):
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_device_lock_key(device_id),))


async def device_history(conn: psycopg.AsyncConnection, device_id: str) -> list[DeviceRelease]:
    """Every release the device was charged, oldest first."""
    cursor = await conn.execute(
        "SELECT task_id, round_number, attempt, sample_rate, noise_multiplier, steps "
        "FROM privacy.device_releases WHERE device_id = %s "
        "ORDER BY recorded_at, task_id, round_number, attempt",
        (device_id,),
    )
    return [
        DeviceRelease(r[0], Release(r[1], r[2], r[3], r[4], r[5])) for r in await cursor.fetchall()
    ]


async def insert_device_charge(
    conn: psycopg.AsyncConnection,
    charge: DeviceCharge,
    *,
    round_id: UUID | None,
    request_message_id: UUID,
) -> None:
    settings = charge.settings
    await conn.execute(
        "INSERT INTO privacy.device_releases (device_id, task_id, round_id, round_number, "
        "attempt, level, noise_multiplier, sample_rate, steps, max_grad_norm, delta, "
        "epsilon_task_budget, epsilon_lifetime_budget, epsilon_task_after, "
        "epsilon_lifetime_after, task_exhausted, lifetime_exhausted, request_message_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (
            charge.device_id,
            charge.task_id,
            round_id,
            charge.release.round_number,
            charge.release.attempt,
            settings.level.value,
            charge.release.noise_multiplier,
            charge.release.sample_rate,
            charge.release.steps,
            settings.max_grad_norm,
            LOCAL_DP_DELTA,
            charge.epsilon_task_budget,
            charge.epsilon_lifetime_budget,
            charge.epsilon_task_after,
            charge.epsilon_lifetime_after,
            charge.task_exhausted,
            charge.lifetime_exhausted,
            request_message_id,
        ),
    )
