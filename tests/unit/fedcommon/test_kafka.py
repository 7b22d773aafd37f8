"""The one consume loop, driven by in-memory fakes of the consumer and producer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from fedcommon import codec, topics
from fedcommon.errors import InvalidMessage, TransientError
from fedcommon.kafka import ConsumeLoop, RecordProcessor
from fedcommon.messages.v1 import AnyMessage
from fedcommon.settings import KafkaSettings
from tests.unit.fedcommon.examples import EXAMPLES

SETTINGS = KafkaSettings(topic_prefix="p.")
TP = TopicPartition("p.fed.tasks", 0)


def record(offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(
        topic=TP.topic,
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

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[ConsumerRecord]]:
        if not self.records:
            self.loop[0].stop()
            return {}
        batch, self.records = self.records, []
        return {TP: batch}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[TP])

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def position(self, tp: TopicPartition) -> int:
        return 99


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((topic, value, dict(headers or [])))


def make_loop(
    records: list[ConsumerRecord], handle: Any, **options: Any
) -> tuple[ConsumeLoop, FakeConsumer, FakeProducer]:
    holder: list[ConsumeLoop] = []
    consumer, producer = FakeConsumer(records, holder), FakeProducer()
    commit_position = options.pop("commit_position", None)
    processor = RecordProcessor(
        producer=producer,
        settings=SETTINGS,
        handle=handle,  # type: ignore[arg-type]
        **options,
    )
    loop = ConsumeLoop(
        consumer=consumer,
        processor=processor,  # type: ignore[arg-type]
        commit_position=commit_position,
    )
    holder.append(loop)
    return loop, consumer, producer


GOOD = codec.encode(EXAMPLES[4])


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


async def test_transient_errors_are_retried_and_never_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("db down")

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr("fedcommon.kafka.asyncio.sleep", no_sleep)
    loop, consumer, producer = make_loop([record(0, GOOD)], handle)
    await loop.run()

    assert calls == 3 and producer.sent == [] and consumer.commits == [1]


async def test_persistent_transient_error_stops_without_committing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise TransientError("db down")

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr("fedcommon.kafka.asyncio.sleep", no_sleep)
    loop, consumer, producer = make_loop([record(0, GOOD)], handle, transient_retries=2)
    with pytest.raises(TransientError):
        await loop.run()

    assert consumer.commits == [] and producer.sent == []


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
    processor = RecordProcessor(producer=producer, settings=SETTINGS, handle=handle)  # type: ignore[arg-type]
    loop = ConsumeLoop(consumer=consumer, processor=processor, concurrent_partitions=True)  # type: ignore[arg-type]
    holder.append(loop)
    await loop.run()

    assert started[:2] == [(0, 0), (1, 0)]  # both partitions began before either finished
    assert [o for p, o in commits if p == 0] == [1, 2]
    assert [o for p, o in commits if p == 1] == [1, 2]
