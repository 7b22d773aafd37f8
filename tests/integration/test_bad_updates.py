"""NaN, too-large, wrong-shape, foreign-signature and replayed updates are rejected and counted
while the round completes with the valid ones. The test plays three devices with keys it holds."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

from fedcommon import topics
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.kafka_tools import send
from tests.integration.manual_devices import constant_delta, mlp_arrays, open_manual_round

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_bad_updates_are_rejected_and_counted_while_the_round_completes(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    """Four devices: a sends a good update (then the same message again, and a second one),
    b and c their own bad ones (NaN; too large, then the wrong shape), d's name is forged and
    then d sends a good one. A device whose own signed update is refused has answered: the
    round closes as soon as d's good update is in, not at its 30 s deadline, with a and d."""
    manual = await open_manual_round(stack, client, label="bad-updates", count=4, min_devices=1)
    task_id, names = manual.task_id, manual.names
    a, b, c, d = names
    good = constant_delta(0.001)
    nan = [g.copy() for g in good]
    nan[0][0, 0] = np.nan
    wrong_shape = [np.zeros((3, 3), dtype=np.float32), *good[1:]]

    valid_a = manual.update(a, good)
    for update in (
        valid_a,
        valid_a,  # the very same message again: a redelivery, absorbed without a verdict
        manual.update(a, good),  # a second, new message from the same device: a duplicate
        manual.update(b, nan),
        manual.update(c, [np.zeros((300, 300), dtype=np.float32), *good[1:]]),
        manual.update(c, wrong_shape),
        manual.update(d, good, signer=manual.keys[a]),  # a forgery: does not answer for d
        manual.update(d, good),
    ):
        await send(stack.kafka, topics.UPDATES, key=task_id, message=update)

    task = await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=60
    )
    assert task["state"] == "completed"
    (round_row,) = await client.get_rounds(task_id)
    assert round_row["status"] == "completed"
    assert sorted(round_row["aggregated"]) == sorted([a, d])
    assert sorted(round_row["dropped"]) == sorted([b, c])
    assert round_row["duration_s"] < 30  # closed when everyone had answered, not at its deadline
    assert round_row["rejected"] == {
        "non_finite": 1,
        "wrong_shape": 1,
        "bad_signature": 1,
        "duplicate": 1,
        "too_large": 1,
    }
    cursor = await db.execute(
        "SELECT reason, count(*) FROM aggregator.device_results WHERE task_id = %s "
        "AND status = 'rejected' GROUP BY reason ORDER BY reason",
        (uuid.UUID(task_id),),
    )
    assert await cursor.fetchall() == [
        ("bad_signature", 1),
        ("duplicate", 1),
        ("non_finite", 1),
        ("too_large", 1),
        ("wrong_shape", 1),
    ]
    status = await client.get_status()
    assert status["updates"]["non_finite"] >= 1
    # The applied delta is the mean of the two identical valid updates.
    new, _, _ = await client.download_model(task_id, version=1)
    old, _, _ = await client.download_model(task_id, version=0)
    for after, before in zip(mlp_arrays(new), mlp_arrays(old), strict=True):
        np.testing.assert_allclose(after - before, 0.001, atol=1e-6)
