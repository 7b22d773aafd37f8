"""The device ledger's arithmetic: a device's ε per task and lifetime, recomputed from the
settings it was asked to train with; the flags that stop the coordinator asking it again."""

from __future__ import annotations

import logging
import uuid

import pytest

from fedcommon import local_dp
from fedcommon.messages.v1 import LocalDp, PrivacyLevel
from fedengine_privacy.core.device_ledger import LOCAL_ACCOUNTANT, DeviceRelease, charge
from fedengine_privacy.core.ledger import Release
from fedprivacy.accounting import epsilon_subsampled_gaussian
from fedprivacy.calibration import calibrate_noise_multiplier

logging.getLogger("absl").setLevel(logging.ERROR)

TASK_A = uuid.UUID(int=1)
TASK_B = uuid.UUID(int=2)
ROUNDS = 5
STEPS = 10


def settings(level: PrivacyLevel, noise_multiplier: float, steps: int = STEPS) -> LocalDp:
    return LocalDp(
        level=level,
        noise_multiplier=noise_multiplier,
        sample_rate=local_dp.LOCAL_SAMPLE_RATE,
        steps=steps,
        max_grad_norm=1.0,
        epsilon_budget=local_dp.task_epsilon(level),
        delta=local_dp.LOCAL_DP_DELTA,
    )


def calibrated(level: PrivacyLevel, *, rounds: int = ROUNDS) -> LocalDp:
    z = calibrate_noise_multiplier(
        target_epsilon=local_dp.task_epsilon(level),
        delta=local_dp.LOCAL_DP_DELTA,
        sample_rate=local_dp.LOCAL_SAMPLE_RATE,
        steps=rounds * STEPS,
        accountant=LOCAL_ACCOUNTANT,
    ).noise_multiplier
    return settings(level, z)


def run_task(
    task_id: uuid.UUID, asks: int, chosen: LocalDp, history: list[DeviceRelease]
) -> list[object]:
    charges = []
    for round_number in range(1, asks + 1):
        made = charge(
            "dev-1", chosen, history, task_id=task_id, round_number=round_number, attempt=0
        )
        assert made is not None
        history.append(DeviceRelease(task_id, made.release))
        charges.append(made)
    return charges


@pytest.mark.parametrize("level", [PrivacyLevel.LOW, PrivacyLevel.MEDIUM, PrivacyLevel.HIGH])
def test_the_planned_rounds_stay_within_the_level_and_one_more_would_not(
    level: PrivacyLevel,
) -> None:
    # Prepare
    chosen = calibrated(level)

    # Execute
    charges = run_task(TASK_A, ROUNDS, chosen, [])

    # Assert: ε grows every round, ends within the level's ε, and only the last round's
    # charge says one more would pass it.
    epsilons = [c.epsilon_task_after for c in charges]  # type: ignore[attr-defined]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == ROUNDS
    assert epsilons[-1] <= local_dp.task_epsilon(level)
    assert epsilons[-1] > 0.99 * local_dp.task_epsilon(level)
    assert [c.task_exhausted for c in charges] == [False] * (ROUNDS - 1) + [True]  # type: ignore[attr-defined]
    assert not any(c.lifetime_exhausted for c in charges)  # type: ignore[attr-defined]


def test_epsilon_is_the_subsampled_gaussian_of_all_steps_asked() -> None:
    # Prepare
    chosen = settings(PrivacyLevel.MEDIUM, 1.3)

    # Execute
    charges = run_task(TASK_A, 3, chosen, [])

    # Assert: 3 asks of 10 steps are 30 steps of the same mechanism.
    expected = epsilon_subsampled_gaussian(
        sample_rate=0.1, noise_multiplier=1.3, steps=30, delta=1e-5, accountant=LOCAL_ACCOUNTANT
    ).epsilon
    assert charges[-1].epsilon_task_after == pytest.approx(expected, rel=1e-12)  # type: ignore[attr-defined]


def test_lifetime_composes_every_task_and_task_epsilon_starts_afresh() -> None:
    # Prepare
    chosen = calibrated(PrivacyLevel.HIGH)
    history: list[DeviceRelease] = []
    first = run_task(TASK_A, ROUNDS, chosen, history)

    # Execute
    second = run_task(TASK_B, 1, chosen, history)

    # Assert
    assert second[0].epsilon_task_after == pytest.approx(first[0].epsilon_task_after)  # type: ignore[attr-defined]
    assert second[0].epsilon_lifetime_after > first[-1].epsilon_lifetime_after  # type: ignore[attr-defined]
    assert second[0].epsilon_lifetime_budget == 10 * 1.0  # type: ignore[attr-defined]


def test_a_device_past_its_lifetime_budget_is_flagged() -> None:
    # Prepare: high (ε 1 per task, 10 lifetime), asked with little noise many times (16 asks
    # of 100 steps at z = 2: 1,200 steps are ε 9.95, 1,600 are 11.8).
    chosen = settings(PrivacyLevel.HIGH, 2.0, steps=100)
    history: list[DeviceRelease] = []

    # Execute
    charges = run_task(TASK_A, 16, chosen, history)

    # Assert: flagged once less than one task's ε (1) of the lifetime (10) is left, and
    # never before; no charge up to the flag passes the lifetime.
    flags = [c.lifetime_exhausted for c in charges]  # type: ignore[attr-defined]
    first = flags.index(True)
    assert all(flags[first:]) and not any(flags[:first])
    lifetime = [c.epsilon_lifetime_after for c in charges]  # type: ignore[attr-defined]
    assert lifetime[first - 1] <= 9.0 < lifetime[first] <= 10.0


def test_a_costlier_later_task_cannot_take_a_device_past_its_lifetime() -> None:
    """The gap a review found: a device near its lifetime, flagged only by one more release at
    the current task's settings, joined a task whose releases cost more (79.96 → 81.39 of 80).
    Now it stays eligible only while a whole task's ε is left, and no release costs more."""
    # Prepare: high (ε 1 per task, 10 lifetime); cheap asks (z = 2, 100 steps), each for a
    # task of its own, until the device is flagged; the history it had while still eligible.
    cheap = settings(PrivacyLevel.HIGH, 2.0, steps=100)
    history: list[DeviceRelease] = []
    flagged = False
    while not flagged:
        assert len(history) < 20
        task_id = uuid.UUID(int=100 + len(history))
        made = charge("dev-1", cheap, history, task_id=task_id, round_number=1, attempt=0)
        assert made is not None
        flagged = made.lifetime_exhausted
        if not flagged:
            history.append(DeviceRelease(task_id, made.release))
    # The costliest release a high task can ask: a one-round task's whole ε 1 at once.
    costly = calibrated(PrivacyLevel.HIGH, rounds=1)

    # Execute: the last eligible moment, asked by that costly task instead.
    extra = charge("dev-1", costly, history, task_id=TASK_B, round_number=1, attempt=0)

    # Assert: within the lifetime.
    assert extra is not None
    assert extra.epsilon_lifetime_after <= 10.0


def test_a_try_charged_before_is_not_charged_again() -> None:
    # Prepare
    chosen = settings(PrivacyLevel.LOW, 1.0)
    history = [DeviceRelease(TASK_A, Release(1, 0, 0.1, 1.0, STEPS))]

    # Execute
    again = charge("dev-1", chosen, history, task_id=TASK_A, round_number=1, attempt=0)
    retry = charge("dev-1", chosen, history, task_id=TASK_A, round_number=1, attempt=1)

    # Assert: the retry is a new release; the same try is not.
    assert again is None
    assert retry is not None and retry.epsilon_task_after > 0
