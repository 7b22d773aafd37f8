"""Closed-form composition bounds against the reference (rule 7) and their order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.composition import (
    advanced_composition,
    basic_composition,
    optimal_composition_epsilon,
)
from tests.unit.fedprivacy import reference as ref
from tests.unit.fedprivacy.reference import Entry

LAPLACE = ref.entries("laplace_composition")
GAUSSIAN = ref.entries("gaussian_composition")


@pytest.mark.parametrize("entry", LAPLACE, ids=ref.entry_id)
def test_pure_dp_composition_matches_the_reference(entry: Entry) -> None:
    # Prepare
    epsilon0, k, delta = entry["epsilon0"], entry["k"], entry["delta"]

    # Execute
    basic = basic_composition(epsilon0=epsilon0, delta0=0.0, k=k)
    advanced = advanced_composition(epsilon0=epsilon0, delta0=0.0, k=k, delta_prime=delta)
    optimal = optimal_composition_epsilon(epsilon0=epsilon0, k=k, delta=delta)

    # Assert
    assert ref.relative_error(basic.epsilon, entry["epsilon_basic"]) <= 1e-9
    assert basic.delta == entry["delta_basic"]
    assert ref.relative_error(advanced.epsilon, entry["epsilon_advanced"]) <= 1e-9
    assert ref.relative_error(advanced.delta, entry["delta_advanced"]) <= 1e-9
    best = min(basic.epsilon, advanced.epsilon)
    assert ref.relative_error(best, entry["epsilon_advanced_or_basic"]) <= 1e-9
    assert ref.relative_error(optimal, entry["epsilon_optimal_composition"]) <= 1e-6


@pytest.mark.parametrize("entry", GAUSSIAN, ids=ref.entry_id)
def test_approximate_dp_composition_matches_the_reference(entry: Entry) -> None:
    # Prepare
    epsilon0, delta0, k = entry["epsilon0"], entry["delta0"], entry["k"]

    # Execute
    basic = basic_composition(epsilon0=epsilon0, delta0=delta0, k=k)
    advanced = advanced_composition(
        epsilon0=epsilon0, delta0=delta0, k=k, delta_prime=entry["delta_prime"]
    )

    # Assert
    assert ref.relative_error(basic.epsilon, entry["epsilon_basic"]) <= 1e-9
    assert ref.relative_error(basic.delta, entry["delta_basic"]) <= 1e-9
    assert ref.relative_error(advanced.epsilon, entry["epsilon_advanced"]) <= 1e-9
    assert ref.relative_error(advanced.delta, entry["delta_advanced"]) <= 1e-9


@settings(max_examples=60, deadline=None)
@given(
    epsilon0=st.floats(0.01, 2.0),
    k=st.integers(1, 300),
    delta=st.sampled_from([1e-3, 1e-5, 1e-8]),
)
def test_optimal_composition_is_never_worse_than_the_theorems(
    epsilon0: float, k: int, delta: float
) -> None:
    # Execute
    optimal = optimal_composition_epsilon(epsilon0=epsilon0, k=k, delta=delta)
    basic = basic_composition(epsilon0=epsilon0, delta0=0.0, k=k)
    advanced = advanced_composition(epsilon0=epsilon0, delta0=0.0, k=k, delta_prime=delta)

    # Assert
    assert 0 <= optimal <= basic.epsilon * (1 + 1e-12)
    assert optimal <= advanced.epsilon * (1 + 1e-12)


def test_one_release_composes_to_itself() -> None:
    # Execute
    optimal = optimal_composition_epsilon(epsilon0=0.7, k=1, delta=1e-6)

    # Assert: one ε0-DP mechanism at δ > 0 can be slightly better than ε0, never worse
    assert optimal <= 0.7
    assert optimal == pytest.approx(0.7, abs=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon0": -1.0, "delta0": 0.0, "k": 1},
        {"epsilon0": 1.0, "delta0": 1.0, "k": 1},
        {"epsilon0": 1.0, "delta0": 0.0, "k": 0},
    ],
)
def test_bad_releases_are_refused(kwargs: dict[str, float]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        basic_composition(**kwargs)  # type: ignore[arg-type]
