"""The aggregator's SQL: closed rounds and every update's verdict (the audit of device results)."""

from __future__ import annotations

from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from fedcommon.messages.v1 import UpdateSubmitted

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
