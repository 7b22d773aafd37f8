"""The supervisor: keeps what ``fedengine up`` started alive, until ``fedengine down``.

One detached process per stack (``python -m fedengine.supervisor <run dir>``). It starts the
services, then every 0.2 s:

- restarts a service or fleet that exited, after the delay of ``fedengine.supervision``,
  counting and logging each restart;
- restarts the embedded broker when it died, on the same port: every other process is paused
  (SIGSTOP) until the topics exist again, so that nothing produces into a topic the broker
  would auto-create with the wrong settings, then started afresh, since the memory broker lost
  every log and offset and old consumer positions would lie past the new ends; lost rounds
  are re-issued;
- restarts the embedded PostgreSQL when it crashed (the services wait the outage out; a
  deliberate stop, which removes its pid file, is left alone);
- carries out requests that ``fedengine`` writes as files under ``<run>/requests``: restart a
  process, start or stop a fleet.

It is the only writer of ``stack.json`` while it runs. SIGTERM stops every process gracefully,
then the supervisor. Beside it runs a standby (``fedengine.standby``), blocked on the
supervisor's lock: a supervisor killed, even with SIGKILL, is replaced by it at once, and the
new supervisor adopts the processes, counts the death and starts another standby. Should both
be killed, the next ``fedengine up`` starts a supervisor, which adopts them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from fedcommon.settings import KafkaSettings
from fedengine import infra, standby
from fedengine.identity import jwt_secret
from fedengine.processes import (
    Process,
    Stack,
    alive,
    created_at,
    requests_dir,
    service_env,
    settings_file,
    spawn,
    spawn_standby,
    state_file,
    terminate_all,
)
from fedengine.settings import LauncherSettings
from fedengine.supervision import Exit, crashes_in_a_row, restart_delay_s

logger = logging.getLogger("fedengine.supervisor")

TICK_S = 0.2
# A process asked to stop gracefully is killed after this long.
STOP_GRACE_S = 15.0


@dataclass
class Watched:
    """What the supervisor knows of a process beyond the state file."""

    crashes: int = 0
    restart_at: float = 0.0
    stop_deadline: float | None = None
    # Why it is being stopped: "restart" (start again at once) or "remove" (forget it).
    stopping_for: str | None = None


@dataclass
class Supervisor:
    settings: LauncherSettings
    stack: Stack
    watched: dict[str, Watched] = field(default_factory=dict)
    stopping: bool = False
    dirty: bool = True

    @property
    def path(self) -> Path:
        return state_file(self.settings)

    def env(self, process: Process) -> dict[str, str]:
        secret, _ = jwt_secret(self.settings)
        return {**service_env(self.settings, self.stack, secret), **process.env}

    def start(self, process: Process) -> None:
        assert process.module is not None
        if process.name == standby.STANDBY:
            new = spawn_standby(self.settings)
            process.pid, process.started_at, process.state = new.pid, new.started_at, "running"
            process.created_at, process.module = new.created_at, new.module
            self.dirty = True
            return
        new = spawn(
            self.settings,
            process.name,
            process.module,
            self.env(process),
            metrics_port=process.metrics_port,
        )
        process.pid, process.started_at, process.state = new.pid, new.started_at, "running"
        process.created_at = new.created_at
        process.metrics_port = new.metrics_port
        self.dirty = True

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        for process in self.stack.processes:
            self.watched.setdefault(process.name, Watched())
            if not alive(process):  # a new stack, or adopted after a supervisor crash
                if process.pid:  # it ran, and ended while no supervisor watched
                    process.restarts += 1
                    logger.warning(
                        "%s (pid %d) ended while no supervisor ran; starting it again (restart %d)",
                        process.name,
                        process.pid,
                        process.restarts,
                    )
                self.start(process)
            else:
                # A supervisor killed while it restarted the broker left its processes paused
                # (SIGSTOP); continuing one that runs does nothing.
                self.signal(process, signal.SIGCONT)
        while not self.stopping:
            self.requests()
            self.infrastructure()
            self.watch()
            if self.dirty:
                self.stack.save(self.path)
                self.dirty = False
            time.sleep(TICK_S)
        logger.info("stopping every process")
        terminate_all(self.stack.processes, timeout_s=STOP_GRACE_S)
        self.reap()
        self.stack.supervisor = None
        self.stack.save(self.path)

    def reap(self) -> dict[int, int]:
        """Collect the exit codes of children that ended (so none stays a zombie)."""
        codes: dict[int, int] = {}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return codes
            if pid == 0:
                return codes
            codes[pid] = os.waitstatus_to_exitcode(status)

    def reap_one(self, pid: int) -> int | None:
        """The exit code of a child just killed (None: not our child).

        A large process (torch, a model) can take seconds to be torn down on a loaded machine
        before it becomes a zombie; waiting up to 5 s keeps its exit code.
        """
        for _ in range(500):
            try:
                found, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if found:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)  # dying: the kernel has not made it a zombie yet
        return None

    def exited(self, process: Process, codes: dict[int, int]) -> tuple[bool, int | None]:
        """Whether ``process`` ended, and its exit code when known.

        For a child of this supervisor the kernel's answer (waitpid) is the only one trusted:
        reading /proc can fail for a live process, and a live gateway judged dead was
        restarted into its own port. Only adopted processes (children of a supervisor that
        died) are judged by ``alive``.
        """
        if process.pid in codes:
            return True, codes[process.pid]
        try:
            found, status = os.waitpid(process.pid, os.WNOHANG)
        except ChildProcessError:  # adopted: its exit code went to its own, dead parent
            return not alive(process), None
        if found:
            return True, os.waitstatus_to_exitcode(status)
        return False, None

    def watch(self) -> None:
        now = time.monotonic()
        codes = self.reap()
        for process in list(self.stack.processes):
            watched = self.watched.setdefault(process.name, Watched())
            if process.state in ("running", "stopping"):
                ended, code = self.exited(process, codes)
                if not ended:
                    if watched.stop_deadline is not None and now > watched.stop_deadline:
                        self.signal(process, signal.SIGKILL)
                    continue
                self.ended(process, watched, code, now)
            if process.state == "restarting" and now >= watched.restart_at:
                process.restarts += 1
                logger.info("starting %s again (restart %d)", process.name, process.restarts)
                self.start(process)

    def ended(self, process: Process, watched: Watched, code: int | None, now: float) -> None:
        process.last_exit = code
        self.dirty = True
        reason, watched.stopping_for, watched.stop_deadline = watched.stopping_for, None, None
        if reason == "remove":
            logger.info("%s stopped (exit %s)", process.name, code)
            self.stack.processes.remove(process)
            self.watched.pop(process.name, None)
            return
        uptime = time.time() - process.started_at
        watched.crashes = crashes_in_a_row(
            watched.crashes, Exit(uptime_s=uptime, requested=reason == "restart")
        )
        delay = restart_delay_s(watched.crashes)
        process.state = "restarting"
        watched.restart_at = now + delay
        if reason == "restart":
            logger.info("%s stopped on request (exit %s)", process.name, code)
        else:
            logger.warning(
                "%s exited (code %s) after %.1f s; %d crash(es) in a row, restarting in %.1f s",
                process.name,
                code,
                uptime,
                watched.crashes,
                delay,
            )

    def signal(self, process: Process, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, number)

    # --- requests ----------------------------------------------------------------------------
    def requests(self) -> None:
        folder = requests_dir(self.settings.run_dir)
        if not folder.exists():
            return
        for path in sorted(folder.glob("*.json")):
            try:
                request = json.loads(path.read_text())
                self.carry_out(request)
            except Exception:
                logger.exception("request %s could not be carried out", path.name)
            path.unlink(missing_ok=True)

    def carry_out(self, request: dict[str, object]) -> None:
        action, name = request.get("action"), str(request.get("name"))
        process = self.stack.process(name)
        if action == "start":
            if process is not None:
                logger.info("%s runs already", name)
                return
            env = request.get("env")
            process = Process(
                name=name,
                pid=0,
                module=str(request["module"]),
                env=dict(env) if isinstance(env, dict) else {},
            )
            self.stack.processes.append(process)
            self.watched[name] = Watched()
            logger.info("starting %s", name)
            self.start(process)
            return
        if process is None:
            logger.warning("no process %s to %s", name, action)
            return
        watched = self.watched.setdefault(name, Watched())
        watched.stopping_for = "restart" if action == "restart" else "remove"
        if process.state == "restarting":  # not running now: act at once
            self.ended(process, watched, process.last_exit, time.monotonic())
            return
        process.state = "stopping"
        self.dirty = True
        if request.get("kill"):
            self.signal(process, signal.SIGKILL)
        else:
            self.signal(process, signal.SIGTERM)
            watched.stop_deadline = time.monotonic() + STOP_GRACE_S

    # --- the broker and the database ---------------------------------------------------------
    def infrastructure(self) -> None:
        broker = self.stack.broker
        if broker is not None and not alive(broker):
            self.restart_broker(broker)
        data = self.stack.postgres_data
        # Crashed, not stopped: a stop (pg_ctl, an operator) removes the pid file, a crash
        # leaves it behind. A deliberate stop is respected; the services wait it out.
        if (
            data is not None
            and (Path(data) / "postmaster.pid").exists()
            and infra.postgres_pid(Path(data)) is None
        ):
            logger.warning("the embedded PostgreSQL crashed; starting it again")
            try:
                infra.start_postgres(Path(data))
            except Exception:
                logger.exception("PostgreSQL did not start; trying again")
                return
            self.stack.postgres_restarts += 1
            self.dirty = True

    def restart_broker(self, broker: Process) -> None:
        logger.warning("the embedded broker (pid %d) is gone; starting it again", broker.pid)
        paused = [p for p in self.stack.processes if p.state == "running" and alive(p)]
        for process in paused:  # nobody produces before the topics exist again
            self.signal(process, signal.SIGSTOP)
        started = False
        try:
            port = int(self.stack.bootstrap_servers.rsplit(":", 1)[1])
            pid, _ = infra.start_broker(log_path=self.settings.log_dir / "broker.log", port=port)
            broker.pid, broker.started_at, broker.created_at = pid, time.time(), created_at(pid)
            broker.restarts += 1
            started = True
            self.dirty = True
            created = asyncio.run(_kafka().create_topics(self.kafka_settings(), always=True))
            logger.info("broker back on port %d; %d topics created", port, len(created))
            # The memory broker came back empty: every log starts at offset 0 again, while each
            # paused consumer still holds its old positions, past the new ends, where it would
            # wait for records that are written below it. Start every process afresh (their
            # state is in PostgreSQL; what the old broker held is lost either way, and lost
            # rounds are re-issued).
            for process in paused:
                watched = self.watched.setdefault(process.name, Watched())
                watched.stopping_for = "restart"
                process.state = "stopping"
                self.signal(process, signal.SIGKILL)
            logger.info("restarting %d processes onto the new broker", len(paused))
            paused = [p for p in paused if p.state != "stopping"]
        except Exception:
            logger.exception("the broker did not come back with its topics; trying again")
            if started:
                # Left serving without its topics, it would auto-create them with the wrong
                # settings once the services resume, and no later tick would notice (it is
                # alive): stop it, so that the next tick starts it and creates them again.
                self.signal(broker, signal.SIGKILL)
                self.reap_one(broker.pid)
        finally:
            for process in paused:
                self.signal(process, signal.SIGCONT)

    def kafka_settings(self) -> KafkaSettings:
        """The services' Kafka settings: the same environment they get."""
        secret, _ = jwt_secret(self.settings)
        env = service_env(self.settings, self.stack, secret)
        values = {
            k.removeprefix("KAFKA_").lower(): v for k, v in env.items() if k.startswith("KAFKA_")
        }
        return KafkaSettings.model_validate(values)


def _kafka() -> ModuleType:
    """``fedcommon.kafka``, imported when the broker must be restarted: it pulls in aiokafka,
    psycopg and every message model (about 1 s of a start-up the supervisor is on the path of,
    and tens of megabytes it would hold all its life for a rare event)."""
    from fedcommon import kafka

    return kafka


def __getattr__(name: str) -> ModuleType:
    """``supervisor.kafka``, for callers (tests) that reach the module through this one."""
    if name == "kafka":
        return _kafka()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def take_over(stack: Stack, me: Process) -> Process | None:
    """Make ``me`` the supervisor of ``stack``; return the supervisor it replaces, if any.

    A recorded supervisor that another one replaces died without stopping its stack (a stop
    clears the record): the new one counts it in its ``restarts``. When ``me`` is the stack's
    standby, its entry is emptied so that the loop starts a new standby; a stack recorded
    before there were standbys gets an entry.
    """
    previous = stack.supervisor
    me.restarts = 0 if previous is None else previous.restarts + 1
    stack.supervisor = me
    entry = stack.process(standby.STANDBY)
    if entry is None:
        stack.processes.append(Process(name=standby.STANDBY, pid=0, module=standby.MODULE))
    elif entry.pid == me.pid:
        entry.pid, entry.created_at, entry.state = 0, None, "running"
        entry.restarts += 1
    return previous


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )


def serve(run_dir: Path, descriptor: int, *, as_standby: bool) -> None:
    """Supervise the stack under ``run_dir``, holding its lock (``descriptor``) until the end.

    ``as_standby``: this process waited as the standby, and its supervisor is gone.
    """
    configure_logging()
    del descriptor  # held open, and so locked, for as long as this process lives
    if standby.stopping_file(run_dir).exists():
        logger.info("the stack is being stopped; nothing to take over")
        return
    settings = LauncherSettings.model_validate(json.loads(settings_file(run_dir).read_text()))
    stack = Stack.load(state_file(settings))
    if stack is None:
        if as_standby:  # `fedengine down` finished while this one waited
            return
        raise SystemExit(f"no stack under {run_dir}")
    me = Process(
        name="supervisor",
        pid=os.getpid(),
        module=standby.MODULE if as_standby else "fedengine.supervisor",
        started_at=time.time(),
        created_at=created_at(os.getpid()),
    )
    previous = take_over(stack, me)
    if previous is not None:
        logger.warning(
            "the supervisor (pid %d) is gone; %s (pid %d) takes over its processes "
            "(supervisor restart %d)",
            previous.pid,
            "its standby" if as_standby else "a new supervisor",
            me.pid,
            me.restarts,
        )
    Supervisor(settings, stack).run()


def main() -> None:
    run_dir = Path(sys.argv[1])
    configure_logging()
    descriptor = standby.take(run_dir, wait=False)
    if descriptor is None:
        logger.warning("another supervisor runs the stack under %s; leaving it to it", run_dir)
        return
    serve(run_dir, descriptor, as_standby=False)


if __name__ == "__main__":
    main()
