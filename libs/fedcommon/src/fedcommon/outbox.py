"""The transactional outbox (style.md, rule 31).

A handler writes the messages that follow from its state change into ``<schema>.outbox`` in the
same transaction; :class:`OutboxRelay` publishes them in order and deletes them once the broker
acknowledged. A crash between commit and produce therefore loses nothing; a crash between
produce and delete sends a message twice, which idempotent consumers absorb. A row the broker
keeps refusing is dead-lettered after bounded retries instead of stalling the rows behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from fedcommon import background, codec, kafka, topics
from fedcommon.background import Backoff
from fedcommon.errors import TransientError
from fedcommon.failures import Failure, classify, describe
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


async def enqueue_many(
    conn: psycopg.AsyncConnection,
    *,
    schema: str,
    settings: KafkaSettings,
    messages: Sequence[tuple[str, str, Envelope]],
) -> None:
    """Add ``(base, key, message)`` items to the outbox in their order, inside the caller's
    transaction, in one pipelined statement: a round's dozen follow-ups had cost a dozen
    round trips to the database, each a wait on a loaded machine."""
    if not messages:
        return
    async with conn.cursor() as cursor:
        await cursor.executemany(
            sql.SQL("INSERT INTO {}.outbox (topic, key, value) VALUES (%s, %s, %s)").format(
                sql.Identifier(schema)
            ),
            [
                (topics.topic_name(settings.topic_prefix, base), key, codec.encode(message))
                for base, key, message in messages
            ],
        )


@dataclass(frozen=True)
class _Row:
    """An outbox row, shaped like a consumed record so that it can be dead-lettered as one:
    its dead letter says ``original_partition = -1`` (never on the log) and gives the outbox
    row id as ``original_offset``."""

    id: int
    topic: str
    key: bytes | None
    value: bytes | None
    attempts: int
    txid: int
    partition: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def offset(self) -> int:
        return self.id


class OutboxRelay:
    """Publish outbox rows as soon as they are committed (woken) or at least every interval.

    Rows go out in id order. A row the broker refuses (too large, invalid) is retried with
    backoff ``max_attempts`` times, then dead-lettered with the reason, while the rows behind
    it go on: one bad row never stalls the rest. An outage (broker unreachable) stops the
    batch where it is, keeps every row and is retried with no limit.
    """

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        producer: AIOKafkaProducer,
        schema: str,
        settings: KafkaSettings,
        interval_s: float = 0.5,
        batch: int = 200,
        max_attempts: int = 5,
        retry_first_s: float = 0.5,
        send_timeout_s: float = 10.0,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._schema = sql.Identifier(schema)
        self._name = schema
        self._settings = settings
        self._interval_s = interval_s
        self._batch = batch
        self._max_attempts = max_attempts
        self._retry_first_s = retry_first_s
        self._send_timeout_s = send_timeout_s
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff(first=self._interval_s, cap=10.0)
        while True:
            if await background.run_step(f"{self._name}.outbox", self._drain):
                backoff.reset()
                delay = self._interval_s
            else:
                delay = backoff.next_delay()
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()

    async def _drain(self) -> None:
        while await self.flush() == self._batch:
            pass

    async def flush(self) -> int:
        """Publish one batch of rows; return how many were settled (sent or dead-lettered).

        A row not sent holds back the later rows of the transaction that wrote it (a refused
        ``round.opened`` keeps its train requests back until it is dead-lettered); other
        transactions' rows go on. Raises ``TransientError`` after settling what it could when
        the broker is unavailable.
        """
        outage: BaseException | None = None
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                sql.SQL(
                    "SELECT id, topic, key, value, attempts, txid, next_attempt_at <= now() "
                    "FROM {}.outbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
                ).format(self._schema),
                (self._batch,),
            )
            fetched = await cursor.fetchall()
            # A row waiting for its next attempt holds back the rest of its transaction.
            held: set[int] = {r[5] for r in fetched if not r[6]}
            rows = [_Row(r[0], r[1], r[2].encode(), bytes(r[3]), r[4], r[5]) for r in fetched]
            if not rows:
                return 0
            sent: list[int] = []
            refused: list[tuple[_Row, BaseException]] = []
            # A run of rows for one topic is sent together and acknowledged before the next
            # topic's run, so a round.opened is on the log before the train requests that
            # follow it in the same transaction.
            for run in _runs(rows):
                for row, error in await self._send_run(run, held):
                    if error is None:
                        sent.append(row.id)
                        continue
                    held.add(row.txid)
                    if classify(error) == Failure.TRANSIENT:
                        outage = outage or error
                    else:
                        refused.append((row, error))
                if outage is not None:
                    break
            if sent:
                await conn.execute(
                    sql.SQL("DELETE FROM {}.outbox WHERE id = ANY(%s)").format(self._schema),
                    (sent,),
                )
            settled = len(sent)
            for row, error in refused if outage is None else ():
                try:
                    settled += await self._give_up_or_defer(conn, row, error)
                except Exception as exc:  # the dead-letter write itself failed: keep the row
                    if classify(exc) == Failure.TRANSIENT:
                        outage = exc
                        break
                    logger.exception("dead-lettering outbox row %d failed; kept", row.id)
        if outage is not None:
            raise TransientError(f"broker unavailable: {describe(outage)}") from outage
        return settled

    async def _send_run(
        self, run: list[_Row], held: set[int]
    ) -> list[tuple[_Row, BaseException | None]]:
        """Send the rows of ``run`` whose transaction is not held; return each attempted row
        with its error (None when acknowledged).

        A row the client refuses before sending (too large) holds its transaction's later rows
        at once; one the broker refuses after sending holds them from the next run on. The
        whole run is bounded by ``send_timeout_s``, so that an unreachable broker never holds
        the batch's row locks and connection for the producer's whole request timeout.
        """
        unsent = TransientError(f"not acknowledged within {self._send_timeout_s} s")
        attempted: list[_Row] = []
        # Every attempted row counts as unsent until the broker acknowledged it.
        errors: list[BaseException | None] = []
        pending: dict[asyncio.Future[object], int] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._send_timeout_s):
                for row in run:
                    if row.txid in held:
                        continue
                    attempted.append(row)
                    errors.append(unsent)
                    try:
                        future = await self._producer.send(row.topic, row.value, key=row.key)
                    except Exception as exc:  # refused before sending (too large), or no broker
                        errors[-1] = exc
                        held.add(row.txid)
                        if classify(exc) == Failure.TRANSIENT:
                            break
                        continue
                    pending[future] = len(attempted) - 1
                if pending:
                    await asyncio.wait(pending)
        for future, index in pending.items():
            if future.done():
                errors[index] = future.exception()
        return list(zip(attempted, errors, strict=True))

    async def _give_up_or_defer(
        self, conn: psycopg.AsyncConnection, row: _Row, error: BaseException
    ) -> bool:
        """Count a refusal of ``row``: retry later, or dead-letter it after the last attempt.

        Returns True when the row is settled (dead-lettered and deleted).
        """
        attempts = row.attempts + 1
        reason = describe(error)
        if attempts >= self._max_attempts:
            await kafka.dead_letter(
                self._producer,
                self._settings,
                row,
                error_type="outbox_refused",
                error=f"broker refused it {attempts} times: {reason}",
            )
            await conn.execute(
                sql.SQL("DELETE FROM {}.outbox WHERE id = %s").format(self._schema), (row.id,)
            )
            return True
        delay = self._retry_first_s * 2 ** (attempts - 1)
        logger.warning(
            "outbox row %d for %s refused (%s); attempt %d of %d in %.1fs",
            row.id,
            row.topic,
            reason,
            attempts,
            self._max_attempts,
            delay,
        )
        await conn.execute(
            sql.SQL(
                "UPDATE {}.outbox SET attempts = %s, last_error = %s, "
                "next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s"
            ).format(self._schema),
            (attempts, reason[:2000], delay, row.id),
        )
        return False


def _runs(rows: list[_Row]) -> list[list[_Row]]:
    """Split ``rows`` into maximal runs of consecutive rows for the same topic."""
    runs: list[list[_Row]] = []
    for row in rows:
        if runs and runs[-1][0].topic == row.topic:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs
