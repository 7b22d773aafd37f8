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


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "FEDENGINE_HOME": str(tmp_path / "home"),
        "FEDENGINE_GATEWAY_PORT": str(infra.free_port()),
    }
    for inherited in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "KAFKA_TOPIC_PREFIX"):
        env.pop(inherited, None)
    return env


def _demo(*flags: str, out: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "fedengine"), "demo", *flags, "--json", str(out)]


def test_demo_command_runs_a_task_and_writes_the_result(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = _environment(tmp_path)
    command = _demo(
        "--devices", "6", "--per-round", "3", "--rounds", "3", "--non-iid", "1.0", "--seed", "7",
        out=out,
    )  # fmt: skip

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
    assert document["config"]["malicious"] == 0.0
    assert document["config"]["max_update_norm"] == 100.0
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


def test_demo_with_sign_flipping_attackers_records_them_and_the_model_suffers(
    tmp_path: Path,
) -> None:
    # Prepare: 5 devices, all in every round, one of them (0.2) sends -10 x its honest delta.
    # With 4 honest devices and a factor 10 > 4, FedAvg's average points against the honest
    # direction. The same run without attackers (measured, IID, seed 7) scores 0.92, 0.94, 0.95
    # in its 3 rounds. The attacker's update (norm about 10 x 6.5 in round 1) stays under the
    # task's norm bound of 100, so validation lets it through and the strategy averages it.
    out = tmp_path / "out.json"
    env = _environment(tmp_path)
    command = _demo(
        "--devices", "5", "--per-round", "5", "--rounds", "3", "--seed", "7",
        "--malicious", "0.2", "--attack", "sign_flip", "--attack-scale", "10",
        out=out,
    )  # fmt: skip

    # Execute
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)

    # Assert: the result records the attack and the bound; the table states the bound.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "norm bound 100.0" in result.stdout
    document = json.loads(out.read_text())
    config = document["config"]
    assert (config["malicious"], config["attack"], config["attack_scale"]) == (
        0.2,
        "sign_flip",
        10.0,
    )
    assert config["max_update_norm"] == 100.0
    # The task was not told about the attackers.
    assert not any("malicious" in key or "attack" in key for key in config["task"])
    assert (document["status"], document["stop_reason"]) == ("completed", "max_rounds")
    rounds = document["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for row in rounds:
        # Every update, the attacker's too, passed validation and was aggregated...
        assert (row["participants"], row["rejected"]) == (5, 0), row
        # ...and the model never gets near what honest training reaches in one round.
        assert row["accuracy"] < 0.5, row
