"""End to end on Fashion-MNIST: `fedengine demo --dataset fashion_mnist` starts a fleet that
holds Fashion-MNIST, the task trains on it, and the coordinator scores the official test set.
The demo runs on the session's stack, with a fleet of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import Stack
from tests.integration.demos import Demo, running_stack_environment

pytestmark = pytest.mark.integration


def test_a_fashion_mnist_demo_trains_on_its_fleet_and_learns(stack: Stack, tmp_path: Path) -> None:
    # Prepare: 6 devices (10,000 training images each), 3 a round, one local epoch: short, and
    # still far above chance (0.1) after three rounds.
    demo = Demo(
        running_stack_environment(stack), tmp_path,
        "--dataset", "fashion_mnist",
        "--devices", "6", "--per-round", "3", "--rounds", "3", "--local-epochs", "1",
        "--learning-rate", "0.1", "--seed", "7",
    )  # fmt: skip

    # Execute
    output, document = demo.result(timeout_s=280)

    # Assert
    assert "fashion_mnist" in output
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
