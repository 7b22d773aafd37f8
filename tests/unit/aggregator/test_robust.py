"""Median, trimmed mean, Krum, Multi-Krum: golden values, robustness properties, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcommon.server_opt import FLOAT32_MAX
from fedengine_aggregator.core.robust import (
    Krum,
    KrumBuffer,
    Median,
    MultiKrum,
    TrimmedMean,
    krum_scores,
    squared_distances,
)
from fedengine_aggregator.core.strategies import Accumulator, AggregationRule
from fedengine_aggregator.core.sum_rules import FedAvg

DIM = 3
honest_values = st.lists(
    hnp.arrays(np.float32, (DIM,), elements=st.floats(-10, 10, width=32)), min_size=1, max_size=9
)
outlier_magnitude = st.floats(1e3, FLOAT32_MAX, width=32)


def run(rule: AggregationRule, updates: list[np.ndarray], examples: int = 1) -> Accumulator:
    accumulator = rule.start([list(updates[0].shape)])
    for update in updates:
        accumulator.add([update], examples)
    return accumulator


def scalars(*values: float) -> list[np.ndarray]:
    return [np.array([v], np.float32) for v in values]


def test_golden_median() -> None:
    assert run(Median(), scalars(3, 1, 2)).result()[0][0] == 2.0
    assert run(Median(), scalars(4, 1, 2, 100)).result()[0][0] == 3.0  # (2 + 4) / 2
    assert run(Median(), scalars(5)).result()[0][0] == 5.0


def test_golden_trimmed_mean() -> None:
    # n = 5, beta = 0.2: drop 1 from each side of [-100, 1, 2, 3, 100] -> mean(1, 2, 3) = 2
    accumulator = run(TrimmedMean(beta=0.2), scalars(100, 1, -100, 3, 2))
    assert accumulator.result()[0][0] == 2.0
    # n = 4, beta = 0.2: floor(0.8) = 0 trimmed -> the plain mean
    assert run(TrimmedMean(beta=0.2), scalars(1, 2, 3, 10)).result()[0][0] == 4.0
    # beta = 0.49, n = 7: floor(3.43) = 3 trimmed each side -> the median
    assert run(TrimmedMean(beta=0.49), scalars(7, 1, 6, 2, 5, 3, 4)).result()[0][0] == 4.0


def test_golden_krum_and_multi_krum() -> None:
    # Points 0..5 on a line, f = 1: each scores its n - f - 2 = 3 nearest squared distances.
    updates = [np.array([float(i), 0.0], np.float32) for i in range(6)]
    accumulator = run(MultiKrum(f=1), updates)
    assert isinstance(accumulator, KrumBuffer)
    scores = krum_scores(squared_distances(accumulator), f=1)
    np.testing.assert_array_equal(scores, [1 + 4 + 9, 1 + 1 + 4, 1 + 1 + 4, 6, 6, 14])
    # m defaults to n - f = 5; ties keep the order added: 1, 2, 3, 4, then 0 before 5.
    assert accumulator.selected() == [1, 2, 3, 4, 0]
    np.testing.assert_array_equal(accumulator.result()[0], [2.0, 0.0])
    assert run(MultiKrum(f=1, m=2), updates).result()[0][0] == 1.5
    assert run(Krum(f=1), updates).result()[0][0] == 1.0


@given(honest_values, st.data())
def test_median_coordinates_stay_within_the_honest_range(
    honest: list[np.ndarray], data: st.DataObject
) -> None:
    f = data.draw(st.integers(0, len(honest) - 1))  # f < n / 2 with n = honest + f
    signs = data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=f, max_size=f))
    size = data.draw(outlier_magnitude)
    attackers = [np.full(DIM, s * size, np.float32) for s in signs]
    updates = data.draw(st.permutations(honest + attackers))

    result = run(Median(), updates).result()[0]

    low, high = np.min(honest, axis=0), np.max(honest, axis=0)
    assert np.isfinite(result).all()
    assert (low <= result).all() and (result <= high).all()


@given(honest_values, st.floats(0.0, 0.49), st.data())
def test_trimmed_mean_coordinates_stay_within_the_honest_range(
    honest: list[np.ndarray], beta: float, data: st.DataObject
) -> None:
    # The most attackers f with f <= floor(beta * (honest + f)).
    f = max((k for k in range(0, 50) if k <= math.floor(beta * (len(honest) + k))), default=0)
    signs = data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=f, max_size=f))
    size = data.draw(outlier_magnitude)
    updates = data.draw(
        st.permutations(honest + [np.full(DIM, s * size, np.float32) for s in signs])
    )

    result = run(TrimmedMean(beta=beta), updates).result()[0]

    low, high = np.min(honest, axis=0), np.max(honest, axis=0)
    tolerance = 1e-5 * (1 + np.abs(high - low))
    assert np.isfinite(result).all()
    assert (low - tolerance <= result).all() and (result <= high + tolerance).all()


@settings(max_examples=50)
@given(st.integers(0, 3), st.integers(0, 5), st.data())
def test_krum_picks_honest_updates_when_attackers_are_far(
    f: int, extra: int, data: st.DataObject
) -> None:
    n = 2 * f + 3 + extra  # n > 2f + 2
    radius = 1.0
    centre = data.draw(hnp.arrays(np.float32, (DIM,), elements=st.floats(-5, 5, width=32)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    honest = []
    for _ in range(n - f):  # inside the ball of radius r around the centre
        offset = rng.normal(size=DIM)
        offset *= rng.uniform(0, radius) / max(np.linalg.norm(offset), 1e-12)
        honest.append((centre + offset).astype(np.float32))
    size = data.draw(st.floats(1e3, 1e30))
    colluding = data.draw(st.booleans())  # all at one point, or scattered
    attackers = [
        (centre + size * (np.ones(DIM) if colluding else rng.normal(size=DIM) + 3)).astype(
            np.float32
        )
        for _ in range(f)
    ]
    order = data.draw(st.permutations(range(n)))
    updates = [(honest + attackers)[i] for i in order]
    is_honest = [i < n - f for i in order]

    krum = run(Krum(f=f), updates)
    assert isinstance(krum, KrumBuffer)
    assert all(is_honest[i] for i in krum.selected())
    multi = run(MultiKrum(f=f), updates)
    assert isinstance(multi, KrumBuffer)
    assert all(is_honest[i] for i in multi.selected())
    result = multi.result()[0]
    assert np.linalg.norm(result.astype(np.float64) - centre) <= radius * (1 + 1e-5)
    # FedAvg is not robust: the same attackers drag it out of the ball.
    if f:
        fedavg = run(FedAvg(), updates).result()[0]
        assert np.linalg.norm(fedavg.astype(np.float64) - centre) > radius


@given(st.permutations([*scalars(5, -1, 2, 9, 0.5, 3, 3)]), st.integers(1, 10**8))
def test_order_and_example_counts_do_not_change_median_or_trimmed_mean(
    updates: list[np.ndarray], examples: int
) -> None:
    assert run(Median(), updates, examples).result()[0][0] == 3.0
    trimmed = run(TrimmedMean(beta=0.3), updates, examples).result()[0][0]
    # n = 7, beta = 0.3: floor(2.1) = 2 dropped each side of [-1, 0.5, 2, 3, 3, 5, 9]
    assert trimmed == np.float32((2 + 3 + 3) / 3)


def test_no_overflow_at_the_float32_limit() -> None:
    top = scalars(FLOAT32_MAX, FLOAT32_MAX)
    assert run(Median(), top).result()[0][0] == np.float32(FLOAT32_MAX)
    assert run(TrimmedMean(beta=0.0), top).result()[0][0] == np.float32(FLOAT32_MAX)
    spread = scalars(FLOAT32_MAX, -FLOAT32_MAX, FLOAT32_MAX, -FLOAT32_MAX, FLOAT32_MAX)
    assert np.isfinite(run(MultiKrum(f=1), spread).result()[0]).all()


def test_buffers_are_declared_and_inputs_not_mutated() -> None:
    value = np.ones(2, np.float32)
    for rule in (Median(), TrimmedMean(), Krum(f=0), MultiKrum(f=0)):
        assert rule.buffers
        accumulator = run(rule, [value, value, value])
        accumulator.result()
        assert accumulator.buffers
    np.testing.assert_array_equal(value, 1.0)


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan"), True])
def test_trimmed_mean_refuses_beta_outside_the_range(beta: float) -> None:
    with pytest.raises(ValueError, match=r"beta"):
        TrimmedMean(beta=beta)


def test_krum_parameters_and_too_few_updates() -> None:
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="f must"):
            Krum(f=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="m must be >= 1"):
        MultiKrum(m=0)
    assert Krum(f=2).min_updates == 7
    assert MultiKrum(f=2, m=6).min_updates == 8
    with pytest.raises(ValueError, match=r"needs n > 2f \+ 2 = 6 updates \(f = 2\), got 6"):
        run(Krum(f=2), scalars(*range(6))).result()
    with pytest.raises(ValueError, match=r"m = 6 exceeds n - f = 5"):
        run(MultiKrum(f=2, m=6), scalars(*range(7))).result()
    with pytest.raises(ValueError, match="at least 1 updates"):
        Median().start([[1]]).result()
