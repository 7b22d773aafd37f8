"""Async PostgreSQL access (psycopg 3): the pool and idempotent, per-schema migrations.

Each service owns one schema named after it. Migrations are ``NNN_name.sql`` files shipped in
the service package, applied in order under an advisory lock, each in its own transaction, and
recorded in ``<schema>.schema_migrations``; running them again does nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from fedcommon.errors import TransientError
from fedcommon.settings import PostgresSettings

logger = logging.getLogger(__name__)

# Tables every schema gets: the idempotency record and the transactional outbox (rule 31).
_COMMON_SQL = """
CREATE TABLE IF NOT EXISTS {schema}.processed_messages (
    message_id uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key text NOT NULL,
    value bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS last_error text;
ALTER TABLE {schema}.outbox
    ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS txid bigint NOT NULL DEFAULT txid_current();
"""


async def open_pool(settings: PostgresSettings, *, name: str) -> AsyncConnectionPool:
    """Open a connection pool and wait until it can serve a connection."""
    pool = AsyncConnectionPool(
        settings.url.get_secret_value(),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        max_idle=settings.pool_max_idle_s,
        name=name,
        timeout=settings.pool_timeout_s,
        open=False,
        kwargs={"autocommit": True},
    )
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:
        raise TransientError(f"database unavailable: {exc}") from exc
    return pool


def migration_files(package: str) -> list[Traversable]:
    folder = resources.files(package) / "migrations"
    return sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )


async def migrate(pool: AsyncConnectionPool, *, schema: str, package: str) -> list[str]:
    """Apply the package's pending migrations to ``schema``; return the names applied."""
    schema_id = sql.Identifier(schema)
    lock_key = int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)
    applied: list[str] = []
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            async with conn.transaction():
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema_id))
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(schema_id)
                )
                await conn.execute(sql.SQL(_COMMON_SQL).format(schema=schema_id))
            cursor = await conn.execute(
                sql.SQL("SELECT name FROM {}.schema_migrations").format(schema_id)
            )
            done = {row[0] for row in await cursor.fetchall()}
            for entry in migration_files(package):
                if entry.name in done:
                    continue
                body = entry.read_text(encoding="utf-8")
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("SET LOCAL search_path TO {}, public").format(schema_id)
                    )
                    await conn.execute(body.encode())
                    await conn.execute(
                        sql.SQL("INSERT INTO {}.schema_migrations (name) VALUES (%s)").format(
                            schema_id
                        ),
                        (entry.name,),
                    )
                applied.append(entry.name)
                logger.info("applied migration %s.%s", schema, entry.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
    return applied


async def is_processed(conn: psycopg.AsyncConnection, *, schema: str, message_id: object) -> bool:
    """Whether ``message_id`` was already handled (for handlers that mark it later)."""
    cursor = await conn.execute(
        sql.SQL("SELECT 1 FROM {}.processed_messages WHERE message_id = %s").format(
            sql.Identifier(schema)
        ),
        (message_id,),
    )
    return await cursor.fetchone() is not None


async def processed_among(
    conn: psycopg.AsyncConnection, *, schema: str, message_ids: Sequence[UUID]
) -> set[UUID]:
    """Which of ``message_ids`` were already handled (one query for a batch)."""
    cursor = await conn.execute(
        sql.SQL(
            "SELECT message_id FROM {}.processed_messages WHERE message_id = ANY(%s::uuid[])"
        ).format(sql.Identifier(schema)),
        (list(message_ids),),
    )
    return {row[0] for row in await cursor.fetchall()}


async def mark_all_processed(
    conn: psycopg.AsyncConnection, *, schema: str, message_ids: Sequence[UUID]
) -> None:
    """Record every one of ``message_ids`` as handled in this transaction (one statement)."""
    await conn.execute(
        sql.SQL(
            "INSERT INTO {}.processed_messages (message_id) "
            "SELECT unnest(%s::uuid[]) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(schema)),
        (list(message_ids),),
    )


async def purge_processed(
    conn: psycopg.AsyncConnection, *, schema: str, older_than_s: float
) -> int:
    """Forget handled message ids older than the dedupe window; return how many.

    Redeliveries come within minutes (a rebalance, a restart); keeping ids for a day bounds the
    table while covering them many times over.
    """
    cursor = await conn.execute(
        sql.SQL(
            "DELETE FROM {}.processed_messages "
            "WHERE processed_at < now() - make_interval(secs => %s)"
        ).format(sql.Identifier(schema)),
        (older_than_s,),
    )
    return cursor.rowcount


async def mark_processed(conn: psycopg.AsyncConnection, *, schema: str, message_id: object) -> bool:
    """Record ``message_id`` as handled in this transaction; False when it already was."""
    cursor = await conn.execute(
        sql.SQL(
            "INSERT INTO {}.processed_messages (message_id) VALUES (%s) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(schema)),
        (message_id,),
    )
    return cursor.rowcount == 1
