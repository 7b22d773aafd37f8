"""End to end on Fashion-MNIST: `fedengine demo --dataset fashion_mnist` starts a fleet that
holds Fashion-MNIST, the task trains on it, and the coordinator scores the official test set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedengine import infra

pytestmark = pytest.mark.integration


def test_a_fashion_mnist_demo_trains_on_its_fleet_and_learns(tmp_path: Path) -> None:
    # Prepare: 6 devices (10,000 training images each), 3 a round, one local epoch: short, and
    # still far above chance (0.1) after three rounds.
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "FEDENGINE_HOME": str(tmp_path / "home"),
        "FEDENGINE_GATEWAY_PORT": str(infra.free_port()),
    }
    for inherited in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "KAFKA_TOPIC_PREFIX"):
        env.pop(inherited, None)
    command = [
        str(Path(sys.executable).parent / "fedengine"), "demo", "--dataset", "fashion_mnist",
        "--devices", "6", "--per-round", "3", "--rounds", "3", "--local-epochs", "1",
        "--learning-rate", "0.1", "--seed", "7", "--json", str(out),
    ]  # fmt: skip

    # Execute
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)

    # Assert
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fashion_mnist" in result.stdout
    document = json.loads(out.read_text())
    assert (document["status"], document["stop_reason"]) == ("completed", "max_rounds")
    assert document["config"]["dataset"] == "fashion_mnist"
    assert document["config"]["task"]["dataset"] == "fashion_mnist"
    rounds = document["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for row in rounds:
        assert row["participants"] == 3 and row["rejected"] == 0, row
        # The MLP's update (784x64 + 64 + 64x10 + 10 float32) went up three times a round.
        assert row["bytes_up"] >= 3 * 4 * (784 * 64 + 64 + 64 * 10 + 10), row
    assert document["final_accuracy"] > 0.7, rounds
