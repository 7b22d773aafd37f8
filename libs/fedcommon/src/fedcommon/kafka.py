"""Kafka plumbing every service shares: clients, topic creation and the one consume loop.

The loop follows style.md rules 29-30, with errors classified at their source
(fedcommon.failures): decode, handle, commit ``offset + 1`` per record; a bad record (one that
does not decode, carries a type its topic does not carry, or that the handler or the database
refuses) goes to the dead-letter topic with its original bytes, or as a digest when too large to
copy, and the loop goes on; an outage is waited out with no limit and never dead-letters a
valid record; any other exception is dead-lettered as ``unhandled`` and counted against a
consecutive limit, past which the loop stops loudly (arroyo's ``DlqLimit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from prometheus_client import Counter, Gauge

from fedcommon import codec, topics, trust
from fedcommon.background import Backoff
from fedcommon.errors import InvalidMessage
from fedcommon.failures import Failure, classify, describe
from fedcommon.fetch_pacing import FetchPacing
from fedcommon.kafka_client import client_options as client_options
from fedcommon.kafka_client import ssl_context as ssl_context
from fedcommon.messages.v1 import AnyMessage, Envelope
from fedcommon.settings import KafkaSettings

logger = logging.getLogger(__name__)

DEAD_LETTERED = Counter(
    "fedengine_dead_lettered_total",
    "Messages sent to the dead-letter topic",
    ["topic", "error_type"],
)
CONSUMED = Counter("fedengine_consumed_total", "Records consumed", ["topic"])
OUTAGES = Counter(
    "fedengine_outages_total", "Records whose handling had to wait out an outage", ["topic"]
)
OUTAGE_RETRIES = Counter(
    "fedengine_outage_retries_total", "Retries of a record during an outage", ["topic"]
)
REFUSED = Counter(
    "fedengine_untrusted_total", "Messages refused for their signature or sender", ["topic", "type"]
)
WAITING_OUT = Gauge("fedengine_waiting_out_outage", "1 while a record waits out an outage")

T = TypeVar("T")

Handler = Callable[[AnyMessage, ConsumerRecord], Awaitable[None]]
# Given a partition and the offset just past the record handled, return the offset that is
# safe to commit (the aggregator returns the first offset an open round still needs).
CommitPosition = Callable[[TopicPartition, int], int]
# Handle a run of messages at once, in one transaction; return, per message and in order, None
# (handled or skipped as a duplicate) or the ``InvalidMessage`` that refuses it.
BatchHandler = Callable[
    [Sequence[tuple[AnyMessage, "SourceRecord"]]], Awaitable[Sequence[InvalidMessage | None]]
]


@dataclass(frozen=True)
class Batching:
    """Message types a service handles many at a time (the registry's heartbeats).

    A run of consecutive records of one partition that carry these types is handed to
    ``handle`` at once and committed once; every other record is processed alone, in order.
    An outage during the run is waited out as for one record; any other failure of the run
    processes its records one by one with the service's ordinary handler, which classifies
    each as usual.
    """

    types: frozenset[str]
    handle: BatchHandler


class SigningProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A producer that signs every record it sends as its service (fedcommon.trust)."""

    def __init__(self, *, signer: trust.Signer, **options: Any) -> None:
        super().__init__(**options)
        self._signer = signer

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        signed = [*(headers or []), *self._signer.headers(topic, key, value)]
        future: asyncio.Future[Any] = await super().send(
            topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms, headers=signed
        )
        return future


def make_producer(
    settings: KafkaSettings,
    *,
    client_id: str,
    signer: trust.Signer | None = None,
    request_timeout_ms: int | None = None,
) -> AIOKafkaProducer:
    """Return a producer, signing as ``signer`` when given (every service but the simulator,
    which plays devices); idempotence stays off (broker.md: it fails on the local broker)."""
    options: dict[str, Any] = {
        **client_options(settings),
        "client_id": client_id,
        "acks": "all",
        "linger_ms": settings.linger_ms,
        "max_request_size": settings.max_message_bytes,
    }
    if request_timeout_ms is not None:
        # How long a buffered record is retried before it expires (aiokafka: 40 s).
        options["request_timeout_ms"] = request_timeout_ms
    if signer is None:
        return AIOKafkaProducer(**options)
    return SigningProducer(signer=signer, **options)


def make_consumer(
    settings: KafkaSettings,
    *,
    group_id: str,
    topic_bases: Iterable[str],
    client_id: str,
    fetch_max_wait_ms: int | None = None,
) -> AIOKafkaConsumer:
    """Return a manually committing consumer of the prefixed topics (with the settings' fetch
    wait unless ``fetch_max_wait_ms`` says otherwise)."""
    names = [topics.topic_name(settings.topic_prefix, base) for base in topic_bases]
    return AIOKafkaConsumer(
        *names,
        **client_options(settings),
        group_id=f"{settings.topic_prefix}{group_id}",
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=(
            settings.fetch_max_wait_ms if fetch_max_wait_ms is None else fetch_max_wait_ms
        ),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_partition_fetch_bytes=settings.max_message_bytes,
        fetch_max_bytes=max(settings.max_message_bytes, 52_428_800),
        # Range first: partition p of every topic a service reads goes to the same member, so
        # a task's records on two topics (the aggregator's fed.updates and fed.secagg) meet in
        # one instance whatever the number of instances; round-robin dealt the topics' partitions
        # in one sequence, which kept them together only when the members divided the
        # partition count (2 of 4, not 3). Round-robin stays second, so that members of an
        # older version still agree on a protocol during a rolling upgrade.
        partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
    )


async def create_topics(settings: KafkaSettings, *, always: bool = False) -> list[str]:
    """Create every topic explicitly, with its partitions and max.message.bytes.

    Never rely on auto-creation: the local broker would make 4 partitions and no size config.
    Services call this at start-up; where ``KAFKA_CREATE_TOPICS=false`` (a deployment whose
    init job creates the topics, so that no service needs the right to) it does nothing,
    unless ``always`` (``fedengine create-topics``, that init job). Returns the names that
    were newly created.
    """
    if not (settings.create_topics or always):
        logger.info("topics are the deployment's to create (KAFKA_CREATE_TOPICS=false)")
        return []
    admin = AIOKafkaAdminClient(**client_options(settings))
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
            except kafka_errors.TopicAlreadyExistsError:
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


# What a dead-letter record adds besides the value: provenance headers, the key, record overhead.
_DLQ_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    """What goes to the dead-letter topic for one record: its value (or nothing) and headers."""

    value: bytes | None
    headers: list[tuple[str, bytes]]
    copied: bool


def dead_letter_record(
    record: SourceRecord, *, error_type: str, error: str, max_bytes: int
) -> DeadLetter:
    """Build the dead-letter form of ``record``: its original bytes, or a digest if too large.

    The DLQ write must never be what fails (style.md, rule 30): a record whose copy would not
    fit under ``max_bytes`` goes there as its provenance, size and sha256, with its own headers
    when they are small.
    """
    value = record.value
    # A header may have no value (Kafka allows null): kept as an empty one.
    original_headers = [(f"original_header.{k}", v or b"") for k, v in (record.headers or ())]
    headers_size = sum(len(k) + len(v) for k, v in original_headers)
    provenance = [
        ("original_topic", record.topic.encode()),
        ("original_partition", str(record.partition).encode()),
        ("original_offset", str(record.offset).encode()),
        ("error_type", error_type.encode()),
        ("error", error[:2000].encode(errors="replace")),
    ]
    size = len(record.key or b"") + len(value or b"") + headers_size
    if size + _DLQ_OVERHEAD_BYTES <= max_bytes:
        return DeadLetter(value, provenance + original_headers, copied=True)
    digest = [
        ("original_size", str(len(value or b"")).encode()),
        ("original_sha256", hashlib.sha256(value or b"").hexdigest().encode()),
        ("value_omitted", b"record too large to copy into the dead-letter topic"),
    ]
    kept = original_headers if headers_size <= _DLQ_OVERHEAD_BYTES // 4 else []
    return DeadLetter(None, provenance + digest + kept, copied=False)


async def dead_letter(
    producer: AIOKafkaProducer,
    settings: KafkaSettings,
    record: SourceRecord,
    *,
    error_type: str,
    error: str,
) -> None:
    """Send ``record`` to the dead-letter topic with provenance headers (or as a digest)."""
    letter = dead_letter_record(
        record, error_type=error_type, error=error, max_bytes=settings.max_message_bytes
    )
    topic = topics.topic_name(settings.topic_prefix, topics.DLQ)
    key = record.key if record.key is None or len(record.key) <= 4096 else None
    try:
        await producer.send_and_wait(topic, letter.value, key=key, headers=letter.headers)
    except (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordTooLargeError):
        if not letter.copied:
            raise
        letter = dead_letter_record(record, error_type=error_type, error=error, max_bytes=0)
        await producer.send_and_wait(topic, letter.value, key=key, headers=letter.headers)
    DEAD_LETTERED.labels(record.topic, error_type).inc()
    logger.warning(
        "dead-lettered %s[%d]@%d%s: %s: %s",
        record.topic,
        record.partition,
        record.offset,
        "" if letter.copied else " (as a digest)",
        error_type,
        error[:300],
    )


class SourceRecord(Protocol):
    """What the processor needs of a record (aiokafka's ``ConsumerRecord`` and test fakes fit)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class ConsumerStopping(Exception):
    """The service is stopping while a record waits out an outage: leave it uncommitted."""


@dataclass(frozen=True)
class Verdict:
    """Why a record is dead-lettered; ``unexpected`` ones count toward the stop limit."""

    error_type: str
    error: str
    unexpected: bool = False


@dataclass
class RecordProcessor:
    """Decode and handle one record with the error rules of style.md, rules 29-30.

    - a record that cannot be decoded, carries a type its topic does not carry, or that the
      handler or the database refuses (``InvalidMessage``, refused data) is dead-lettered;
    - an outage (``TransientError``, a lost database connection, an unavailable broker) is
      waited out: the same record is retried with capped backoff and no limit, never
      dead-lettered; the loop keeps the group membership meanwhile (``ConsumeLoop``);
    - anything else is dead-lettered as ``unhandled`` and counted; past
      ``max_consecutive_unhandled`` in a row the loop stops loudly (arroyo's ``DlqLimit``).
    """

    producer: AIOKafkaProducer
    settings: KafkaSettings
    handle: Handler
    max_consecutive_unhandled: int = 10
    backoff_first_s: float = 0.2
    backoff_cap_s: float = 5.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Who may send what where (fedcommon.trust); None only where a test drives the processor.
    verifier: trust.Verifier | None = None
    # Message types handled many at a time (``Batching``); None handles every record alone.
    batching: Batching | None = None
    _consecutive_unhandled: int = 0
    _waiting_out: int = 0

    async def process(self, record: SourceRecord) -> None:
        """Handle ``record``; dead-letter it when it cannot be; raise when the loop must stop."""
        await self.process_checked(record, None)

    async def process_checked(
        self, record: SourceRecord, checked: AnyMessage | Verdict | None
    ) -> None:
        """Handle a record already checked (``check``), or check it first when None."""
        CONSUMED.labels(record.topic).inc()
        verdict = await self.retrying(record, lambda: self._attempt(record, checked))
        await self._settle(record, verdict)

    async def _settle(self, record: SourceRecord, verdict: Verdict | None) -> None:
        """Dead-letter ``record`` for ``verdict`` (if any); count unexpected ones."""
        if verdict is None:
            self._consecutive_unhandled = 0
            return
        await self.retrying(
            record,
            lambda: dead_letter(
                self.producer,
                self.settings,
                record,
                error_type=verdict.error_type,
                error=verdict.error,
            ),
        )
        if not verdict.unexpected:
            self._consecutive_unhandled = 0
            return
        self._consecutive_unhandled += 1
        if self._consecutive_unhandled > self.max_consecutive_unhandled:
            raise RuntimeError(
                f"{self._consecutive_unhandled} consecutive unhandled errors; stopping"
            )

    def batches(self, checked: AnyMessage | Verdict) -> bool:
        """Whether a checked record belongs in a batch (``batching`` takes its type)."""
        return (
            self.batching is not None
            and not isinstance(checked, Verdict)
            and checked.type in self.batching.types
        )

    async def process_batch(self, items: Sequence[tuple[SourceRecord, AnyMessage]]) -> None:
        """Handle checked records of the batched types at once (``Batching``); dead-letter
        those the batch handler refuses; raise when the loop must stop."""
        if self.batching is None or not items:
            raise ValueError("process_batch needs batching and at least one record")
        handle = self.batching.handle
        first = items[0][0]
        try:
            refusals = await self.retrying(
                first, lambda: handle([(message, record) for record, message in items])
            )
            if len(refusals) != len(items):
                raise RuntimeError(f"{len(refusals)} answers for a batch of {len(items)}")
        except ConsumerStopping:
            raise
        except Exception as exc:
            # Not an outage: one by one, each record is classified (and counted) as usual.
            logger.warning(
                "batch of %d at %s[%d]@%d failed (%s); handling its records one by one",
                len(items),
                first.topic,
                first.partition,
                first.offset,
                describe(exc),
            )
            for record, message in items:
                await self.process_checked(record, message)
            return
        for (record, _), refusal in zip(items, refusals, strict=True):
            CONSUMED.labels(record.topic).inc()
            await self._settle(
                record, None if refusal is None else Verdict(type(refusal).__name__, str(refusal))
            )

    def check(self, record: SourceRecord) -> AnyMessage | Verdict:
        """Decode ``record`` and check its topic and sender; return it, or why it is refused."""
        try:
            message = codec.decode(record.value)
        except InvalidMessage as exc:
            return Verdict("invalid", str(exc))
        base = topics.base_name(self.settings.topic_prefix, record.topic)
        if base is not None and not topics.carries(base, message.type):
            return Verdict("wrong_topic", f"{base} does not carry {message.type} messages")
        if self.verifier is not None:
            try:
                refusal = self.verifier.refusal(
                    topic=record.topic,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    message_type=message.type,
                    sent_at=message.sent_at,
                    now=datetime.now(UTC),
                )
            except Exception as exc:  # a record no check foresaw: refused, never a crash
                refusal = f"headers could not be checked ({type(exc).__name__})"
            if refusal is not None:
                REFUSED.labels(record.topic, message.type).inc()
                return Verdict("untrusted", refusal)
        return message

    async def _attempt(
        self, record: SourceRecord, checked: AnyMessage | Verdict | None = None
    ) -> Verdict | None:
        """Handle ``record`` once; return why it must be dead-lettered, raise on an outage."""
        if checked is None:
            checked = self.check(record)
        if isinstance(checked, Verdict):
            return checked
        message = checked
        try:
            await self.handle(message, record)
        except Exception as exc:
            kind = classify(exc)
            if kind == Failure.TRANSIENT:
                raise
            if isinstance(exc, InvalidMessage):
                return Verdict(type(exc).__name__, str(exc))
            if kind == Failure.INVALID:
                return Verdict("refused_by_database", describe(exc))
            logger.exception("unhandled error on %s@%d", record.topic, record.offset)
            return Verdict("unhandled", describe(exc), unexpected=True)
        return None

    async def retrying(self, record: SourceRecord, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` until it does not fail with an outage; raise ``ConsumerStopping`` if
        the service stops meanwhile. Other errors propagate."""
        backoff = Backoff(first=self.backoff_first_s, cap=self.backoff_cap_s)
        waiting = False
        try:
            while True:
                try:
                    return await action()
                except Exception as exc:
                    if classify(exc) != Failure.TRANSIENT:
                        raise
                    if not waiting:
                        waiting = True
                        self._waiting_out += 1
                        OUTAGES.labels(record.topic).inc()
                        logger.warning(
                            "outage while handling %s[%d]@%d (%s); waiting it out",
                            record.topic,
                            record.partition,
                            record.offset,
                            describe(exc),
                        )
                    OUTAGE_RETRIES.labels(record.topic).inc()
                    WAITING_OUT.set(1)
                    delay = backoff.next_delay()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), timeout=delay)
                    if self.stopping.is_set():
                        raise ConsumerStopping(
                            f"stopping during an outage at {record.topic}@{record.offset}"
                        ) from exc
        finally:
            if waiting:
                self._waiting_out -= 1
                if self._waiting_out == 0:
                    WAITING_OUT.set(0)
                    logger.info("outage over at %s@%d", record.topic, record.offset)


@dataclass
class ConsumeLoop:
    """The one consume loop (style.md, rule 29): process each record, then commit past it.

    While a batch takes longer than ``poll_interval_s`` (an outage being waited out, slow
    training), the loop pauses its partitions and keeps polling, so that the group does not
    evict this member (``max.poll.interval.ms``) and nothing new is fetched meanwhile.
    """

    consumer: AIOKafkaConsumer
    processor: RecordProcessor
    commit_position: CommitPosition | None = None
    # Handle a fetched batch's partitions concurrently (records of one partition stay in order
    # and each is committed after it is handled). For handlers whose partitions are independent.
    concurrent_partitions: bool = False
    poll_interval_s: float = 1.0
    # Slower fetches while nothing arrives (fedcommon.fetch_pacing); None keeps one wait.
    pacing: FetchPacing | None = None
    # The most records one poll hands over (a batch, with the processor's ``batching``).
    max_records: int = 100
    # Per partition, the offset just past the last record handled: what a final commit may
    # cover (the consumer's position may lie past records fetched but never handled).
    _handled: dict[TopicPartition, int] = field(default_factory=dict)
    # Per partition, the group generation and offset of the last commit that succeeded: the
    # same offset again in the same generation is not sent (the aggregator's commit position
    # stays at an open round's first record for every update of the round; each commit was a
    # round trip to the broker on the round's path).
    _committed: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)

    @property
    def _stopping(self) -> asyncio.Event:
        return self.processor.stopping

    def stop(self) -> None:
        """Ask the loop to finish the record in hand, commit and return."""
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
            if self.pacing is not None:
                self.pacing.apply(self.consumer, bool(batches), time.monotonic())
            if not batches:
                continue
            work = asyncio.ensure_future(self._handle(batches))
            try:
                await self._keep_membership_while(work)
            except ConsumerStopping:
                logger.info("stopped while waiting out an outage; the record stays uncommitted")
                return
            finally:
                if not work.done():  # a sibling partition failed or the loop is cancelled
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await work
                if self.pacing is not None:
                    self.pacing.handled(time.monotonic())

    async def _handle(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        if self.concurrent_partitions:
            await asyncio.gather(*(self._run_partition(tp, rs) for tp, rs in batches.items()))
        else:
            for tp, records in batches.items():
                await self._run_partition(tp, records)

    async def _keep_membership_while(self, work: asyncio.Future[None]) -> None:
        paused = False
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=self.poll_interval_s)
                if done:
                    break
                self.consumer.pause(*self.consumer.assignment())
                paused = True
                stray = await self.consumer.getmany(timeout_ms=0)
                for tp, records in stray.items():
                    # Partitions assigned by a rebalance meanwhile were not paused yet: put
                    # what was fetched back, to be read again once the batch is done.
                    if records:
                        self.consumer.seek(tp, records[0].offset)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.paused())
        work.result()

    async def _run_partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        if self.processor.batching is not None:
            await self._run_partition_in_batches(tp, records)
            return
        for record in records:
            if tp not in self.consumer.assignment():
                # Revoked by a rebalance: its new owner reads on from the last commit.
                logger.info("%s revoked mid-batch; leaving the rest to its new owner", tp)
                return
            await self.processor.process(record)
            self._handled[tp] = record.offset + 1
            await self._commit(tp, record.offset + 1, record)
            if self._stopping.is_set():
                return

    async def _run_partition_in_batches(
        self, tp: TopicPartition, records: list[ConsumerRecord]
    ) -> None:
        """Process each run of consecutive records of the batched types at once, every other
        record alone, in order; commit past each run or record."""
        checked = [(record, self.processor.check(record)) for record in records]
        start = 0
        while start < len(checked):
            if tp not in self.consumer.assignment():
                logger.info("%s revoked mid-batch; leaving the rest to its new owner", tp)
                return
            end = start + 1
            first, first_checked = checked[start]
            if self.processor.batches(first_checked):
                while end < len(checked) and self.processor.batches(checked[end][1]):
                    end += 1
                await self.processor.process_batch(
                    [(r, m) for r, m in checked[start:end] if not isinstance(m, Verdict)]
                )
            else:
                await self.processor.process_checked(first, first_checked)
            last = checked[end - 1][0]
            self._handled[tp] = last.offset + 1
            await self._commit(tp, last.offset + 1, last)
            if self._stopping.is_set():
                return
            start = end

    async def commit_current(self) -> None:
        """Commit what ``commit_position`` allows now, up to the last record handled."""
        if self.commit_position is None:
            return
        for tp, handled in list(self._handled.items()):
            await self._commit(tp, handled, None)

    async def _commit(
        self, tp: TopicPartition, next_offset: int, record: SourceRecord | None
    ) -> None:
        offset = (
            next_offset if self.commit_position is None else self.commit_position(tp, next_offset)
        )
        if offset <= 0 or tp not in self.consumer.assignment():
            return
        generation = group_generation(self.consumer)
        if generation is not None and self._committed.get(tp) == (generation, offset):
            return
        try:
            if record is None:
                await self.consumer.commit({tp: offset})
            else:
                await self.processor.retrying(record, lambda: self.consumer.commit({tp: offset}))
        except (kafka_errors.CommitFailedError, kafka_errors.IllegalStateError) as exc:
            # The partition moved to another member (or is moving): it re-reads from the last
            # commit, and idempotent handlers absorb the redelivery.
            logger.warning("commit of %s@%d failed after a rebalance: %s", tp, offset, exc)
            self._committed.pop(tp, None)
            return
        if generation is not None and generation == group_generation(self.consumer):
            self._committed[tp] = (generation, offset)


def group_generation(consumer: AIOKafkaConsumer) -> int | None:
    """The consumer group generation ``consumer`` is a member of; None where unknown.

    Each rebalance starts a new generation, so an offset committed in this one is still the
    group's for a partition this member still holds. aiokafka (0.14) has no public accessor:
    its group coordinator keeps ``generation`` (tests/unit/fedcommon/test_kafka.py fails if
    that changes); where it is missing every commit is sent, as before.
    """
    generation = getattr(getattr(consumer, "_coordinator", None), "generation", None)
    return generation if isinstance(generation, int) and generation > 0 else None


async def wait_for_assignment(consumer: AIOKafkaConsumer, *, timeout_s: float = 60.0) -> None:
    """Wait until the group join has given ``consumer`` its partitions."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not consumer.assignment():
        if loop.time() > deadline:
            raise TimeoutError(f"no partitions assigned within {timeout_s}s")
        await asyncio.sleep(0.05)
