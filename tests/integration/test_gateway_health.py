"""/health and /ready while the broker or PostgreSQL is down (stopped, frozen or killed), and
commands answering 503 quickly instead of hanging.

Stopping servers needs servers of its own: this module runs its own stack (its own embedded
PostgreSQL and broker, topic prefix and FEDENGINE_HOME; no fleet). The broker is killed in the
last test; what the services do after that is the supervision work, so only the gateway is
checked there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from fedcommon import auth, kafka
from fedcommon.settings import KafkaSettings
from fedengine import infra, launcher
from fedengine.settings import LauncherSettings
from tests.integration.helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

API = "/api/federated"
# What the issue asks of /ready while a server is down.
READY_WITHIN_S = 2.0
# GATEWAY_COMMAND_TIMEOUT_S's default: no command may wait longer for the broker.
COMMAND_BOUND_S = 5.0
# A read meets the pool's wait (DATABASE_POOL_TIMEOUT_S, 5 s), as before.
READ_BOUND_S = 5.0 + 1.0


@dataclass
class HealthStack:
    settings: LauncherSettings
    stack: launcher.Stack
    pgdata: Path
    secret: str
    started_brokers: list[int] = field(default_factory=list)

    def token(self) -> str:
        return auth.issue_token(secret=self.secret, subject="pytest", role=auth.Role.OPERATOR)

    @property
    def broker_pid(self) -> int:
        assert self.stack.broker is not None
        return self.stack.broker.pid


@pytest.fixture(scope="module")
def health_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthStack]:
    home = tmp_path_factory.mktemp("health-home")
    pgdata = home / "pgdata"
    _, database_url = infra.start_postgres(pgdata)
    settings = LauncherSettings(
        FEDENGINE_HOME=home,
        DATABASE_URL=database_url,
        KAFKA_TOPIC_PREFIX=f"h{uuid.uuid4().hex[:8]}.",
        FEDENGINE_GATEWAY_PORT=infra.free_port(),
    )
    started: list[int] = []
    try:
        running = launcher.up(settings, log=lambda *_: None)
        secret, _ = launcher.jwt_secret(settings)
        yield HealthStack(settings, running, pgdata, secret, started)
    finally:
        launcher.down(settings)
        for pid in started:  # brokers a test started in place of a killed one
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                os.kill(pid, signal.SIGKILL)
                psutil.Process(pid).wait(10)
        infra.stop_postgres(pgdata)


@pytest.fixture
async def api(health_stack: HealthStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"{health_stack.stack.gateway_url}{API}",
        headers={"Authorization": f"Bearer {health_stack.token()}"},
        timeout=60,
    ) as client:
        yield client


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = await request
    return response, time.monotonic() - began


async def ready_again(api: httpx.AsyncClient) -> httpx.Response:
    async def ready() -> httpx.Response | None:
        response = await api.get("/ready")
        return response if response.status_code == 200 else None

    return await eventually(ready, timeout_s=60, interval_s=0.2)


async def task_total(api: httpx.AsyncClient) -> int:
    return int((await api.get("/tasks", params={"limit": 1})).json()["total"])


async def test_everything_up_is_ready(api: httpx.AsyncClient) -> None:
    ready, took = await timed(api.get("/ready"))
    health = (await api.get("/health")).json()

    assert ready.status_code == 200, ready.text
    assert ready.json()["down"] == [] and took < READY_WITHIN_S
    assert (health["database"]["state"], health["broker"]["state"]) == ("up", "up")


async def test_the_broker_frozen_makes_ready_503_and_commands_503_without_sending(
    health_stack: HealthStack, api: httpx.AsyncClient
) -> None:
    before = await task_total(api)
    os.kill(health_stack.broker_pid, signal.SIGSTOP)
    try:
        ready, ready_took = await timed(api.get("/ready"))
        health, health_took = await timed(api.get("/health"))
        refused, refused_took = await timed(api.post("/tasks", json={"task_name": "frozen"}))
    finally:
        os.kill(health_stack.broker_pid, signal.SIGCONT)
    print(f"frozen broker: /ready {ready_took:.3f} s, command {refused_took:.3f} s")

    assert ready.status_code == 503 and ready_took < READY_WITHIN_S, (ready.text, ready_took)
    assert ready.json()["down"] == ["broker"]
    assert ready.json()["broker"]["error"] == "no answer within 1 s"
    assert health.status_code == 200 and health_took < READY_WITHIN_S
    assert (health.json()["broker"]["state"], health.json()["database"]["state"]) == ("down", "up")
    assert refused.status_code == 503 and refused_took < COMMAND_BOUND_S, refused_took
    assert refused.json()["detail"] == "message broker unavailable: the command was not sent"

    await ready_again(api)
    # The refused command was never buffered: once a later one is projected, it is alone.
    later = await api.post("/tasks", json={"task_name": "after the freeze"})
    assert later.status_code == 202

    async def projected() -> bool:
        return (await api.get(f"/tasks/{later.json()['id']}")).status_code == 200

    await eventually(projected, timeout_s=60)  # the coordinator rejoins its group first
    await asyncio.sleep(2.0)
    assert await task_total(api) == before + 1


async def test_postgres_stopped_makes_ready_503_and_reads_503_as_before(
    health_stack: HealthStack, api: httpx.AsyncClient
) -> None:
    await asyncio.to_thread(infra.stop_postgres, health_stack.pgdata)
    try:
        readies = [await timed(api.get("/ready")) for _ in range(3)]  # first, then pool empty
        health = await api.get("/health")
        read, read_took = await timed(api.get("/tasks"))
    finally:
        await asyncio.to_thread(infra.start_postgres, health_stack.pgdata)
    print("postgres stopped: /ready " + ", ".join(f"{took:.3f} s" for _, took in readies))

    for ready, took in readies:
        assert ready.status_code == 503 and took < READY_WITHIN_S, (ready.text, took)
        assert ready.json()["down"] == ["database"]
    assert health.status_code == 200
    assert (health.json()["database"]["state"], health.json()["broker"]["state"]) == ("down", "up")
    assert read.status_code == 503 and read_took < READ_BOUND_S, (read.text, read_took)
    assert (await ready_again(api)).json()["database"]["state"] == "up"


async def test_postgres_frozen_makes_ready_503_within_the_bound_every_time(
    health_stack: HealthStack, api: httpx.AsyncClient
) -> None:
    # SIGSTOP to the postmaster and every backend: pooled connections get no answer, and
    # psycopg, cancelled mid-query, tries for up to 10 s to cancel it in the server.
    postmaster = int((health_stack.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    # The postmaster first: once it is stopped it forks no new backend, so the list is whole.
    psutil.Process(postmaster).suspend()
    frozen = [psutil.Process(postmaster), *psutil.Process(postmaster).children()]
    for process in frozen[1:]:
        process.suspend()
    try:
        readies = [await timed(api.get("/ready")) for _ in range(4)]
        health, health_took = await timed(api.get("/health"))
    finally:
        for process in frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()
    print("postgres frozen: /ready " + ", ".join(f"{took:.3f} s" for _, took in readies))

    for ready, took in readies:
        assert ready.status_code == 503 and took < READY_WITHIN_S, (ready.text, took)
        assert ready.json()["down"] == ["database"]
    assert health.status_code == 200 and health_took < READY_WITHIN_S
    assert (await ready_again(api)).json()["database"]["state"] == "up"


async def test_the_broker_killed_makes_ready_503_until_a_broker_with_the_topics_is_back(
    health_stack: HealthStack, api: httpx.AsyncClient
) -> None:
    # The supervisor would restart the broker (pausing and then restarting every process,
    # the gateway too); held still, it leaves the gateway alone with a dead broker, and this
    # test starts the broker again itself. It is let go at the end and must recover the stack.
    supervisor = health_stack.stack.supervisor
    assert supervisor is not None
    os.kill(supervisor.pid, signal.SIGSTOP)
    try:
        await _broker_killed_and_back(health_stack, api)
    finally:
        for pid in health_stack.started_brokers:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                os.kill(pid, signal.SIGKILL)
                await asyncio.to_thread(psutil.Process(pid).wait, 10)
        os.kill(supervisor.pid, signal.SIGCONT)

    # Assert: the supervisor, let go, restarts its broker (the test's is gone) and the stack.
    await _ready_through_restarts(api)


async def _ready_through_restarts(api: httpx.AsyncClient) -> None:
    """Wait for /ready 200 while the gateway itself may be restarting (refused connections)."""

    async def ready() -> bool:
        try:
            return (await api.get("/ready")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, timeout_s=120, interval_s=0.5)


async def _broker_killed_and_back(health_stack: HealthStack, api: httpx.AsyncClient) -> None:
    bootstrap = health_stack.stack.bootstrap_servers
    os.kill(health_stack.broker_pid, signal.SIGKILL)
    await asyncio.to_thread(psutil.Process(health_stack.broker_pid).wait, 10)

    ready, ready_took = await timed(api.get("/ready"))
    health = await api.get("/health")
    refused, refused_took = await timed(api.post("/tasks", json={"task_name": "killed"}))
    print(f"killed broker: /ready {ready_took:.3f} s, command {refused_took:.3f} s")

    assert ready.status_code == 503 and ready_took < READY_WITHIN_S, (ready.text, ready_took)
    assert ready.json()["down"] == ["broker"]
    assert health.status_code == 200 and health.json()["broker"]["state"] == "down"
    assert refused.status_code == 503 and refused_took < COMMAND_BOUND_S, refused_took

    # A new in-memory broker on the same address has no topics yet: still not ready.
    pid, _ = await asyncio.to_thread(
        infra.start_broker,
        log_path=health_stack.settings.log_dir / "broker-again.log",
        port=int(bootstrap.rsplit(":", 1)[1]),
    )
    health_stack.started_brokers.append(pid)

    async def broker_answers_without_topics() -> str | None:
        error = (await api.get("/ready")).json()["broker"]["error"]
        return error if error == "a command topic is missing" else None

    await eventually(broker_answers_without_topics, timeout_s=30, interval_s=0.2)
    await kafka.create_topics(
        KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=health_stack.settings.topic_prefix)
    )
    await ready_again(api)
    accepted = await api.post("/tasks", json={"task_name": "after the restart"})
    assert accepted.status_code == 202, accepted.text
