"""Kafka plumbing every service shares: clients, topic creation and the one consume loop.

The loop follows style.md rules 29-30: decode, handle, commit ``offset + 1`` per record; an
``InvalidMessage`` goes to the dead-letter topic with its original bytes and provenance headers
and the loop goes on; a ``TransientError`` is retried with bounded backoff and never
dead-lettered; any other exception is dead-lettered as ``unhandled`` and counted against a
consecutive limit, past which the loop stops (arroyo's ``DlqLimit``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from prometheus_client import Counter

from fedcommon import codec, topics
from fedcommon.errors import InvalidMessage, TransientError
from fedcommon.messages.v1 import AnyMessage, Envelope
from fedcommon.settings import KafkaSettings

logger = logging.getLogger(__name__)

DEAD_LETTERED = Counter(
    "fedengine_dead_lettered_total",
    "Messages sent to the dead-letter topic",
    ["topic", "error_type"],
)
CONSUMED = Counter("fedengine_consumed_total", "Records consumed", ["topic"])

Handler = Callable[[AnyMessage, ConsumerRecord], Awaitable[None]]
# Given a partition and the offset just past the record handled, return the offset that is
# safe to commit (the aggregator returns the first offset an open round still needs).
CommitPosition = Callable[[TopicPartition, int], int]


def make_producer(settings: KafkaSettings, *, client_id: str) -> AIOKafkaProducer:
    """Return a producer; idempotence stays off (broker.md: it fails on the local broker)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        acks="all",
        linger_ms=settings.linger_ms,
        max_request_size=settings.max_message_bytes,
    )


def make_consumer(
    settings: KafkaSettings, *, group_id: str, topic_bases: Iterable[str], client_id: str
) -> AIOKafkaConsumer:
    """Return a manually committing consumer of the prefixed topics."""
    names = [topics.topic_name(settings.topic_prefix, base) for base in topic_bases]
    return AIOKafkaConsumer(
        *names,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"{settings.topic_prefix}{group_id}",
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_partition_fetch_bytes=settings.max_message_bytes,
        fetch_max_bytes=max(settings.max_message_bytes, 52_428_800),
    )


async def create_topics(settings: KafkaSettings) -> list[str]:
    """Create every topic explicitly, with its partitions and max.message.bytes.

    Never rely on auto-creation: the local broker would make 4 partitions and no size config.
    Returns the names that were newly created.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=name,
                num_partitions=settings.partitions,
                replication_factor=1,
                topic_configs={"max.message.bytes": str(settings.max_message_bytes)},
            )
            for name in topics.all_topic_names(settings.topic_prefix)
            if name not in existing
        ]
        for topic in wanted:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created


async def publish(
    producer: AIOKafkaProducer, settings: KafkaSettings, base: str, *, key: str, message: Envelope
) -> None:
    """Encode ``message`` and send it, waiting for the broker's acknowledgement."""
    await producer.send_and_wait(
        topics.topic_name(settings.topic_prefix, base), codec.encode(message), key=key.encode()
    )


async def dead_letter(
    producer: AIOKafkaProducer,
    settings: KafkaSettings,
    record: SourceRecord,
    *,
    error_type: str,
    error: str,
) -> None:
    """Send the original bytes of ``record`` to the dead-letter topic with provenance headers."""
    headers = [
        ("original_topic", record.topic.encode()),
        ("original_partition", str(record.partition).encode()),
        ("original_offset", str(record.offset).encode()),
        ("error_type", error_type.encode()),
        ("error", error[:2000].encode()),
    ]
    await producer.send_and_wait(
        topics.topic_name(settings.topic_prefix, topics.DLQ),
        record.value,
        key=record.key,
        headers=headers,
    )
    DEAD_LETTERED.labels(record.topic, error_type).inc()
    logger.warning(
        "dead-lettered %s[%d]@%d: %s: %s",
        record.topic,
        record.partition,
        record.offset,
        error_type,
        error[:300],
    )


class SourceRecord(Protocol):
    """What the processor needs of a record (aiokafka's ``ConsumerRecord`` and test fakes fit)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class RecordProcessor:
    """Decode and handle one record with the error rules of style.md, rules 29-30."""

    producer: AIOKafkaProducer
    settings: KafkaSettings
    handle: Handler
    max_consecutive_unhandled: int = 10
    transient_retries: int = 5
    _consecutive_unhandled: int = 0

    async def process(self, record: SourceRecord) -> None:
        """Handle ``record``; dead-letter it when it cannot be; raise when the loop must stop."""
        CONSUMED.labels(record.topic).inc()
        try:
            message = codec.decode(record.value)
        except InvalidMessage as exc:
            await dead_letter(
                self.producer, self.settings, record, error_type="invalid", error=str(exc)
            )
            return
        delay = 0.1
        for attempt in range(self.transient_retries + 1):
            try:
                await self.handle(message, record)
                self._consecutive_unhandled = 0
                return
            except InvalidMessage as exc:
                await dead_letter(
                    self.producer,
                    self.settings,
                    record,
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
                self._consecutive_unhandled = 0
                return
            except TransientError:
                if attempt == self.transient_retries:
                    logger.error(
                        "transient error persists on %s@%d; exiting uncommitted",
                        record.topic,
                        record.offset,
                    )
                    raise
                logger.warning(
                    "transient error on %s@%d, retrying in %.1fs",
                    record.topic,
                    record.offset,
                    delay,
                    exc_info=True,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:
                logger.exception("unhandled error on %s@%d", record.topic, record.offset)
                await dead_letter(
                    self.producer,
                    self.settings,
                    record,
                    error_type="unhandled",
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._consecutive_unhandled += 1
                if self._consecutive_unhandled > self.max_consecutive_unhandled:
                    raise RuntimeError(
                        f"{self._consecutive_unhandled} consecutive unhandled errors; stopping"
                    ) from exc
                return


@dataclass
class ConsumeLoop:
    """The one consume loop (style.md, rule 29): process each record, then commit past it."""

    consumer: AIOKafkaConsumer
    processor: RecordProcessor
    commit_position: CommitPosition | None = None
    # Handle a fetched batch's partitions concurrently (records of one partition stay in order
    # and each is committed after it is handled). For handlers whose partitions are independent.
    concurrent_partitions: bool = False
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Ask the loop to finish the record in hand, commit and return."""
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=200, max_records=100)
            if self.concurrent_partitions:
                await asyncio.gather(*(self._run_partition(tp, rs) for tp, rs in batches.items()))
            else:
                for tp, records in batches.items():
                    await self._run_partition(tp, records)

    async def _run_partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        for record in records:
            await self.processor.process(record)
            await self._commit(tp, record.offset + 1)
            if self._stopping.is_set():
                return

    async def commit_current(self) -> None:
        """Commit what ``commit_position`` allows now, for every assigned partition."""
        if self.commit_position is None:
            return
        for tp in self.consumer.assignment():
            position = await self.consumer.position(tp)
            await self._commit(tp, position)

    async def _commit(self, tp: TopicPartition, next_offset: int) -> None:
        offset = (
            next_offset if self.commit_position is None else self.commit_position(tp, next_offset)
        )
        if offset > 0:
            await self.consumer.commit({tp: offset})


async def wait_for_assignment(consumer: AIOKafkaConsumer, *, timeout_s: float = 60.0) -> None:
    """Wait until the group join has given ``consumer`` its partitions."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not consumer.assignment():
        if loop.time() > deadline:
            raise TimeoutError(f"no partitions assigned within {timeout_s}s")
        await asyncio.sleep(0.05)
