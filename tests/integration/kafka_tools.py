"""Small real-broker helpers for tests: publish raw bytes, read a topic from the start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import codec, enrolment_tokens, kafka, signing, topics, trust
from fedcommon.enrolment_tokens import EnrolmentToken
from fedcommon.errors import InvalidMessage
from fedcommon.messages.v1 import AnyMessage, DeviceEnrolled, DeviceType, Envelope
from fedcommon.settings import KafkaSettings

# Test clients go well past the platform's message limit, to play an attacker who ignores it
# (the local broker enforces none) and to read back whatever such a test wrote.
BIG = 64 * 1024 * 1024


async def send_raw(
    settings: KafkaSettings,
    base: str,
    *,
    key: bytes,
    value: bytes,
    signer: trust.Signer | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send ``value`` as is; signed as the ``signer`` service when given (tests hold the keys
    ``fedengine up`` generated), plus any extra ``headers`` (forged ones, say)."""
    topic = topics.topic_name(settings.topic_prefix, base)
    extra = [*(headers or []), *(signer.headers(topic, key, value) if signer else [])]
    producer = AIOKafkaProducer(**kafka.client_options(settings), max_request_size=BIG)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=extra or None)
    finally:
        await producer.stop()


def tampered(message: Envelope, **fields: Any) -> bytes:
    """The encoding of ``message`` with ``fields`` overwritten past the schema's checks: what an
    attacker's own encoder sends."""
    data = msgpack.unpackb(codec.encode(message))
    data.update(fields)
    packed: bytes = msgpack.packb(data)
    return packed


async def send(
    settings: KafkaSettings,
    base: str,
    *,
    key: str,
    message: Envelope,
    signer: trust.Signer | None = None,
) -> None:
    await send_raw(settings, base, key=key.encode(), value=codec.encode(message), signer=signer)


async def find_record(
    settings: KafkaSettings,
    base: str,
    predicate: Callable[[ConsumerRecord], bool],
    *,
    timeout_s: float = 120.0,
) -> ConsumerRecord:
    """Read ``base`` from the beginning (own group) until a record satisfies ``predicate``."""
    (record,) = await find_records(settings, base, [predicate], timeout_s=timeout_s)
    return record


async def find_records(
    settings: KafkaSettings,
    base: str,
    predicates: list[Callable[[ConsumerRecord], bool]],
    *,
    timeout_s: float = 120.0,
) -> list[ConsumerRecord]:
    """Read ``base`` once from the beginning; return the first record matching each predicate.

    One consumer for all of them, assigned every partition rather than joining a group: every
    group join costs about 3 s on Tansu. Records that arrive while it reads are read too.
    """
    consumer = AIOKafkaConsumer(
        **kafka.client_options(settings),
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=BIG,
        fetch_max_bytes=2 * BIG,
    )
    found: list[ConsumerRecord | None] = [None] * len(predicates)
    await consumer.start()
    try:
        await assign_from_start(consumer, topics.topic_name(settings.topic_prefix, base))
        async with asyncio.timeout(timeout_s):
            while not all(found):
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        for index, predicate in enumerate(predicates):
                            if found[index] is None and predicate(record):
                                found[index] = record
        return [record for record in found if record is not None]
    finally:
        await consumer.stop()


async def assign_from_start(consumer: AIOKafkaConsumer, name: str) -> list[TopicPartition]:
    """Assign ``consumer`` every partition of topic ``name``, each at its first record: it reads
    the topic without joining a group (a join costs about 3 s on Tansu)."""
    partitions = [
        TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or [])
    ]
    assert partitions, f"no partitions of {name} are known"
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    return partitions


async def all_records(
    settings: KafkaSettings, base: str, *, timeout_s: float = 120.0
) -> list[ConsumerRecord]:
    """Every record on ``base`` up to its end when called (all partitions), in order."""
    consumer = AIOKafkaConsumer(
        **kafka.client_options(settings),
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=BIG,
        fetch_max_bytes=2 * BIG,
    )
    await consumer.start()
    try:
        partitions = await assign_from_start(
            consumer, topics.topic_name(settings.topic_prefix, base)
        )
        ends = await consumer.end_offsets(partitions)
        found: list[ConsumerRecord] = []
        async with asyncio.timeout(timeout_s):
            # (A list, not any(...): an ``await`` inside a generator makes it an async one.)
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    found.extend(records)
        return found
    finally:
        await consumer.stop()


def decoded(record: ConsumerRecord) -> AnyMessage | None:
    """The record's message, or None for bytes that are none (other tests' poison records
    share the topics)."""
    try:
        return codec.decode(record.value)
    except InvalidMessage:
        return None


def headers_of(record: ConsumerRecord) -> dict[str, str]:
    """Headers as text (signatures are binary: shown with replacement characters)."""
    return {key: value.decode(errors="replace") for key, value in record.headers}


def enrolment(
    device_id: str,
    key: Ed25519PrivateKey,
    token: EnrolmentToken,
    *,
    device_type: DeviceType = DeviceType.IOT,
    **fields: Any,
) -> DeviceEnrolled:
    """An enrolment of ``key`` as ``device_id``, signed by it and by an operator's token."""
    return enrolment_tokens.sign_enrolment(
        DeviceEnrolled(
            producer="pytest",
            device_id=device_id,
            device_name=device_id,
            device_type=device_type,
            public_key=signing.public_key_bytes(key),
            **fields,
        ),
        device_key=key,
        token=token,
    )


async def enrol(
    settings: KafkaSettings,
    device_id: str,
    *,
    token: EnrolmentToken,
    device_type: DeviceType = DeviceType.IOT,
) -> Ed25519PrivateKey:
    """Enrol a device over Kafka, as a real device would; return its identity key."""
    key = signing.generate_private_key()
    message = enrolment(device_id, key, token, device_type=device_type)
    await send(settings, topics.DEVICES, key=device_id, message=message)
    return key
