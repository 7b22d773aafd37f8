"""End to end: the `fedengine demo` command itself, as a user runs it: once on its own embedded
stack (it starts everything and stops what it started), once on a running stack."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Stack
from tests.integration.demos import Demo, command, own_stack_environment, running_stack_environment

pytestmark = pytest.mark.integration


def test_demo_command_runs_a_task_and_writes_the_result(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = own_stack_environment(tmp_path)
    demo = command(
        "--devices", "6", "--per-round", "3", "--rounds", "3", "--non-iid", "1.0", "--seed", "7",
        out=out,
    )  # fmt: skip

    result = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=240)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["config"]["embedded_broker"] and document["config"]["embedded_postgres"]
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
    stack: Stack, tmp_path: Path
) -> None:
    # Prepare: 5 devices, all in every round, one of them (0.2) sends -10 x its honest delta.
    # With 4 honest devices and a factor 10 > 4, FedAvg's average points against the honest
    # direction. The same run without attackers (measured, IID, seed 7) scores 0.92, 0.94, 0.95
    # in its 3 rounds. The attacker's update (norm about 10 x 6.5 in round 1) stays under the
    # task's norm bound of 100, so validation lets it through and the strategy averages it.
    # The demo runs on the session's stack: it starts its own fleet there.
    demo = Demo(
        running_stack_environment(stack), tmp_path,
        "--devices", "5", "--per-round", "5", "--rounds", "3", "--seed", "7",
        "--malicious", "0.2", "--attack", "sign_flip", "--attack-scale", "10",
    )  # fmt: skip

    # Execute
    output, document = demo.result(timeout_s=240)

    # Assert: the result records the attack and the bound; the table states the bound.
    assert "norm bound 100.0" in output
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
