"""``fedengine bench simulate``: a federated task on simulated devices, on the running stack
(one is started, and stopped after, when none runs), timed and weighed as issue 17 asks.

The task is the demo's (fedengine.demo.run_demo), with the work given: data set, model,
partition, local training, device profiles and failures. Around it: the resident memory of
every process of the stack together (services, simulators, broker, PostgreSQL with its
backends), sampled every 0.2 s, at its peak; what an idle simulated device costs
(fedengine_simulator.idle_memory, in a process of its own: the CLI never imports a
service's code); and, from the database, each round's times and its devices' fates
(simulator.outcomes): failures by kind and each round's simulated length.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from rich.console import Console

from fedcommon.messages.v1 import Partitioning
from fedengine import launcher
from fedengine.bench import machine
from fedengine.bench_idle import _handles
from fedengine.bench_reference import parse_partition
from fedengine.demo import DemoOptions, run_demo
from fedengine.settings import LauncherSettings

IDLE_MODULE = "fedengine_simulator.idle_memory"
SAMPLE_S = 0.2


@dataclass(frozen=True)
class SimulateOptions:
    devices: int
    per_round: int
    rounds: int
    dataset: str = "digits"
    model: str = "mlp"
    hidden: int | None = None
    partition: str = "iid"
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    standardize: bool = False
    seed: int = 0
    failure_rate: float = 0.0
    profiles: str = ""
    speedup: float = 100.0
    availability: str = "always"
    round_timeout_s: float = 30.0
    min_size: int = 2
    processes: int = 1
    over_selection: float = 1.0


def non_iid(partition: str) -> float | None:
    """The demo's Dirichlet alpha for ``iid`` (None) or ``dirichlet:ALPHA``."""
    scheme, alpha = parse_partition(partition)
    return None if scheme == Partitioning.IID else alpha


def demo_options(options: SimulateOptions) -> DemoOptions:
    return DemoOptions(
        devices=options.devices,
        per_round=options.per_round,
        rounds=options.rounds,
        dataset=options.dataset,
        non_iid=non_iid(options.partition),
        seed=options.seed,
        model=options.model,
        hidden=options.hidden,
        standardize=options.standardize,
        learning_rate=options.lr,
        local_epochs=options.epochs,
        batch_size=options.batch_size,
        round_timeout_s=options.round_timeout_s,
        profiles=options.profiles,
        failure_rate=options.failure_rate,
        speedup=options.speedup,
        availability=options.availability,
        min_size=options.min_size,
        processes=options.processes,
        over_selection=options.over_selection,
    )


class PeakMemory(threading.Thread):
    """Samples the whole stack's resident memory until stopped; keeps the peak (MB)."""

    def __init__(self, settings: LauncherSettings) -> None:
        super().__init__(name="stack-rss", daemon=True)
        self.settings = settings
        self.peak_mb = 0.0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            stack = launcher.running_stack(self.settings)
            if stack is None:
                continue
            total, count = 0, 0
            for handles in _handles(stack).values():
                for process in handles:
                    try:
                        total += process.memory_info().rss
                        count += 1
                    except psutil.Error:
                        continue
            if total / 1e6 > self.peak_mb:
                self.peak_mb, self.peak_processes = total / 1e6, count

    def stop(self) -> None:
        self._halt.set()
        self.join()


def idle_device_bytes(devices: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="fedengine-bench-") as folder:
        out = Path(folder) / "idle.json"
        command = [
            sys.executable,
            "-m",
            IDLE_MODULE,
            "--devices",
            str(devices),
            "--json",
            str(out),
        ]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if finished.returncode != 0:
            lines = finished.stderr.strip().splitlines()
            raise ValueError(lines[-1] if lines else f"{IDLE_MODULE} failed")
        result: dict[str, int] = json.loads(out.read_text())
    return result


async def _rows(database_url: str, task_id: str) -> tuple[list[Any], list[Any]]:
    """The task's completed rounds (number, opened, closed, accepted updates) and its devices'
    fates (round, outcome, simulated seconds)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT round_number, opened_at, closed_at, cardinality(coalesce(aggregated, '{}')) "
            "FROM coordinator.rounds_public WHERE task_id = %s AND status = 'completed' "
            "ORDER BY round_number",
            (task_id,),
        )
        rounds = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT round_number, outcome, sim_s FROM simulator.outcomes WHERE task_id = %s",
            (task_id,),
        )
        fates = await cursor.fetchall()
    return rounds, fates


def summarise(rounds: list[Any], fates: list[Any], *, task_s: float) -> dict[str, Any]:
    """The round figures: seconds per round (over the task, and between the first round's
    close and the last's), updates per second, simulated seconds per round (when its last
    selected device answered or gave up) and the devices that did not complete, by kind."""
    closes = [row[2] for row in rounds]
    after_first = (
        (closes[-1] - closes[0]).total_seconds() / (len(closes) - 1) if len(closes) > 1 else None
    )
    updates = sum(row[3] for row in rounds)
    by_round: dict[int, float] = {}
    failures: dict[str, int] = {}
    for round_number, outcome, sim_s in fates:
        by_round[round_number] = max(by_round.get(round_number, 0.0), sim_s)
        if outcome != "completed":
            failures[outcome] = failures.get(outcome, 0) + 1
    return {
        "s_per_round": round(task_s / len(rounds), 4) if rounds else None,
        "s_per_round_after_first": None if after_first is None else round(after_first, 4),
        "updates_per_s": round(updates / task_s, 2) if task_s > 0 else None,
        "sim_s_per_round": round(statistics.fmean(by_round.values()), 3) if by_round else None,
        "failures": failures,
    }


async def bench_simulate(settings: LauncherSettings, options: SimulateOptions) -> dict[str, Any]:
    began = time.perf_counter()
    started_here = launcher.running_stack(settings) is None
    memory = PeakMemory(settings)
    memory.start()
    try:
        result = await run_demo(
            settings, demo_options(options), keep_running=True, console=Console(quiet=True)
        )
        stack = launcher.running_stack(settings)
        if stack is None:
            raise RuntimeError("the stack stopped during the benchmark")
        rounds, fates = await _rows(stack.database_url, result["task_id"])
    finally:
        memory.stop()
        if started_here:
            launcher.down(settings)
    task_s = result["phases"]["training_s"]
    return {
        "benchmark": "simulate",
        "machine": machine(),
        "devices": options.devices,
        "per_round": options.per_round,
        "rounds": len(rounds),
        "status": result["status"],
        "stop_reason": result["stop_reason"],
        "wall_s": round(time.perf_counter() - began, 3),
        "task_s": task_s,
        **summarise(rounds, fates, task_s=task_s),
        "stack_peak_rss_mb": round(memory.peak_mb, 1),
        "stack_processes": memory.peak_processes,
        **{k: v for k, v in idle_device_bytes(options.devices).items() if k != "devices"},
        "final_accuracy": result["final_accuracy"],
        "phases": result["phases"],
        "stack_started_here": started_here,
        "config": {k: v for k, v in vars(options).items()},
    }
