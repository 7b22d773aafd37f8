"""Tasks share a fleet first come, first served: several tasks started at once on one fleet,
each wanting every device, all complete (issue 17: ten tasks on ten devices had eight fail
with too_few_devices after 30 s instead of waiting their turn)."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from fedengine.sdk import FedEngineClient
from fedengine_coordinator import store
from tests.integration.helpers import run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

TASKS = 5


async def test_tasks_started_at_once_on_one_fleet_all_complete_in_turn(
    client: FedEngineClient, fleet: str
) -> None:
    # device_wait_s is short: a task that counted busy devices as missing would fail.
    ids = await asyncio.gather(
        *(
            run_fleet_task(
                client,
                fleet,
                wait=False,
                task_name=f"queued {n}",
                rounds=2,
                devices_per_round=8,
                min_devices=4,
                device_wait_s=5,
                round_timeout_s=30,
            )
            for n in range(TASKS)
        )
    )

    finished = [
        await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=300
        )
        for task_id in ids
    ]

    assert [t["state"] for t in finished] == ["completed"] * TASKS, finished
    waited = 0
    for task_id in ids:
        events = await client.get_task_events(task_id)
        waits = [e for e in events if e["kind"] == "waiting_for_devices"]
        waited += bool(waits)
        for event in waits:
            assert (
                "busy in other tasks' rounds" in event["detail"] or "yielding" in event["detail"]
            ), event
        rounds = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
        assert len(rounds) == 2
    # They could not all run at once: most queued for the fleet.
    assert waited >= TASKS - 1


async def test_a_device_asked_to_evaluate_is_busy_while_the_evaluation_is_open(
    db: psycopg.AsyncConnection,
) -> None:
    """A device runs one request at a time: while an evaluation that asked it is open,
    another task's round does not select it (store.busy_devices; rolled back, nothing is
    left behind)."""
    task_id, evaluation_id = uuid.uuid4(), uuid.uuid4()
    async with db.transaction(force_rollback=True):
        await db.execute(
            "INSERT INTO coordinator.tasks (task_id, task_name, spec, state, created_by) "
            "VALUES (%s, 'busy', '{}'::jsonb, 'running', 'pytest')",
            (task_id,),
        )
        await db.execute(
            "INSERT INTO coordinator.evaluations "
            "(evaluation_id, task_id, round_number, model_version, devices, deadline) "
            "VALUES (%s, %s, 1, 1, %s, now() + interval '1 minute')",
            (evaluation_id, task_id, ["ev-answered", "ev-owing"]),
        )
        await db.execute(
            "INSERT INTO coordinator.evaluation_results "
            "(evaluation_id, device_id, num_examples, loss, metrics) "
            "VALUES (%s, 'ev-answered', 1, 0.5, '{}'::jsonb)",
            (evaluation_id,),
        )

        busy = await store.busy_devices(db)
        await db.execute(
            "UPDATE coordinator.evaluations SET status = 'completed' WHERE evaluation_id = %s",
            (evaluation_id,),
        )
        after = await store.busy_devices(db)

        assert {"ev-owing", "ev-answered"} <= busy
        assert not {"ev-owing", "ev-answered"} & after
