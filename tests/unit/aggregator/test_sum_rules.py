"""FedAvg as a running weighted sum: golden values, properties, clamping, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcommon.constraints import MAX_EXAMPLES_PER_UPDATE
from fedcommon.server_opt import FLOAT32_MAX
from fedengine_aggregator.core import fedavg
from fedengine_aggregator.core.sum_rules import FedAvg, WeightedSum

finite = st.floats(-1e3, 1e3, width=32)


def vec(*values: float) -> list[np.ndarray]:
    return [np.array(values, dtype=np.float32)]


def test_golden_weighted_mean_over_two_tensors() -> None:
    accumulator = FedAvg().start([[2], [1, 1]])
    accumulator.add([np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)], 1)
    accumulator.add([np.array([5.0, 6.0], np.float32), np.array([[4.0]], np.float32)], 3)

    result = accumulator.result()

    # (1*1 + 3*5) / 4 = 4, (1*2 + 3*6) / 4 = 5, (0 + 12) / 4 = 3
    np.testing.assert_array_equal(result[0], [4.0, 5.0])
    np.testing.assert_array_equal(result[1], [[3.0]])
    assert all(r.dtype == np.float32 for r in result)
    assert accumulator.count == 2 and not accumulator.buffers


def test_claims_above_the_cap_count_as_the_cap() -> None:
    accumulator = FedAvg(max_examples=10).start([[1]])
    accumulator.add(vec(0.0), 1_000_000)  # clamped to 10
    accumulator.add(vec(1.0), 10)

    np.testing.assert_array_equal(accumulator.result()[0], [0.5])
    assert isinstance(accumulator, WeightedSum) and accumulator.total_weight == 20


@given(
    hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=4), elements=finite),
    st.lists(st.integers(1, MAX_EXAMPLES_PER_UPDATE), min_size=1, max_size=6),
)
def test_identical_updates_aggregate_to_themselves(value: np.ndarray, weights: list[int]) -> None:
    accumulator = FedAvg().start([list(value.shape)])
    for weight in weights:
        accumulator.add([value], weight)

    np.testing.assert_allclose(accumulator.result()[0], value, rtol=1e-6, atol=1e-6)


@given(
    st.lists(
        st.tuples(st.integers(1, 10_000), hnp.arrays(np.float32, (3,), elements=finite)),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 10_000),
)
def test_running_sum_equals_the_batch_weighted_mean(
    pairs: list[tuple[int, np.ndarray]], cap: int
) -> None:
    accumulator = FedAvg(max_examples=cap).start([[3]])
    for weight, value in pairs:
        accumulator.add([value], weight)

    weights = np.array([min(w, cap) for w, _ in pairs], dtype=np.float64)
    stacked = np.stack([v.astype(np.float64) for _, v in pairs])
    reference = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(accumulator.result()[0], reference, rtol=1e-6, atol=1e-6)
    if cap >= max(w for w, _ in pairs):  # no clamping: the backbone's FedAvg, exactly
        batch = fedavg.aggregate([fedavg.WeightedUpdate(w, [v]) for w, v in pairs])
        np.testing.assert_array_equal(accumulator.result()[0], batch[0])


@given(
    st.integers(1, MAX_EXAMPLES_PER_UPDATE),
    st.integers(1, MAX_EXAMPLES_PER_UPDATE),
    st.lists(st.integers(1, 1000), min_size=1, max_size=10),
)
def test_clamping_bounds_any_one_devices_weight(cap: int, claim: int, others: list[int]) -> None:
    accumulator = FedAvg(max_examples=cap).start([[1]])
    accumulator.add(vec(1.0), claim)  # the device's share of the mean is the result itself
    for weight in others:
        accumulator.add(vec(0.0), weight)

    honest = sum(min(w, cap) for w in others)
    assert float(accumulator.result()[0][0]) <= cap / (cap + honest) * (1 + 1e-6)


def test_one_outlier_moves_fedavg_arbitrarily() -> None:
    accumulator = FedAvg().start([[1]])
    for _ in range(9):
        accumulator.add(vec(1.0), 10)
    accumulator.add(vec(1e30), 10)

    assert accumulator.result()[0][0] > 1e28


def test_extreme_finite_inputs_give_finite_results() -> None:
    accumulator = FedAvg().start([[2]])
    for _ in range(3):
        accumulator.add(vec(FLOAT32_MAX, -FLOAT32_MAX), MAX_EXAMPLES_PER_UPDATE)

    result = accumulator.result()[0]
    assert np.isfinite(result).all()
    np.testing.assert_array_equal(result, [FLOAT32_MAX, -FLOAT32_MAX])


def test_float64_updates_are_accepted_and_the_result_is_float32() -> None:
    accumulator = FedAvg().start([[1]])
    accumulator.add([np.array([0.1], np.float64)], 1)

    assert accumulator.result()[0].dtype == np.float32


def test_memory_does_not_grow_with_updates() -> None:
    accumulator = FedAvg().start([[1000]])
    accumulator.add([np.ones(1000, np.float32)], 1)
    held = [a.nbytes for a in accumulator._sums]
    for _ in range(200):
        accumulator.add([np.ones(1000, np.float32)], 1)

    assert [a.nbytes for a in accumulator._sums] == held


def test_inputs_are_not_mutated() -> None:
    value = np.ones(3, np.float32)
    accumulator = FedAvg().start([[3]])
    accumulator.add([value], 7)
    accumulator.result()

    np.testing.assert_array_equal(value, 1.0)


@pytest.mark.parametrize(
    ("update", "examples", "match"),
    [
        (vec(1.0, 2.0), 1, "shapes"),
        ([np.array([1], np.int32)], 1, "floating"),
        (vec(float("nan")), 1, "NaN"),
        (vec(float("inf")), 1, "NaN or infinite"),
        ([np.array([1e39], np.float64)], 1, "float32 range"),
        (vec(1.0), 0, "positive"),
        (vec(1.0), True, "int"),
        (vec(1.0), 1.5, "int"),
    ],
)
def test_refused_updates_change_nothing(
    update: list[np.ndarray], examples: int, match: str
) -> None:
    accumulator = FedAvg().start([[1]])
    accumulator.add(vec(2.0), 1)

    with pytest.raises(ValueError, match=match):
        accumulator.add(update, examples)

    assert accumulator.count == 1
    np.testing.assert_array_equal(accumulator.result()[0], [2.0])


def test_bad_parameters_and_empty_rounds_raise() -> None:
    with pytest.raises(ValueError, match="at least 1 updates, got 0"):
        FedAvg().start([[1]]).result()
    for bad in (0, MAX_EXAMPLES_PER_UPDATE + 1, 2.0, True):
        with pytest.raises(ValueError, match="max_examples"):
            FedAvg(max_examples=bad)  # type: ignore[arg-type]


@settings(max_examples=25)
@given(st.permutations([(1, 1.0), (2, -3.0), (5, 0.25), (7, 1e-3)]))
def test_deterministic_given_the_updates_in_order(order: list[tuple[int, float]]) -> None:
    results = []
    for _ in range(2):
        accumulator = FedAvg().start([[1]])
        for weight, value in order:
            accumulator.add(vec(value), weight)
        results.append(accumulator.result()[0].tobytes())

    assert results[0] == results[1]
