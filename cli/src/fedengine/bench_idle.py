"""``fedengine bench idle``: where an idle stack's CPU goes, and what the first command after a
quiet spell costs in latency (the price of polling the broker less often while idle).

A fresh stack under a temporary home (its own embedded broker and PostgreSQL, and a fleet of
simulated devices if asked), left alone for a warm-up, then each process's CPU seconds are
read twice, a window apart: the share of one core it used. PostgreSQL counts with its
backends (each service's pool holds some). Then the first hop after idleness: a task created
over REST after ``idle_gap_s`` of quiet, timed until the coordinator has projected it; and the
same hop repeated at once, while every consumer is still awake. The stack's very first
command is made and left out before either (it pays for first-use work: up to 2.4 s measured).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from fedcommon import auth
from fedengine import infra, launcher
from fedengine.bench import machine
from fedengine.settings import LauncherSettings

API = "/api/federated"


@dataclass(frozen=True)
class IdleOptions:
    devices: int = 0
    warmup_s: float = 20.0
    window_s: float = 30.0
    hops: int = 5
    idle_gap_s: float = 8.0


def _handles(stack: launcher.Stack) -> dict[str, list[psutil.Process]]:
    """Every process of the stack by name; PostgreSQL as its postmaster and backends."""
    named: dict[str, list[psutil.Process]] = {}
    pids = {p.name: p.pid for p in stack.processes}
    if stack.supervisor is not None:
        pids["supervisor"] = stack.supervisor.pid
    if stack.broker is not None:
        pids["broker"] = stack.broker.pid
    for name, pid in pids.items():
        try:
            named[name] = [psutil.Process(pid)]
        except psutil.NoSuchProcess:
            continue
    if stack.postgres_data is not None:
        postmaster = infra.postgres_pid(Path(stack.postgres_data))
        if postmaster is not None:
            root = psutil.Process(postmaster)
            named["postgres"] = [root, *root.children(recursive=True)]
    return named


def _cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def cpu_shares(stack: launcher.Stack, window_s: float) -> dict[str, float]:
    """Percent of one core each process used over ``window_s`` (processes that ended or
    started within the window count for the part both readings saw)."""
    handles = _handles(stack)
    before = {name: _cpu_seconds(ps) for name, ps in handles.items()}
    began = time.monotonic()
    time.sleep(window_s)
    after = {name: _cpu_seconds(ps) for name, ps in handles.items()}
    elapsed = time.monotonic() - began
    shares = {}
    for name, readings in after.items():
        used = sum(s - before[name][pid] for pid, s in readings.items() if pid in before[name])
        shares[name] = round(100 * used / elapsed, 2)
    return shares


def _hop_s(client: httpx.Client, name: str) -> float:
    """Seconds from a task's creation being accepted to the coordinator's projection of it."""
    began = time.monotonic()
    accepted = client.post("/tasks", json={"task_name": name})
    accepted.raise_for_status()
    task_id = accepted.json()["id"]
    deadline = began + 60
    while (answer := client.get(f"/tasks/{task_id}")).status_code == 404:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} was not projected within 60 s")
        time.sleep(0.002)
    answer.raise_for_status()
    return time.monotonic() - began


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def bench_idle(options: IdleOptions, *, service_env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedengine-idle-") as home:
        settings = LauncherSettings(
            FEDENGINE_HOME=Path(home),
            KAFKA_BOOTSTRAP_SERVERS=None,
            DATABASE_URL=None,
            FEDENGINE_GATEWAY_PORT=infra.free_port(),
            service_env=service_env,
        )
        fleets = [launcher.Fleet(name="idle", devices=options.devices)] if options.devices else []
        stack = launcher.up(settings, log=lambda *_: None, fleets=fleets)
        try:
            time.sleep(options.warmup_s)
            shares = cpu_shares(launcher.running_stack(settings) or stack, options.window_s)
            secret, _ = launcher.jwt_secret(settings)
            token = auth.issue_token(secret=secret, subject="bench", role=auth.Role.OPERATOR)
            with httpx.Client(
                base_url=f"{stack.gateway_url}{API}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ) as client:
                _hop_s(client, "first")  # the stack's first command warms caches: not counted
                after_idle, awake = [], []
                for hop in range(options.hops):
                    time.sleep(options.idle_gap_s)
                    after_idle.append(_hop_s(client, f"after idle {hop}"))
                    awake.append(_hop_s(client, f"awake {hop}"))
        finally:
            launcher.down(settings)
    return {
        "benchmark": "idle",
        "machine": machine(),
        "config": {
            "devices": options.devices,
            "warmup_s": options.warmup_s,
            "window_s": options.window_s,
            "idle_gap_s": options.idle_gap_s,
            "service_env": service_env,
        },
        "cpu_percent_of_a_core": dict(sorted(shares.items())),
        "cpu_percent_total": round(sum(shares.values()), 2),
        "first_hop_after_idle_s": _summary(after_idle),
        "hop_awake_s": _summary(awake),
    }
