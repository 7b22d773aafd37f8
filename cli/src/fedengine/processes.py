"""The stack's processes and the files under ``<home>/run`` through which they are run.

``stack.json`` is the state: while a supervisor runs it is its only writer
(``fedengine.supervisor``); everything else reads it, and asks the supervisor for changes
through request files (``requests/``). ``launcher.json`` hands the launcher's settings to the
supervisor (and to its standby, should it take over). Both hold secrets (the database URL,
fleets' enrolment tokens, the signing secret), so they are written owner-only (0600).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from fedcommon import trust
from fedengine import infra, standby
from fedengine.identity import public_keys, service_keys
from fedengine.settings import LauncherSettings

REGISTRY = "registry"
SERVICES = (REGISTRY, "coordinator", "aggregator", "privacy")
GATEWAY = "gateway"


@dataclass
class Process:
    name: str
    pid: int
    module: str | None = None
    metrics_port: int | None = None
    # Environment on top of the services' own (a fleet's size, partitioning and token).
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    # The process's creation time as psutil reads it (boot time plus its start in ticks): a
    # recycled pid has another. Compared with itself, never with the wall clock, which can
    # drift or step away from the boot time psutil adds (seen here: 4 s in 6 minutes).
    created_at: float | None = None
    restarts: int = 0
    last_exit: int | None = None
    # running | restarting (waiting out its backoff) | stopping
    state: str = "running"

    @property
    def metrics_url(self) -> str | None:
        return (
            None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"
        )


@dataclass
class Stack:
    bootstrap_servers: str
    database_url: str
    topic_prefix: str
    gateway_url: str
    jwt_secret_file: str
    broker: Process | None = None
    postgres_data: str | None = None
    supervisor: Process | None = None
    processes: list[Process] = field(default_factory=list)
    postgres_restarts: int = 0

    def save(self, path: Path) -> None:
        """Write atomically (readers never see half a file), owner-only."""
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(asdict(self), indent=2))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> Stack | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        for single in ("broker", "supervisor"):
            data[single] = Process(**data[single]) if data.get(single) else None
        data["processes"] = [Process(**p) for p in data.get("processes", [])]
        return cls(**data)

    def process(self, name: str) -> Process | None:
        return next((p for p in self.processes if p.name == name), None)


def settings_file(run_dir: Path) -> Path:
    return run_dir / "launcher.json"


def requests_dir(run_dir: Path) -> Path:
    return run_dir / "requests"


def write_settings(settings: LauncherSettings) -> None:
    """Hand the launcher's settings to the supervisor (secrets included, so owner-only)."""
    document = {
        "FEDENGINE_HOME": str(settings.home.resolve()),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": None
        if settings.database_url is None
        else settings.database_url.get_secret_value(),
        "KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "FEDENGINE_JWT_SECRET": None
        if settings.jwt_secret is None
        else settings.jwt_secret.get_secret_value(),
        "FEDENGINE_GATEWAY_HOST": settings.gateway_host,
        "FEDENGINE_GATEWAY_PORT": settings.gateway_port,
        "FEDENGINE_READY_TIMEOUT_S": settings.ready_timeout_s,
        "service_env": settings.service_env,
    }
    path = settings_file(settings.run_dir)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document, handle)


def send_request(settings: LauncherSettings, **request: object) -> None:
    """Ask the running supervisor for something (it reads requests in the order written)."""
    folder = requests_dir(settings.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}.json"
    temporary = folder / f".{name}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(request, handle)
    os.replace(temporary, folder / name)


def state_file(settings: LauncherSettings) -> Path:
    path: Path = settings.run_dir / "stack.json"
    return path


def created_at(pid: int) -> float | None:
    """When process ``pid`` started, in clock ticks since boot (None: it is gone).

    Ticks (/proc/<pid>/stat) never move; psutil's create_time adds a boot time derived from
    the wall clock, which drifts (seconds per few minutes on these machines) and made a live
    process look recycled.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return float(fields[19])  # starttime: field 22 of stat(5), counted after the comm
    except (OSError, IndexError, ValueError):
        pass
    try:  # not Linux: psutil's wall-clock reading, good enough where clocks do not drift
        created: float = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return created


def alive(process: Process) -> bool:
    """Whether ``process`` still runs and is still ours (a recycled pid is not).

    A recycled pid is one created at another time than ours, whatever it runs: every fleet
    runs the same module, and another stack's fleet may get the pid of one of ours that ended
    (pids wrap at 32768 on many machines).
    """
    try:
        proc = psutil.Process(process.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if process.created_at is not None:
            now_created = created_at(process.pid)
            if now_created != process.created_at:
                return False
        if process.module is None:
            return True
        return process.module in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def service_env(settings: LauncherSettings, stack: Stack, secret: str) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": stack.topic_prefix,
        "DATABASE_URL": stack.database_url,
        "FEDENGINE_HOME": str(settings.home.resolve()),
        "FEDENGINE_RUN_DIR": str(settings.run_dir.resolve()),
        "FEDENGINE_JWT_SECRET": secret,
        "FEDENGINE_SERVICE_KEYS": json.dumps(public_keys(service_keys(settings))),
        "GATEWAY_HOST": settings.gateway_host,
        "GATEWAY_PORT": str(settings.gateway_port),
        "PYTHONUNBUFFERED": "1",
    }
    if stack.broker is not None:
        # The embedded broker speaks plaintext only: a shell's KAFKA_SECURITY_PROTOCOL or
        # KAFKA_SASL_* meant for another cluster must not reach the services.
        env = {
            k: v
            for k, v in env.items()
            if not k.startswith(("KAFKA_SECURITY_", "KAFKA_SASL_", "KAFKA_SSL_"))
        }
    env.update(settings.service_env)
    return env


def spawn(
    settings: LauncherSettings,
    name: str,
    module: str,
    env: dict[str, str],
    *,
    metrics_port: int | None = None,
) -> Process:
    """Start ``python -m module`` detached, logging to ``<home>/logs/<name>.log``.

    Services other than the gateway get a loopback port for their own Prometheus endpoint.
    """
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    service = module.removeprefix("fedengine_")
    # Each service gets its own private key only; the simulator plays devices and gets none.
    env = {k: v for k, v in env.items() if k != "FEDENGINE_SERVICE_KEY"}
    if service in trust.SERVICES:
        env["FEDENGINE_SERVICE_KEY"] = service_keys(settings)[service]
    if module == "fedengine_gateway":
        # Under a supervisor: /ready answers 503 while no supervisor holds this lock (a
        # deployment's gateway, with no supervisor, has no such check).
        env["GATEWAY_SUPERVISOR_LOCK"] = str(standby.lock_file(settings.run_dir.resolve()))
    else:
        # Only the gateway checks tokens; no other process needs the signing secret.
        env = {k: v for k, v in env.items() if k != "FEDENGINE_JWT_SECRET"}
        metrics_port = metrics_port or infra.free_port()
        env = {**env, f"{service.upper()}_METRICS_PORT": str(metrics_port)}
    (settings.run_dir / f"{name}.ready").unlink(missing_ok=True)
    with open(settings.log_dir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return Process(
        name=name,
        pid=process.pid,
        module=module,
        metrics_port=metrics_port,
        started_at=time.time(),
        created_at=created_at(process.pid),
    )


def spawn_standby(settings: LauncherSettings) -> Process:
    """Start the supervisor's standby (``fedengine.standby``), logging to the supervisor's log.

    It gets this process's environment (the one ``fedengine up`` gave the supervisor, which it
    passes on to the services once it takes over) less the signing secret, which only the
    gateway holds (the supervisor reads it from ``launcher.json``).
    """
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / f"{standby.STANDBY}.ready").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "FEDENGINE_JWT_SECRET"}
    with open(settings.log_dir / "supervisor.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", standby.MODULE, str(settings.run_dir.resolve())],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return Process(
        name=standby.STANDBY,
        pid=process.pid,
        module=standby.MODULE,
        started_at=time.time(),
        created_at=created_at(process.pid),
    )


def terminate(process: Process, *, timeout_s: float = 15.0) -> int | None:
    """SIGTERM (graceful: finish, commit, exit), then SIGKILL after ``timeout_s``.

    Returns the exit status when this process is the parent (else None).
    """
    if not alive(process):
        return None
    os.kill(process.pid, signal.SIGTERM)
    # A paused process (a supervisor killed mid broker restart left it SIGSTOPped) would
    # handle its SIGTERM only when continued, and be SIGKILLed instead.
    os.kill(process.pid, signal.SIGCONT)
    try:
        status: int | None = psutil.Process(process.pid).wait(timeout_s)
        return status
    except psutil.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    return None


def terminate_all(processes: list[Process], *, timeout_s: float = 15.0) -> list[str]:
    """SIGTERM every live process at once, wait for all, SIGKILL what outlives ``timeout_s``."""
    live: dict[int, Process] = {p.pid: p for p in processes if alive(p)}
    handles = []
    for pid in live:
        try:
            handle = psutil.Process(pid)
            handle.terminate()
            handle.resume()  # a paused process handles its SIGTERM only once continued
            handles.append(handle)
        except psutil.NoSuchProcess:
            continue
    _, remaining = psutil.wait_procs(handles, timeout=timeout_s)
    for handle in remaining:
        handle.kill()
    return [live[handle.pid].name for handle in handles]


def log_tail(settings: LauncherSettings, name: str, *, chars: int = 3000) -> str:
    path = settings.log_dir / f"{name}.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
