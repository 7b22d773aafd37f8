"""A coordinator killed with SIGKILL mid-task and restarted finishes the task, no round lost
or counted twice: its state is in PostgreSQL and uncommitted messages are redelivered."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from fedengine import launcher
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_sigkilled_coordinator_restarts_and_finishes_the_task(
    stack: Stack, client: FedEngineClient, fleet: str, db: psycopg.AsyncConnection
) -> None:
    task_id = await run_fleet_task(client, fleet, task_name="crash", rounds=16, wait=False)
    await client.wait_for_task(task_id, lambda t: t["current_round"] >= 2, timeout_s=60)

    killed_at = await client.get_task(task_id)
    launcher.restart(stack.settings, "coordinator", kill=True)

    task = await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=120
    )
    assert task["state"] == "completed", task
    assert killed_at["current_round"] < 16, "the kill must land mid-task"
    cursor = await db.execute(
        "SELECT round_number, count(*) FILTER (WHERE status = 'completed'), "
        "min(model_version_in), max(model_version_out) FROM coordinator.rounds "
        "WHERE task_id = %s GROUP BY round_number ORDER BY round_number",
        (uuid.UUID(task_id),),
    )
    rows = await cursor.fetchall()
    assert [r[0] for r in rows] == list(range(1, 17))
    assert all(r[1] == 1 for r in rows), rows  # each round applied exactly once
    assert all(r[3] == r[0] for r in rows), rows  # round n produced model version n
    cursor = await db.execute(
        "SELECT array_agg(version ORDER BY version) FROM coordinator.models WHERE task_id = %s",
        (uuid.UUID(task_id),),
    )
    assert (await cursor.fetchone())[0] == list(range(17))
