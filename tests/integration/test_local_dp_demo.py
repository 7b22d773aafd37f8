"""End to end: `fedengine demo --local-dp medium`: every device trains with DP-SGD at the
coordinator's settings, and the privacy service's device ledger (GET
/api/federated/privacy/budget?device_id=) shows each device's ε per round, within 3. The demo
runs on the session's stack, with a fleet of its own."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from fedprivacy.accountants import Accountant
from fedprivacy.accounting import epsilon_subsampled_gaussian
from tests.integration.conftest import Stack
from tests.integration.demos import Demo, running_stack_environment

pytestmark = pytest.mark.integration

logging.getLogger("absl").setLevel(logging.ERROR)


def test_a_medium_fleet_records_a_device_ledger_within_three_per_task(
    stack: Stack, tmp_path: Path
) -> None:
    # Execute: 4 medium devices, 2 a round, 3 rounds of 1 local epoch (10 DP-SGD steps).
    demo = Demo(
        running_stack_environment(stack), tmp_path,
        "--devices", "4", "--per-round", "2", "--rounds", "3", "--seed", "5",
        "--local-epochs", "1", "--local-dp", "medium",
    )  # fmt: skip
    _, document = demo.result(timeout_s=280)

    # Assert: the task ran (no central DP), and every device asked has a ledger.
    assert document["status"] == "completed"
    assert document["privacy"] is None
    local = document["local_dp"]
    assert (local["level"], local["epsilon_budget"], local["delta"]) == ("medium", 3.0, 1e-5)
    devices = local["devices"]
    assert devices
    # Every completed round asked at least min_devices (1) and at most per_round (2) devices:
    # a try opens with the eligible devices only (not busy, battery >= 20%), so a round may
    # ask one. Whatever was asked was charged, once per (round, attempt), nothing else.
    completed = {(r["round"], r["attempt"]) for r in document["rounds"]}
    per_try = Counter(tuple(a) for d in devices.values() for a in d["asked"])
    assert completed <= set(per_try) and all(1 <= n <= 2 for n in per_try.values())
    for device in devices.values():
        releases = device["releases"]
        assert sorted([r["round"], r["attempt"]] for r in releases) == device["asked"]
        spent = [r["epsilon_after"] for r in releases]
        # Grows with each round the device trained, never past the level's 3.
        assert spent == sorted(spent) and len(set(spent)) == len(spent)
        assert 0 < spent[-1] == device["epsilon_spent"] <= 3.0
        assert device["epsilon_lifetime"] >= device["epsilon_spent"]
        # ε is the server's, from the settings it sent: k asks of `steps` steps each.
        for k, release in enumerate(releases, start=1):
            assert (release["sample_rate"], release["steps"]) == (0.1, 10)
            expected = epsilon_subsampled_gaussian(
                sample_rate=release["sample_rate"],
                noise_multiplier=release["noise_multiplier"],
                steps=k * release["steps"],
                delta=1e-5,
                accountant=Accountant.RDP,
            ).epsilon
            assert release["epsilon_after"] == pytest.approx(expected, rel=1e-9)
