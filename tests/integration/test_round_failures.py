"""A round that misses its minimum by the deadline is re-issued a bounded number of times, then
the task fails with the reason recorded; a task with no eligible devices fails too, and so does
a DP task whose privacy spend is never answered."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from aiokafka import ConsumerRecord
from psycopg.types.json import Jsonb

from fedcommon import codec, topics
from fedcommon.messages.v1 import PrivacySpec, TaskSpec, TrainRequested
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually
from tests.integration.kafka_tools import find_records, send
from tests.integration.manual_devices import ManualRound, constant_delta, open_manual_round

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_round_short_of_its_minimum_is_reissued_then_the_task_fails(
    stack: Stack, client: FedEngineClient
) -> None:
    manual = await open_manual_round(
        stack, client, label="short", round_timeout_s=6, max_round_retries=1
    )
    first = manual.names[0]
    await send(
        stack.kafka,
        topics.UPDATES,
        key=manual.task_id,
        message=manual.update(first, constant_delta(0.001)),
    )

    async with manual.heartbeating(stack):
        task = await client.wait_for_task(
            manual.task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=60
        )

    assert (task["state"], task["stop_reason"]) == ("failed", "round_failed")
    rounds = await client.get_rounds(manual.task_id)
    assert [(r["round_number"], r["attempt"], r["status"]) for r in rounds] == [
        (1, 0, "failed"),
        (1, 1, "failed"),
    ]
    assert rounds[0]["failure"] == "1 of 3 updates by the deadline"
    assert sorted(rounds[1]["participants"]) == sorted(manual.names)
    events = await client.get_task_events(manual.task_id)
    assert [e["kind"] for e in events].count("round_failed") == 2
    assert (events[-1]["kind"], events[-1]["detail"]) == (
        "failed",
        f"round_failed: round 1 failed 2 times, the last: {rounds[1]['failure']}",
    )


async def test_a_task_without_eligible_devices_fails_with_too_few_devices(
    client: FedEngineClient,
) -> None:
    task_id = await client.create_federated_task(
        task_name="nobody",
        participating_devices=[f"ghost-{uuid.uuid4().hex[:6]}"],
        devices_per_round=1,
        device_wait_s=1,
    )
    await client.start_federated_training(task_id)

    task = await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=30
    )

    assert (task["state"], task["stop_reason"]) == ("failed", "too_few_devices")
    assert await client.get_rounds(task_id) == []
    events = await client.get_task_events(task_id)
    assert "waiting_for_devices" in [e["kind"] for e in events]
    assert (events[-1]["kind"], events[-1]["detail"]) == (
        "failed",
        "too_few_devices: round 1: 0 eligible, 1 needed, for more than 1 s (device_wait_s)",
    )


async def test_resume_after_a_round_failed_while_paused_reissues_the_round(
    stack: Stack, client: FedEngineClient
) -> None:
    manual = await open_manual_round(
        stack, client, label="paused-fail", round_timeout_s=4, max_round_retries=3
    )
    await client.pause_task(manual.task_id)
    async with manual.heartbeating(stack):

        async def first_attempt_failed() -> bool:
            rounds = await client.get_rounds(manual.task_id)
            return bool(rounds) and rounds[0]["status"] == "failed"

        await eventually(first_attempt_failed, timeout_s=30)
        assert (await client.get_task(manual.task_id))["state"] == "paused"

        await client.resume_task(manual.task_id)
        records = await find_records(
            stack.kafka,
            topics.DEVICE_COMMANDS,
            [
                lambda r, n=name: r.key == n.encode() and _attempt_of(r, manual)
                for name in manual.names
            ],
        )
        for name, record in zip(manual.names, records, strict=True):
            request = codec.decode(record.value)
            assert isinstance(request, TrainRequested)
            manual.requests[name] = request
            await send(
                stack.kafka,
                topics.UPDATES,
                key=manual.task_id,
                message=manual.update(name, constant_delta(0.001)),
            )
        task = await client.wait_for_task(
            manual.task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=60
        )

    assert task["state"] == "completed"
    rounds = await client.get_rounds(manual.task_id)
    assert [(r["round_number"], r["attempt"], r["status"]) for r in rounds] == [
        (1, 0, "failed"),
        (1, 1, "completed"),
    ]


def _attempt_of(record: ConsumerRecord, manual: ManualRound) -> bool:
    """Whether ``record`` is a train request of a later attempt than the ones collected."""
    message = codec.decode(record.value)
    known = {request.round_id for request in manual.requests.values()}
    return isinstance(message, TrainRequested) and message.round_id not in known


async def test_a_try_whose_spend_is_never_answered_fails_its_task_at_the_spend_timeout(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: a running DP task whose try asked for its spend 700 s ago and got no answer
    # (the privacy service lost it), past COORDINATOR_SPEND_TIMEOUT_S (600 s by default).
    task_id, round_id = uuid.uuid4(), uuid.uuid4()
    spec = TaskSpec(
        task_name="unanswered",
        rounds=3,
        privacy=PrivacySpec(epsilon=1.0, noise_multiplier=4.0),
    )
    await db.execute(
        "INSERT INTO coordinator.tasks (task_id, task_name, spec, state, created_by, "
        "current_round, started_at) VALUES (%s, %s, %s, 'running', 'alice', 1, now())",
        (task_id, spec.task_name, Jsonb(spec.model_dump(mode="json"))),
    )
    await db.execute(
        "INSERT INTO coordinator.rounds (round_id, task_id, round_number, attempt, status, "
        "participants, model_version_in, deadline, opened_at, sample_rate, "
        "expected_participants, clip_norm) VALUES (%s, %s, 1, 0, 'awaiting_spend', "
        "ARRAY['d0'], 0, now(), now() - interval '700 seconds', 1.0, 1.0, 1.0)",
        (round_id, task_id),
    )

    # Execute: the coordinator's tick finds it.
    async def failed() -> tuple[str, str] | None:
        cursor = await db.execute(
            "SELECT t.state, r.status FROM coordinator.tasks t JOIN coordinator.rounds r "
            "USING (task_id) WHERE task_id = %s AND t.state = 'failed'",
            (task_id,),
        )
        row = await cursor.fetchone()
        return None if row is None else (row[0], row[1])

    states = await eventually(failed, timeout_s=30)

    # Assert: the task failed saying why, and the try is abandoned.
    assert states == ("failed", "abandoned")
    cursor = await db.execute(
        "SELECT kind, detail FROM coordinator.task_events WHERE task_id = %s ORDER BY id",
        (task_id,),
    )
    events = await cursor.fetchall()
    assert ("privacy_spend_timed_out", WHY_TIMED_OUT) in events
    assert ("failed", f"error: {WHY_TIMED_OUT}") in events


WHY_TIMED_OUT = (
    "no privacy spend answer for round 1 attempt 0 within 600 s (COORDINATOR_SPEND_TIMEOUT_S)"
)
