"""The one consume loop, driven by in-memory fakes of the consumer and producer."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.consumer import group_coordinator

from fedcommon import codec, topics
from fedcommon.errors import InvalidMessage, TransientError
from fedcommon.kafka import ConsumeLoop, RecordProcessor, dead_letter_record, group_generation
from fedcommon.messages.v1 import AnyMessage
from fedcommon.settings import KafkaSettings
from tests.unit.fedcommon.examples import EXAMPLES

SETTINGS = KafkaSettings(topic_prefix="p.")
TP = TopicPartition("p.fed.tasks", 0)


def record(offset: int, value: bytes, topic: str = TP.topic) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=[],
    )


class FakeConsumer:
    def __init__(self, records: list[ConsumerRecord], loop: list[ConsumeLoop]) -> None:
        self.records = records
        self.commits: list[int] = []
        self.loop = loop
        self.polls_while_paused = 0
        self.assigned = {TP}
        self._paused: set[TopicPartition] = set()

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[ConsumerRecord]]:
        if self._paused:
            self.polls_while_paused += 1
            return {}
        if not self.records:
            self.loop[0].stop()
            return {}
        batch, self.records = self.records, []
        return {TP: batch}

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise AssertionError("nothing is fetched while paused here")

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[TP])

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def position(self, tp: TopicPartition) -> int:
        return 99


class FakeProducer:
    """Records what it is sent; refuses values over ``limit`` like aiokafka's size check."""

    def __init__(self, *, limit: int = 1 << 30, outage_sends: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, dict[str, bytes]]] = []
        self.limit = limit
        self.outage_sends = outage_sends

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self.outage_sends:
            self.outage_sends -= 1
            raise kafka_errors.KafkaConnectionError("broker down")
        if value is not None and len(value) > self.limit:
            raise kafka_errors.MessageSizeTooLargeError("too large")
        self.sent.append((topic, value, dict(headers or [])))


def make_loop(
    records: list[ConsumerRecord], handle: Any, **options: Any
) -> tuple[ConsumeLoop, FakeConsumer, FakeProducer]:
    holder: list[ConsumeLoop] = []
    consumer = FakeConsumer(records, holder)
    producer = options.pop("producer", None) or FakeProducer()
    commit_position = options.pop("commit_position", None)
    poll_interval_s = options.pop("poll_interval_s", 1.0)
    processor = RecordProcessor(
        producer=producer,
        settings=options.pop("settings", SETTINGS),
        handle=handle,  # type: ignore[arg-type]
        backoff_first_s=0.001,
        backoff_cap_s=0.005,
        **options,
    )
    loop = ConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        processor=processor,
        commit_position=commit_position,
        poll_interval_s=poll_interval_s,
    )
    holder.append(loop)
    return loop, consumer, producer


GOOD = codec.encode(next(e for e in EXAMPLES if e.type == "task.start_requested"))


async def test_each_record_is_handled_then_committed_past_it() -> None:
    seen: list[str] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        seen.append(message.type)

    loop, consumer, producer = make_loop([record(0, GOOD), record(1, GOOD)], handle)
    await loop.run()

    assert seen == ["task.start_requested"] * 2
    assert consumer.commits == [1, 2]
    assert producer.sent == []


async def test_undecodable_record_goes_to_dlq_with_provenance_and_loop_continues() -> None:
    seen: list[int] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        seen.append(rec.offset)

    loop, consumer, producer = make_loop([record(0, b"\xc1junk"), record(1, GOOD)], handle)
    await loop.run()

    assert seen == [1]
    assert consumer.commits == [1, 2]
    (topic, value, headers) = producer.sent[0]
    assert topic == topics.topic_name("p.", topics.DLQ) and value == b"\xc1junk"
    assert headers["original_topic"] == TP.topic.encode()
    assert headers["original_offset"] == b"0" and headers["original_partition"] == b"0"
    assert headers["error_type"] == b"invalid"


async def test_invalid_message_from_the_handler_is_dead_lettered_with_its_type() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise InvalidMessage("nope")

    loop, _, producer = make_loop([record(0, GOOD)], handle)
    await loop.run()

    assert producer.sent[0][2]["error_type"] == b"InvalidMessage"
    assert producer.sent[0][2]["error"] == b"nope"


async def test_transient_errors_are_retried_and_never_dead_lettered() -> None:
    calls = 0

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("db down")

    loop, consumer, producer = make_loop([record(0, GOOD)], handle)
    await loop.run()

    assert calls == 3 and producer.sent == [] and consumer.commits == [1]


async def test_an_outage_of_any_length_is_waited_out_paused_and_polling() -> None:
    calls = 0
    paused_during_outage: list[bool] = []
    holder: list[FakeConsumer] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        nonlocal calls
        calls += 1
        if calls < 400:  # a lost connection, then the pool cannot reach the server
            paused_during_outage.append(bool(holder[0].paused()))
            raise psycopg.OperationalError("connection refused")

    loop, consumer, producer = make_loop([record(0, GOOD)], handle, poll_interval_s=0.01)
    holder.append(consumer)
    await loop.run()

    assert calls == 400 and producer.sent == [] and consumer.commits == [1]
    assert any(paused_during_outage) and consumer.polls_while_paused > 0
    assert consumer.paused() == set()  # resumed once the record was handled


async def test_stopping_during_an_outage_leaves_the_record_uncommitted() -> None:
    holder: list[ConsumeLoop] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        if len(attempts) == 5:
            holder[0].stop()
        attempts.append(rec.offset)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    attempts: list[int] = []
    loop, consumer, producer = make_loop([record(0, GOOD), record(1, GOOD)], handle)
    holder.append(loop)
    await loop.run()

    assert set(attempts) == {0} and consumer.commits == [] and producer.sent == []


async def test_a_database_refusing_the_data_dead_letters_the_record_and_goes_on() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")

    loop, consumer, producer = make_loop(
        [record(i, GOOD) for i in range(20)], handle, max_consecutive_unhandled=2
    )
    await loop.run()  # twenty refusals in a row are bad messages, not a reason to stop

    assert consumer.commits == list(range(1, 21))
    assert {h["error_type"] for _, _, h in producer.sent} == {b"refused_by_database"}
    assert b"DataError" in producer.sent[0][2]["error"]


async def test_a_message_its_topic_does_not_carry_is_dead_lettered() -> None:
    seen: list[str] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        seen.append(message.type)

    heartbeat = next(e for e in EXAMPLES if e.type == "device.heartbeat_sent")
    loop, consumer, producer = make_loop([record(0, codec.encode(heartbeat))], handle)
    await loop.run()

    assert seen == [] and consumer.commits == [1]
    assert producer.sent[0][2]["error_type"] == b"wrong_topic"
    assert b"fed.tasks does not carry device.heartbeat_sent" in producer.sent[0][2]["error"]


async def test_a_record_too_large_to_copy_is_dead_lettered_as_a_digest() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise AssertionError("an undecodable record never reaches the handler")

    huge = GOOD + b"\x00" * 2_000_000
    limit = KafkaSettings(topic_prefix="p.", max_message_bytes=2_000_000)
    loop, consumer, producer = make_loop(
        [record(0, huge)], handle, settings=limit, producer=FakeProducer(limit=2_000_000)
    )
    await loop.run()

    assert consumer.commits == [1]
    ((_, value, headers),) = producer.sent
    assert value is None
    assert headers["original_size"] == str(len(huge)).encode()
    assert headers["original_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert headers["error_type"] == b"invalid" and headers["original_offset"] == b"0"


async def test_a_copy_the_producer_still_refuses_falls_back_to_a_digest() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise InvalidMessage("bad")

    # The topic limit allows the copy, but the client refuses it: the digest still goes out.
    loop, consumer, producer = make_loop(
        [record(0, GOOD + b"x" * 500_000)], handle, producer=FakeProducer(limit=100_000)
    )
    await loop.run()

    assert consumer.commits == [1] and producer.sent[0][1] is None


async def test_a_dead_letter_that_meets_a_broker_outage_is_retried_not_lost() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise InvalidMessage("bad")

    producer = FakeProducer(outage_sends=5)
    loop, consumer, _ = make_loop([record(0, GOOD)], handle, producer=producer)
    await loop.run()

    assert len(producer.sent) == 1 and consumer.commits == [1]


def test_dead_letter_record_copies_what_fits_with_provenance() -> None:
    letter = dead_letter_record(
        record(7, b"abc"), error_type="invalid", error="e" * 5000, max_bytes=1 << 20
    )

    headers = dict(letter.headers)
    assert letter.copied and letter.value == b"abc"
    assert headers["original_offset"] == b"7" and len(headers["error"]) == 2000


def test_a_header_without_a_value_is_dead_lettered_as_an_empty_one() -> None:
    """Kafka allows a header with no value (aiokafka gives None): found by a review to crash
    the dead-lettering itself, so the record came back forever."""
    source = record(3, b"abc")
    source.headers = [("fe-signer", None), ("x", b"1")]  # type: ignore[misc, list-item]

    letter = dead_letter_record(source, error_type="untrusted", error="e", max_bytes=1 << 20)

    headers = dict(letter.headers)
    assert headers["original_header.fe-signer"] == b"" and headers["original_header.x"] == b"1"


async def test_unhandled_errors_are_dead_lettered_until_the_consecutive_limit() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise KeyError("bug")

    loop, _, producer = make_loop(
        [record(i, GOOD) for i in range(5)], handle, max_consecutive_unhandled=2
    )
    with pytest.raises(RuntimeError, match="consecutive"):
        await loop.run()

    assert [h["error_type"] for _, _, h in producer.sent] == [b"unhandled"] * 3


async def test_commit_position_holds_back_offsets_an_open_window_needs() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        return None

    loop, consumer, _ = make_loop(
        [record(5, GOOD), record(6, GOOD)], handle, commit_position=lambda tp, nxt: min(nxt, 5)
    )
    await loop.run()

    assert consumer.commits == [5, 5]


async def test_an_offset_already_committed_in_this_generation_is_not_sent_again() -> None:
    # Prepare: a window holds offset 5 for three records; the group is in generation 3.
    seen: list[int] = []
    holder: list[ConsumeLoop] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        seen.append(rec.offset)
        if rec.offset == 7:  # a rebalance meanwhile: a new generation
            holder[0].consumer._coordinator.generation = 4  # type: ignore[attr-defined]

    loop, consumer, _ = make_loop(
        [record(5, GOOD), record(6, GOOD), record(7, GOOD), record(8, GOOD)],
        handle,
        commit_position=lambda tp, nxt: min(nxt, 5),
    )
    holder.append(loop)
    consumer._coordinator = SimpleNamespace(generation=3)  # type: ignore[attr-defined]

    # Execute
    await loop.run()
    await loop.commit_current()

    # Assert: sent once per generation, every record handled.
    assert seen == [5, 6, 7, 8] and consumer.commits == [5, 5]


async def test_without_a_known_generation_every_commit_is_sent() -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        return None

    loop, consumer, _ = make_loop(
        [record(5, GOOD), record(6, GOOD)], handle, commit_position=lambda tp, nxt: min(nxt, 5)
    )
    consumer._coordinator = SimpleNamespace(generation=-1)  # type: ignore[attr-defined]
    await loop.run()

    assert group_generation(consumer) is None and consumer.commits == [5, 5]  # type: ignore[arg-type]


def test_the_generation_read_is_the_one_the_group_coordinator_keeps() -> None:
    # aiokafka has no public accessor; if it renames this, commits are simply all sent again.
    source = inspect.getsource(group_coordinator)

    assert "self.generation = OffsetCommitRequest.DEFAULT_GENERATION_ID" in source
    assert "self._coordinator.generation = response.generation_id" in source


async def test_concurrent_partitions_keep_order_and_commit_per_partition() -> None:
    other = TopicPartition(TP.topic, 1)
    started: list[tuple[int, int]] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        started.append((rec.partition, rec.offset))
        await asyncio.sleep(0.01)

    holder: list[ConsumeLoop] = []
    consumer, producer = FakeConsumer([], holder), FakeProducer()
    batches = {TP: [record(0, GOOD), record(1, GOOD)], other: [record(0, GOOD), record(1, GOOD)]}
    for rec in batches[other]:
        rec.partition = 1  # type: ignore[misc]

    async def getmany(**_: Any) -> dict[TopicPartition, list[ConsumerRecord]]:
        if not batches:
            holder[0].stop()
            return {}
        batch = dict(batches)
        batches.clear()
        return batch

    commits: list[tuple[int, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        ((tp, offset),) = offsets.items()
        commits.append((tp.partition, offset))

    consumer.getmany = getmany  # type: ignore[method-assign]
    consumer.commit = commit  # type: ignore[method-assign]
    consumer.assigned = {TP, other}
    processor = RecordProcessor(producer=producer, settings=SETTINGS, handle=handle)  # type: ignore[arg-type]
    loop = ConsumeLoop(consumer=consumer, processor=processor, concurrent_partitions=True)  # type: ignore[arg-type]
    holder.append(loop)
    await loop.run()

    assert started[:2] == [(0, 0), (1, 0)]  # both partitions began before either finished
    assert [o for p, o in commits if p == 0] == [1, 2]
    assert [o for p, o in commits if p == 1] == [1, 2]


async def test_a_stop_mid_batch_commits_only_what_was_handled() -> None:
    holder: list[ConsumeLoop] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        if rec.offset == 1:
            holder[0].stop()

    loop, consumer, _ = make_loop(
        [record(i, GOOD) for i in range(5)], handle, commit_position=lambda tp, nxt: nxt
    )
    holder.append(loop)
    await loop.run()
    await loop.commit_current()  # what the service does on its way out

    assert consumer.commits == [1, 2, 2]  # never past record 1, the last one handled


async def test_a_partition_revoked_mid_batch_is_left_to_its_new_owner() -> None:
    holder: list[FakeConsumer] = []
    seen: list[int] = []

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        seen.append(rec.offset)
        holder[0].assigned = set()  # a rebalance took the partition away meanwhile

    loop, consumer, producer = make_loop([record(i, GOOD) for i in range(3)], handle)
    holder.append(consumer)
    await loop.run()

    assert seen == [0] and consumer.commits == [] and producer.sent == []
