"""A coordinator killed with SIGKILL mid-task and restarted finishes the task, no round lost
or counted twice: its state is in PostgreSQL and uncommitted messages are redelivered. A server
optimizer's state lives with the model versions, so it survives too: no step lost or doubled."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import torch

from fedcommon import datasets, models
from fedcommon.messages.v1 import ModelArchitecture
from fedcommon.server_opt import Adam
from fedengine import launcher
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.mark.parametrize(
    "strategy",
    [None, {"name": "fedadam", "params": {"eta": 0.02}}],
    ids=["fedavg", "fedadam"],
)
async def test_sigkilled_coordinator_restarts_and_finishes_the_task(
    stack: Stack,
    client: FedEngineClient,
    fleet: str,
    db: psycopg.AsyncConnection,
    strategy: dict[str, Any] | None,
) -> None:
    chosen = {} if strategy is None else {"strategy": strategy}
    task_id = await run_fleet_task(
        client, fleet, task_name="crash", rounds=16, wait=False, **chosen
    )
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
    if strategy is not None:
        # Version n holds the state after exactly n Adam steps: none lost or repeated.
        cursor = await db.execute(
            "SELECT version, optimizer_state, data FROM coordinator.models "
            "WHERE task_id = %s ORDER BY version",
            (uuid.UUID(task_id),),
        )
        stored = await cursor.fetchall()
        assert stored[0][1] is None
        optimizer = Adam(eta=0.02)
        shapes = [list(a.shape) for a in models.get_arrays(load(bytes(stored[0][2])))]
        steps = [optimizer.load_state(bytes(state), shapes).step for _, state, _ in stored[1:]]
        assert steps == list(range(1, 17))


def load(data: bytes) -> torch.nn.Module:
    dataset = datasets.load_dataset("digits")
    model = models.build_model(
        ModelArchitecture.MLP,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        seed=0,
    )
    return models.load_into(model, data)
