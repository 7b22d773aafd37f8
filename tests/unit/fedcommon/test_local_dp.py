"""The local-DP numbers both the coordinator and the privacy service read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedcommon import local_dp
from fedcommon.messages.v1 import LocalDp, PrivacyLevel


def test_levels_budgets_are_the_issues() -> None:
    assert {level: local_dp.TASK_EPSILON.get(level) for level in PrivacyLevel} == {
        PrivacyLevel.NONE: None,
        PrivacyLevel.LOW: 8.0,
        PrivacyLevel.MEDIUM: 3.0,
        PrivacyLevel.HIGH: 1.0,
    }
    assert local_dp.lifetime_epsilon(PrivacyLevel.MEDIUM) == 30.0
    assert local_dp.LOCAL_DP_DELTA == 1e-5
    assert not local_dp.uses_local_dp(PrivacyLevel.NONE)
    with pytest.raises(ValueError, match="does not use local DP"):
        local_dp.task_epsilon(PrivacyLevel.NONE)


@pytest.mark.parametrize(("epochs", "steps"), [(1, 10), (5, 50), (100, 1000)])
def test_a_round_is_local_epochs_expected_passes(epochs: int, steps: int) -> None:
    assert local_dp.steps_per_round(epochs) == steps


def test_settings_for_level_none_are_refused() -> None:
    with pytest.raises(ValidationError, match="level none"):
        LocalDp(
            level=PrivacyLevel.NONE,
            noise_multiplier=1.0,
            sample_rate=0.1,
            steps=10,
            max_grad_norm=1.0,
            epsilon_budget=1.0,
            delta=1e-5,
        )
