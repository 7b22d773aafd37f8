"""The supervisor against real processes (no broker or database needed): what a supervisor
killed mid-restart leaves behind, two supervisors for one stack, recycled pids, and a broker
restart whose topics cannot be created."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fedengine import infra, supervisor
from fedengine.processes import (
    Process,
    Stack,
    alive,
    created_at,
    state_file,
    terminate_all,
    write_settings,
)
from fedengine.settings import LauncherSettings

pytestmark = pytest.mark.integration

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _settings(home: Path) -> LauncherSettings:
    settings = LauncherSettings(FEDENGINE_HOME=home, DATABASE_URL="postgresql://x@127.0.0.1/x")
    settings.run_dir.mkdir(parents=True)
    settings.log_dir.mkdir(parents=True)
    return settings


def _stack(processes: list[Process], broker: Process | None = None) -> Stack:
    return Stack(
        bootstrap_servers="127.0.0.1:1",
        database_url="postgresql://x@127.0.0.1/x",
        topic_prefix="t.",
        gateway_url="http://127.0.0.1:1",
        jwt_secret_file="unused",
        broker=broker,
        processes=processes,
    )


def _eventually(check: Callable[[], bool], *, timeout_s: float = 60.0) -> bool:
    """Poll ``check`` until it holds; the bound only matters when it never does (a loaded
    2-core machine took more than 5 s to start a Python process and give way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(SLEEPER)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _start_supervisor(settings: LauncherSettings) -> subprocess.Popen[bytes]:
    write_settings(settings)
    log = open(settings.log_dir / "supervisor.log", "ab")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(
        [sys.executable, "-m", "fedengine.supervisor", str(settings.run_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_new_supervisor_resumes_processes_a_killed_one_left_paused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    # Prepare: a supervisor killed during a broker restart leaves its processes SIGSTOPped.
    settings = _settings(tmp_path)
    sleeper.send_signal(signal.SIGSTOP)
    assert _eventually(lambda: psutil.Process(sleeper.pid).status() == psutil.STATUS_STOPPED)
    _stack([Process(name="paused", pid=sleeper.pid, started_at=time.time())]).save(
        state_file(settings)
    )

    # The sleeper is this test's child: reap it the moment it exits, as init reaps a service
    # whose supervisor died, or stopping the adopter would wait out its grace (15 s) for a
    # zombie.
    threading.Thread(target=sleeper.wait, daemon=True).start()

    # Execute: the next `fedengine up` starts a supervisor, which adopts the process.
    adopter = _start_supervisor(settings)
    try:
        # Assert: it runs again (a paused service would hold its partitions and do nothing).
        assert _eventually(lambda: psutil.Process(sleeper.pid).status() != psutil.STATUS_STOPPED)
    finally:
        _stop(adopter)


def test_terminate_all_stops_a_paused_process_gracefully(tmp_path: Path) -> None:
    # Prepare: a process that exits 0 on SIGTERM, paused.
    graceful = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert graceful.stdout is not None and graceful.stdout.readline() == b"ready\n"
        graceful.send_signal(signal.SIGSTOP)
        process = Process(name="paused", pid=graceful.pid, started_at=time.time())

        # Execute: a grace period far longer than a SIGTERM takes even on a loaded machine.
        started = time.monotonic()
        terminate_all([process], timeout_s=60)

        # Assert: stopped by its SIGTERM handler (exit 0), not SIGKILLed after the grace period.
        assert graceful.wait(10) == 0
        assert time.monotonic() - started < 50
    finally:
        graceful.kill()
        graceful.wait()


def _supervisor_pid(settings: LauncherSettings) -> int | None:
    stack = Stack.load(state_file(settings))
    return None if stack is None or stack.supervisor is None else stack.supervisor.pid


def test_only_one_supervisor_runs_a_stack(tmp_path: Path) -> None:
    # Prepare: two `fedengine up` at once after the supervisor died both start one.
    settings = _settings(tmp_path)
    _stack([]).save(state_file(settings))

    # Execute
    first = _start_supervisor(settings)
    try:
        # (the state file names the supervisor once it holds the lock; before, it says null)
        assert _eventually(lambda: _supervisor_pid(settings) == first.pid)
        second = _start_supervisor(settings)
        try:
            # Assert: the second gives way (two would each restart, and each carry out every
            # request: two simulators for one fleet), the first runs on.
            assert _eventually(lambda: second.poll() is not None)
            assert first.poll() is None
        finally:
            _stop(second)
    finally:
        _stop(first)


def test_a_recycled_pid_running_the_same_module_is_not_ours(
    sleeper: subprocess.Popen[bytes],
) -> None:
    # Prepare: another process running `fedengine_simulator` (another stack's fleet, say) got
    # the pid a fleet that ended long ago had; every fleet runs that module.
    other = subprocess.Popen([*SLEEPER, "fedengine_simulator"])
    try:
        created = created_at(other.pid)
        assert created is not None
        recorded = Process(
            name="simulator-a",
            pid=other.pid,
            module="fedengine_simulator",
            started_at=time.time() - 3600,
            created_at=created - 3600,
        )
        mine = Process(
            name="mine",
            pid=other.pid,
            module="fedengine_simulator",
            started_at=time.time(),
            created_at=created,
        )

        # Execute / Assert: it is not ours, so down neither waits for it nor kills it.
        assert not alive(recorded)
        assert alive(mine)
    finally:
        other.kill()
        other.wait()


def test_a_broker_whose_topics_cannot_be_created_is_not_left_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the broker died; it comes back, but creating the topics fails.
    settings = _settings(tmp_path)
    started: list[subprocess.Popen[bytes]] = []

    def start_broker(**_: object) -> tuple[int, str]:
        process = subprocess.Popen([*SLEEPER, "tansu"])
        started.append(process)
        return process.pid, "127.0.0.1:1"

    async def create_topics(*_: object, **__: object) -> list[str]:
        raise OSError("the broker refused CreateTopics")

    monkeypatch.setattr(infra, "start_broker", start_broker)
    monkeypatch.setattr(supervisor.kafka, "create_topics", create_topics)
    broker = Process(name="broker", pid=2**22 + 1, module="tansu", started_at=time.time())
    supervisor_ = supervisor.Supervisor(settings, _stack([], broker=broker))
    try:
        # Execute
        supervisor_.infrastructure()

        # Assert: the new broker is not left running without the topics (the services would
        # produce into topics it auto-creates with the wrong settings, and no later tick would
        # create them, since the broker is alive); the next tick tries again.
        assert len(started) == 1
        assert not alive(broker)
        supervisor_.infrastructure()
        assert len(started) == 2
    finally:
        for process in started:
            process.kill()
            process.wait()
