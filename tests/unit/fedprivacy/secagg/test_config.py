"""The neighbour graph: regular, symmetric, fixed by the public seed; degree and threshold."""

from __future__ import annotations

import pytest

from fedprivacy.secagg.config import RoundConfig, build_neighbours, choose_degree


@pytest.mark.parametrize(
    ("n", "k"), [(2, 1), (5, 4), (21, 14), (100, 20), (1000, 30), (10_000, 40)]
)
def test_degree_is_about_three_log2_n_rounded_up_to_even(n: int, k: int) -> None:
    assert choose_degree(n) == k


@pytest.mark.parametrize("n", [3, 8, 50, 333])
def test_the_graph_is_regular_symmetric_and_fixed_by_the_seed(n: int) -> None:
    k = choose_degree(n)
    graph = build_neighbours(num_clients=n, degree=k, seed=b"s" * 32)
    assert all(len(neighbours) == k and i not in neighbours for i, neighbours in enumerate(graph))
    assert all(i in graph[j] for i, neighbours in enumerate(graph) for j in neighbours)
    assert graph == build_neighbours(num_clients=n, degree=k, seed=b"s" * 32)
    if k < n - 1:
        assert graph != build_neighbours(num_clients=n, degree=k, seed=b"t" * 32)


def test_a_config_refuses_a_minority_threshold_and_takes_a_majority_by_default() -> None:
    config = RoundConfig.create(
        task_id=bytes(16),
        round_number=1,
        num_clients=100,
        dim=10,
        bits=16,
        clip_norm=1.0,
        weight_cap=1,
        graph_seed=bytes(32),
    )
    assert (config.degree, config.threshold, config.modulus_bits) == (20, 11, 23)
    with pytest.raises(ValueError, match="majority"):
        RoundConfig(
            task_id=bytes(16),
            round_number=1,
            num_clients=100,
            dim=10,
            bits=16,
            clip_norm=1.0,
            weight_cap=1,
            graph_seed=bytes(32),
            degree=20,
            threshold=10,
        )
