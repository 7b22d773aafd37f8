"""The stack keeps itself alive: the supervisor restarts each service SIGKILLed mid-task, the
embedded broker and PostgreSQL when they die, and the task completes with no round lost or
counted twice; ``down`` and ``up`` work after PostgreSQL crashed; one home whatever the working
directory.

The module kills servers, so it runs its own stack, started the way a newcomer starts one: with
no FEDENGINE_HOME set (the default home under $HOME, pointed at a temporary folder here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedengine import infra, launcher
from fedengine.sdk import FedEngineClient, FedEngineError
from fedengine.settings import LauncherSettings
from tests.integration.conftest import Stack, start_stack
from tests.integration.helpers import eventually, run_fleet_task

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def home_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fake_home = tmp_path_factory.mktemp("user-home")
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(fake_home)
    settings = LauncherSettings(
        KAFKA_TOPIC_PREFIX=f"s{uuid.uuid4().hex[:8]}.",
        FEDENGINE_GATEWAY_PORT=infra.free_port(),
        service_env={"REGISTRY_OFFLINE_AFTER_S": "15", "COORDINATOR_LOST_ROUND_GRACE_S": "3"},
    )
    assert settings.home == fake_home / ".fedengine"
    try:
        pgdata = settings.home / "pgdata"
        _, database_url = infra.start_postgres(pgdata)
        fleet = launcher.Fleet(name=f"s{uuid.uuid4().hex[:6]}", devices=8, seed=5)
        yield start_stack(settings, database_url, fleet)
    finally:
        launcher.down(settings)
        infra.stop_postgres(settings.home / "pgdata")
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved


def _state(stack: Stack) -> launcher.Stack:
    state = launcher.Stack.load(stack.settings.run_dir / "stack.json")
    assert state is not None
    return state


async def _restarted(stack: Stack, name: str, old_pid: int) -> launcher.Process:
    async def running_again() -> launcher.Process | None:
        process = _state(stack).process(name)
        if process is None or process.pid == old_pid or process.state != "running":
            return None
        ready = stack.settings.run_dir / f"{name}.ready"
        if name == launcher.GATEWAY:
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    response = await http.get(f"{stack.stack.gateway_url}/api/federated/ready")
                return process if response.status_code == 200 else None
            except httpx.HTTPError:
                return None
        return process if ready.exists() else None

    return await eventually(running_again, timeout_s=60)


async def _answers(client: FedEngineClient) -> bool:
    """Whether the gateway reads from the database again (its pool drops dead connections)."""
    try:
        await client.get_status()
    except FedEngineError as exc:
        assert exc.status_code == 503, exc
        return False
    return True


def _completed_once(rounds: list[dict[str, Any]], count: int) -> None:
    completed = sorted(r["round_number"] for r in rounds if r["status"] == "completed")
    assert completed == list(range(1, count + 1)), rounds


async def test_each_service_sigkilled_mid_task_is_restarted_and_the_task_completes(
    home_stack: Stack,
) -> None:
    stack = home_stack
    async with stack.client() as client:
        task_id = await run_fleet_task(client, stack.fleet, wait=False, rounds=10)
        for index, name in enumerate((*launcher.SERVICES, launcher.GATEWAY)):
            await client.wait_for_task(
                task_id, lambda t, i=index: t["current_round"] >= i + 1, timeout_s=90
            )
            before = _state(stack).process(name)
            assert before is not None
            os.kill(before.pid, signal.SIGKILL)
            after = await _restarted(stack, name, before.pid)
            assert after.restarts == before.restarts + 1 and after.last_exit == -signal.SIGKILL
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=180
        )
        rounds = await client.get_rounds(task_id)
    assert (task["state"], task["stop_reason"]) == ("completed", "max_rounds"), task
    _completed_once(rounds, 10)
    log = (stack.settings.log_dir / "supervisor.log").read_text()
    assert "coordinator exited (code -9)" in log


async def test_the_broker_killed_mid_task_comes_back_and_the_task_completes(
    home_stack: Stack,
) -> None:
    stack = home_stack
    async with stack.client() as client:
        task_id = await run_fleet_task(
            client, stack.fleet, wait=False, rounds=5, round_timeout_s=10
        )
        await client.wait_for_task(task_id, lambda t: t["current_round"] >= 2, timeout_s=60)
        broker = _state(stack).broker
        assert broker is not None
        os.kill(broker.pid, signal.SIGKILL)

        async def broker_back() -> bool:
            state = _state(stack).broker
            return state is not None and state.pid != broker.pid and state.restarts >= 1

        await eventually(broker_back, timeout_s=30)
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=180
        )
        rounds = await client.get_rounds(task_id)
    # The memory broker lost the round in flight; the coordinator re-issued it.
    assert (task["state"], task["stop_reason"]) == ("completed", "max_rounds"), (task, rounds)
    _completed_once(rounds, 5)


async def test_postgres_killed_is_restarted_and_down_and_up_work_after_a_crash(
    home_stack: Stack,
) -> None:
    stack = home_stack
    pgdata = stack.settings.home / "pgdata"
    first = infra.postgres_pid(pgdata)
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def postgres_back() -> int | None:
        pid = infra.postgres_pid(pgdata)
        return pid if pid not in (None, first) and _state(stack).postgres_restarts >= 1 else None

    await eventually(postgres_back, timeout_s=60)
    async with stack.client() as client:  # the services waited the outage out
        await eventually(lambda: _answers(client), timeout_s=30)
        await run_fleet_task(client, stack.fleet, rounds=2)

    # Crashed again, and nobody restarts it before `down` (the supervisor stops first): down and
    # up still work over its stale pid file.
    second = infra.postgres_pid(pgdata)
    assert second is not None
    os.kill(second, signal.SIGKILL)
    await asyncio.to_thread(launcher.down, stack.settings)
    assert not (pgdata / "postmaster.pid").exists()
    _, url = await asyncio.to_thread(infra.start_postgres, pgdata)
    assert url == stack.database_url
    running = await asyncio.to_thread(
        launcher.up, stack.settings, log=lambda *_: None, fleets=[launcher.Fleet(stack.fleet, 8)]
    )
    stack.stack = running
    async with stack.client() as client:
        await run_fleet_task(client, stack.fleet, rounds=1)


async def test_a_token_made_from_another_working_directory_is_accepted(
    home_stack: Stack, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "FEDENGINE_HOME"}
    fedengine = str(Path(sys.executable).parent / "fedengine")

    def run(*args: str) -> str:
        done = subprocess.run(
            [fedengine, *args], cwd=elsewhere, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout

    token = (await asyncio.to_thread(run, "token", "--role", "viewer")).strip()
    async with httpx.AsyncClient(base_url=home_stack.stack.gateway_url) as http:
        response = await http.get(
            "/api/federated/tasks", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    assert str(home_stack.settings.home) in await asyncio.to_thread(run, "status")
