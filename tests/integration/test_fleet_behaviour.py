"""Simulated devices behave by their profiles: with failures on, rounds complete by their
deadline with the survivors, the failures are counted by kind, and the same seed gives the
same devices, the same fates and the same model."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

from fedengine import fleets, launcher
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

DEVICES = 12


async def _outcomes(db: psycopg.AsyncConnection, task_id: str) -> dict[int, dict[str, str]]:
    cursor = await db.execute(
        "SELECT round_number, device_id, outcome FROM simulator.outcomes WHERE task_id = %s",
        (task_id,),
    )
    rounds: dict[int, dict[str, str]] = {}
    for round_number, device_id, outcome in await cursor.fetchall():
        rounds.setdefault(round_number, {})[device_id] = outcome
    return rounds


async def _run(client: FedEngineClient, fleet: str) -> tuple[str, list[dict[str, Any]]]:
    task_id = await client.create_federated_task(
        task_name="failing fleet",
        participating_devices=[f"{fleet}-{i:04d}" for i in range(DEVICES)],
        devices_per_round=6,
        min_devices=2,
        rounds=3,
        round_timeout_s=5,
        local_epochs=1,
        seed=7,
    )
    await client.start_federated_training(task_id)
    task = await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=120
    )
    assert task["state"] == "completed", task
    return task_id, await client.get_rounds(task_id)


async def test_failing_devices_leave_rounds_to_the_survivors_the_same_way_each_time(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    # Prepare: a fleet of phones and desktops of which 30% of the selected fail each round.
    fleet = launcher.Fleet(
        name=f"b{uuid.uuid4().hex[:6]}",
        devices=DEVICES,
        seed=2,
        profiles="mobile:0.5,desktop:0.5",
        failure_rate=0.3,
    )
    await asyncio.to_thread(fleets.start, stack.settings, fleet)
    await client.wait_for_devices(DEVICES, prefix=f"{fleet.name}-")

    # Execute: the same task twice, one after the other.
    first_id, first = await _run(client, fleet.name)
    second_id, second = await _run(client, fleet.name)

    # Assert: every round completed with the devices that did not fail, which are those the
    # simulator recorded as completed; the failures are counted by kind.
    outcomes = await _outcomes(db, first_id)
    assert [r["status"] for r in first] == ["completed"] * 3
    kinds: dict[str, int] = {}
    for round_ in first:
        fates = outcomes[round_["round_number"]]
        assert sorted(fates) == sorted(round_["participants"])
        completed = [device for device, fate in fates.items() if fate == "completed"]
        assert sorted(round_["aggregated"]) == sorted(completed), (round_, fates)
        for fate in fates.values():
            kinds[fate] = kinds.get(fate, 0) + 1
    assert kinds.get("crash", 0) + kinds.get("network_loss", 0) > 0, kinds
    assert set(kinds) <= {"completed", "crash", "network_loss"}, kinds
    # The same seed: the same devices each round, the same fates, the same model.
    assert [r["participants"] for r in second] == [r["participants"] for r in first]
    assert await _outcomes(db, second_id) == outcomes
    assert second[-1]["accuracy"] == first[-1]["accuracy"]


async def test_two_simulator_processes_share_one_fleet(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    # Prepare: one fleet played by two processes (each enrols and heartbeats half of it).
    fleet = launcher.Fleet(name=f"p{uuid.uuid4().hex[:6]}", devices=8, seed=3, processes=2)
    await asyncio.to_thread(fleets.start, stack.settings, fleet)
    try:
        await client.wait_for_devices(8, prefix=f"{fleet.name}-")
        running = launcher.running_stack(stack.settings)
        assert running is not None
        processes = [running.process(name) for name in fleet.process_names]
        assert all(p is not None for p in processes) and len(processes) == 2

        # Execute: a task on all eight devices.
        task_id = await client.create_federated_task(
            task_name="two processes",
            participating_devices=[f"{fleet.name}-{i:04d}" for i in range(8)],
            devices_per_round=8,
            min_devices=8,
            rounds=2,
            round_timeout_s=20,
            local_epochs=1,
        )
        await client.start_federated_training(task_id)
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=90
        )

        # Assert: every device answered every round, each once, and both processes trained.
        assert task["state"] == "completed", task
        for round_ in await client.get_rounds(task_id):
            assert sorted(round_["aggregated"]) == [f"{fleet.name}-{i:04d}" for i in range(8)]
        cursor = await db.execute(
            "SELECT shard, count(*) FROM simulator.outcomes WHERE task_id = %s "
            "AND outcome = 'completed' GROUP BY shard",
            (task_id,),
        )
        by_shard = dict(await cursor.fetchall())
        assert set(by_shard) == {"0/2", "1/2"} and sum(by_shard.values()) == 16, by_shard
    finally:
        await asyncio.to_thread(fleets.stop, stack.settings, fleet.name)


async def test_an_over_selected_round_closes_once_enough_updates_are_in(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    # Prepare: 40% of the asked devices crash or lose the network (they never answer).
    fleet = launcher.Fleet(name=f"o{uuid.uuid4().hex[:6]}", devices=10, seed=5, failure_rate=0.4)
    await asyncio.to_thread(fleets.start, stack.settings, fleet)
    try:
        await client.wait_for_devices(10, prefix=f"{fleet.name}-")

        # Execute: 3 updates a round are enough; 6 devices are asked.
        task_id = await client.create_federated_task(
            task_name="over-selected",
            participating_devices=[f"{fleet.name}-{i:04d}" for i in range(10)],
            devices_per_round=3,
            over_selection=2.0,
            min_devices=2,
            rounds=3,
            round_timeout_s=30,
            local_epochs=1,
            seed=11,
        )
        await client.start_federated_training(task_id)
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=120
        )

        # Assert: a round with at least 3 survivors closed with 3 of them, long before its
        # deadline (the silent ones were not waited for).
        assert task["state"] == "completed", task
        outcomes = await _outcomes(db, task_id)
        closed_early = 0
        for round_ in await client.get_rounds(task_id):
            fates = outcomes[round_["round_number"]]
            assert len(round_["participants"]) == 6
            completed = {d for d, fate in fates.items() if fate == "completed"}
            assert set(round_["aggregated"]) <= completed
            if len(completed) >= 3:
                assert len(round_["aggregated"]) == 3, round_
                assert round_["duration_s"] < 15, round_
                closed_early += 1
        assert closed_early >= 1
    finally:
        await asyncio.to_thread(fleets.stop, stack.settings, fleet.name)
