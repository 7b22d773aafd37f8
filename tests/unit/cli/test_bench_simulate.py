from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fedengine.bench_simulate import SimulateOptions, demo_options, non_iid, summarise


def test_round_figures_come_from_the_rounds_and_the_devices_fates() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rounds = [
        (1, start, start + timedelta(seconds=1.0), 3),
        (2, start + timedelta(seconds=1.1), start + timedelta(seconds=1.5), 2),
        (3, start + timedelta(seconds=1.6), start + timedelta(seconds=2.0), 3),
    ]
    fates = [
        (1, "completed", 4.0),
        (1, "completed", 6.0),
        (2, "crash", 1.0),
        (2, "completed", 2.0),
        (3, "network_loss", 9.0),
        (3, "unavailable", 0.0),
    ]

    figures = summarise(rounds, fates, task_s=2.5)

    assert figures["s_per_round"] == pytest.approx(2.5 / 3, abs=1e-4)
    assert figures["s_per_round_after_first"] == pytest.approx(0.5)
    assert figures["updates_per_s"] == pytest.approx(8 / 2.5)
    assert figures["sim_s_per_round"] == pytest.approx((6.0 + 2.0 + 9.0) / 3, abs=1e-3)
    assert figures["failures"] == {"crash": 1, "network_loss": 1, "unavailable": 1}


def test_no_rounds_gives_no_round_figures() -> None:
    figures = summarise([], [], task_s=1.0)

    assert figures["s_per_round"] is None and figures["s_per_round_after_first"] is None
    assert figures["failures"] == {}


def test_the_options_become_the_demos() -> None:
    options = SimulateOptions(
        devices=1000,
        per_round=50,
        rounds=10,
        hidden=128,
        standardize=True,
        partition="dirichlet:0.3",
        failure_rate=0.1,
        min_size=1,
    )

    demo = demo_options(options)

    assert (demo.devices, demo.per_round, demo.rounds) == (1000, 50, 10)
    assert (demo.hidden, demo.standardize, demo.non_iid) == (128, True, 0.3)
    assert (demo.failure_rate, demo.min_size, demo.local_epochs) == (0.1, 1, 1)
    assert non_iid("iid") is None
    with pytest.raises(ValueError, match="dirichlet"):
        non_iid("shards")
