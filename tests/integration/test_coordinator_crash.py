"""A coordinator killed with SIGKILL mid-task and restarted finishes the task, no round lost
or counted twice: its state is in PostgreSQL and uncommitted messages are redelivered. A server
optimizer's state lives with the model versions, so it survives too: no step lost or doubled.
The FedAvg and the FedAdam task run at once, and one kill lands in the middle of both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import pytest_asyncio
import torch

from fedcommon import datasets, models
from fedcommon.messages.v1 import ModelArchitecture
from fedcommon.server_opt import Adam
from fedengine import launcher
from tests.integration.conftest import Stack
from tests.integration.helpers import run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


# The kill comes once both tasks are past round 2 (killed_at says where each was): the rest of
# each task runs on the restarted coordinator.
ROUNDS = 8
STRATEGIES: dict[str, dict[str, Any] | None] = {
    "fedavg": None,
    "fedadam": {"name": "fedadam", "params": {"eta": 0.02}},
}


@dataclass
class Crashed:
    task_id: str
    killed_at: dict[str, Any]  # the task as it was just before the kill
    task: dict[str, Any]  # the task once finished


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def crashed(stack: Stack) -> AsyncIterator[dict[str, Crashed]]:
    """One task per strategy, at once on the shared fleet; one SIGKILL of the coordinator once
    both are past round 2, and both run to their end."""
    async with stack.client() as client:
        task_ids = {
            name: await run_fleet_task(
                client,
                stack.fleet,
                task_name=f"crash {name}",
                rounds=ROUNDS,
                wait=False,
                **({} if strategy is None else {"strategy": strategy}),
            )
            for name, strategy in STRATEGIES.items()
        }
        for task_id in task_ids.values():
            await client.wait_for_task(task_id, lambda t: t["current_round"] >= 2, timeout_s=60)
        killed_at = {name: await client.get_task(task_id) for name, task_id in task_ids.items()}

        await asyncio.to_thread(launcher.restart, stack.settings, "coordinator", kill=True)

        yield {
            name: Crashed(
                task_id,
                killed_at[name],
                await client.wait_for_task(
                    task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=120
                ),
            )
            for name, task_id in task_ids.items()
        }


@pytest.mark.parametrize("strategy", list(STRATEGIES))
async def test_sigkilled_coordinator_restarts_and_finishes_the_task(
    crashed: dict[str, Crashed], db: psycopg.AsyncConnection, strategy: str
) -> None:
    crash = crashed[strategy]
    task_id, killed_at, task = crash.task_id, crash.killed_at, crash.task
    assert task["state"] == "completed", task
    assert killed_at["current_round"] < ROUNDS, "the kill must land mid-task"
    cursor = await db.execute(
        "SELECT round_number, count(*) FILTER (WHERE status = 'completed'), "
        "min(model_version_in), max(model_version_out) FROM coordinator.rounds "
        "WHERE task_id = %s GROUP BY round_number ORDER BY round_number",
        (uuid.UUID(task_id),),
    )
    rows = await cursor.fetchall()
    assert [r[0] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r[1] == 1 for r in rows), rows  # each round applied exactly once
    assert all(r[3] == r[0] for r in rows), rows  # round n produced model version n
    cursor = await db.execute(
        "SELECT array_agg(version ORDER BY version) FROM coordinator.models WHERE task_id = %s",
        (uuid.UUID(task_id),),
    )
    assert (await cursor.fetchone())[0] == list(range(ROUNDS + 1))
    if STRATEGIES[strategy] is not None:
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
        assert steps == list(range(1, ROUNDS + 1))


def load(data: bytes) -> torch.nn.Module:
    dataset = datasets.load_dataset("digits")
    model = models.build_model(
        ModelArchitecture.MLP,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        seed=0,
    )
    return models.load_into(model, data)
