"""The stack repairs what a hostile user breaks: a supervisor killed with SIGKILL is replaced by
its standby, which restarts a coordinator killed next, and a running task completes; with the
standby killed too, the gateway's /ready answers 503 naming the supervisor, ``fedengine status``
says so and ``fedengine up`` repairs it; ``fedengine up`` after ``down`` brings back the fleets
that ran, their devices online again under the same ids and keys.

The module kills supervisors and stops its stack, so it runs its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedengine import fleets, infra, launcher, remembered_fleets, standby
from fedengine.settings import LauncherSettings
from tests.integration.conftest import Stack, start_stack
from tests.integration.helpers import eventually, run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def repair_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("repair-home")
    pgdata = home / "pgdata"
    _, database_url = infra.start_postgres(pgdata)
    settings = LauncherSettings(
        FEDENGINE_HOME=home,
        DATABASE_URL=database_url,
        KAFKA_TOPIC_PREFIX=f"r{uuid.uuid4().hex[:8]}.",
        FEDENGINE_GATEWAY_PORT=infra.free_port(),
        service_env={
            "REGISTRY_OFFLINE_AFTER_S": "6",
            "SIMULATOR_HEARTBEAT_S": "1",
            "COORDINATOR_LOST_ROUND_GRACE_S": "3",
        },
    )
    try:
        yield start_stack(
            settings, database_url, launcher.Fleet(name=f"r{uuid.uuid4().hex[:6]}", devices=8)
        )
    finally:
        launcher.down(settings)
        infra.stop_postgres(pgdata)


def _state(stack: Stack) -> launcher.Stack:
    state = launcher.Stack.load(stack.settings.run_dir / "stack.json")
    assert state is not None
    return state


def _process(stack: Stack, name: str) -> launcher.Process:
    process = _state(stack).process(name)
    assert process is not None, name
    return process


async def _ready(stack: Stack) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(f"{stack.stack.gateway_url}/api/federated/ready")


async def _back(stack: Stack, name: str, old_pid: int) -> launcher.Process | None:
    """The process ``name`` running again under a pid other than ``old_pid``, ready."""
    process = _state(stack).process(name)
    if process is None or process.pid == old_pid or not launcher.alive(process):
        return None
    ready = stack.settings.run_dir / f"{name}.ready"
    return process if ready.exists() else None


def _log(stack: Stack, name: str) -> str:
    return (stack.settings.log_dir / f"{name}.log").read_text(errors="replace")


async def _completes(stack: Stack, task_id: str, rounds: int) -> None:
    async with stack.client() as client:
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=240
        )
        history = await client.get_rounds(task_id)
    assert (task["state"], task["stop_reason"]) == ("completed", "max_rounds"), (task, history)
    completed = sorted(r["round_number"] for r in history if r["status"] == "completed")
    assert completed == list(range(1, rounds + 1)), history


async def test_a_killed_supervisor_is_replaced_at_once_and_restarts_a_coordinator_killed_next(
    repair_stack: Stack,
) -> None:
    stack = repair_stack
    async with stack.client() as client:
        task_id = await run_fleet_task(client, stack.fleet, wait=False, rounds=5)
        await client.wait_for_task(task_id, lambda t: t["current_round"] >= 1, timeout_s=90)
    before = _state(stack)
    supervisor, spare = before.supervisor, before.process(standby.STANDBY)
    coordinator = before.process("coordinator")
    assert supervisor is not None and spare is not None and coordinator is not None

    # Execute: the supervisor, then the coordinator, as fast as a hostile user can.
    killed_at, killed_wall = time.monotonic(), time.time()
    os.kill(supervisor.pid, signal.SIGKILL)
    os.kill(coordinator.pid, signal.SIGKILL)

    # Assert: the standby supervises (it holds the lock, its record replaced the dead one)...
    async def taken_over() -> bool:
        record = _state(stack).supervisor
        return (
            record is not None and record.pid == spare.pid and standby.held(stack.settings.run_dir)
        )

    await eventually(taken_over, timeout_s=60, interval_s=0.02)
    takeover_s = time.monotonic() - killed_at
    # ... restarts the coordinator (found dead at the takeover, or dying after: either way
    # counted), and a new standby waits.
    restarted = await eventually(
        lambda: _back(stack, "coordinator", coordinator.pid), timeout_s=90, interval_s=0.05
    )
    coordinator_s = time.monotonic() - killed_at
    assert restarted is not None and restarted.restarts == coordinator.restarts + 1
    await eventually(lambda: _back(stack, standby.STANDBY, spare.pid), timeout_s=60)
    # ... and the task completes, every round once.
    await _completes(stack, task_id, 5)

    # Assert: the death was logged and counted, and the stack reads as whole again.
    log = _log(stack, "supervisor")
    assert f"the supervisor (pid {supervisor.pid}) is gone; its standby (pid {spare.pid})" in log
    state = await asyncio.to_thread(launcher.status, stack.settings)
    assert state["supervisor"]["up"] and state["supervisor"]["pid"] == spare.pid
    assert state["supervisor"]["restarts"] == supervisor.restarts + 1
    assert (await _ready(stack)).status_code == 200
    logger.info(
        "takeover %.2f s; coordinator started again %.2f s, ready %.2f s after the kills",
        takeover_s,
        restarted.started_at - killed_wall,
        coordinator_s,
    )


async def test_with_the_standby_killed_too_the_stack_says_so_and_up_repairs_it(
    repair_stack: Stack,
) -> None:
    stack = repair_stack
    async with stack.client() as client:
        task_id = await run_fleet_task(client, stack.fleet, wait=False, rounds=4)
        await client.wait_for_task(task_id, lambda t: t["current_round"] >= 1, timeout_s=90)
    before = _state(stack)
    supervisor, spare = before.supervisor, before.process(standby.STANDBY)
    assert supervisor is not None and spare is not None

    # Execute: both supervisors at once (the standby first, or it would take over).
    os.kill(spare.pid, signal.SIGKILL)
    os.kill(supervisor.pid, signal.SIGKILL)

    # Assert: /ready is 503 naming the supervisor, and only it; status says so.
    async def not_ready() -> httpx.Response | None:
        response = await _ready(stack)
        return response if response.status_code == 503 else None

    gone = await eventually(not_ready, timeout_s=30)
    assert gone is not None
    assert gone.json()["down"] == ["supervisor"] and gone.json()["detail"] == "supervisor down"
    state = await asyncio.to_thread(launcher.status, stack.settings)
    assert not state["supervisor"]["up"] and state["processes"]["gateway"]["health"] == "ready"
    env = {**os.environ, "FEDENGINE_HOME": str(stack.settings.home)}
    shown = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "fedengine"), "status"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "no supervisor runs the stack" in " ".join(shown.stdout.split()), shown.stdout

    # Nothing restarts a coordinator killed now (what the issue saw), until `fedengine up`.
    coordinator = _process(stack, "coordinator")
    os.kill(coordinator.pid, signal.SIGKILL)
    await asyncio.sleep(3)
    assert not launcher.alive(coordinator) and _process(stack, "coordinator").pid == coordinator.pid
    said: list[str] = []
    repaired_at, repaired_wall = time.monotonic(), time.time()
    await asyncio.to_thread(launcher.up, stack.settings, log=said.append)

    # Assert: a new supervisor adopted the stack: the coordinator is back, the death counted.
    assert said == ["the supervisor was gone; starting it again"]
    await eventually(lambda: _back(stack, "coordinator", coordinator.pid), timeout_s=90)
    repair_s = time.monotonic() - repaired_at
    started_s = _process(stack, "coordinator").started_at - repaired_wall
    record = _state(stack).supervisor
    assert record is not None and record.restarts == supervisor.restarts + 1
    await eventually(lambda: _back(stack, standby.STANDBY, spare.pid), timeout_s=60)
    assert (await _ready(stack)).status_code == 200
    assert "supervisor is down: no supervisor runs the stack" in _log(stack, "gateway")
    assert f"coordinator (pid {coordinator.pid}) ended while no supervisor ran" in _log(
        stack, "supervisor"
    )
    await _completes(stack, task_id, 4)
    logger.info("coordinator started %.2f s, ready %.2f s after up began", started_s, repair_s)


def _devices(listed: list[dict[str, Any]], fleet: str) -> dict[str, dict[str, Any]]:
    return {d["device_id"]: d for d in listed if d["fleet"] == fleet}


async def test_up_after_down_brings_back_the_fleets_that_ran(repair_stack: Stack) -> None:
    # Prepare: the stack's fleet (started by `up`) and one started by `fedengine fleet`, with
    # options of its own.
    stack = repair_stack
    other = launcher.Fleet(
        name=f"o{uuid.uuid4().hex[:6]}", devices=3, partitioning="dirichlet", alpha=0.3, seed=4
    )
    await asyncio.to_thread(fleets.start, stack.settings, other)
    async with stack.client() as client:
        before = await client.list_devices()
    first, second = _devices(before, stack.fleet), _devices(before, other.name)
    assert len(first) == 8 and len(second) == 3
    envs = {name: _process(stack, f"simulator-{name}").env for name in (stack.fleet, other.name)}

    # Execute
    await asyncio.to_thread(launcher.down, stack.settings)
    down_at = datetime.now(UTC)
    said: list[str] = []
    began = time.monotonic()
    running = await asyncio.to_thread(launcher.up, stack.settings, log=said.append)
    up_s = time.monotonic() - began
    stack.stack = running

    # Assert: both fleets run again, with the options they had (their tokens are new).
    for name, env in envs.items():
        again = _process(stack, f"simulator-{name}").env
        drop = "SIMULATOR_ENROLMENT_TOKEN"
        assert {k: v for k, v in again.items() if k != drop} == {
            k: v for k, v in env.items() if k != drop
        }
    assert f"fleet {other.name} is back (3 devices)" in said

    # Assert: their devices are online again, under the same ids and keys, heard since.
    async def online_again() -> list[dict[str, Any]] | None:
        async with stack.client() as client:
            listed = await client.list_devices()
        back = {**_devices(listed, stack.fleet), **_devices(listed, other.name)}
        fresh = [
            d
            for d in back.values()
            if d["status"] == "online"
            and d["last_heartbeat_at"] is not None
            and datetime.fromisoformat(d["last_heartbeat_at"]) > down_at
        ]
        return list(back.values()) if len(fresh) == 11 else None

    back = await eventually(online_again, timeout_s=120, interval_s=0.5)
    online_s = time.monotonic() - began
    assert back is not None
    assert {d["device_id"]: d["public_key"] for d in back} == {
        d["device_id"]: d["public_key"] for d in (*first.values(), *second.values())
    }
    async with stack.client() as client:  # and they train
        await run_fleet_task(client, stack.fleet, rounds=1)

    # Execute / Assert: stopped on purpose, a fleet is not brought back.
    await asyncio.to_thread(fleets.stop, stack.settings, other.name)
    names = [o["name"] for o in remembered_fleets.remembered(stack.settings)]
    assert names == [stack.fleet]
    logger.info("up %.2f s, all 11 devices online %.2f s after up began", up_s, online_s)
