from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fedcommon.messages.v1 import DeviceType
from fedengine_simulator.core import behaviour, profiles
from fedengine_simulator.core.behaviour import Battery, Failures, Outcome, Work
from fedengine_simulator.core.clock import Clock

WORK = Work(
    examples=100, epochs=1, forward_flops=20_000, download_bytes=80_000, upload_bytes=80_000
)


def phone(**changes: object) -> profiles.DeviceProfile:
    device = profiles.draw(DeviceType.MOBILE, np.random.default_rng(0))
    return replace(device, **changes)  # type: ignore[arg-type]


def decide(
    profile: profiles.DeviceProfile, seed: int = 0, **overrides: object
) -> behaviour.Decision:
    arguments: dict[str, object] = {
        "battery": Battery(80.0, 12 * 3600.0),
        "at_s": 12 * 3600.0,
        "work": WORK,
        "budget_s": 3000.0,
        "available_p": 1.0,
        "failures": Failures(),
        "rng": np.random.default_rng(seed),
    }
    arguments.update(overrides)
    return behaviour.decide(profile, **arguments)  # type: ignore[arg-type]


def test_times_follow_fedscales_model() -> None:
    device = phone(gflops=2.0, download_mbps=8.0, upload_mbps=4.0, latency_s=0.1)
    download, compute, upload = behaviour.durations(device, WORK)

    assert compute == pytest.approx(3 * 20_000 * 100 / 2e9)
    assert download == pytest.approx(80_000 * 8 / 8e6 + 0.1)
    assert upload == pytest.approx(80_000 * 8 / 4e6 + 0.1)
    decision = decide(device)
    assert decision.outcome == Outcome.COMPLETED
    assert decision.sim_s == pytest.approx(download + compute + upload)


def test_training_drains_the_battery_by_its_energy() -> None:
    device = phone(charges=False)
    decision = decide(device)
    _, compute, _ = behaviour.durations(device, WORK)
    joules = 3.0 * compute + 5.0 * 0.16
    assert decision.battery.pct == pytest.approx(80.0 - 100 * joules / (15 * 3600))


def test_a_slow_device_misses_the_deadline() -> None:
    decision = decide(phone(upload_mbps=0.001), budget_s=30.0)

    assert decision.outcome == Outcome.DEADLINE and decision.sim_s == 30.0


def test_a_device_not_available_at_that_hour_declines() -> None:
    assert decide(phone(), available_p=0.0).outcome == Outcome.UNAVAILABLE


def test_a_low_battery_device_trains_only_when_charging() -> None:
    device = phone(charges=True)
    low = Battery(10.0, 12 * 3600.0)

    assert decide(device, battery=low).outcome == Outcome.UNAVAILABLE  # noon: not charging
    assert decide(device, battery=low, at_s=23 * 3600.0).outcome == Outcome.COMPLETED


def test_a_battery_that_runs_out_mid_round_dies() -> None:
    device = phone(charges=False, battery_wh=0.0005)
    decision = decide(device, battery=Battery(25.0, 12 * 3600.0))

    assert decision.outcome == Outcome.BATTERY_DEATH
    assert decision.battery.pct == 0.0
    total = sum(behaviour.durations(device, WORK))
    assert 0 < decision.sim_s < total


def test_injected_failures_come_at_their_rate_and_mix() -> None:
    failures = Failures(0.1, {Outcome.CRASH: 0.5, Outcome.NETWORK_LOSS: 0.5})
    outcomes = Counter(decide(phone(), seed, failures=failures).outcome for seed in range(4000))

    assert 0.08 < (outcomes[Outcome.CRASH] + outcomes[Outcome.NETWORK_LOSS]) / 4000 < 0.12
    assert outcomes[Outcome.CRASH] > 100 and outcomes[Outcome.NETWORK_LOSS] > 100


def test_a_crash_happens_during_training_and_a_network_loss_during_the_upload() -> None:
    device = phone()
    download, compute, upload = behaviour.durations(device, WORK)
    crash = decide(device, failures=Failures(1.0, {Outcome.CRASH: 1.0}))
    lost = decide(device, failures=Failures(1.0, {Outcome.NETWORK_LOSS: 1.0}))

    assert crash.outcome == Outcome.CRASH and download <= crash.sim_s <= download + compute
    assert lost.outcome == Outcome.NETWORK_LOSS
    assert download + compute <= lost.sim_s <= download + compute + upload


def test_the_same_seed_decides_the_same_whatever_else_happened() -> None:
    failures = Failures(0.3)
    first = [decide(phone(), seed, failures=failures) for seed in range(50)]
    again = [decide(phone(), seed, failures=failures) for seed in reversed(range(50))]

    assert first == list(reversed(again))


def test_battery_charges_in_its_window_and_drains_outside() -> None:
    device = phone(charges=True)
    night = behaviour.battery_at(device, Battery(50.0, 22 * 3600.0), 24 * 3600.0)
    day = behaviour.battery_at(device, Battery(50.0, 12 * 3600.0), 14 * 3600.0)

    assert night.pct == pytest.approx(100.0)  # 2 h at 40 %/h, capped
    assert day.pct == pytest.approx(48.0)  # 2 h at 1 %/h idle
    assert behaviour.battery_at(device, night, 0.0) == night  # an earlier moment: unchanged


def test_failures_refuse_a_rate_or_kind_they_cannot_inject() -> None:
    with pytest.raises(ValueError, match="within"):
        Failures(1.5)
    with pytest.raises(ValueError, match="injected failures"):
        Failures(0.1, {Outcome.DEADLINE: 1.0})


def test_the_clock_places_rounds_by_number_and_scales_time() -> None:
    clock = Clock(speedup=100.0, start_s=9 * 3600.0)
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    # A few milliseconds between the coordinator's two stamps change nothing.
    window = clock.window_s(
        sent_at=sent + timedelta(milliseconds=3), deadline=sent + timedelta(seconds=30)
    )

    assert window == pytest.approx(3000.0)
    assert clock.round_start_s(3, window) == pytest.approx(9 * 3600 + 6000)
    assert clock.wall_s(250.0) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        Clock(speedup=0.0, start_s=0.0)
