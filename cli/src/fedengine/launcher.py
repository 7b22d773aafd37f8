"""``fedengine up / down / status``: start what is not configured, then every service.

State lives in ``<home>/run/stack.json``: what was started, by whom, with which pid, so that
``down`` stops exactly that, also after a crash left stale entries behind.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from fedcommon import auth, signing, trust
from fedengine import infra
from fedengine.settings import LauncherSettings

SERVICES = ("registry", "coordinator", "aggregator")
GATEWAY = "gateway"


@dataclass
class Process:
    name: str
    pid: int
    module: str | None = None
    metrics_port: int | None = None

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
    processes: list[Process] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Stack | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["broker"] = Process(**data["broker"]) if data.get("broker") else None
        data["processes"] = [Process(**p) for p in data.get("processes", [])]
        return cls(**data)


def _state_file(settings: LauncherSettings) -> Path:
    path: Path = settings.run_dir / "stack.json"
    return path


def alive(process: Process) -> bool:
    """Whether ``process`` still runs and is still ours (a recycled pid is not)."""
    try:
        proc = psutil.Process(process.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if process.module is None:
            return True
        return process.module in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def jwt_secret(settings: LauncherSettings) -> tuple[str, Path]:
    """Return the signing secret: configured, or generated once under FEDENGINE_HOME."""
    path = settings.home / "jwt_secret"
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value(), path
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip(), path


def service_keys(settings: LauncherSettings) -> dict[str, str]:
    """Return every service's private key (hex), generated once under FEDENGINE_HOME/keys."""
    folder = settings.home / "keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys: dict[str, str] = {}
    for name in trust.SERVICES:
        path = folder / f"{name}.key"
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(signing.private_key_to_bytes(signing.generate_private_key()).hex())
        keys[name] = path.read_text().strip()
    return keys


def public_keys(private: dict[str, str]) -> dict[str, str]:
    """Return the public halves of ``private`` (hex), as FEDENGINE_SERVICE_KEYS carries them."""
    return {
        name: signing.public_key_bytes(signing.private_key_from_bytes(bytes.fromhex(key))).hex()
        for name, key in private.items()
    }


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
    if module != "fedengine_gateway":
        # Only the gateway checks tokens; no other process needs the signing secret.
        env = {k: v for k, v in env.items() if k != "FEDENGINE_JWT_SECRET"}
        metrics_port = metrics_port or infra.free_port()
        env = {
            **env,
            f"{module.removeprefix('fedengine_').upper()}_METRICS_PORT": str(metrics_port),
        }
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
    return Process(name=name, pid=process.pid, module=module, metrics_port=metrics_port)


def wait_ready(
    settings: LauncherSettings, processes: list[Process], *, gateway_url: str | None
) -> None:
    """Wait until every service wrote its ready file (and the gateway answers /health)."""
    deadline = time.monotonic() + settings.ready_timeout_s
    pending = {p.name: p for p in processes}
    while pending:
        for name, process in list(pending.items()):
            if not alive(process):
                log = (settings.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited during start-up; log tail:\n{log}")
            if name == GATEWAY:
                try:
                    ok = (
                        httpx.get(f"{gateway_url}/api/federated/health", timeout=1).status_code
                        == 200
                    )
                except httpx.HTTPError:
                    ok = False
            else:
                ok = (settings.run_dir / f"{name}.ready").exists()
            if ok:
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not ready within {settings.ready_timeout_s}s: {sorted(pending)}")
        time.sleep(0.1)


def running_stack(settings: LauncherSettings) -> Stack | None:
    """Return the recorded stack if its gateway process is still alive."""
    stack = Stack.load(_state_file(settings))
    if stack is None:
        return None
    if any(p.name == GATEWAY and alive(p) for p in stack.processes):
        return stack
    return None


def up(
    settings: LauncherSettings,
    *,
    log: Callable[[str], object] = print,
    fleets: Sequence[Fleet] = (),
) -> Stack:
    """Start the broker and database unless configured, then all services; return the stack.

    ``fleets`` are simulator fleets to start with the services when the stack is new.
    """
    existing = running_stack(settings)
    if existing is not None:
        return existing
    down(settings)  # clear what a crash may have left behind
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    secret, secret_path = jwt_secret(settings)
    broker = None
    if settings.kafka_bootstrap_servers:
        bootstrap = settings.kafka_bootstrap_servers
    else:
        pid, bootstrap = infra.start_broker(log_path=settings.log_dir / "broker.log")
        broker = Process(name="broker", pid=pid, module="tansu")
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
    )
    stack.save(_state_file(settings))
    env = service_env(settings, stack, secret)
    try:
        # Everything starts at once: consumer-group joins dominate start-up, and they overlap.
        for name in SERVICES:
            stack.processes.append(spawn(settings, name, f"fedengine_{name}", env))
        stack.processes.append(spawn(settings, GATEWAY, "fedengine_gateway", env))
        stack.save(_state_file(settings))
        wait_ready(settings, stack.processes, gateway_url=stack.gateway_url)
        # Fleets enrol with an operator's token, which the registry must hold first.
        simulators = []
        for fleet in fleets:
            token = issue_enrolment_token(
                stack.gateway_url, secret, fleet.name, max_devices=fleet.devices
            )
            simulators.append(
                spawn(settings, fleet.process_name, "fedengine_simulator", fleet.env(env, token))
            )
        stack.processes.extend(simulators)
        stack.save(_state_file(settings))
        wait_ready(settings, simulators, gateway_url=None)
    except BaseException:
        down(settings)
        raise
    log(f"services ready; gateway on {stack.gateway_url}")
    return stack


def terminate(process: Process, *, timeout_s: float = 15.0) -> int | None:
    """SIGTERM (graceful: finish, commit, exit), then SIGKILL after ``timeout_s``.

    Returns the exit status when this process is the parent (else None).
    """
    if not alive(process):
        return None
    os.kill(process.pid, signal.SIGTERM)
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
            handles.append(handle)
        except psutil.NoSuchProcess:
            continue
    _, remaining = psutil.wait_procs(handles, timeout=timeout_s)
    for handle in remaining:
        handle.kill()
    return [live[handle.pid].name for handle in handles]


def down(settings: LauncherSettings) -> list[str]:
    """Stop everything the state file says we started; return what was stopped."""
    stack = Stack.load(_state_file(settings))
    stopped: list[str] = []
    if stack is None:
        return stopped
    stopped.extend(terminate_all(stack.processes))
    if stack.broker is not None and alive(stack.broker):
        terminate(stack.broker, timeout_s=5)
        stopped.append("broker")
    if stack.postgres_data is not None:
        infra.stop_postgres(Path(stack.postgres_data))
        stopped.append("postgres")
    _state_file(settings).unlink(missing_ok=True)
    for ready in settings.run_dir.glob("*.ready"):
        ready.unlink(missing_ok=True)
    return stopped


def status(settings: LauncherSettings) -> dict[str, object]:
    stack = Stack.load(_state_file(settings))
    if stack is None:
        return {"running": False}
    return {
        "running": running_stack(settings) is not None,
        "gateway_url": stack.gateway_url,
        "bootstrap_servers": stack.bootstrap_servers,
        "broker": None
        if stack.broker is None
        else {"pid": stack.broker.pid, "alive": alive(stack.broker)},
        "postgres_data": stack.postgres_data,
        "processes": {
            p.name: {"pid": p.pid, "alive": alive(p), "metrics": p.metrics_url}
            for p in stack.processes
        },
    }


@dataclass(frozen=True)
class Fleet:
    """A simulator process: its fleet name, size and data partitioning."""

    name: str
    devices: int
    partitioning: str = "iid"
    alpha: float = 0.5
    seed: int = 0

    @property
    def process_name(self) -> str:
        return f"simulator-{self.name}"

    def env(self, base: dict[str, str], enrolment_token: str) -> dict[str, str]:
        return {
            **base,
            "SIMULATOR_ENROLMENT_TOKEN": enrolment_token,
            "SIMULATOR_FLEET": self.name,
            "SIMULATOR_DEVICES": str(self.devices),
            "SIMULATOR_PARTITIONING": self.partitioning,
            "SIMULATOR_ALPHA": str(self.alpha),
            "SIMULATOR_SEED": str(self.seed),
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
    if response.status_code != 201:
        raise RuntimeError(
            f"enrolment token for fleet {fleet}: {response.status_code} {response.text[:500]}"
        )
    token: str = response.json()["token"]
    return token


def start_simulator(settings: LauncherSettings, stack: Stack, fleet: Fleet) -> Process:
    """Start a simulator process for one fleet and wait until it has joined and enrolled."""
    secret, _ = jwt_secret(settings)
    token = issue_enrolment_token(stack.gateway_url, secret, fleet.name, max_devices=fleet.devices)
    env = fleet.env(service_env(settings, stack, secret), token)
    process = spawn(settings, fleet.process_name, "fedengine_simulator", env)
    stack.processes.append(process)
    stack.save(_state_file(settings))
    wait_ready(settings, [process], gateway_url=None)
    return process


def stop_process(settings: LauncherSettings, process: Process) -> None:
    """Stop one process of the stack and forget it."""
    terminate(process)
    stack = Stack.load(_state_file(settings))
    if stack is not None:
        stack.processes = [p for p in stack.processes if p.pid != process.pid]
        stack.save(_state_file(settings))


def restart(
    settings: LauncherSettings, name: str, *, kill: bool = False
) -> tuple[Process, int | None]:
    """Stop service ``name`` (SIGKILL when ``kill``, else graceful) and start it again.

    Returns the new process and the old one's exit status (when known).
    """
    stack = Stack.load(_state_file(settings))
    if stack is None:
        raise RuntimeError("no stack is running")
    old = next((p for p in stack.processes if p.name == name), None)
    if old is None or old.module is None:
        raise LookupError(f"no service {name!r} in the stack")
    exit_status: int | None = None
    if kill and alive(old):
        os.kill(old.pid, signal.SIGKILL)
        exit_status = psutil.Process(old.pid).wait(10)
    else:
        exit_status = terminate(old)
    secret, _ = jwt_secret(settings)
    env = service_env(settings, stack, secret)
    new = spawn(settings, name, old.module, env, metrics_port=old.metrics_port)
    stack.processes = [new if p.pid == old.pid else p for p in stack.processes]
    stack.save(_state_file(settings))
    wait_ready(settings, [new], gateway_url=stack.gateway_url)
    return new, exit_status
