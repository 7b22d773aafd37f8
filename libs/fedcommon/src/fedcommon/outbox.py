"""The transactional outbox (style.md, rule 31).

A handler writes the messages that follow from its state change into ``<schema>.outbox`` in the
same transaction; :class:`OutboxRelay` publishes them in order and deletes them once the broker
acknowledged. A crash between commit and produce therefore loses nothing; a crash between
produce and delete sends a message twice, which idempotent consumers absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from fedcommon import codec, topics
from fedcommon.messages.v1 import Envelope
from fedcommon.settings import KafkaSettings

logger = logging.getLogger(__name__)


async def enqueue(
    conn: psycopg.AsyncConnection,
    *,
    schema: str,
    settings: KafkaSettings,
    base: str,
    key: str,
    message: Envelope,
) -> None:
    """Add ``message`` to the outbox inside the caller's transaction."""
    await conn.execute(
        sql.SQL("INSERT INTO {}.outbox (topic, key, value) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema)
        ),
        (topics.topic_name(settings.topic_prefix, base), key, codec.encode(message)),
    )


class OutboxRelay:
    """Publish outbox rows as soon as they are committed (woken) or at least every interval."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        producer: AIOKafkaProducer,
        schema: str,
        interval_s: float = 0.5,
        batch: int = 200,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._schema = sql.Identifier(schema)
        self._interval_s = interval_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while await self.flush() == self._batch:
                    pass
            except Exception:
                logger.exception("outbox relay failed; retrying")
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()

    async def flush(self) -> int:
        """Publish one batch of pending rows; return how many were sent."""
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                sql.SQL(
                    "SELECT id, topic, key, value FROM {}.outbox ORDER BY id "
                    "LIMIT %s FOR UPDATE SKIP LOCKED"
                ).format(self._schema),
                (self._batch,),
            )
            rows = await cursor.fetchall()
            if not rows:
                return 0
            # Rows go out in id order; a run of rows for one topic is sent together and
            # acknowledged before the next topic's run, so a round.opened is on the log before
            # the train requests that follow it in the same transaction.
            start = 0
            while start < len(rows):
                end = start
                while end < len(rows) and rows[end][1] == rows[start][1]:
                    end += 1
                futures = [
                    await self._producer.send(topic, bytes(value), key=key.encode())
                    for _, topic, key, value in rows[start:end]
                ]
                await asyncio.gather(*futures)
                start = end
            await conn.execute(
                sql.SQL("DELETE FROM {}.outbox WHERE id = ANY(%s)").format(self._schema),
                ([row[0] for row in rows],),
            )
            return len(rows)
