from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedengine_aggregator.core.fedavg import WeightedUpdate, aggregate


def test_golden_weighted_mean() -> None:
    updates = [
        WeightedUpdate(1, [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]),
        WeightedUpdate(3, [np.array([5.0, 6.0], np.float32), np.array([[4.0]], np.float32)]),
    ]

    result = aggregate(updates)

    np.testing.assert_allclose(result[0], [4.0, 5.0])
    np.testing.assert_allclose(result[1], [[3.0]])
    assert all(r.dtype == np.float32 for r in result)


@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(max_dims=3, max_side=4),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    st.lists(st.integers(1, 1000), min_size=1, max_size=6),
)
def test_identical_updates_aggregate_to_themselves(value: np.ndarray, weights: list[int]) -> None:
    result = aggregate([WeightedUpdate(w, [value]) for w in weights])

    np.testing.assert_allclose(result[0], value, rtol=1e-6, atol=1e-4)


@given(st.lists(st.tuples(st.integers(1, 100), st.floats(-10, 10)), min_size=1, max_size=8))
def test_result_lies_within_the_range_of_the_inputs(pairs: list[tuple[int, float]]) -> None:
    result = aggregate([WeightedUpdate(n, [np.array([v], np.float32)]) for n, v in pairs])[0][0]

    values = [np.float32(v) for _, v in pairs]
    assert min(values) - 1e-4 <= result <= max(values) + 1e-4


def test_inputs_are_not_mutated_and_bad_inputs_raise() -> None:
    value = np.ones(3, np.float32)
    aggregate([WeightedUpdate(2, [value])])
    np.testing.assert_array_equal(value, 1.0)
    with pytest.raises(ValueError, match="empty"):
        aggregate([])
    with pytest.raises(ValueError, match="shapes"):
        aggregate(
            [
                WeightedUpdate(1, [np.ones(2, np.float32)]),
                WeightedUpdate(1, [np.ones(3, np.float32)]),
            ]
        )
    with pytest.raises(ValueError, match="positive"):
        aggregate([WeightedUpdate(0, [value])])
