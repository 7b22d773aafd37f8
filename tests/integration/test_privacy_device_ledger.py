"""The privacy service's device ledger on the real broker and PostgreSQL: local-DP asks signed
as the coordinator sends them are charged once per (device, task, round, attempt), ε per task
and lifetime recomputed from the rows, flagged once one more would pass, and kept append-only.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

import psycopg
import pytest

from fedcommon import codec, kafka, local_dp, topics
from fedcommon.messages.v1 import LocalDp, LocalDpAssigned, LocalDpAssignment, PrivacyLevel
from fedprivacy.accountants import Accountant
from fedprivacy.accounting import epsilon_subsampled_gaussian
from fedprivacy.calibration import calibrate_noise_multiplier
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

logging.getLogger("absl").setLevel(logging.ERROR)

ROUNDS = 3
STEPS = 10


@functools.cache
def settings() -> LocalDp:
    """The coordinator's settings for a medium device (calibrated once: it takes seconds)."""
    z = calibrate_noise_multiplier(
        target_epsilon=3.0,
        delta=1e-5,
        sample_rate=0.1,
        steps=ROUNDS * STEPS,
        accountant=Accountant.RDP,
    ).noise_multiplier
    return LocalDp(
        level=PrivacyLevel.MEDIUM,
        noise_multiplier=z,
        sample_rate=0.1,
        steps=STEPS,
        max_grad_norm=1.0,
        epsilon_budget=3.0,
        delta=1e-5,
    )


def assigned(task_id: uuid.UUID, round_number: int, devices: list[str]) -> LocalDpAssigned:
    chosen = settings()
    return LocalDpAssigned(
        producer="coordinator",
        round_id=uuid.uuid4(),
        task_id=task_id,
        round_number=round_number,
        attempt=0,
        planned_rounds=ROUNDS,
        assignments=[LocalDpAssignment(device_id=d, settings=chosen) for d in devices],
    )


async def send_as_coordinator(stack: Stack, *messages: LocalDpAssigned) -> None:
    producer = kafka.make_producer(
        stack.kafka, client_id="pytest-coordinator", signer=stack.signer("coordinator")
    )
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(
                topics.topic_name(stack.kafka.topic_prefix, topics.PRIVACY),
                codec.encode(message),
                key=str(message.task_id).encode(),
            )
    finally:
        await producer.stop()


async def ledger(db: psycopg.AsyncConnection, device_id: str) -> list[tuple[Any, ...]]:
    cursor = await db.execute(
        "SELECT task_id, round_number, epsilon_task_after, epsilon_lifetime_after, "
        "task_exhausted, lifetime_exhausted, noise_multiplier, steps "
        "FROM privacy.device_ledger_public WHERE device_id = %s "
        "ORDER BY recorded_at, round_number",
        (device_id,),
    )
    return await cursor.fetchall()


async def test_devices_are_charged_once_per_ask_per_task_and_over_their_lifetime(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: task A asks dev-a and dev-b in 3 rounds, then dev-a in a 4th (past its plan);
    # round 1's message is delivered twice; task B asks dev-a once.
    device_a, device_b = f"dev-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    task_a, task_b = uuid.uuid4(), uuid.uuid4()
    first = assigned(task_a, 1, [device_a, device_b])
    messages = [
        first,
        assigned(task_a, 2, [device_a, device_b]),
        assigned(task_a, 3, [device_a, device_b]),
        first,
        assigned(task_a, 4, [device_a]),
        assigned(task_b, 1, [device_a]),
    ]

    # Execute: task B's ask goes out once task A's are recorded (tasks are keyed to their own
    # partitions, so across tasks the bus promises no order).
    await send_as_coordinator(stack, *messages[:-1])
    await eventually(lambda: _at_least(ledger(db, device_a), 4), timeout_s=60)
    await send_as_coordinator(stack, messages[-1])
    rows = await eventually(lambda: _at_least(ledger(db, device_a), 5), timeout_s=60)
    rows_b = await ledger(db, device_b)

    # Assert: one row per ask, ε per task grows and recomputes from the settings.
    z = messages[0].assignments[0].settings.noise_multiplier
    assert [(r[0], r[1]) for r in rows] == [(task_a, n) for n in range(1, 5)] + [(task_b, 1)]
    assert [r[1] for r in rows_b] == [1, 2, 3]
    for k, row in enumerate(rows[:4], start=1):
        expected = epsilon_subsampled_gaussian(
            sample_rate=0.1, noise_multiplier=z, steps=k * STEPS, delta=1e-5,
            accountant=Accountant.RDP,
        ).epsilon  # fmt: skip
        assert row[2] == pytest.approx(expected, rel=1e-9)
    # The planned 3 fit in 3; the flag goes up at the 3rd; the 4th is recorded, past it.
    assert rows[2][2] <= 3.0 < rows[3][2]
    assert [r[4] for r in rows[:4]] == [False, False, True, True]
    # Task B starts afresh per task, but the lifetime composes all 5 asks.
    assert rows[4][2] == pytest.approx(rows[0][2])
    assert rows[4][3] > rows[3][3] > rows[3][2] * 0.99
    assert not any(r[5] for r in rows) and local_dp.lifetime_epsilon(PrivacyLevel.MEDIUM) == 30
    cursor = await db.execute(
        "SELECT device_id FROM privacy.device_exhaustion_public "
        "WHERE task_id = %s AND task_exhausted",
        (task_a,),
    )
    assert {r[0] for r in await cursor.fetchall()} == {device_a, device_b}
    # Append-only, whoever asks.
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        await db.execute(
            "UPDATE privacy.device_releases SET epsilon_task_after = 0 WHERE device_id = %s",
            (device_a,),
        )


async def _at_least(rows: Any, count: int) -> Any:
    value = await rows
    return value if len(value) >= count else None
