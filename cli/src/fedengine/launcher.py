"""``fedengine up / down / status / restart / fleet``: start what is not configured, then a
supervisor that starts every service and keeps it alive (``fedengine.supervisor``), with a
standby that replaces it should it die (``fedengine.standby``).

State lives in ``<home>/run/stack.json``: what was started, with which pid, how often it was
restarted, so that ``down`` stops exactly that, also after a crash left stale entries behind.
The fleets that ran are remembered in ``<home>/fleets.json`` (``fedengine.remembered_fleets``),
and ``up`` starts them again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import psutil

from fedcommon import auth
from fedengine import infra, remembered_fleets, standby
from fedengine.identity import jwt_secret, public_keys, service_keys
from fedengine.processes import (
    GATEWAY,
    REGISTRY,
    SERVICES,
    Process,
    Stack,
    alive,
    created_at,
    log_tail,
    send_request,
    service_env,
    spawn,
    state_file,
    terminate,
    terminate_all,
    write_settings,
)
from fedengine.settings import LauncherSettings

__all__ = [
    "GATEWAY",
    "SERVICES",
    "Fleet",
    "Process",
    "Stack",
    "alive",
    "down",
    "issue_enrolment_token",
    "jwt_secret",
    "public_keys",
    "restart",
    "running_stack",
    "service_env",
    "service_keys",
    "spawn",
    "start_simulator",
    "status",
    "stop_process",
    "terminate",
    "up",
]

SIMULATOR = "fedengine_simulator"


def _load(settings: LauncherSettings) -> Stack | None:
    return Stack.load(state_file(settings))


def _ready(settings: LauncherSettings, name: str, gateway_url: str | None) -> bool:
    """Whether ``name`` is ready: its ready file, or for the gateway its /ready.

    A gateway whose /ready is 503 for the supervisor alone serves: the supervisor is reported
    on its own (``status``), and ``wait_ready`` checks it first.
    """
    if name != GATEWAY:
        return (settings.run_dir / f"{name}.ready").exists()
    try:
        response = _probe_client().get(f"{gateway_url}/api/federated/ready")
        if response.status_code == 503:
            return set(response.json().get("down", [])) == {"supervisor"}
    except (httpx.HTTPError, ValueError):
        return False
    return response.status_code == 200


@cache
def _probe_client() -> httpx.Client:
    """One HTTP client for every readiness probe of this process: ``httpx.get`` builds a
    client, and with it a TLS context that loads the CA bundle, for each call (a third of
    the command's CPU while it waited 10 times a second)."""
    return httpx.Client(timeout=1)


def wait_ready(
    settings: LauncherSettings,
    names: Sequence[str],
    *,
    gateway_url: str | None,
    since: float | None = None,
    not_pid: dict[str, int] | None = None,
) -> Stack:
    """Wait until the supervisor runs each of ``names`` (with a pid other than ``not_pid``'s)
    and each wrote its ready file (the gateway: /ready answers 200); return the stack then.

    A process started after ``since`` that exits while starting fails this with its log's
    tail, rather than being restarted over and over behind the caller's back.
    """
    since = time.time() if since is None else since
    deadline = time.monotonic() + settings.ready_timeout_s
    pending = set(names)
    while True:
        stack = _load(settings)
        if stack is None or stack.supervisor is None or not alive(stack.supervisor):
            raise RuntimeError(f"the supervisor is not running; see {settings.log_dir}")
        for name in sorted(pending):
            process = stack.process(name)
            if process is None:
                continue
            crashed = process.state == "restarting" and process.last_exit is not None
            if crashed and process.started_at >= since:
                raise RuntimeError(
                    f"{name} exited during start-up; log tail:\n{log_tail(settings, name)}"
                )
            fresh = not_pid is None or process.pid != not_pid.get(name)
            if process.state == "running" and fresh and _ready(settings, name, gateway_url):
                pending.discard(name)
        if not pending:
            return stack
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready within {settings.ready_timeout_s}s: {sorted(pending)}")
        time.sleep(0.1)


def running_stack(settings: LauncherSettings) -> Stack | None:
    """Return the recorded stack if its gateway process is still alive."""
    stack = _load(settings)
    if stack is None:
        return None
    if any(p.name == GATEWAY and alive(p) for p in stack.processes):
        return stack
    return None


def _start_supervisor(settings: LauncherSettings) -> None:
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    standby.stopping_file(settings.run_dir).unlink(missing_ok=True)  # a `down` that crashed
    write_settings(settings)
    with open(settings.log_dir / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "fedengine.supervisor", str(settings.run_dir.resolve())],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_supervisor(settings: LauncherSettings, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack = _load(settings)
        if stack is not None and stack.supervisor is not None and alive(stack.supervisor):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"the supervisor did not start; log tail:\n{log_tail(settings, 'supervisor')}"
    )


def up(
    settings: LauncherSettings,
    *,
    log: Callable[[str], object] = print,
    fleets: Sequence[Fleet] = (),
) -> Stack:
    """Start the broker and database unless configured, then the supervisor, which starts all
    services and its standby; return the stack once every service is ready.

    ``fleets`` are simulator fleets to start once the services are ready (each with an
    enrolment token issued through the gateway), besides the fleets that ran when the stack
    went down (``remembered_fleets``): a remembered fleet comes back with its options, its
    devices under the same ids and keys; one that fails to start is reported, not fatal. A
    fleet named both ways starts with the options given here. A stack that runs already is
    returned (its supervisor started again if it was gone).
    """
    existing = running_stack(settings)
    if existing is not None:
        if existing.supervisor is None or not alive(existing.supervisor):
            log("the supervisor was gone; starting it again")
            _start_supervisor(settings)
            _wait_supervisor(settings)
        return existing
    down(settings)  # clear what a crash may have left behind
    check_port_free(settings.gateway_host, settings.gateway_port)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    secret, secret_path = jwt_secret(settings)
    broker = None
    if settings.kafka_bootstrap_servers:
        bootstrap = settings.kafka_bootstrap_servers
    else:
        pid, bootstrap = infra.start_broker(log_path=settings.log_dir / "broker.log")
        broker = Process(
            name="broker",
            pid=pid,
            module="tansu",
            started_at=time.time(),
            created_at=created_at(pid),
        )
        log(f"broker (Tansu) on {bootstrap}")
    postgres_data = None
    if settings.database_url is not None:
        database_url = settings.database_url.get_secret_value()
    else:
        pgdata = (settings.home / "pgdata").resolve()
        _, database_url = infra.start_postgres(pgdata)
        postgres_data = str(pgdata)
        log(f"PostgreSQL (embedded) under {pgdata}")
    stack = Stack(
        bootstrap_servers=bootstrap,
        database_url=database_url,
        topic_prefix=settings.topic_prefix,
        gateway_url=settings.gateway_url,
        jwt_secret_file=str(secret_path),
        broker=broker,
        postgres_data=postgres_data,
        # Everything starts at once: consumer-group joins dominate start-up, and they overlap.
        processes=[
            *(
                Process(name=name, pid=0, module=f"fedengine_{name}")
                for name in (*SERVICES, GATEWAY)
            ),
            Process(name=standby.STANDBY, pid=0, module=standby.MODULE),
        ],
    )
    stack.save(state_file(settings))
    since = time.time()
    remembered = [Fleet.from_options(options) for options in remembered_fleets.remembered(settings)]
    try:
        _start_supervisor(settings)
        _wait_supervisor(settings)
        # Fleets enrol with an operator's token, which the registry must hold first, issued
        # through the gateway: once both are ready the fleets start, and their warm-ups
        # (imports, data set, a training step) overlap the other services' start-up.
        stack = wait_ready(
            settings, (REGISTRY, GATEWAY), gateway_url=stack.gateway_url, since=since
        )
        requested = _request_fleets(settings, stack, secret, required=fleets, remembered=remembered)
        stack = wait_ready(
            settings,
            (*SERVICES, GATEWAY, standby.STANDBY),
            gateway_url=stack.gateway_url,
            since=since,
        )
        stack = _wait_fleets(settings, stack, requested, log=log)
    except BaseException:
        down(settings)
        raise
    log(f"services ready; gateway on {stack.gateway_url}")
    return stack


def fleets_to_start(
    required: Sequence[Fleet], remembered: Sequence[Fleet]
) -> tuple[list[Fleet], list[Fleet]]:
    """Split the fleets ``up`` starts into those it was asked for and those it brings back
    (remembered, and not named among the first)."""
    asked = {fleet.name for fleet in required}
    return list(required), [fleet for fleet in remembered if fleet.name not in asked]


@dataclass(frozen=True)
class _Requested:
    """Fleets asked of the supervisor, and since when."""

    required: list[Fleet]
    returning: list[Fleet]
    since: float


def _request_fleets(
    settings: LauncherSettings,
    stack: Stack,
    secret: str,
    *,
    required: Sequence[Fleet],
    remembered: Sequence[Fleet],
) -> _Requested:
    """Ask the supervisor to start every fleet at once (their warm-ups overlap)."""
    asked, returning = fleets_to_start(required, remembered)
    since = time.time()
    for fleet in (*asked, *returning):
        _request_fleet(settings, stack, secret, fleet)
    return _Requested(asked, returning, since)


def _wait_fleets(
    settings: LauncherSettings,
    stack: Stack,
    requested: _Requested,
    *,
    log: Callable[[str], object],
) -> Stack:
    """Return the stack once the requested fleets are ready. A required fleet that fails
    fails this; a remembered one is reported and left to the supervisor's restarts
    (``fedengine fleet stop NAME`` forgets it)."""
    required, returning, since = requested.required, requested.returning, requested.since
    if required:
        stack = wait_ready(
            settings, [n for f in required for n in f.process_names], gateway_url=None, since=since
        )
        for fleet in required:
            remembered_fleets.remember(settings, fleet.options())
    for fleet in returning:
        try:
            stack = wait_ready(settings, fleet.process_names, gateway_url=None, since=since)
        except (RuntimeError, TimeoutError) as exc:
            log(f"fleet {fleet.name} did not come back: {exc}")
            continue
        log(f"fleet {fleet.name} is back ({fleet.devices} devices)")
    return stack


def _request_fleet(settings: LauncherSettings, stack: Stack, secret: str, fleet: Fleet) -> None:
    token = issue_enrolment_token(stack.gateway_url, secret, fleet.name, max_devices=fleet.devices)
    for shard, name in enumerate(fleet.process_names):
        send_request(
            settings, action="start", name=name, module=SIMULATOR, env=fleet.env(token, shard)
        )


def _start_fleet(settings: LauncherSettings, stack: Stack, secret: str, fleet: Fleet) -> Stack:
    since = time.time()
    _request_fleet(settings, stack, secret, fleet)
    stack = wait_ready(settings, fleet.process_names, gateway_url=None, since=since)
    remembered_fleets.remember(settings, fleet.options())
    return stack


def down(settings: LauncherSettings) -> list[str]:
    """Stop everything the state file says we started; return what was stopped.

    The supervisor stops its processes gracefully; whatever outlives it (it was killed, say)
    is stopped from the recorded pids, and a crashed database's stale pid file is cleared.
    """
    stack = _load(settings)
    stopped: list[str] = []
    if stack is None:
        return stopped
    # While the supervisor stops, its standby (or a supervisor `up` starts) takes nothing over.
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    stopping = standby.stopping_file(settings.run_dir)
    stopping.touch()
    supervisor = stack.supervisor
    if supervisor is not None and alive(supervisor):
        os.kill(supervisor.pid, signal.SIGTERM)
        try:
            psutil.Process(supervisor.pid).wait(40)
        except psutil.TimeoutExpired:
            os.kill(supervisor.pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
        stopped.append("supervisor")
    stopped.extend(terminate_all(stack.processes))
    if stack.broker is not None and alive(stack.broker):
        terminate(stack.broker, timeout_s=5)
        stopped.append("broker")
    if stack.postgres_data is not None:
        infra.stop_postgres(Path(stack.postgres_data))
        stopped.append("postgres")
    state_file(settings).unlink(missing_ok=True)
    for ready in settings.run_dir.glob("*.ready"):
        ready.unlink(missing_ok=True)
    stopping.unlink(missing_ok=True)
    return stopped


def _uptime(process: Process) -> float | None:
    return round(time.time() - process.started_at, 1) if alive(process) else None


def status(settings: LauncherSettings) -> dict[str, Any]:
    """Every process (pid, uptime, restarts, health), the broker and the database."""
    stack = _load(settings)
    home = str(settings.home.resolve())
    if stack is None:
        return {"running": False, "home": home}
    processes = {}
    for p in stack.processes:
        health = p.state
        if p.state == "running":
            if not alive(p):
                health = "down"
            elif _ready(settings, p.name, stack.gateway_url):
                health = "ready"
            else:
                health = "starting"
        processes[p.name] = {
            "pid": p.pid,
            "health": health,
            "uptime_s": _uptime(p),
            "restarts": p.restarts,
            "last_exit": p.last_exit,
            "metrics": p.metrics_url,
        }
    pgdata = None if stack.postgres_data is None else Path(stack.postgres_data)
    return {
        "running": running_stack(settings) is not None,
        "home": home,
        "gateway_url": stack.gateway_url,
        "supervisor": _supervisor_status(settings, stack),
        "broker": {
            "bootstrap_servers": stack.bootstrap_servers,
            "embedded": stack.broker is not None,
            "pid": None if stack.broker is None else stack.broker.pid,
            "up": infra.api_versions_answers(*_host_port(stack.bootstrap_servers)),
            "restarts": 0 if stack.broker is None else stack.broker.restarts,
        },
        "postgres": {
            "embedded": pgdata is not None,
            "data": stack.postgres_data,
            "pid": None if pgdata is None else infra.postgres_pid(pgdata),
            "restarts": stack.postgres_restarts,
        },
        "processes": processes,
    }


def _supervisor_status(settings: LauncherSettings, stack: Stack) -> dict[str, Any]:
    """The supervisor: up while a process holds its lock (``alive``: the recorded one runs);
    ``restarts``: supervisors that died and were replaced (by the standby, or by ``up``)."""
    record = stack.supervisor
    return {
        "pid": None if record is None else record.pid,
        "alive": record is not None and alive(record),
        "up": standby.held(settings.run_dir),
        "uptime_s": None if record is None else _uptime(record),
        "restarts": 0 if record is None else record.restarts,
    }


def check_port_free(host: str, port: int) -> None:
    """Raise RuntimeError, naming the port, when something already listens on the gateway's
    port: another stack's gateway would answer this one's readiness probes, and the start
    would fail later with a misleading "signed with another secret" (seen when two demos
    overlapped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port in TIME_WAIT after a stopped stack is free, a listener not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(
                f"port {port} on {host} is in use (another stack's gateway?): stop it "
                "(FEDENGINE_HOME=... fedengine down) or set FEDENGINE_GATEWAY_PORT"
            ) from exc


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    return host, int(port)


@dataclass(frozen=True)
class Fleet:
    """A simulator process: its fleet name, size, the data set its devices hold and how it is
    partitioned among them, and attackers (a fraction of its devices that send poisoned
    updates, for testing robust aggregation)."""

    name: str
    devices: int
    dataset: str = "digits"
    partitioning: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    malicious: float = 0.0
    attack: str = "sign_flip"
    attack_scale: float = 1.0
    # The privacy level its devices enrol with (none, low, medium, high): all but none train
    # with local DP-SGD.
    privacy_level: str = "none"
    # In secure rounds, each device's chance to stay silent from each later SecAgg+ stage on
    # (SIMULATOR_SECAGG_DROPOUT), for dropout experiments.
    secagg_dropout: float = 0.0
    # Device behaviour (the simulator's core/profiles.py and core/behaviour.py): the mix of
    # device types and of privacy levels ("" cycles types, one level for all), simulated
    # seconds per wall second, the hour of a task's first round, availability ("always",
    # "diurnal" or a trace's path) and injected failures.
    profiles: str = ""
    privacy_levels: str = ""
    speedup: float = 100.0
    start_hour: float = 12.0
    availability: str = "always"
    failure_rate: float = 0.0
    failure_mix: str = "crash:0.5,network_loss:0.5"
    # Training examples each device holds at least (SIMULATOR_PARTITION_MIN_SIZE).
    min_size: int = 2
    # Simulator processes sharing the fleet (SIMULATOR_SHARD): each enrols and heartbeats a
    # share of its devices, and trains whichever devices its partitions of the commands carry.
    processes: int = 1

    @property
    def process_name(self) -> str:
        return f"simulator-{self.name}"

    @property
    def process_names(self) -> list[str]:
        """Its processes' names: the first as a one-process fleet's, then ``+1``, ``+2``...
        (a character no fleet name has)."""
        return [self.process_name, *(f"{self.process_name}+{i}" for i in range(1, self.processes))]

    def options(self) -> dict[str, Any]:
        """Its options as JSON values (what ``remembered_fleets`` keeps)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Fleet:
        """The fleet ``options`` describe; options this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in known})

    def env(self, enrolment_token: str, shard: int = 0) -> dict[str, str]:
        return {
            "SIMULATOR_SHARD": f"{shard}/{self.processes}",
            "SIMULATOR_ENROLMENT_TOKEN": enrolment_token,
            "SIMULATOR_FLEET": self.name,
            "SIMULATOR_DEVICES": str(self.devices),
            "SIMULATOR_DATASET": self.dataset,
            "SIMULATOR_PARTITIONING": self.partitioning,
            "SIMULATOR_ALPHA": str(self.alpha),
            "SIMULATOR_SEED": str(self.seed),
            "SIMULATOR_MALICIOUS": str(self.malicious),
            "SIMULATOR_ATTACK": self.attack,
            "SIMULATOR_ATTACK_SCALE": str(self.attack_scale),
            "SIMULATOR_PRIVACY_LEVEL": self.privacy_level,
            "SIMULATOR_SECAGG_DROPOUT": str(self.secagg_dropout),
            "SIMULATOR_PROFILES": self.profiles,
            "SIMULATOR_PRIVACY_LEVELS": self.privacy_levels,
            "SIMULATOR_SPEEDUP": str(self.speedup),
            "SIMULATOR_START_HOUR": str(self.start_hour),
            "SIMULATOR_AVAILABILITY": self.availability,
            "SIMULATOR_FAILURE_RATE": str(self.failure_rate),
            "SIMULATOR_FAILURE_MIX": self.failure_mix,
            "SIMULATOR_PARTITION_MIN_SIZE": str(self.min_size),
        }


def issue_enrolment_token(
    gateway_url: str,
    secret: str,
    fleet: str,
    *,
    max_devices: int,
    expires_in_s: float = 7 * 86_400,
) -> str:
    """Issue an enrolment token for ``fleet`` through the gateway, as an operator would.

    Returns the token once the registry has recorded it, so that devices may enrol at once.
    """
    bearer = auth.issue_token(secret=secret, subject="fedengine-launcher", role=auth.Role.ADMIN)
    response = httpx.post(
        f"{gateway_url}/api/federated/enrolment-tokens",
        json={"fleet": fleet, "max_devices": max_devices, "expires_in_s": expires_in_s},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=30,
    )
    if response.status_code not in (201, 202):
        raise RuntimeError(
            f"enrolment token for fleet {fleet}: {response.status_code} {response.text[:500]}"
        )
    body = response.json()
    if response.status_code == 202:
        # Accepted, but the registry had not recorded it within the gateway's wait (a loaded
        # machine): devices enrolling now would be refused, so wait until it has.
        _wait_for_token(gateway_url, bearer, body["token_id"], fleet=fleet)
    token: str = body["token"]
    return token


def _wait_for_token(gateway_url: str, bearer: str, token_id: str, *, fleet: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        found = httpx.get(
            f"{gateway_url}/api/federated/enrolment-tokens/{token_id}",
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=30,
        )
        if found.status_code == 200:
            return
        if found.status_code != 404 or time.monotonic() > deadline:
            raise RuntimeError(
                f"enrolment token for fleet {fleet} was not recorded: {found.status_code} "
                f"{found.text[:500]}"
            )
        time.sleep(0.2)


def _running(settings: LauncherSettings) -> Stack:
    stack = running_stack(settings)
    if stack is None:
        raise RuntimeError("no stack is running: fedengine up")
    if stack.supervisor is None or not alive(stack.supervisor):
        raise RuntimeError("the stack's supervisor is gone: fedengine up starts it again")
    return stack


def start_simulator(settings: LauncherSettings, stack: Stack, fleet: Fleet) -> Process:
    """Start a simulator process for one fleet and wait until it has joined and enrolled."""
    secret, _ = jwt_secret(settings)
    stack = _start_fleet(settings, _running(settings), secret, fleet)
    process = stack.process(fleet.process_name)
    assert process is not None
    return process


def stop_process(settings: LauncherSettings, process: Process, *, timeout_s: float = 30.0) -> None:
    """Stop one process of the stack (a fleet, say) and forget it."""
    send_request(settings, action="stop", name=process.name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack = _load(settings)
        if stack is None or stack.process(process.name) is None:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{process.name} did not stop within {timeout_s}s")


def restart(
    settings: LauncherSettings, name: str, *, kill: bool = False
) -> tuple[Process, int | None]:
    """Stop process ``name`` (SIGKILL when ``kill``, else graceful); the supervisor starts it
    again. Returns the new process once it is ready, and the old one's exit status."""
    stack = _running(settings)
    old = stack.process(name)
    if old is None or old.module is None:
        raise LookupError(f"no process {name!r} in the stack")
    since = time.time()
    send_request(settings, action="restart", name=name, kill=kill)
    stack = wait_ready(
        settings, [name], gateway_url=stack.gateway_url, since=since, not_pid={name: old.pid}
    )
    new = stack.process(name)
    assert new is not None
    return new, new.last_exit
