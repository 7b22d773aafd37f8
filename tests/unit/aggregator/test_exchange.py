"""The update exchange folds each update into the strategy's accumulator as it arrives: for
FedAvg the result is bit for bit the batch mean the aggregator computed before."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcommon.messages.v1 import FedAdamStrategy, RoundPrivacy, UpdateMetrics
from fedengine_aggregator.core import fedavg
from fedengine_aggregator.core.dp_fedavg import ClippedSum
from fedengine_aggregator.core.exchange import (
    Accepted,
    UpdateExchange,
    round_accumulator,
    start_accumulator,
)
from fedengine_aggregator.core.robust import Buffer
from fedengine_aggregator.core.sum_rules import WeightedSum
from tests.unit.aggregator.test_results import opened

METRICS = UpdateMetrics(train_loss=1.0, train_accuracy=0.5, duration_s=0.1)
finite = st.floats(-1e3, 1e3, width=32)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 100_000),
            hnp.arrays(np.float32, (2, 3), elements=finite),
            hnp.arrays(np.float32, (4,), elements=finite),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_fedavg_through_the_exchange_equals_the_batch_mean_exactly(
    updates: list[tuple[int, np.ndarray, np.ndarray]],
) -> None:
    # Prepare
    exchange = UpdateExchange(opened(), start_accumulator("fedavg", {}, [[2, 3], [4]]))

    # Execute: each update is checked, then folded in, as the shell does.
    for index, (examples, weights, bias) in enumerate(updates):
        prepared = exchange.prepare([weights, bias], examples)
        exchange.accept(f"d{index}", prepared, Accepted(examples, METRICS, 1))
    batch = fedavg.aggregate([fedavg.WeightedUpdate(n, [w, b]) for n, w, b in updates])

    # Assert
    for got, expected in zip(exchange.delta(), batch, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    assert exchange.num_examples() == sum(n for n, _, _ in updates)


def test_the_strategy_decides_whether_the_round_buffers() -> None:
    # Execute
    summed = start_accumulator("fedavg", {}, [[3]])
    buffered = start_accumulator("median", None, [[3]])

    # Assert: a sum keeps no update; a robust rule keeps them all, and says so.
    assert isinstance(summed, WeightedSum) and not summed.buffers
    assert isinstance(buffered, Buffer) and buffered.buffers
    with pytest.raises(ValueError, match="unknown strategy"):
        start_accumulator("nonsense", {}, [[3]])


def test_a_bad_update_is_refused_before_it_counts() -> None:
    # Prepare
    exchange = UpdateExchange(opened(), start_accumulator("fedavg", {}, [[3]]))

    # Execute / Assert: a wrong shape is refused by prepare, and nothing changed.
    with pytest.raises(ValueError, match="shapes"):
        exchange.prepare([np.zeros(2, np.float32)], 1)
    assert exchange.accumulator.count == 0
    prepared = exchange.prepare([np.ones(3, np.float32)], 2)
    exchange.accept("d0", prepared, Accepted(2, METRICS, 12))
    with pytest.raises(ValueError, match="already accepted"):
        exchange.accept(
            "d0", exchange.prepare([np.ones(3, np.float32)], 2), Accepted(2, METRICS, 1)
        )
    assert exchange.accumulator.count == 1
    np.testing.assert_array_equal(exchange.delta()[0], np.ones(3, np.float32))
    assert exchange.bytes_up() == 12


def test_a_dp_round_sums_clipped_updates_whatever_its_sum_strategy() -> None:
    # Prepare: a FedAdam round (its server step is the coordinator's), with and without DP.
    plain = opened().model_copy(update={"strategy": FedAdamStrategy()})
    private = plain.model_copy(
        update={
            "privacy": RoundPrivacy(
                approval_id=uuid.uuid4(),
                clip_norm=0.7,
                noise_multiplier=1.0,
                expected_participants=3.0,
            )
        }
    )

    # Execute
    summed, clipped = round_accumulator(plain), round_accumulator(private)

    # Assert
    assert isinstance(summed, WeightedSum)
    assert isinstance(clipped, ClippedSum) and clipped.clip_norm == 0.7
