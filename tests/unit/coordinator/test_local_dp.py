"""Local DP in the coordinator: which devices train with DP-SGD at which settings, who is
told, and that a device past its budget is not asked (core/local_privacy.py, rounds, spend)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from fedcommon import local_dp, topics
from fedcommon.messages.v1 import (
    LocalDp,
    LocalDpAssigned,
    PrivacyLevel,
    RoundStarted,
    TrainRequested,
)
from fedengine_coordinator.core import local_privacy
from fedengine_coordinator.core.effects import Emit
from fedengine_coordinator.core.events import SpendApproved
from fedengine_coordinator.core.machine import decide
from fedengine_coordinator.core.state import State
from fedengine_coordinator.local_privacy import calibrated
from fedprivacy.accountants import Accountant
from fedprivacy.accounting import epsilon_subsampled_gaussian
from tests.unit.coordinator.test_machine import NOW, SHA, offered, task
from tests.unit.coordinator.test_privacy_stage import approval, awaiting, dp_task

logging.getLogger("absl").setLevel(logging.ERROR)

MEDIUM = LocalDp(
    level=PrivacyLevel.MEDIUM,
    noise_multiplier=3.5,
    sample_rate=0.1,
    steps=50,
    max_grad_norm=1.0,
    epsilon_budget=3.0,
    delta=1e-5,
)


def emitted(effects: list[object], kind: type) -> list:  # type: ignore[type-arg]
    return [e.message for e in effects if isinstance(e, Emit) and isinstance(e.message, kind)]


@pytest.mark.parametrize("level", [PrivacyLevel.LOW, PrivacyLevel.MEDIUM, PrivacyLevel.HIGH])
def test_calibrated_settings_spend_at_most_the_levels_epsilon_over_the_planned_rounds(
    level: PrivacyLevel,
) -> None:
    # Execute
    chosen = calibrated(level, rounds=3, local_epochs=1)

    # Assert
    spent = epsilon_subsampled_gaussian(
        sample_rate=chosen.sample_rate,
        noise_multiplier=chosen.noise_multiplier,
        steps=3 * chosen.steps,
        delta=local_dp.LOCAL_DP_DELTA,
        accountant=Accountant.RDP,
    ).epsilon
    assert (chosen.level, chosen.steps, chosen.sample_rate) == (level, 10, 0.1)
    assert 0.99 * local_dp.task_epsilon(level) < spent <= local_dp.task_epsilon(level)


def test_assign_gives_settings_only_to_local_dp_devices() -> None:
    levels = {"d0": PrivacyLevel.MEDIUM, "d1": PrivacyLevel.NONE}

    assert local_privacy.assign(
        ["d0", "d1", "d2"], levels=levels, settings={PrivacyLevel.MEDIUM: MEDIUM}
    ) == {"d0": MEDIUM}
    with pytest.raises(ValueError, match="no local DP settings for level medium"):
        local_privacy.assign(["d0"], levels=levels, settings={})


def offered_with_levels(*levels: PrivacyLevel, exhausted: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    event = offered(*([None] * len(levels)))
    candidates = [
        replace(c, privacy_level=level) for c, level in zip(event.candidates, levels, strict=True)
    ]
    return replace(
        event,
        candidates=candidates,
        exhausted=exhausted,
        local_dp={PrivacyLevel.MEDIUM: MEDIUM},
    )


def test_a_plain_try_sends_local_dp_settings_and_charges_before_it_asks() -> None:
    # Prepare: d0 is medium, d1 none.
    event = offered_with_levels(PrivacyLevel.MEDIUM, PrivacyLevel.NONE)

    # Execute
    _, effects = decide(State(task(devices_per_round=2)), event)

    # Assert
    requests = {r.device_id: r.local_dp for r in emitted(effects, TrainRequested)}
    assert requests == {"d0": MEDIUM, "d1": None}
    (assigned,) = emitted(effects, LocalDpAssigned)
    assert [(a.device_id, a.settings) for a in assigned.assignments] == [("d0", MEDIUM)]
    assert assigned.planned_rounds == 3
    kinds = [type(e.message) for e in effects if isinstance(e, Emit)]
    assert kinds.index(LocalDpAssigned) < kinds.index(TrainRequested)
    assert [e.base for e in effects if isinstance(e, Emit) and e.message is assigned] == [
        topics.PRIVACY
    ]


def test_no_local_dp_device_no_charge_message() -> None:
    event = offered_with_levels(PrivacyLevel.NONE, PrivacyLevel.NONE)

    _, effects = decide(State(task(devices_per_round=2)), event)

    assert emitted(effects, LocalDpAssigned) == []
    assert all(r.local_dp is None for r in emitted(effects, TrainRequested))


def test_an_exhausted_device_is_not_asked() -> None:
    # Prepare: three medium devices, d1 past its budget; two per round.
    event = offered_with_levels(
        PrivacyLevel.MEDIUM, PrivacyLevel.MEDIUM, PrivacyLevel.MEDIUM, exhausted=frozenset({"d1"})
    )

    # Execute
    _, effects = decide(State(task(devices_per_round=2)), event)

    # Assert
    assert sorted(r.device_id for r in emitted(effects, TrainRequested)) == ["d0", "d2"]


def test_a_central_dp_try_also_carries_local_dp_when_approved() -> None:
    # Prepare: an awaiting DP try of d0 (medium) and d1 (none).
    state = State(dp_task(), awaiting())
    event = SpendApproved(
        approval(),
        public_keys={"d0": bytes(32), "d1": bytes([1]) * 32},
        model_sha256=SHA,
        param_shapes=[[2, 2], [2]],
        now=NOW,
        privacy_levels={"d0": PrivacyLevel.MEDIUM, "d1": PrivacyLevel.NONE},
        local_dp={PrivacyLevel.MEDIUM: MEDIUM},
    )

    # Execute
    _, effects = decide(state, event)

    # Assert: the local charge is sent; the watchers still see no participant list.
    (assigned,) = emitted(effects, LocalDpAssigned)
    assert [a.device_id for a in assigned.assignments] == ["d0"]
    assert {r.device_id: r.local_dp for r in emitted(effects, TrainRequested)} == {
        "d0": MEDIUM,
        "d1": None,
    }
    assert [s.participants for s in emitted(effects, RoundStarted)] == [[]]


def test_a_device_asked_every_planned_round_is_not_asked_again_by_that_task() -> None:
    # Prepare: the task plans 3 rounds; d0 (medium) was asked 3 times (a retry among them),
    # d1 (none) too, d2 (medium) twice. The privacy service has not flagged anyone yet.
    event = replace(
        offered_with_levels(PrivacyLevel.MEDIUM, PrivacyLevel.NONE, PrivacyLevel.MEDIUM),
        asks={"d0": 3, "d1": 3, "d2": 2},
    )

    # Execute
    _, effects = decide(State(task(devices_per_round=3, min_devices=2)), event)

    # Assert: only d0 is left out (a device without local DP has no budget to pass).
    assert sorted(r.device_id for r in emitted(effects, TrainRequested)) == ["d1", "d2"]
