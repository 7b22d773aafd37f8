"""POST /cleanup drops all but the final model version of finished tasks."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from fedengine.sdk import FedEngineClient
from tests.integration.helpers import eventually, run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_cleanup_keeps_only_the_final_model_of_finished_tasks(
    client: FedEngineClient, fleet: str, db: psycopg.AsyncConnection
) -> None:
    task_id = await run_fleet_task(
        client, fleet, task_name="cleanup", devices_per_round=2, min_devices=1, rounds=2
    )

    async def versions() -> list[int]:
        cursor = await db.execute(
            "SELECT array_agg(version ORDER BY version) FROM coordinator.models WHERE task_id = %s",
            (uuid.UUID(task_id),),
        )
        return (await cursor.fetchone())[0]

    assert await versions() == [0, 1, 2]
    await client.cleanup(retention_s=0)
    assert await eventually(lambda: _only_final(versions)) == [2]
    _, _, version = await client.download_model(task_id)
    assert version == 2


async def _only_final(versions):  # type: ignore[no-untyped-def]
    current = await versions()
    return current if current == [2] else None
