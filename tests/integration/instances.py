"""Extra instances of a stack's services, started beside the supervisor's and run by the test.

An instance is ``python -m fedengine_<service>`` with the environment the supervisor gives its
own (``launcher.service_env``, the service's key, a metrics port of its own), except for its run
folder: a service writes ``<FEDENGINE_RUN_DIR>/<service>.ready`` once the consumer group has
given it partitions, so each extra instance gets a folder of its own and its ready file tells
its join apart from the supervisor's instance's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from aiokafka.partitioner import murmur2

from fedengine import launcher
from fedengine.processes import Process, alive, log_tail
from fedengine.settings import LauncherSettings


@dataclass
class Instance:
    service: str
    process: Process
    run_dir: Path

    @property
    def ready_file(self) -> Path:
        return self.run_dir / f"{self.service}.ready"


def start(settings: LauncherSettings, service: str, run_dir: Path) -> Instance:
    """Start a second instance of ``service`` on the running stack (not supervised)."""
    stack = launcher.running_stack(settings)
    if stack is None:
        raise RuntimeError("no stack is running")
    secret, _ = launcher.jwt_secret(settings)
    env = {**launcher.service_env(settings, stack, secret), "FEDENGINE_RUN_DIR": str(run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    process = launcher.spawn(settings, f"{service}-2", f"fedengine_{service}", env)
    return Instance(service, process, run_dir)


def wait_joined(settings: LauncherSettings, instances: list[Instance], *, timeout_s: float) -> None:
    """Wait until every instance wrote its ready file (it has partitions: it joined)."""
    deadline = time.monotonic() + timeout_s
    pending = list(instances)
    while pending:
        for instance in list(pending):
            if not alive(instance.process):
                tail = log_tail(settings, instance.process.name)
                raise RuntimeError(f"{instance.process.name} exited while starting:\n{tail}")
            if instance.ready_file.exists():
                pending.remove(instance)
        if pending and time.monotonic() > deadline:
            names = [i.process.name for i in pending]
            raise TimeoutError(f"not joined within {timeout_s}s: {names}")
        time.sleep(0.1)


def kill(instance: Instance) -> None:
    """SIGKILL the instance and reap it (it is this process's child)."""
    if alive(instance.process):
        os.kill(instance.process.pid, signal.SIGKILL)
    _reap(instance.process.pid)


def stop(instance: Instance) -> None:
    """Stop the instance gracefully (it leaves its group), SIGKILL after 15 s; reap it."""
    if alive(instance.process):
        launcher.terminate(instance.process)
    _reap(instance.process.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
        psutil.Process(pid).wait(15)


def supervised(settings: LauncherSettings, service: str) -> Process:
    """The supervisor's instance of ``service``, as the stack records it now."""
    stack = launcher.running_stack(settings)
    process = None if stack is None else stack.process(service)
    if process is None:
        raise LookupError(f"the stack runs no {service}")
    return process


async def counter(process: Process, name: str) -> float:
    """One process's counter ``name``, summed over its label sets (0 before its first use)."""
    if process.metrics_url is None:
        raise ValueError(f"{process.name} exposes no metrics")
    total = 0.0
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(process.metrics_url)).text
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric == name or metric.startswith(f"{name}{{"):
            total += float(value)
    return total


def partition_of(key: str, partitions: int) -> int:
    """The partition a record keyed ``key`` goes to (the clients' default partitioner)."""
    index: int = murmur2(key.encode())
    return (index & 0x7FFFFFFF) % partitions
