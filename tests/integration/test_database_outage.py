"""Outages in the middle of a task: PostgreSQL stopped and started again, the broker frozen.
Nothing valid is dead-lettered and the task completes with no round lost or counted twice.

The outages need servers of their own to stop, so this module runs its own stack: its own
embedded PostgreSQL, its own broker, topic prefix and fleet.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fedcommon import topics
from fedcommon.settings import KafkaSettings
from fedengine import infra, launcher
from fedengine.sdk import FedEngineError
from fedengine.settings import LauncherSettings
from tests.integration.conftest import Stack, start_stack
from tests.integration.helpers import eventually, metric_total, run_fleet_task
from tests.integration.kafka_tools import assign_from_start, headers_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

OUTAGE_S = 8.0  # longer than a round takes here, far shorter than the round timeout


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    home = tmp_path_factory.mktemp("outage-home")
    pgdata = home / "pgdata"
    _, database_url = infra.start_postgres(pgdata)
    settings = LauncherSettings(
        FEDENGINE_HOME=home,
        DATABASE_URL=database_url,
        KAFKA_TOPIC_PREFIX=f"o{uuid.uuid4().hex[:8]}.",
        FEDENGINE_GATEWAY_PORT=infra.free_port(),
        service_env={"REGISTRY_OFFLINE_AFTER_S": "15"},
    )
    try:
        fleet = launcher.Fleet(name=f"o{uuid.uuid4().hex[:6]}", devices=8, seed=3)
        yield start_stack(settings, database_url, fleet), pgdata
    finally:
        launcher.down(settings)
        infra.stop_postgres(pgdata)


async def _everything_in(settings: KafkaSettings, base: str) -> list[object]:
    """Every record of ``base`` so far: a marker is written to each partition, and the topic is
    read until all markers are back (the local broker's end offsets cannot be trusted)."""
    name = topics.topic_name(settings.topic_prefix, base)
    marker = f"end-{uuid.uuid4().hex}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        partitions = await producer.partitions_for(name)
        for partition in partitions:
            await producer.send_and_wait(name, marker, key=b"marker", partition=partition)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    records: list[object] = []
    seen: set[int] = set()
    await consumer.start()
    try:
        await assign_from_start(consumer, name)
        async with asyncio.timeout(60):
            while len(seen) < len(partitions):
                for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                    for record in batch:
                        if record.value == marker:
                            seen.add(tp.partition)
                        elif record.key != b"marker":  # an earlier call's marker
                            records.append(record)
    finally:
        await consumer.stop()
    return records


async def test_postgres_stopped_and_started_mid_task_loses_and_repeats_nothing(
    outage_stack: tuple[Stack, Path],
) -> None:
    stack, pgdata = outage_stack
    async with stack.client() as client:
        task_id = await run_fleet_task(
            client, stack.fleet, wait=False, rounds=6, round_timeout_s=25, max_round_retries=3
        )
        await client.wait_for_task(task_id, lambda t: t["current_round"] >= 2, timeout_s=60)

        await asyncio.to_thread(infra.stop_postgres, pgdata)
        # Reads need the database: a clear 503, not a 500. Commands only need the broker: a
        # task created now gets 202, and is created once the database is back.
        with pytest.raises(FedEngineError) as unavailable:
            await client.get_task(task_id)
        async with httpx.AsyncClient(base_url=stack.stack.gateway_url, timeout=30) as http:
            accepted = await http.post(
                "/api/federated/tasks",
                json={"task_name": "during the outage"},
                headers={"Authorization": f"Bearer {stack.token()}"},
            )
        assert accepted.status_code == 202, accepted.text
        created_during = accepted.json()["id"]
        await asyncio.sleep(OUTAGE_S)  # services keep consuming, producing and timing out
        await asyncio.to_thread(infra.start_postgres, pgdata)

        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed", "cancelled"), timeout_s=180
        )
        rounds = await client.get_rounds(task_id)
        later = await client.wait_for_task(created_during, lambda t: True, timeout_s=60)

    assert unavailable.value.status_code == 503
    assert later["state"] == "created"

    assert (task["state"], task["stop_reason"]) == ("completed", "max_rounds")
    completed = [r["round_number"] for r in rounds if r["status"] == "completed"]
    assert completed == [1, 2, 3, 4, 5, 6], rounds  # none lost, none applied twice
    assert task["model_version"] == 6
    outages = await metric_total(stack.stack.processes, "fedengine_outages_total")
    assert outages > 0, "the outage was never met: the test proves nothing"
    letters = await _everything_in(stack.kafka, topics.DLQ)
    assert [headers_of(r) for r in letters] == []  # type: ignore[arg-type]


async def test_the_broker_frozen_mid_task_is_waited_out(outage_stack: tuple[Stack, Path]) -> None:
    stack, _ = outage_stack
    broker = stack.stack.broker
    assert broker is not None
    async with stack.client() as client:
        task_id = await run_fleet_task(
            client, stack.fleet, wait=False, rounds=4, round_timeout_s=25, max_round_retries=3
        )
        await client.wait_for_task(task_id, lambda t: t["current_round"] >= 1, timeout_s=60)

        # SIGSTOP: the broker answers nothing (no connection refused, no data lost) for longer
        # than the group session timeout, so members are evicted and rejoin afterwards.
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(OUTAGE_S)
        finally:
            os.kill(broker.pid, signal.SIGCONT)

        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed", "cancelled"), timeout_s=180
        )
        rounds = await client.get_rounds(task_id)

    assert (task["state"], task["stop_reason"]) == ("completed", "max_rounds")
    completed = [r["round_number"] for r in rounds if r["status"] == "completed"]
    assert completed == [1, 2, 3, 4], rounds
    letters = await _everything_in(stack.kafka, topics.DLQ)
    assert [headers_of(r) for r in letters] == []  # type: ignore[arg-type]


async def test_a_service_stopped_while_the_broker_is_frozen_still_exits_cleanly(
    outage_stack: tuple[Stack, Path],
) -> None:
    stack, _ = outage_stack
    broker = stack.stack.broker
    aggregator = next(p for p in stack.stack.processes if p.name == "aggregator")
    assert broker is not None
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        os.kill(aggregator.pid, signal.SIGTERM)
        while launcher.alive(aggregator) and time.monotonic() - began < 40:
            await asyncio.sleep(0.1)
        took = time.monotonic() - began

        async def exit_recorded() -> int | None:
            # The supervisor reaps it, records how it exited, and starts it again.
            state = launcher.Stack.load(stack.settings.run_dir / "stack.json")
            process = None if state is None else state.process("aggregator")
            return None if process is None or process.pid == aggregator.pid else 1

        await eventually(exit_recorded, timeout_s=10)
        state = launcher.Stack.load(stack.settings.run_dir / "stack.json")
        assert state is not None
        restarted = state.process("aggregator")
        assert restarted is not None
        status = restarted.last_exit
    finally:
        os.kill(broker.pid, signal.SIGCONT)

    # The aggregator's final commit cannot reach the broker; every shutdown step is bounded
    # (service.SHUTDOWN_STEP_S), so it exits by itself: no SIGKILL was needed.
    assert status == 0 and took < 30, (status, took)
