"""A malformed message lands in the dead-letter topic with provenance; the consumer goes on.

One test per consuming service (registry, coordinator, aggregator, simulator), and duplicate
deliveries of the same message are processed once.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from fedcommon import signing, topics
from fedcommon.messages.v1 import (
    TaskCreateRequested,
    TaskSpec,
)
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, eventually
from tests.integration.kafka_tools import enrolment, find_record, headers_of, send, send_raw

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.mark.parametrize(
    ("base", "service_proof"),
    [
        (topics.DEVICES, "registry"),
        (topics.TASKS, "coordinator"),
        (topics.UPDATES, "aggregator"),
        (topics.DEVICE_COMMANDS, "simulator"),
    ],
)
async def test_malformed_message_is_dead_lettered_with_provenance(
    stack: Stack, fleet: str, base: str, service_proof: str
) -> None:
    marker = f"garbage-{uuid.uuid4().hex}".encode()

    await send_raw(stack.kafka, base, key=b"bad-key", value=b"\xc1" + marker)

    record = await find_record(
        stack.kafka, topics.DLQ, lambda r: r.value is not None and r.value.endswith(marker)
    )
    headers = headers_of(record)
    assert headers["original_topic"] == topics.topic_name(stack.kafka.topic_prefix, base)
    assert int(headers["original_offset"]) >= 0
    assert "original_partition" in headers
    assert headers["error_type"] == "invalid"
    assert "msgpack" in headers["error"]
    assert record.key == b"bad-key"


async def test_consumer_keeps_going_after_a_bad_message_and_duplicates_count_once(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    await send_raw(stack.kafka, topics.DEVICES, key=b"x", value=b"not msgpack at all")
    await send_raw(stack.kafka, topics.DEVICES, key=b"x", value=b"\x81\xa4type\xa3bad")
    device_id = f"dup-{uuid.uuid4().hex[:8]}"
    key = signing.generate_private_key()
    message = enrolment(device_id, key, stack.enrolment_token, issued_by="pytest")

    await send(stack.kafka, topics.DEVICES, key=device_id, message=message)
    await send(stack.kafka, topics.DEVICES, key=device_id, message=message)

    device = await eventually(lambda: device_or_none(client, device_id))
    assert device["status"] == "online"

    async def enrol_events() -> int:
        cursor = await db.execute(
            "SELECT count(*) FROM registry.device_events WHERE device_id = %s", (device_id,)
        )
        row = await cursor.fetchone()
        return row[0] if row else 0

    # A marker sent after the duplicate proves the duplicate was consumed before we count.
    marker_id = f"dup-marker-{uuid.uuid4().hex[:8]}"
    await send(
        stack.kafka,
        topics.DEVICES,
        key=device_id,
        message=enrolment(marker_id, key, stack.enrolment_token),
    )
    await eventually(lambda: device_or_none(client, marker_id))
    assert await enrol_events() == 1


async def test_duplicate_task_create_is_processed_once(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    task_id = uuid.uuid4()
    message = TaskCreateRequested(
        producer="pytest",
        task_id=task_id,
        spec=TaskSpec(task_name="dup", devices_per_round=2),
        issued_by="pytest",
    )

    gateway = stack.signer("gateway")
    await send(stack.kafka, topics.TASKS, key=str(task_id), message=message, signer=gateway)
    await send(stack.kafka, topics.TASKS, key=str(task_id), message=message, signer=gateway)
    await client.wait_for_task(str(task_id), lambda t: True)
    later = uuid.uuid4()
    await send(
        stack.kafka,
        topics.TASKS,
        key=str(task_id),
        message=message.model_copy(update={"task_id": later, "message_id": uuid.uuid4()}),
        signer=gateway,
    )
    await client.wait_for_task(str(later), lambda t: True)

    cursor = await db.execute(
        "SELECT (SELECT count(*) FROM coordinator.task_events "
        "        WHERE task_id = %s AND kind = 'created'),"
        " (SELECT count(*) FROM coordinator.models WHERE task_id = %s)",
        (task_id, task_id),
    )
    assert await cursor.fetchone() == (1, 1)
