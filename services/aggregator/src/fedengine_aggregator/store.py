"""The aggregator's SQL: closed rounds and every update's verdict (the audit of device results)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from fedcommon.messages.v1 import SecAggSubmitted, UpdateDeclined, UpdateSubmitted
from fedengine_aggregator.core.protocol import StageLog

SCHEMA = "aggregator"


async def is_closed(conn: psycopg.AsyncConnection, round_id: UUID) -> bool:
    cursor = await conn.execute("SELECT 1 FROM aggregator.rounds WHERE round_id = %s", (round_id,))
    return await cursor.fetchone() is not None


async def record_result(
    conn: psycopg.AsyncConnection,
    message: UpdateSubmitted,
    *,
    partition: int,
    offset: int,
    status: str,
    reason: str | None = None,
    detail: str | None = None,
    private: bool = False,
) -> None:
    """Record an update's verdict once: an acceptance is unique per (round, device), a
    rejection per message id. Partition and offset are kept as provenance only: they start
    again after a restart of an in-memory broker. ``private`` marks an update of a DP round:
    kept for the aggregator's audit, never shown in the public view; an update for a round
    closed as a DP round (a late one) is marked private whatever ``private`` says."""
    await conn.execute(
        """
        INSERT INTO aggregator.device_results (kafka_partition, kafka_offset, task_id, round_id,
            round_number, device_id, message_id, status, reason, detail, num_examples,
            train_loss, train_accuracy, duration_s, size_bytes, private)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
            %s OR EXISTS (SELECT 1 FROM aggregator.rounds WHERE round_id = %s AND private))
        ON CONFLICT DO NOTHING
        """,
        (
            partition,
            offset,
            message.task_id,
            message.round_id,
            message.round_number,
            message.device_id,
            message.message_id,
            status,
            reason,
            detail and detail[:500],
            message.num_examples,
            message.metrics.train_loss,
            message.metrics.train_accuracy,
            message.metrics.duration_s,
            len(message.update),
            private,
            message.round_id,
        ),
    )


async def close_round(
    conn: psycopg.AsyncConnection,
    *,
    round_id: UUID,
    task_id: UUID,
    round_number: int,
    attempt: int,
    outcome: str,
    participants: list[str],
    dropped: list[str],
    rejected: dict[str, int],
    bytes_up: int,
    private: bool,
) -> bool:
    """Record the round closed; False if it already was (its result is stored already).
    ``private``: a DP round (its late updates stay out of the public view)."""
    cursor = await conn.execute(
        """
        INSERT INTO aggregator.rounds (round_id, task_id, round_number, attempt, outcome,
            participants, dropped, rejected, bytes_up, private)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (round_id) DO NOTHING
        """,
        (
            round_id,
            task_id,
            round_number,
            attempt,
            outcome,
            participants,
            dropped,
            Jsonb(rejected),
            bytes_up,
            private,
        ),
    )
    return cursor.rowcount == 1


async def record_verdict(
    conn: psycopg.AsyncConnection,
    message: UpdateSubmitted | UpdateDeclined | SecAggSubmitted,
    *,
    partition: int,
    offset: int,
    status: str,
    reason: str | None = None,
    detail: str | None = None,
    private: bool = False,
) -> None:
    """Record a stage record's verdict (``record_result`` for an update; a decline or a SecAgg+
    message has only its rejections recorded, ``record_rejection``: a decline is always one,
    and an accepted key or share says nothing to audit)."""
    if isinstance(message, UpdateSubmitted):
        await record_result(
            conn,
            message,
            partition=partition,
            offset=offset,
            status=status,
            reason=reason,
            detail=detail,
            private=private,
        )
    elif isinstance(message, UpdateDeclined) or status == "rejected":
        # A decline is always refused (``declined``, or why it does not count).
        await record_rejection(
            conn,
            message,
            partition=partition,
            offset=offset,
            reason=reason or "",
            detail=detail or "",
            private=private,
        )


async def record_rejection(
    conn: psycopg.AsyncConnection,
    message: SecAggSubmitted | UpdateDeclined,
    *,
    partition: int,
    offset: int,
    reason: str,
    detail: str,
    private: bool,
) -> None:
    """Record a refused SecAgg+ message or decline once per message id (as an update's
    rejection); a decline carries no update, so no examples, metrics or bytes."""
    await conn.execute(
        """
        INSERT INTO aggregator.device_results (kafka_partition, kafka_offset, task_id, round_id,
            round_number, device_id, message_id, status, reason, detail, size_bytes, private)
        VALUES (%s, %s, %s, %s, %s, %s, %s, 'rejected', %s, %s, %s,
            %s OR EXISTS (SELECT 1 FROM aggregator.rounds WHERE round_id = %s AND private))
        ON CONFLICT DO NOTHING
        """,
        (
            partition,
            offset,
            message.task_id,
            message.round_id,
            message.round_number,
            message.device_id,
            message.message_id,
            reason,
            detail[:500],
            len(message.payload) if isinstance(message, SecAggSubmitted) else 0,
            private,
            message.round_id,
        ),
    )


@dataclass(frozen=True)
class Checkpoint:
    stage: int
    started_at: datetime
    expected: list[str]
    server_state: bytes


async def latest_checkpoint(conn: psycopg.AsyncConnection, round_id: UUID) -> Checkpoint | None:
    cursor = await conn.execute(
        "SELECT stage, started_at, expected, server_state FROM aggregator.secagg_checkpoints "
        "WHERE round_id = %s ORDER BY stage DESC LIMIT 1",
        (round_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else Checkpoint(row[0], row[1], list(row[2]), bytes(row[3]))


async def save_checkpoint(
    conn: psycopg.AsyncConnection, round_id: UUID, checkpoint: Checkpoint
) -> bool:
    """Store a stage's start; False if it was stored already (its deliveries went with it)."""
    cursor = await conn.execute(
        "INSERT INTO aggregator.secagg_checkpoints (round_id, stage, started_at, expected, "
        "server_state) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (
            round_id,
            checkpoint.stage,
            checkpoint.started_at,
            checkpoint.expected,
            checkpoint.server_state,
        ),
    )
    return cursor.rowcount == 1


async def drop_checkpoints(conn: psycopg.AsyncConnection, round_id: UUID) -> None:
    await conn.execute("DELETE FROM aggregator.secagg_checkpoints WHERE round_id = %s", (round_id,))


async def log_stage(
    conn: psycopg.AsyncConnection,
    *,
    round_id: UUID,
    task_id: UUID,
    round_number: int,
    attempt: int,
    entry: StageLog,
    private: bool,
) -> None:
    await conn.execute(
        """
        INSERT INTO aggregator.secagg_log (round_id, task_id, round_number, attempt, stage,
            stage_name, expected, delivered, dropped, rejected, seconds, bytes_up, bytes_down,
            private)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT DO NOTHING
        """,
        (
            round_id,
            task_id,
            round_number,
            attempt,
            entry.stage,
            entry.stage_name,
            entry.expected,
            entry.delivered,
            entry.expected - entry.delivered,
            entry.rejected,
            entry.seconds,
            entry.bytes_up,
            entry.bytes_down,
            private,
        ),
    )
