"""No record can stop FedEngine (issue: robustness). Each test replays a finding against the
real broker and database: huge records, NUL bytes, wrong-topic types, absurd example counts, a
setting that no longer validates, an outbox row the broker refuses, results keyed by offsets."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from aiokafka import ConsumerRecord

from fedcommon import arrays, signing, topics
from fedcommon.failures import Failure, classify
from fedcommon.messages.v1 import (
    HeartbeatSent,
    ModelArchitecture,
    RoundAggregated,
    TaskPauseRequested,
    TaskStartRequested,
    TrainRequested,
    UpdateMetrics,
    UpdateSubmitted,
)
from fedengine.sdk import FedEngineClient
from fedengine_aggregator import store as aggregator_store
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, eventually, run_fleet_task
from tests.integration.kafka_tools import (
    enrolment,
    find_records,
    headers_of,
    send,
    send_raw,
    tampered,
)
from tests.integration.manual_devices import constant_delta, mlp_arrays, open_manual_round

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Every topic a service consumes, with the service that reads it.
CONSUMED = (
    topics.DEVICES,  # registry
    topics.TASKS,  # coordinator
    topics.ROUNDS,  # coordinator
    topics.UPDATES,  # aggregator
    topics.DEVICE_COMMANDS,  # simulator
)


def _dead_letter_of(stack: Stack, base: str, marker: bytes) -> Callable[[ConsumerRecord], bool]:
    name = topics.topic_name(stack.kafka.topic_prefix, base)

    def matches(record: ConsumerRecord) -> bool:
        headers = headers_of(record)
        return headers.get("original_topic") == name and record.key == marker

    return matches


async def _services_still_work(stack: Stack, client: FedEngineClient, fleet: str) -> None:
    """Every consumer is alive: the registry enrols, and a task trains to completion (the
    coordinator, the aggregator and the simulator all take part)."""
    device_id = f"alive-{uuid.uuid4().hex[:8]}"
    await send(
        stack.kafka,
        topics.DEVICES,
        key=device_id,
        message=enrolment(device_id, signing.generate_private_key(), stack.enrolment_token),
    )
    await eventually(lambda: device_or_none(client, device_id), timeout_s=60)
    await run_fleet_task(client, fleet, rounds=1)


@pytest.mark.parametrize("excess", [-4096, 1024 * 1024], ids=["just_under_limit", "over_limit"])
async def test_a_record_too_large_to_copy_is_dead_lettered_as_a_digest_by_every_consumer(
    stack: Stack, client: FedEngineClient, fleet: str, excess: int
) -> None:
    size = stack.kafka.max_message_bytes + excess
    marker = f"huge-{uuid.uuid4().hex}".encode()
    value = b"\xc1" + marker + bytes(size - len(marker) - 1)  # not msgpack: refused at decode
    for base in CONSUMED:
        await send_raw(stack.kafka, base, key=marker, value=value)

    letters = await find_records(
        stack.kafka,
        topics.DLQ,
        [_dead_letter_of(stack, base, marker) for base in CONSUMED],
        timeout_s=90,
    )

    assert len(letters) == len(CONSUMED)
    for letter in letters:
        headers = headers_of(letter)
        assert letter.value is None
        assert headers["original_size"] == str(size)
        assert headers["original_sha256"] == hashlib.sha256(value).hexdigest()
        assert headers["error_type"] == "invalid" and "msgpack" in headers["error"]
        assert "too large" in headers["value_omitted"]
    await _services_still_work(stack, client, fleet)


async def test_enrolments_with_nul_bytes_never_stop_the_registry(
    stack: Stack, client: FedEngineClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    for index in range(15):  # more than the consecutive-unhandled limit of 10
        device_id = f"nul-{tag}-{index}"
        raw = tampered(
            enrolment(device_id, signing.generate_private_key(), stack.enrolment_token),
            device_name=f"evil\x00{index}",
        )
        await send_raw(stack.kafka, topics.DEVICES, key=device_id.encode(), value=raw)
    survivor = f"after-nul-{tag}"
    await send(
        stack.kafka,
        topics.DEVICES,
        key=survivor,
        message=enrolment(survivor, signing.generate_private_key(), stack.enrolment_token),
    )

    assert await eventually(lambda: device_or_none(client, survivor), timeout_s=30)
    letters = await find_records(
        stack.kafka,
        topics.DLQ,
        [lambda r, i=i: r.key == f"nul-{tag}-{i}".encode() for i in range(15)],
    )
    for letter in letters:
        headers = headers_of(letter)
        assert headers["error_type"] == "invalid"
        assert "device_name" in headers["error"] and "NUL" in headers["error"]
    assert await device_or_none(client, f"nul-{tag}-0") is None


async def test_the_database_refusing_data_is_a_bad_message_and_a_lost_connection_an_outage(
    stack: Stack,
) -> None:
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as nul:
            await conn.execute("SELECT %s::text", ("a\x00b",))
        with pytest.raises(psycopg.Error) as out_of_range:
            await conn.execute("SELECT %s::integer", (2**40,))
        with pytest.raises(psycopg.Error) as bad_json:
            await conn.execute("SELECT %s::jsonb", ('{"x": "\\u0000"}',))
        victim = await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True)
        await conn.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.Error) as lost:
            await victim.execute("SELECT 1")
        await victim.close()

    assert [classify(e.value) for e in (nul, out_of_range, bad_json)] == [Failure.INVALID] * 3
    assert classify(lost.value) == Failure.TRANSIENT


async def test_a_valid_message_on_a_topic_that_does_not_carry_its_type_is_dead_lettered(
    stack: Stack,
) -> None:
    task_id = uuid.uuid4()
    start = TaskStartRequested(producer="pytest", task_id=task_id, issued_by="pytest")
    await send(stack.kafka, topics.DEVICES, key=str(task_id), message=start)
    beat = HeartbeatSent(producer="pytest", device_id="nobody", sequence=1, signature=bytes(64))
    await send(stack.kafka, topics.TASKS, key=str(task_id), message=beat)

    letters = await find_records(
        stack.kafka,
        topics.DLQ,
        [
            lambda r: r.key == str(task_id).encode() and b"task.start_requested" in r.value,
            lambda r: r.key == str(task_id).encode() and b"device.heartbeat_sent" in r.value,
        ],
    )

    errors = [headers_of(letter) for letter in letters]
    assert [h["error_type"] for h in errors] == ["wrong_topic", "wrong_topic"]
    assert "fed.devices does not carry task.start_requested" in errors[0]["error"]
    assert "fed.tasks does not carry device.heartbeat_sent" in errors[1]["error"]


async def test_an_update_claiming_2_62_examples_is_refused_and_its_round_completes(
    stack: Stack, client: FedEngineClient
) -> None:
    manual = await open_manual_round(stack, client, label="examples")
    first = manual.names[0]
    valid = manual.update(first, constant_delta(0.001))
    inflated = tampered(valid, num_examples=2**62, message_id=str(uuid.uuid4()))
    await send_raw(stack.kafka, topics.UPDATES, key=manual.task_id.encode(), value=inflated)
    task = await manual.send_all(stack, constant_delta(0.001))

    assert task["state"] == "completed"
    (round_row,) = await client.get_rounds(manual.task_id)
    assert round_row["num_examples"] == 10 * len(manual.names)
    (letter,) = await find_records(stack.kafka, topics.DLQ, [lambda r: r.value == inflated])
    assert "num_examples" in headers_of(letter)["error"]


async def test_a_train_request_with_seed_2_63_is_refused_and_the_simulator_trains_on(
    stack: Stack, client: FedEngineClient, fleet: str
) -> None:
    device_id = f"{fleet}-0000"
    request = TrainRequested(
        producer="coordinator",
        round_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        device_id=device_id,
        round_number=1,
        model_version=0,
        model_sha256="0" * 64,
        deadline=datetime.now(UTC) + timedelta(minutes=5),
        model_architecture=ModelArchitecture.MLP,
        dataset="digits",
        learning_rate=0.1,
        local_epochs=1,
        batch_size=16,
        seed=0,
    )
    raw = tampered(request, seed=2**63)
    await send_raw(stack.kafka, topics.DEVICE_COMMANDS, key=device_id.encode(), value=raw)

    (letter,) = await find_records(stack.kafka, topics.DLQ, [lambda r: r.value == raw])
    headers = headers_of(letter)
    assert headers["error_type"] == "invalid" and "seed" in headers["error"]
    await run_fleet_task(client, fleet, rounds=1)  # the simulator still trains


async def test_a_round_result_naming_another_task_is_refused_and_the_round_goes_on(
    stack: Stack, client: FedEngineClient
) -> None:
    manual = await open_manual_round(stack, client, label="forged-result")
    request = manual.requests[manual.names[0]]
    forged = RoundAggregated(
        producer="aggregator",
        round_id=request.round_id,
        task_id=uuid.uuid4(),  # not the round's task
        round_number=1,
        attempt=0,
        model_version=0,
        delta=arrays.to_bytes(constant_delta(0.5)),
        participants=manual.names,
        dropped=[],
        rejected={},
        num_examples=30,
        train_loss=1.0,
        bytes_up=1,
        duration_s=1.0,
    )
    # Signed as the aggregator (a compromised or buggy one): the task check still holds.
    await send(
        stack.kafka,
        topics.ROUNDS,
        key=str(forged.task_id),
        message=forged,
        signer=stack.signer("aggregator"),
    )
    task = await manual.send_all(stack, constant_delta(0.001))

    assert task["state"] == "completed"
    (letter,) = await find_records(
        stack.kafka, topics.DLQ, [lambda r: r.key == str(forged.task_id).encode()]
    )
    headers = headers_of(letter)
    assert headers["error_type"] == "ProtocolViolation"
    assert "does not belong to task" in headers["error"]
    new, _, _ = await client.download_model(manual.task_id, version=1)
    old, _, _ = await client.download_model(manual.task_id, version=0)
    for after, before in zip(mlp_arrays(new), mlp_arrays(old), strict=True):
        np.testing.assert_allclose(after - before, 0.001, atol=1e-6)  # the real round's delta


async def test_a_task_whose_stored_setting_no_longer_validates_fails_alone(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection, fleet: str
) -> None:
    # A task waiting for a device that never comes, whose stored seed is then made invalid:
    # as a task written by an older version (seed -1) would be.
    bad = await client.create_federated_task(
        task_name="bad setting",
        participating_devices=[f"ghost-{uuid.uuid4().hex[:6]}"],
        devices_per_round=1,
        device_wait_s=120,
    )
    await client.start_federated_training(bad)
    await client.wait_for_task(bad, lambda t: t["state"] == "running")
    await db.execute(
        "UPDATE coordinator.tasks SET spec = jsonb_set(spec, '{seed}', '-1') WHERE task_id = %s",
        (uuid.UUID(bad),),
    )

    good = await run_fleet_task(client, fleet, rounds=2)  # trains while the bad one fails

    failed = await client.wait_for_task(bad, lambda t: t["state"] == "failed", timeout_s=30)
    assert failed["stop_reason"] == "error"
    events = await client.get_task_events(bad)
    (ended,) = [e for e in events if e["kind"] == "failed"]
    assert ended == events[-1] and ended["detail"].startswith("error: ")
    assert "seed" in ended["detail"] and "-1" not in ended["detail"]
    assert (await client.get_task(good))["state"] == "completed"


async def test_an_outbox_row_the_broker_keeps_refusing_is_dead_lettered_and_the_rest_flow(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection, fleet: str
) -> None:
    key = f"refused-{uuid.uuid4().hex[:8]}"
    value = bytes(stack.kafka.max_message_bytes + 1024)  # over the producer's limit
    events = topics.topic_name(stack.kafka.topic_prefix, topics.EVENTS)
    async with db.transaction():  # one transaction: the second row must wait for the first
        cursor = await db.execute(
            "INSERT INTO coordinator.outbox (topic, key, value) VALUES (%s, %s, %s) RETURNING id",
            (events, key, value),
        )
        (row_id,) = await cursor.fetchone() or (None,)
        await db.execute(
            "INSERT INTO coordinator.outbox (topic, key, value) VALUES (%s, %s, %s)",
            (events, f"{key}-next", b"follows the refused row"),
        )

    await run_fleet_task(client, fleet, rounds=2)  # other transactions' rows flow meanwhile

    (letter,) = await find_records(
        stack.kafka, topics.DLQ, [lambda r: r.key == key.encode()], timeout_s=60
    )
    headers = headers_of(letter)
    assert headers["error_type"] == "outbox_refused"
    assert "refused it 5 times" in headers["error"] and "MessageSizeTooLarge" in headers["error"]
    assert headers["original_topic"] == events
    assert headers["original_size"] == str(len(value))
    (follower,) = await find_records(
        stack.kafka, topics.EVENTS, [lambda r: r.key == f"{key}-next".encode()], timeout_s=30
    )
    assert follower.timestamp >= letter.timestamp  # held back until the refused row was settled

    async def gone() -> bool:
        found = await db.execute("SELECT 1 FROM coordinator.outbox WHERE id = %s", (row_id,))
        return await found.fetchone() is None

    await eventually(gone, timeout_s=10)


def _update(round_id: uuid.UUID, device_id: str) -> UpdateSubmitted:
    return UpdateSubmitted(
        producer="pytest",
        round_id=round_id,
        task_id=uuid.uuid4(),
        device_id=device_id,
        round_number=1,
        model_version=0,
        num_examples=10,
        update=b"",
        metrics=UpdateMetrics(train_loss=1.0, train_accuracy=0.5, duration_s=0.1),
        signature=bytes(64),
    )


async def test_results_are_keyed_by_round_device_and_message_id_not_by_offsets(
    db: psycopg.AsyncConnection,
) -> None:
    # After a restart of the in-memory broker, offsets start again at 0: two different updates
    # at the same (partition, offset) must both be kept; a redelivery must not be kept twice.
    first, second = _update(uuid.uuid4(), "dev-a"), _update(uuid.uuid4(), "dev-a")
    rejected = _update(uuid.uuid4(), "dev-b")
    async with db.transaction():
        await aggregator_store.record_result(db, first, partition=0, offset=5, status="accepted")
        await aggregator_store.record_result(db, second, partition=0, offset=5, status="accepted")
        await aggregator_store.record_result(db, first, partition=1, offset=9, status="accepted")
        replay = first.model_copy(update={"message_id": uuid.uuid4()})
        await aggregator_store.record_result(db, replay, partition=0, offset=6, status="accepted")
        for offset in (5, 7):
            await aggregator_store.record_result(
                db, rejected, partition=0, offset=offset, status="rejected", reason="late"
            )

    cursor = await db.execute(
        "SELECT round_id, status, count(*) FROM aggregator.device_results "
        "WHERE round_id = ANY(%s) GROUP BY round_id, status",
        ([first.round_id, second.round_id, rejected.round_id],),
    )
    counts = {(row[0], row[1]): row[2] for row in await cursor.fetchall()}
    assert counts == {
        (first.round_id, "accepted"): 1,
        (second.round_id, "accepted"): 1,
        (rejected.round_id, "rejected"): 1,
    }


async def test_a_command_that_a_later_state_makes_moot_is_logged_as_ignored(
    stack: Stack, client: FedEngineClient
) -> None:
    task_id = await client.create_federated_task(task_name="moot", devices_per_round=1)
    await client.wait_for_task(task_id, lambda t: True)
    await client.cancel_task(task_id)
    await client.wait_for_task(task_id, lambda t: t["state"] == "cancelled")
    # The gateway answers 409 to a pause now; one already in flight when the task finished
    # (or sent straight to the topic) is recorded as ignored, with the reason.
    pause = TaskPauseRequested(producer="pytest", task_id=uuid.UUID(task_id), issued_by="late")
    await send(
        stack.kafka, topics.TASKS, key=task_id, message=pause, signer=stack.signer("gateway")
    )

    async def ignored() -> list[dict[str, object]]:
        events = await client.get_task_events(task_id)
        return [e for e in events if e["kind"] == "pause_ignored"]

    (event,) = await eventually(ignored)
    assert event["issued_by"] == "late"
    assert event["detail"] == "not allowed in state cancelled"
