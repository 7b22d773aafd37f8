"""The aggregator's open rounds live in Kafka: a SIGKILLed aggregator re-reads the round from its
committed offset and completes it with the updates it had before the crash. A graceful stop
(SIGTERM) exits 0."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

from fedcommon import topics
from fedengine import launcher
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually
from tests.integration.kafka_tools import send
from tests.integration.manual_devices import constant_delta, mlp_arrays, open_manual_round

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_sigkilled_aggregator_recovers_the_open_round_from_the_log(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    manual = await open_manual_round(stack, client, label="agg-crash", round_timeout_s=120)
    first, second, third = manual.names
    for name, value in ((first, 0.001), (second, 0.002)):
        await send(
            stack.kafka,
            topics.UPDATES,
            key=manual.task_id,
            message=manual.update(name, constant_delta(value)),
        )

    # The aggregator has accepted both (in memory; their offsets stay uncommitted while the
    # round is open) before it is killed.
    async def accepted() -> bool:
        cursor = await db.execute(
            "SELECT count(*) FROM aggregator.device_results WHERE task_id = %s "
            "AND status = 'accepted'",
            (uuid.UUID(manual.task_id),),
        )
        row = await cursor.fetchone()
        return bool(row and row[0] == 2)

    await eventually(accepted)
    assert (await client.get_rounds(manual.task_id))[0]["status"] == "open"

    launcher.restart(stack.settings, "aggregator", kill=True)
    await send(
        stack.kafka,
        topics.UPDATES,
        key=manual.task_id,
        message=manual.update(third, constant_delta(0.003)),
    )

    task = await client.wait_for_task(
        manual.task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=90
    )
    assert task["state"] == "completed"
    (round_row,) = await client.get_rounds(manual.task_id)
    assert sorted(round_row["aggregated"]) == sorted(manual.names)
    new, _, _ = await client.download_model(manual.task_id, version=1)
    old, _, _ = await client.download_model(manual.task_id, version=0)
    for after, before in zip(mlp_arrays(new), mlp_arrays(old), strict=True):
        np.testing.assert_allclose(after - before, 0.002, atol=1e-6)  # mean of the three


async def test_graceful_stop_exits_zero(stack: Stack) -> None:
    _, status = launcher.restart(stack.settings, "aggregator")

    assert status == 0
    log = (stack.settings.log_dir / "aggregator.log").read_text()
    assert "aggregator stopped" in log
