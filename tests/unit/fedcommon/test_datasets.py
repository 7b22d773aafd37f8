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


def _tiny_dataset() -> datasets.Dataset:
    # Feature 0 varies, feature 1 is constant in training (its std is 0), as a digits corner
    # pixel is; shape (n, 1, 1, 2) like the loaders' (n, channels, height, width).
    x_train = np.array([[[[0.0, 5.0]]], [[[2.0, 5.0]]], [[[4.0, 5.0]]]], np.float32)
    x_test = np.array([[[[2.0, 7.0]]], [[[6.0, 5.0]]]], np.float32)
    labels = np.array([0, 1, 0], np.int64)
    return datasets.Dataset("tiny", x_train, labels, x_test, labels[:2], (1, 1, 2), 2)


def test_standardized_uses_the_training_split_statistics_for_both_splits() -> None:
    # Prepare
    data = _tiny_dataset()
    before = data.x_train.copy(), data.x_test.copy()

    # Execute
    result = datasets.standardized(data)

    # Assert: training mean 2, std sqrt(8/3) for feature 0; feature 1 only centred (std 0 -> 1).
    std = np.sqrt(8.0 / 3.0)
    np.testing.assert_allclose(result.x_train[:, 0, 0, 0], [-2.0 / std, 0.0, 2.0 / std], rtol=1e-6)
    np.testing.assert_allclose(result.x_train[:, 0, 0, 1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(result.x_test[:, 0, 0], [[0.0, 2.0], [4.0 / std, 0.0]], rtol=1e-6)
    assert result.x_train.dtype == np.float32 and result.x_test.dtype == np.float32
    assert result.x_train.shape == data.x_train.shape and result.x_test.shape == data.x_test.shape
    # Labels, shape and name carried over; the input is not changed.
    assert result.y_train is data.y_train and result.input_shape == data.input_shape
    np.testing.assert_array_equal(data.x_train, before[0])
    np.testing.assert_array_equal(data.x_test, before[1])


def test_standardized_digits_training_features_have_zero_mean_and_unit_or_zero_spread() -> None:
    # Execute
    data = datasets.standardized(datasets.load_dataset("digits"))

    # Assert: each pixel's training mean is 0 and its std 1, or 0 for pixels always blank.
    flat = data.x_train.reshape(len(data.x_train), -1)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)
    spread = flat.std(axis=0)
    assert np.all((np.abs(spread - 1.0) < 1e-4) | (spread < 1e-6))
    assert np.any(spread < 1e-6)  # digits has always-blank corner pixels
