"""``fedengine bench``: measurements printed as JSON, the source of every figure we quote."""

from __future__ import annotations

import os
import platform
import statistics
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
