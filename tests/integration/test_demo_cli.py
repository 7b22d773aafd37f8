"""End to end: the `fedengine demo` command itself, as a user runs it, on its own embedded stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedengine import infra

pytestmark = pytest.mark.integration


def test_demo_command_runs_a_task_and_writes_the_result(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "FEDENGINE_HOME": str(tmp_path / "home"),
        "FEDENGINE_GATEWAY_PORT": str(infra.free_port()),
    }
    for inherited in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "KAFKA_TOPIC_PREFIX"):
        env.pop(inherited, None)
    command = [
        str(Path(sys.executable).parent / "fedengine"),
        "demo",
        "--devices",
        "6",
        "--per-round",
        "3",
        "--rounds",
        "3",
        "--non-iid",
        "1.0",
        "--seed",
        "7",
        "--json",
        str(out),
    ]

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert set(document) >= {
        "task_id",
        "status",
        "stop_reason",
        "config",
        "rounds",
        "final_accuracy",
        "wall_s",
    }
    assert (document["status"], document["stop_reason"]) == ("completed", "max_rounds")
    assert document["config"]["devices"] == 6 and document["config"]["non_iid"] == 1.0
    assert document["config"]["partitioning"] == "dirichlet"
    assert [r["round"] for r in document["rounds"]] == [1, 2, 3]
    for row in document["rounds"]:
        assert set(row) >= {
            "round",
            "accuracy",
            "loss",
            "participants",
            "dropped",
            "rejected",
            "duration_s",
            "bytes_up",
            "bytes_down",
        }
        assert row["participants"] == 3 and row["bytes_up"] > 0 and row["bytes_down"] > 0
    assert document["final_accuracy"] == document["rounds"][-1]["accuracy"]
    # It stopped what it started.
    stack = Path(env["FEDENGINE_HOME"]) / "run" / "stack.json"
    assert not stack.exists()
