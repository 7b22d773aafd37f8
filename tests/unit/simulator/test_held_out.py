"""Each simulated device's held-out share of the test split mirrors its training partition."""

from __future__ import annotations

import numpy as np
import pytest

from fedcommon import datasets
from fedcommon.messages.v1 import Partitioning
from fedengine_simulator.core import held_out


@pytest.mark.parametrize("scheme", list(Partitioning))
def test_the_shares_are_a_partition_of_the_test_split(scheme: Partitioning) -> None:
    # Prepare
    data = datasets.load_dataset("digits")
    train = datasets.partition(data.y_train, num_clients=7, scheme=scheme, alpha=0.3, seed=1)

    # Execute
    shares = held_out.held_out_shares(
        data.y_train, train, data.y_test, rng=held_out.held_out_rng(1)
    )

    # Assert: every test example goes to exactly one device, so that the fleet's weighted
    # mean is the central evaluation on the same split.
    assert len(shares) == 7
    together = np.concatenate(shares)
    np.testing.assert_array_equal(np.sort(together), np.arange(len(data.y_test)))
    assert all(share.dtype == np.int64 for share in shares)


def test_a_device_holds_of_each_class_the_share_it_trains_on() -> None:
    # Prepare: device 0 trains on all of class 0 and none of class 1; device 1 the reverse,
    # and both on half of class 2 each.
    train_labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2], dtype=np.int64)
    train = [np.array([0, 1, 2, 3, 6, 7]), np.array([4, 5, 8, 9])]
    test_labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2], dtype=np.int64)

    # Execute
    shares = held_out.held_out_shares(
        train_labels, train, test_labels, rng=np.random.default_rng(0)
    )

    # Assert
    assert sorted(test_labels[shares[0]].tolist()) == [0, 0, 0, 2, 2]
    assert sorted(test_labels[shares[1]].tolist()) == [1, 1, 2, 2]


def test_the_shares_repeat_for_a_seed_and_leave_training_untouched() -> None:
    data = datasets.load_dataset("digits")
    train = datasets.partition(
        data.y_train, num_clients=5, scheme=Partitioning.DIRICHLET, alpha=0.5, seed=3
    )
    before = [share.copy() for share in train]

    first, again, other = (
        held_out.held_out_shares(data.y_train, train, data.y_test, rng=held_out.held_out_rng(s))
        for s in (3, 3, 4)
    )

    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    for kept, share in zip(before, train, strict=True):
        np.testing.assert_array_equal(kept, share)


def test_a_fleet_larger_than_the_test_split_leaves_some_devices_without_held_out_data() -> None:
    data = datasets.load_dataset("digits")
    train = datasets.partition(data.y_train, num_clients=500, scheme=Partitioning.IID, seed=0)
    shares = held_out.held_out_shares(
        data.y_train, train, data.y_test, rng=held_out.held_out_rng(0)
    )
    assert sum(len(share) for share in shares) == len(data.y_test)
    assert any(len(share) == 0 for share in shares)


def test_a_class_no_device_trains_on_is_spread_evenly_and_bad_input_is_refused() -> None:
    shares = held_out.held_out_shares(
        np.array([0, 0], dtype=np.int64),
        [np.array([0]), np.array([1])],
        np.array([1, 1, 1, 1], dtype=np.int64),
        rng=np.random.default_rng(0),
    )
    assert [len(share) for share in shares] == [2, 2]
    with pytest.raises(ValueError, match="at least one device"):
        held_out.held_out_shares(
            np.zeros(2, np.int64), [], np.zeros(2, np.int64), rng=np.random.default_rng(0)
        )
    with pytest.raises(ValueError, match=">= 0"):
        held_out.held_out_shares(
            np.array([-1], np.int64),
            [np.array([0])],
            np.zeros(1, np.int64),
            rng=np.random.default_rng(0),
        )
