"""A started consumer's fetch wait can be changed while it runs, and records still arrive; the
printed latencies say whether the broker answers a held fetch as soon as data arrives."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from fedcommon import kafka, topics
from fedcommon.fetch_pacing import set_fetch_max_wait
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def _arrival_s(name: str, consumer: object, producer: object, key: bytes) -> float:
    began = time.monotonic()
    await producer.send_and_wait(name, b"pacing probe", key=key)  # type: ignore[attr-defined]
    while True:
        batches = await consumer.getmany(timeout_ms=1000)  # type: ignore[attr-defined]
        if any(r.key == key for records in batches.values() for r in records):
            return time.monotonic() - began
        assert time.monotonic() - began < 10, "the probe never arrived"


async def test_a_running_consumer_takes_a_new_fetch_wait_and_still_receives(
    stack: Stack,
) -> None:
    # Prepare: a topic of its own, and a consumer of it.
    base = f"pacing-{uuid.uuid4().hex[:8]}"
    name = topics.topic_name(stack.kafka.topic_prefix, base)
    admin = AIOKafkaAdminClient(**kafka.client_options(stack.kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    consumer = kafka.make_consumer(
        stack.kafka, group_id=base, topic_bases=(base,), client_id="pacing-test"
    )
    producer = kafka.make_producer(stack.kafka, client_id="pacing-test")
    await consumer.start()
    await producer.start()
    try:
        await kafka.wait_for_assignment(consumer)

        # Execute: the idle wait, then a record.
        assert set_fetch_max_wait(consumer, 200) is True
        await asyncio.sleep(0.5)  # fetches with the new wait are in flight
        slow = [await _arrival_s(name, consumer, producer, f"slow-{i}".encode()) for i in range(5)]
        assert set_fetch_max_wait(consumer, 5) is True
        fast = [await _arrival_s(name, consumer, producer, f"fast-{i}".encode()) for i in range(5)]
        print(f"arrival with a 200 ms fetch wait {slow}; with 5 ms {fast}")

        # Assert: it arrives either way; a broker holding the fetch its full wait would make
        # each slow arrival take up to 200 ms more (measured and printed, not asserted).
        assert consumer._fetcher._fetch_max_wait_ms == 5
        assert max(slow) < 5 and max(fast) < 5
    finally:
        await consumer.stop()
        await producer.stop()
