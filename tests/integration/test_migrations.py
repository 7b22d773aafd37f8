"""Migrations apply idempotently on PostgreSQL 18 (embedded) and on PostgreSQL 15 where one
runs (TEST_PG15_URL, default the local server at 127.0.0.1:5432; skipped when absent)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcommon import db
from fedcommon.settings import PostgresSettings
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PACKAGES = {
    "registry": "fedengine_registry",
    "coordinator": "fedengine_coordinator",
    "aggregator": "fedengine_aggregator",
    "simulator": "fedengine_simulator",
    "privacy": "fedengine_privacy",
}


class Pg15(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")
    url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres", validation_alias="TEST_PG15_URL"
    )


async def _migrate_twice(url: str) -> tuple[int, list[str]]:
    pool = await db.open_pool(PostgresSettings(DATABASE_URL=url), name="migrations-test")
    try:
        first = [
            name
            for schema, package in PACKAGES.items()
            for name in await db.migrate(pool, schema=schema, package=package)
        ]
        second = [
            name
            for schema, package in PACKAGES.items()
            for name in await db.migrate(pool, schema=schema, package=package)
        ]
        async with pool.connection() as conn:
            cursor = await conn.execute("SHOW server_version_num")
            version = int((await cursor.fetchone())[0]) // 10000
        return version, [*first, "|", *second]
    finally:
        await pool.close()


@contextmanager
def _fresh(server: str) -> Iterator[str]:
    """Create a throw-away database on ``server``; drop it afterwards."""
    name = f"fedengine_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migrations_are_idempotent_on_the_test_server(stack: Stack) -> None:
    with _fresh(stack.database_url) as url:
        version, applied = await _migrate_twice(url)
    shipped = [entry.name for package in PACKAGES.values() for entry in db.migration_files(package)]
    assert applied == [*shipped, "|"], "every migration once, and the second run applies nothing"
    assert version >= 15


async def test_migrations_are_idempotent_on_postgresql_15() -> None:
    server = Pg15().url
    try:
        psycopg.connect(server, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL 15 reachable here: {exc}")
    with _fresh(server) as url:
        version, applied = await _migrate_twice(url)
    if version != 15:
        pytest.skip(f"the server at TEST_PG15_URL is PostgreSQL {version}")
    assert applied[-1] == "|"


async def test_processed_message_ids_older_than_the_window_are_purged(stack: Stack) -> None:
    with _fresh(stack.database_url) as url:
        pool = await db.open_pool(PostgresSettings(DATABASE_URL=url), name="purge-test")
        try:
            await db.migrate(pool, schema="registry", package="fedengine_registry")
            async with pool.connection() as conn:
                old, recent = uuid.uuid4(), uuid.uuid4()
                await conn.execute(
                    "INSERT INTO registry.processed_messages (message_id, processed_at) "
                    "VALUES (%s, now() - interval '2 days'), (%s, now())",
                    (old, recent),
                )
                purged = await db.purge_processed(conn, schema="registry", older_than_s=86_400)
                cursor = await conn.execute("SELECT message_id FROM registry.processed_messages")
                remaining = [row[0] for row in await cursor.fetchall()]
        finally:
            await pool.close()

    assert purged == 1
    assert remaining == [recent]
