"""Federated evaluation on a running stack: simulated devices score the global model on their
own held-out shares, the round's federated metrics are their example-weighted means, and the
stopping rules read them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fedengine.sdk import FedEngineClient
from fedengine_coordinator.settings import Settings as CoordinatorSettings
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually, run_fleet_task
from tests.integration.test_device_runtime import Devices

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def _finished(client: FedEngineClient, task_id: str) -> dict[str, Any]:
    return await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed", "cancelled"), timeout_s=120
    )


async def test_every_second_version_is_evaluated_by_the_fleet(
    client: FedEngineClient, fleet: str, db: psycopg.AsyncConnection
) -> None:
    task_id = await run_fleet_task(
        client,
        fleet,
        wait=False,
        rounds=4,
        federated_evaluation={"every_rounds": 2, "fraction": 1.0, "min_devices": 2},
    )

    task = await _finished(client, task_id)

    assert task["state"] == "completed", task
    rounds = {r["round_number"]: r for r in await client.get_rounds(task_id)}
    assert [rounds[n]["fed_accuracy"] is None for n in (1, 2, 3, 4)] == [True, False, True, False]
    for n in (2, 4):
        round_ = rounds[n]
        assert 0.3 < round_["fed_accuracy"] <= 1
        assert round_["fed_loss"] > 0
        assert round_["fed_devices"] >= 2 and round_["fed_examples"] > 0
        if round_["fed_devices"] == 8:
            # Every test example lies in exactly one device's share: the whole fleet's mean is
            # the central evaluation on the same split.
            assert round_["fed_accuracy"] == pytest.approx(round_["accuracy"], abs=1e-6)
    cursor = await db.execute(
        "SELECT round_number, status, cardinality(devices), answered FROM "
        "coordinator.evaluations WHERE task_id = %s ORDER BY round_number",
        (task_id,),
    )
    evaluations = await cursor.fetchall()
    assert [(r[0], r[1]) for r in evaluations] == [(2, "completed"), (4, "completed")]
    assert all(r[3] == r[2] for r in evaluations), evaluations  # everyone asked answered


async def test_the_target_accuracy_is_judged_on_the_devices_verdict(
    client: FedEngineClient, fleet: str
) -> None:
    task_id = await run_fleet_task(
        client,
        fleet,
        wait=False,
        rounds=10,
        target_accuracy=0.3,
        federated_evaluation={"every_rounds": 1, "fraction": 0.5, "min_devices": 2},
    )

    task = await _finished(client, task_id)

    assert task["state"] == "completed", task
    assert task["stop_reason"] == "target_accuracy"
    completed = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
    assert completed[-1]["fed_accuracy"] >= 0.3
    assert all(r["fed_accuracy"] < 0.3 for r in completed[:-1])
    events = await client.get_task_events(task_id)
    assert "reached the target" in events[-1]["detail"]


async def test_answers_that_reached_the_log_in_time_count_when_read_after_the_deadline(
    client: FedEngineClient, fleet: str, stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: the coordinator cannot store an answer until we let it (as in a database outage
    # or a restart: it reads the answers after the deadline, though they came in time).
    async with await psycopg.AsyncConnection.connect(stack.database_url) as holder:
        await holder.execute("LOCK TABLE coordinator.evaluation_results IN ACCESS EXCLUSIVE MODE")
        task_id = await run_fleet_task(
            client,
            fleet,
            wait=False,
            rounds=1,
            federated_evaluation={"fraction": 1.0, "min_devices": 2, "timeout_s": 2},
        )

        async def deadline() -> datetime | None:
            cursor = await db.execute(
                "SELECT deadline FROM coordinator.evaluations WHERE task_id = %s", (task_id,)
            )
            row = await cursor.fetchone()
            return None if row is None else row[0]

        due = await eventually(deadline, timeout_s=60)
        # Execute: the answers wait until well past the deadline.
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 3)
        await holder.commit()

    task = await _finished(client, task_id)

    # Assert: every device asked answered in time, and every answer counted.
    assert task["state"] == "completed", task
    cursor = await db.execute(
        "SELECT status, cardinality(devices), answered FROM coordinator.evaluations "
        "WHERE task_id = %s",
        (task_id,),
    )
    status, asked, answered = await cursor.fetchone() or (None, 0, 0)
    assert status == "completed"
    assert answered == asked >= 2


async def test_an_evaluation_a_device_never_answers_closes_after_its_deadline(
    client: FedEngineClient,
    fleet: str,
    stack: Stack,
    db: psycopg.AsyncConnection,
    tmp_path: Path,
) -> None:
    # Prepare: beside the fleet, a device whose evaluate raises, so that it never answers.
    devices = Devices(stack, tmp_path)
    silent = f"silent-{uuid.uuid4().hex[:6]}"
    try:
        devices.start(silent, "tests.integration.device_apps:raising")

        async def online() -> bool:
            return silent in {d["device_id"] for d in await client.list_devices(status="online")}

        await eventually(online, timeout_s=120)
        task_id = await run_fleet_task(
            client,
            fleet,
            wait=False,
            rounds=1,
            participating_devices=[*(f"{fleet}-{i:04d}" for i in range(8)), silent],
            federated_evaluation={"fraction": 1.0, "min_devices": 2, "timeout_s": 3},
        )

        # Execute
        task = await _finished(client, task_id)
    finally:
        devices.stop_all()

    # Assert: the tick closed it past its deadline with the fleet's answers, and the task ended.
    assert task["state"] == "completed", task
    cursor = await db.execute(
        "SELECT status, devices, answered, deadline, closed_at FROM coordinator.evaluations "
        "WHERE task_id = %s",
        (task_id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    status, asked, answered, deadline, closed_at = row
    assert status == "completed"
    assert silent in asked and answered == len(asked) - 1
    # Not at once: a grace after the tick first found it overdue, for answers still unread.
    grace = CoordinatorSettings.model_fields["evaluation_grace_s"].default
    assert (closed_at - deadline).total_seconds() >= grace
    assert "nothing sent" in devices.log(silent)
