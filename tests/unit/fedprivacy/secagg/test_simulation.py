"""Whole rounds: the sum is exact above the threshold for drops at every stage, and a round
with too few survivors fails closed, naming the stage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.errors import ThresholdNotMet
from fedprivacy.secagg.messages import Stage
from fedprivacy.secagg.simulation import run_round
from tests.unit.fedprivacy.secagg.conftest import expected_sum, make_config, make_updates


def _survives(config: RoundConfig, drops: dict[int, Stage]) -> set[int] | None:
    """An independent oracle: the contributors, or None where the round must fail closed."""
    t, graph = config.threshold, config.neighbours

    def stays(device: int, stage: Stage) -> bool:
        return device not in drops or drops[device] > stage

    def live(device: int, group: set[int]) -> int:
        return sum(1 for n in graph[device] if n in group)

    u1 = {d for d in range(config.num_clients) if stays(d, Stage.ADVERTISE_KEYS)}
    u2 = {d for d in u1 if stays(d, Stage.SHARE_KEYS) and live(d, u1) >= t}
    u3 = {d for d in u2 if stays(d, Stage.MASKED_INPUT) and live(d, u2) >= t}
    u4 = {d for d in u3 if stays(d, Stage.UNMASKING) and live(d, u3) >= t}
    if min(len(u1), len(u2), len(u3)) < t or any(live(o, u3) < t for o in u2):
        return None
    if any(live(o, u4) < t for o in u2):
        return None
    return u3


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 14),
    dim=st.integers(1, 16),
    clip_bit=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_the_sum_is_exact_above_the_threshold_and_fails_closed_below(
    n: int, dim: int, clip_bit: bool, seed: int, data: st.DataObject
) -> None:
    # Prepare: each device drops before some stage, or not at all.
    config = make_config(n, dim, clip_bit=clip_bit, bits=data.draw(st.integers(5, 20)))
    updates, examples = make_updates(config, seed)
    stages = st.sampled_from([None, *Stage])
    drops = {
        d: stage for d in range(n) if (stage := data.draw(stages, label=f"drop {d}")) is not None
    }
    contributors = _survives(config, drops)

    # Execute / Assert
    if contributors is None:
        with pytest.raises(ThresholdNotMet):
            run_round(
                config,
                updates,
                num_examples=examples,
                rng=np.random.default_rng(seed),
                drop_before=drops,
            )
        return
    result = run_round(
        config, updates, num_examples=examples, rng=np.random.default_rng(seed), drop_before=drops
    )
    assert result.contributors == tuple(sorted(contributors))
    np.testing.assert_array_equal(
        result.total, expected_sum(config, updates, examples, contributors, rng_seed=seed)
    )


@pytest.mark.parametrize("stage", list(Stage))
def test_drops_at_each_stage_keep_the_sum_exact(stage: Stage) -> None:
    # Prepare: 40 devices (degree 16, threshold 9), every fifth one drops before ``stage``.
    config = make_config(40, 12)
    updates, examples = make_updates(config, 1)
    drops = {d: stage for d in range(0, 40, 5)}

    # Execute
    result = run_round(
        config, updates, num_examples=examples, rng=np.random.default_rng(3), drop_before=drops
    )

    # Assert: a device that sent its masked input stays in the sum.
    contributors = set(range(40)) - (set(drops) if stage <= Stage.MASKED_INPUT else set())
    assert set(result.contributors) == contributors
    np.testing.assert_array_equal(
        result.total, expected_sum(config, updates, examples, contributors, rng_seed=3)
    )


def test_the_weighted_mean_comes_back_within_quantisation_error() -> None:
    config = make_config(12, 30)
    updates, examples = make_updates(config, 2)
    result = run_round(config, updates, num_examples=examples, rng=np.random.default_rng(0))
    weights = np.minimum(examples, config.weight_cap).astype(np.float64)
    clipped = [u * min(1.0, 1.0 / max(float(np.linalg.norm(u)), 1e-12)) for u in updates]
    mean = sum(w * c for w, c in zip(weights, clipped, strict=True)) / weights.sum()
    np.testing.assert_allclose(result.weighted_mean(), mean, atol=1e-3)
    assert result.weight_sum == int(weights.sum())


@pytest.mark.parametrize(
    ("stage", "name"),
    [
        (Stage.ADVERTISE_KEYS, "advertise-keys"),
        (Stage.SHARE_KEYS, "share-keys"),
        (Stage.MASKED_INPUT, "masked-input"),
        (Stage.UNMASKING, "unmasking"),
    ],
)
def test_too_many_dropouts_fail_closed_naming_the_stage(stage: Stage, name: str) -> None:
    # Prepare: 10 devices, complete graph (degree 9, threshold 5); 6 drop before ``stage``.
    config = make_config(10, 4)
    updates, examples = make_updates(config, 0)
    drops = dict.fromkeys(range(6), stage)

    # Execute / Assert
    with pytest.raises(ThresholdNotMet, match=name) as caught:
        run_round(
            config, updates, num_examples=examples, rng=np.random.default_rng(0), drop_before=drops
        )
    assert caught.value.required == 5 and caught.value.available < 5
