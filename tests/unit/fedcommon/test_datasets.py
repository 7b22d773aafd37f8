from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcommon import datasets
from fedcommon.messages.v1 import Partitioning


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    data = datasets.load_dataset("digits")

    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert (
        data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() <= data.x_train.max() <= 1.0
    )
    assert set(np.bincount(data.y_test)) <= {35, 36, 37}


@settings(max_examples=25, deadline=None)
@given(
    clients=st.integers(1, 40),
    scheme=st.sampled_from(list(Partitioning)),
    alpha=st.floats(0.1, 100.0),
    seed=st.integers(0, 1000),
)
def test_partitions_cover_every_sample_exactly_once(
    clients: int, scheme: Partitioning, alpha: float, seed: int
) -> None:
    labels = datasets.load_dataset("digits").y_train

    parts = datasets.partition(labels, num_clients=clients, scheme=scheme, alpha=alpha, seed=seed)

    assert len(parts) == clients
    assert min(len(p) for p in parts) >= 2
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    labels = datasets.load_dataset("digits").y_train

    def skew(alpha: float) -> float:
        parts = datasets.partition(
            labels, num_clients=10, scheme=Partitioning.DIRICHLET, alpha=alpha, seed=0
        )
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))

    assert skew(0.1) > skew(1.0) > skew(100.0)


def test_bad_arguments_raise_value_error() -> None:
    labels = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="num_clients"):
        datasets.partition(labels, num_clients=0, scheme=Partitioning.IID)
    with pytest.raises(ValueError, match="cannot give"):
        datasets.partition(labels, num_clients=6, scheme=Partitioning.IID)
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load_dataset("cifar10")


def test_a_dirichlet_partition_of_few_samples_a_client_always_exists() -> None:
    # 2.4 samples a client: a free Dirichlet draw leaves someone under 2 almost surely (10,000
    # devices on Fashion-MNIST is 6 a client); the floor-first fallback always succeeds.
    labels = np.repeat(np.arange(10, dtype=np.int64), 600)

    parts = datasets.partition(
        labels, num_clients=2500, scheme=Partitioning.DIRICHLET, alpha=0.5, seed=3
    )
    again = datasets.partition(
        labels, num_clients=2500, scheme=Partitioning.DIRICHLET, alpha=0.5, seed=3
    )

    assert min(len(p) for p in parts) >= 2
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))


def test_a_fleet_too_large_for_a_data_set_is_refused_at_once_saying_why() -> None:
    datasets.check_partition("digits", 700)
    with pytest.raises(ValueError, match="1000 devices cannot hold 2 each"):
        datasets.check_partition("digits", 1000)
