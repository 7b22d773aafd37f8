"""Killing the privacy service, and the aggregator, mid-task loses no spend and adds no
release: the DP task runs the same number of rounds with the same ledger of epsilons as an
uninterrupted run would, and every round's result goes out as one set of bytes.

One task takes both kills, one after the other: a spend lost or charged twice by either would
show in its ledger (the ledger of an uninterrupted run is a pure function of q and z)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import psycopg
import pytest

from fedcommon import topics
from fedcommon.messages.v1 import RoundAggregated
from fedengine import launcher
from fedengine.sdk import FedEngineClient
from fedprivacy.accountants import Accountant
from fedprivacy.accounting import GaussianRelease, epsilon_for_releases
from tests.integration.conftest import Stack
from tests.integration.helpers import run_fleet_task
from tests.integration.kafka_tools import all_records, decoded

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# 4 of the fleet's 8 devices a round: each joins with q = 0.5. At z = 3 an epsilon of 2
# (delta 1e-5, RDP) holds 5 releases: the sixth would pass it.
Q, Z, EPSILON, DELTA, RELEASES = 0.5, 3.0, 2.0, 1e-5, 5


def uninterrupted_ledger() -> list[float]:
    """The epsilons after each release of an uninterrupted run: a pure function of (q, z)."""
    return [
        epsilon_for_releases(
            [GaussianRelease(Q, Z, n)], delta=DELTA, accountant=Accountant.RDP
        ).epsilon
        for n in range(1, RELEASES + 1)
    ]


async def test_killed_privacy_service_and_aggregator_lose_no_spend_and_add_no_release(
    stack: Stack,
    client: FedEngineClient,
    fleet: str,
    db: psycopg.AsyncConnection,
) -> None:
    # Arrange: a DP task that the budget stops after RELEASES rounds.
    task_id = await run_fleet_task(
        client,
        fleet,
        task_name="dp crash",
        rounds=50,
        round_timeout_s=60,
        min_devices=1,
        wait=False,
        privacy={"epsilon": EPSILON, "delta": DELTA, "clip_norm": 1.0, "noise_multiplier": Z},
    )
    await client.wait_for_task(task_id, lambda t: t["current_round"] >= 1, timeout_s=90)

    # Execute: SIGKILL each mid-task; the supervisor starts it again.
    for service in ("privacy", "aggregator"):
        before = await client.get_task(task_id)
        assert before["state"] == "running", (service, before)
        await asyncio.to_thread(launcher.restart, stack.settings, service, kill=True)
    task = await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=240
    )

    # Assert: stopped by the budget after exactly the releases an uninterrupted run makes...
    assert (task["state"], task["stop_reason"]) == ("completed", "privacy_budget_exhausted")
    budget = await client.get_privacy_budget(task_id)
    ledger = budget["release_log"]
    assert [r["sample_rate"] for r in ledger] == [Q] * RELEASES
    assert [r["epsilon_after"] for r in ledger] == pytest.approx(uninterrupted_ledger(), rel=1e-9)
    assert len({(r["round_number"], r["attempt"]) for r in ledger}) == RELEASES
    # ...every try it paid for completed (none lost to the kill, none charged twice)...
    rounds = await client.get_rounds(task_id)
    completed = [r for r in rounds if r["status"] == "completed"]
    assert [r["round_number"] for r in completed] == list(range(1, RELEASES + 1)), rounds
    assert [r["epsilon_spent"] for r in completed] == pytest.approx(uninterrupted_ledger())
    decisions = [a["decision"] for a in budget["audit"]]
    assert decisions.count("approved") == RELEASES and decisions.count("refused") == 1
    # ...and each round's noised result went out as one set of bytes, however often sent.
    round_ids = await _round_ids(db, task_id)
    deltas: dict[uuid.UUID, set[bytes]] = defaultdict(set)
    for record in await all_records(stack.kafka, topics.ROUNDS):
        message = decoded(record)
        if isinstance(message, RoundAggregated) and message.round_id in round_ids:
            assert message.privacy_approval_id is not None and message.participants == []
            deltas[message.round_id].add(message.delta)
    assert set(deltas) == set(round_ids)
    assert all(len(found) == 1 for found in deltas.values())


async def _round_ids(db: psycopg.AsyncConnection, task_id: str) -> list[uuid.UUID]:
    cursor = await db.execute(
        "SELECT round_id FROM coordinator.rounds WHERE task_id = %s AND status = 'completed'",
        (uuid.UUID(task_id),),
    )
    return [row[0] for row in await cursor.fetchall()]
