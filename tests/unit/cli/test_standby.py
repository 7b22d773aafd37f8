"""The supervisor's lock as its standby, ``fedengine status`` and the gateway's /ready see it,
and what a supervisor that takes over a stack records.

flock locks belong to an open file description, so two descriptors of this one process
conflict as two processes would: no subprocess is needed.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from fedcommon import signing
from fedengine import standby
from fedengine.processes import Process, Stack
from fedengine.supervisor import take_over
from fedengine_gateway import health
from fedengine_gateway.app import create_app
from fedengine_gateway.health import Dependency
from fedengine_gateway.settings import Settings

COORDINATOR_KEY = signing.public_key_bytes(signing.generate_private_key()).hex()


def _stack(*processes: Process, supervisor: Process | None = None) -> Stack:
    return Stack(
        bootstrap_servers="127.0.0.1:1",
        database_url="postgresql://x@127.0.0.1/x",
        topic_prefix="t.",
        gateway_url="http://127.0.0.1:1",
        jwt_secret_file="unused",
        supervisor=supervisor,
        processes=list(processes),
    )


def _gateway_sees_a_supervisor(run_dir: Path) -> bool:
    try:
        asyncio.run(health.supervisor_runs(standby.lock_file(run_dir)))
    except health.NotReady:
        return False
    return True


def test_a_held_lock_is_seen_by_status_and_the_gateway_and_a_released_one_is_not(
    tmp_path: Path,
) -> None:
    # Prepare: no supervisor ever ran here.
    assert not standby.held(tmp_path) and not _gateway_sees_a_supervisor(tmp_path)

    # Execute: a supervisor takes the lock.
    descriptor = standby.take(tmp_path, wait=False)
    assert descriptor is not None
    try:
        # Assert: seen, and the probes did not take it away (a second supervisor gives way).
        assert standby.held(tmp_path) and _gateway_sees_a_supervisor(tmp_path)
        assert standby.take(tmp_path, wait=False) is None
    finally:
        os.close(descriptor)  # what the kernel does when the supervisor dies

    # Assert: gone with its holder.
    assert not standby.held(tmp_path) and not _gateway_sees_a_supervisor(tmp_path)


def test_a_supervisor_giving_way_waits_out_a_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the lock taken shared, as a probe takes it for an instant.
    probe = os.open(standby.lock_file(tmp_path), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_SH)
    attempts: list[float] = []

    def sleep(seconds: float) -> None:  # the probe ends while the supervisor waits
        attempts.append(seconds)
        os.close(probe)

    monkeypatch.setattr(standby.time, "sleep", sleep)

    # Execute
    descriptor = standby.take(tmp_path, wait=False)

    # Assert: it did not give way to the probe.
    assert descriptor is not None and len(attempts) == 1
    os.close(descriptor)


def test_a_new_stacks_supervisor_counts_no_restart() -> None:
    me = Process(name="supervisor", pid=10, module="fedengine.supervisor")
    stack = _stack(Process(name=standby.STANDBY, pid=0, module=standby.MODULE))

    previous = take_over(stack, me)

    assert previous is None and stack.supervisor is me and me.restarts == 0


def test_a_standby_taking_over_counts_the_death_and_leaves_its_entry_to_a_new_standby() -> None:
    # Prepare: the supervisor (restarted once before) died; its standby, pid 20, took the lock.
    dead = Process(name="supervisor", pid=10, module="fedengine.supervisor", restarts=1)
    entry = Process(name=standby.STANDBY, pid=20, module=standby.MODULE, created_at=5.0)
    coordinator = Process(name="coordinator", pid=30, module="fedengine_coordinator")
    stack = _stack(coordinator, entry, supervisor=dead)
    me = Process(name="supervisor", pid=20, module=standby.MODULE)

    # Execute
    previous = take_over(stack, me)

    # Assert: counted, and the entry no longer names this process (the loop starts another).
    assert previous is dead and stack.supervisor is me and me.restarts == 2
    assert (entry.pid, entry.created_at, entry.restarts) == (0, None, 1)
    assert coordinator.pid == 30


def test_a_stack_recorded_before_standbys_gets_one() -> None:
    dead = Process(name="supervisor", pid=10, module="fedengine.supervisor")
    stack = _stack(Process(name="gateway", pid=30, module="fedengine_gateway"), supervisor=dead)

    take_over(stack, Process(name="supervisor", pid=40, module="fedengine.supervisor"))

    added = stack.process(standby.STANDBY)
    assert added is not None and (added.pid, added.module) == (0, standby.MODULE)


async def _up() -> None:
    return None


async def test_the_gateways_ready_is_503_naming_the_supervisor_while_none_holds_the_lock(
    tmp_path: Path,
) -> None:
    # Prepare: a gateway `fedengine up` started (its supervisor's lock named), over checks of
    # the database and the broker that answer.
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr("s" * 40),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": COORDINATOR_KEY}},  # type: ignore[arg-type]
        supervisor_lock=standby.lock_file(tmp_path),
    )
    app = create_app(settings)  # no lifespan: these checks
    app.state.settings = settings
    assert settings.supervisor_lock is not None
    app.state.prober = health.Prober(
        {
            Dependency.DATABASE: _up,
            Dependency.BROKER: _up,
            Dependency.SUPERVISOR: functools.partial(
                health.supervisor_runs, settings.supervisor_lock
            ),
        },
        timeout_s=1.0,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://g/api/federated") as api:
        # Execute: no supervisor, then one.
        gone = await api.get("/ready")
        descriptor = standby.take(tmp_path, wait=False)
        assert descriptor is not None
        try:
            back = await api.get("/ready")
            health_body = (await api.get("/health")).json()
        finally:
            os.close(descriptor)

    # Assert
    assert gone.status_code == 503
    assert (gone.json()["down"], gone.json()["detail"]) == (["supervisor"], "supervisor down")
    assert gone.json()["supervisor"]["error"] == "no supervisor runs the stack"
    assert back.status_code == 200 and back.json()["supervisor"]["state"] == "up"
    assert health_body["supervisor"]["state"] == "up"


def test_a_deployments_gateway_checks_no_supervisor() -> None:
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr("s" * 40),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": COORDINATOR_KEY}},  # type: ignore[arg-type]
    )
    assert settings.supervisor_lock is None
