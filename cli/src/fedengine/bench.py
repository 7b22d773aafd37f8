"""``fedengine bench``: measurements printed as JSON, the source of every figure we quote."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from fedengine.demo import DemoOptions, run_demo
from fedengine.settings import LauncherSettings


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def bench_demo(settings: LauncherSettings, options: DemoOptions) -> dict[str, Any]:
    """Run the demo once and summarise its wall time and per-round latency."""
    quiet = Console(quiet=True)
    result = await run_demo(settings, options, keep_running=False, console=quiet)
    durations = [r["duration_s"] for r in result["rounds"]]
    steady = durations[1:] or durations  # round 1 includes first model load and warm-up
    return {
        "benchmark": "demo",
        "machine": machine(),
        "config": {k: v for k, v in result["config"].items() if k != "task"},
        "status": result["status"],
        "final_accuracy": result["final_accuracy"],
        "wall_s": result["wall_s"],
        "phases": result["phases"],
        "rounds": len(durations),
        "round_s_first": durations[0] if durations else None,
        "round_s_median_after_first": statistics.median(steady) if steady else None,
        "round_s_mean": statistics.fmean(durations) if durations else None,
        "round_s_max": max(durations) if durations else None,
    }


AGGREGATE_MODULE = "fedengine_aggregator.bench"
AGGREGATE_KEYS = ("participants", "params", "strategy", "seconds", "peak_bytes")


def bench_aggregate(
    *, participants: int, params: int, strategy: str, seed: int = 0, timeout_s: float = 3600
) -> dict[str, Any]:
    """Measure one round's aggregation with the aggregator's pure core, in a process of its own.

    The CLI starts services' code by module name, never by importing it; a fresh process also
    keeps the CLI's own allocations out of tracemalloc's peak. Returns
    ``{"participants", "params", "strategy", "seconds", "peak_bytes"}``; raises ``ValueError``
    with the aggregator's message (an unknown strategy, say) when the measurement fails.
    """
    with tempfile.TemporaryDirectory(prefix="fedengine-bench-") as folder:
        out = Path(folder) / "aggregate.json"
        command = [
            sys.executable,
            "-m",
            AGGREGATE_MODULE,
            "--participants",
            str(participants),
            "--params",
            str(params),
            "--strategy",
            strategy,
            "--seed",
            str(seed),
            "--json",
            str(out),
        ]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if finished.returncode != 0:
            lines = finished.stderr.strip().splitlines()
            raise ValueError(lines[-1] if lines else f"{AGGREGATE_MODULE} failed")
        result: dict[str, Any] = json.loads(out.read_text())
    missing = [key for key in AGGREGATE_KEYS if key not in result]
    if missing:
        raise ValueError(f"{AGGREGATE_MODULE} wrote no {missing}")
    return {key: result[key] for key in AGGREGATE_KEYS}
