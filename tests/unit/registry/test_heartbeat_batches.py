"""The consume loop's batch hook as the registry uses it: a run of heartbeats handled at once
and committed once, other records alone and in order, refusals dead-lettered with their
reason, an outage waited out, any other failure handled record by record."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg
from aiokafka import ConsumerRecord

from fedcommon import codec, kafka
from fedcommon.errors import InvalidMessage, ProtocolViolation
from fedcommon.messages.v1 import AnyMessage, DeviceRemoved, HeartbeatSent
from tests.unit.fedcommon.test_kafka import make_loop, record

TOPIC = "p.fed.devices"
HEARTBEAT = HeartbeatSent.model_fields["type"].default


def beat(sequence: int) -> bytes:
    return codec.encode(
        HeartbeatSent(
            producer="test",
            device_id="d1",
            sequence=sequence,
            sent_at=datetime.now(UTC),
            signature=bytes(64),
        )
    )


REMOVED = codec.encode(DeviceRemoved(producer="test", device_id="d1"))

Items = Sequence[tuple[AnyMessage, kafka.SourceRecord]]


async def test_runs_of_heartbeats_are_one_call_and_one_commit_each() -> None:
    # Prepare: heartbeats, a removal between them, heartbeats again.
    calls: list[list[int]] = []
    alone: list[str] = []

    async def handle_batch(items: Items) -> list[InvalidMessage | None]:
        calls.append([r.offset for _, r in items])
        return [None] * len(items)

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        alone.append(message.type)

    values = [beat(1), beat(2), REMOVED, beat(3), beat(4)]
    loop, consumer, producer = make_loop(
        [record(i, v, topic=TOPIC) for i, v in enumerate(values)],
        handle,
        batching=kafka.Batching(types=frozenset({HEARTBEAT}), handle=handle_batch),
    )

    # Execute
    await loop.run()

    # Assert
    assert calls == [[0, 1], [3, 4]]
    assert alone == ["device.removed"]
    assert consumer.commits == [2, 3, 5]
    assert producer.sent == []


async def test_refused_heartbeats_are_dead_lettered_with_their_reason() -> None:
    async def handle_batch(items: Items) -> list[InvalidMessage | None]:
        return [None, ProtocolViolation("replayed heartbeat 1 <= 2 from d1")]

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise AssertionError("not called")

    loop, consumer, producer = make_loop(
        [record(0, beat(2), topic=TOPIC), record(1, beat(1), topic=TOPIC)],
        handle,
        batching=kafka.Batching(types=frozenset({HEARTBEAT}), handle=handle_batch),
    )

    await loop.run()

    ((topic, value, headers),) = producer.sent
    assert topic == "p.fed.dlq"
    assert value is not None and codec.decode(value).type == HEARTBEAT  # the original bytes
    assert headers["original_offset"] == b"1"
    assert headers["error_type"] == b"ProtocolViolation"
    assert b"replayed heartbeat" in headers["error"]
    assert consumer.commits == [2]


async def test_an_outage_is_waited_out_and_nothing_is_dead_lettered() -> None:
    attempts = 0

    async def handle_batch(items: Items) -> list[InvalidMessage | None]:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise psycopg.OperationalError("connection refused")
        return [None] * len(items)

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise AssertionError("an outage is no reason to go record by record")

    loop, consumer, producer = make_loop(
        [record(0, beat(1), topic=TOPIC), record(1, beat(2), topic=TOPIC)],
        handle,
        batching=kafka.Batching(types=frozenset({HEARTBEAT}), handle=handle_batch),
    )

    await loop.run()

    assert attempts == 3
    assert producer.sent == []
    assert consumer.commits == [2]


async def test_a_failed_batch_is_handled_record_by_record() -> None:
    alone: list[int] = []

    async def handle_batch(items: Items) -> list[InvalidMessage | None]:
        raise RuntimeError("a bug in the batch")

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        alone.append(rec.offset)
        if rec.offset == 1:
            raise ProtocolViolation("refused alone")

    loop, consumer, producer = make_loop(
        [record(0, beat(1), topic=TOPIC), record(1, beat(2), topic=TOPIC)],
        handle,
        batching=kafka.Batching(types=frozenset({HEARTBEAT}), handle=handle_batch),
    )

    await loop.run()

    assert alone == [0, 1]
    ((_, _, headers),) = producer.sent
    assert headers["error_type"] == b"ProtocolViolation"
    assert consumer.commits == [2]


async def test_undecodable_records_break_a_run_and_are_dead_lettered() -> None:
    calls: list[list[int]] = []

    async def handle_batch(items: Items) -> list[InvalidMessage | None]:
        calls.append([r.offset for _, r in items])
        return [None] * len(items)

    async def handle(message: AnyMessage, rec: ConsumerRecord) -> None:
        raise AssertionError("not called")

    loop, consumer, producer = make_loop(
        [
            record(0, beat(1), topic=TOPIC),
            record(1, b"\xc1 not msgpack", topic=TOPIC),
            record(2, beat(2), topic=TOPIC),
        ],
        handle,
        batching=kafka.Batching(types=frozenset({HEARTBEAT}), handle=handle_batch),
    )

    await loop.run()

    assert calls == [[0], [2]]
    ((_, _, headers),) = producer.sent
    assert headers["error_type"] == b"invalid"
    assert consumer.commits == [1, 2, 3]
