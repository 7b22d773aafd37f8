"""End to end: `fedengine demo` with central DP, as a user runs it (issue 9's acceptance).

Both demos run at once on the session's stack, each with a fleet of its own. One local epoch a
round: central DP's accounting depends on the sample rate and the noise, not on the training.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedprivacy.accountants import Accountant
from fedprivacy.accounting import GaussianRelease, epsilon_for_releases
from tests.integration.conftest import Stack
from tests.integration.demos import Demo, running_stack_environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demos(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Demo]]:
    env = running_stack_environment(stack)
    folder = tmp_path_factory.mktemp("privacy-demos")
    started = {
        # The command. 20 devices, 10 a round: each joins with q = 0.5.
        "fixed": Demo(
            env, folder / "fixed",
            "--devices", "20", "--per-round", "10", "--rounds", "200", "--seed", "3",
            "--local-epochs", "1", "--dp-epsilon", "1.0", "--dp-noise-multiplier", "5",
        ),
        "calibrated": Demo(
            env, folder / "calibrated",
            "--devices", "20", "--per-round", "10", "--rounds", "3", "--seed", "4",
            "--local-epochs", "1", "--dp-epsilon", "3.0",
        ),
    }  # fmt: skip
    try:
        yield started
    finally:
        for demo in started.values():
            demo.stop()


def test_a_fixed_noise_task_stops_before_the_round_that_would_pass_its_budget(
    demos: dict[str, Demo],
) -> None:
    # Execute: the command (q = 0.5, z = 5, epsilon 1).
    _, document = demos["fixed"].result(timeout_s=280)

    # Assert: it ran some rounds and stopped for the budget, never over it.
    assert (document["status"], document["stop_reason"]) == (
        "completed",
        "privacy_budget_exhausted",
    )
    privacy = document["privacy"]
    assert privacy["epsilon_budget"] == 1.0 and privacy["noise_multiplier"] == 5.0
    assert not privacy["calibrated"]
    assert 0 < privacy["epsilon_spent"] <= 1.0
    rounds = document["rounds"]
    assert 1 <= len(rounds) < 200
    spent = [r["epsilon_spent"] for r in rounds]
    assert all(0 < e <= 1.0 for e in spent) and spent == sorted(spent)
    # Every release was audited, and so was the refusal; one release per approved try.
    assert privacy["audit"].get("approved") == privacy["releases"] >= len(rounds)
    assert privacy["audit"].get("refused") == privacy["refusals"] == 1
    # The ledger recomputes to what was reported, and the refusal was right: one more release
    # at the last rate would have passed the budget.
    ledger = [
        GaussianRelease(row["sample_rate"], row["noise_multiplier"], 1) for row in privacy["ledger"]
    ]
    assert len(ledger) == privacy["releases"]
    within = epsilon_for_releases(ledger, delta=1e-5, accountant=Accountant.RDP)
    beyond = epsilon_for_releases([*ledger, ledger[-1]], delta=1e-5, accountant=Accountant.RDP)
    assert within.epsilon == pytest.approx(privacy["epsilon_spent"], rel=1e-6)
    assert beyond.epsilon > 1.0
    # A DP round publishes no participants (the demo counts none).
    assert all(r["participants"] == 0 for r in rounds)


def test_a_calibrated_task_spends_its_budget_over_its_rounds(demos: dict[str, Demo]) -> None:
    # Execute
    _, document = demos["calibrated"].result(timeout_s=280)

    # Assert: all rounds ran, within the budget and close to it (calibration aims just below).
    assert (document["status"], document["stop_reason"]) == ("completed", "max_rounds")
    privacy = document["privacy"]
    assert privacy["calibrated"]
    assert [r["round"] for r in document["rounds"]] == [1, 2, 3]
    assert 0.99 * 3.0 <= privacy["epsilon_spent"] <= 3.0
    assert document["config"]["dp_epsilon"] == 3.0
    assert document["config"]["task"]["privacy"]["noise_multiplier"] == "calibrate"
