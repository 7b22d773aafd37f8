"""A task runs to completion; pause and resume; cancel; the model downloads as safetensors."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import psycopg
import pytest
import torch

from fedcommon import datasets, models
from fedcommon.messages.v1 import ModelArchitecture
from fedengine.sdk import FedEngineClient
from tests.integration.helpers import eventually, run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def finished(client: FedEngineClient, task_id: str, timeout_s: float = 90) -> dict[str, Any]:
    return await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed", "cancelled"), timeout_s=timeout_s
    )


async def test_task_runs_to_completion_and_model_downloads(
    client: FedEngineClient, fleet: str
) -> None:
    task_id = await run_fleet_task(client, fleet, wait=False, rounds=4)

    task = await finished(client, task_id)

    assert task["state"] == "completed"
    assert task["stop_reason"] == "max_rounds"
    rounds = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
    assert [r["round_number"] for r in rounds] == [1, 2, 3, 4]
    assert all(len(r["aggregated"]) == 4 for r in rounds)
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"] - 0.05
    assert rounds[-1]["accuracy"] > 0.5
    data, digest, version = await client.download_model(task_id)
    assert version == 4
    assert hashlib.sha256(data).hexdigest() == digest
    dataset = datasets.load_dataset("digits")
    model = models.build_model(
        ModelArchitecture.MLP,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        seed=123,
    )
    models.load_into(model, data)
    with torch.no_grad():
        predicted = model(torch.from_numpy(dataset.x_test)).argmax(dim=1).numpy()
    assert (predicted == dataset.y_test).mean() == pytest.approx(rounds[-1]["accuracy"], abs=1e-6)
    first, _, first_version = await client.download_model(task_id, version=0)
    assert first_version == 0 and first != data
    events = await client.get_task_events(task_id)
    assert [e["kind"] for e in events][:2] == ["created", "start"]
    assert all(e["issued_by"] == "pytest" for e in events[:2])
    # The log ends with how the task ended: the stop reason, then the numbers behind it.
    assert (events[-1]["kind"], events[-1]["issued_by"]) == ("completed", None)
    assert events[-1]["detail"] == (
        f"max_rounds: 4 of 4 rounds done, accuracy {rounds[-1]['accuracy']:.4f}"
    )


async def test_pause_finishes_the_round_in_flight_and_resume_continues(
    client: FedEngineClient, fleet: str
) -> None:
    task_id = await run_fleet_task(client, fleet, wait=False, rounds=6)
    await client.wait_for_task(task_id, lambda t: t["current_round"] >= 1, timeout_s=60)

    await client.pause_task(task_id)
    paused = await client.wait_for_task(task_id, lambda t: t["state"] == "paused")

    async def round_settled() -> dict[str, Any] | None:
        rounds = await client.get_rounds(task_id)
        return (
            None if any(r["status"] == "open" for r in rounds) else await client.get_task(task_id)
        )

    settled = await eventually(round_settled, timeout_s=30)
    assert settled["state"] == "paused"
    assert settled["current_round"] >= paused["current_round"]
    held = settled["current_round"]
    assert held < 6
    # Nothing new starts while paused: two polls apart, still no open round and same count.
    again = await eventually(round_settled, timeout_s=5)
    assert again["current_round"] == held

    await client.resume_task(task_id)
    task = await finished(client, task_id)
    assert task["state"] == "completed"
    completed = [
        r["round_number"] for r in await client.get_rounds(task_id) if r["status"] == "completed"
    ]
    assert completed == list(range(1, 7))
    kinds = [e["kind"] for e in await client.get_task_events(task_id)]
    assert "pause" in kinds and "resume" in kinds


async def test_cancel_stops_a_running_task(client: FedEngineClient, fleet: str) -> None:
    task_id = await run_fleet_task(client, fleet, wait=False, rounds=200)
    await client.wait_for_task(task_id, lambda t: t["current_round"] >= 1, timeout_s=60)

    await client.cancel_task(task_id)

    task = await finished(client, task_id)
    assert task["state"] == "cancelled"
    assert task["stop_reason"] == "cancelled"
    assert task["current_round"] < 200
    *_, cancel, ended = await client.get_task_events(task_id)
    assert (cancel["kind"], ended["kind"]) == ("cancel", "cancelled")
    assert cancel["issued_by"] == ended["issued_by"] == "pytest"
    # "cancelled", or "cancelled: round N abandoned" when a round was open
    assert ended["detail"].startswith("cancelled"), ended


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "INSERT INTO coordinator.tasks (task_id, task_name, spec, state, created_by) "
            "VALUES (%s, 'x', '{}', 'finished', 'pytest')",
            "tasks_state_check",
        ),
        (
            "INSERT INTO coordinator.tasks (task_id, task_name, spec, state, stop_reason, "
            "created_by) VALUES (%s, 'x', '{}', 'completed', 'bored', 'pytest')",
            "tasks_stop_reason_check",
        ),
        (
            "INSERT INTO coordinator.rounds (round_id, task_id, round_number, attempt, status, "
            "participants, model_version_in, deadline) "
            "VALUES (%s, gen_random_uuid(), 1, 0, 'done', '{}', 0, now())",
            "rounds_status_check",
        ),
    ],
    ids=["task state", "stop reason", "round status"],
)
async def test_the_database_refuses_a_status_outside_its_enum(
    db: psycopg.AsyncConnection, statement: str, constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        await db.execute(statement, (uuid.uuid4(),))
