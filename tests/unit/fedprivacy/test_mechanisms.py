"""Noise calibration (against the reference), noise statistics, clipping and the engine API.

The statistical tests use a seeded generator, so they are deterministic here; each states the
false-failure rate it would have over random seeds: 1e-6, two-sided.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from fedprivacy.mechanisms import (
    DifferentialPrivacyEngine,
    Mechanism,
    add_laplace_noise,
    analytic_gaussian_sigma,
    classic_gaussian_sigma,
    classic_gaussian_sigma_formula,
    clip_by_norm,
    clipped_sum,
    global_norm,
    laplace_scale,
    noise_sum,
)
from tests.unit.fedprivacy import reference as ref
from tests.unit.fedprivacy.reference import Entry

FALSE_FAILURE_RATE = 1e-6
SAMPLES = 200_000

ANALYTIC = ref.entries("gaussian_analytic_single")


@pytest.mark.parametrize("entry", ANALYTIC, ids=ref.entry_id)
def test_gaussian_sigmas_match_the_reference(entry: Entry) -> None:
    # Prepare
    epsilon, delta, sensitivity = entry["epsilon"], entry["delta"], entry["sensitivity"]

    # Execute
    analytic = analytic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
    classic = classic_gaussian_sigma_formula(epsilon=epsilon, delta=delta, sensitivity=sensitivity)

    # Assert
    assert ref.relative_error(analytic, entry["sigma_analytic"]) <= 1e-6
    assert ref.relative_error(analytic, entry["sigma_analytic_own_implementation"]) <= 1e-6
    assert ref.relative_error(classic, entry["sigma_classical"]) <= 1e-9
    if entry["sigma_classical_valid"]:
        assert (
            classic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity) == classic
        )
    else:
        with pytest.raises(ValueError, match="epsilon < 1"):
            classic_gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
    assert analytic < classic


def test_sigma_scales_with_sensitivity() -> None:
    # Execute
    one = analytic_gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=1.0)
    three = analytic_gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=3.0)

    # Assert
    assert three == pytest.approx(3 * one, rel=1e-12)
    assert laplace_scale(epsilon=0.5, sensitivity=2.0) == 4.0


def _chi_square_interval(samples: int) -> tuple[float, float]:
    """Return the two-sided interval of (n−1)s²/σ² ~ χ²(n−1) at FALSE_FAILURE_RATE."""
    low = stats.chi2.ppf(FALSE_FAILURE_RATE / 2, samples - 1)
    high = stats.chi2.isf(FALSE_FAILURE_RATE / 2, samples - 1)
    return float(low), float(high)


@pytest.mark.parametrize(("noise_multiplier", "clip_norm"), [(1.1, 1.0), (5.0, 0.1), (0.7, 3.0)])
def test_noise_on_the_sum_has_std_z_times_c(noise_multiplier: float, clip_norm: float) -> None:
    """Chi-square test of the sample variance: fails a correct implementation with p = 1e-6."""
    # Prepare
    summed = [np.zeros(SAMPLES // 2, np.float64), np.zeros((SAMPLES // 4, 2), np.float64)]
    rng = np.random.default_rng(20261129)
    expected_std = noise_multiplier * clip_norm

    # Execute
    noised = noise_sum(summed, noise_multiplier=noise_multiplier, clip_norm=clip_norm, rng=rng)

    # Assert
    values = np.concatenate([a.ravel() for a in noised])
    statistic = (values.size - 1) * np.var(values, ddof=1) / expected_std**2
    low, high = _chi_square_interval(values.size)
    assert low <= statistic <= high
    # and its mean is 0: |z| of the sample mean below the 1e-6 two-sided normal quantile
    z_score = abs(values.mean()) / (expected_std / math.sqrt(values.size))
    assert z_score <= stats.norm.isf(FALSE_FAILURE_RATE / 2)


def test_laplace_noise_has_variance_two_b_squared() -> None:
    """E[x²] = 2b², Var[x²] = 20b⁴ for Laplace(0, b): a z-test on the mean of x² (CLT), p = 1e-6."""
    # Prepare
    scale = 2.5
    rng = np.random.default_rng(7)

    # Execute
    noised = add_laplace_noise([np.zeros(SAMPLES)], scale=scale, rng=rng)[0]

    # Assert
    squares = noised**2
    z_score = abs(squares.mean() - 2 * scale**2) / math.sqrt(20 * scale**4 / SAMPLES)
    assert z_score <= stats.norm.isf(FALSE_FAILURE_RATE / 2)


@settings(max_examples=100, deadline=None)
@given(
    arrays=st.lists(
        hnp.arrays(
            np.float32,
            hnp.array_shapes(max_dims=2, max_side=5),
            elements=st.floats(-1e6, 1e6, width=32),
        ),
        min_size=1,
        max_size=3,
    ),
    clip_norm=st.floats(1e-3, 1e3),
)
def test_clipping_bounds_the_norm_and_keeps_small_updates(
    arrays: list[np.ndarray], clip_norm: float
) -> None:
    # Prepare
    originals = [a.copy() for a in arrays]

    # Execute
    clipped = clip_by_norm(arrays, clip_norm=clip_norm)

    # Assert
    norm = global_norm(arrays)
    assert global_norm(clipped) <= clip_norm * (1 + 1e-5)
    if norm <= clip_norm:
        for before, after in zip(arrays, clipped, strict=True):
            np.testing.assert_array_equal(before, after)
    else:  # direction kept: clipping only scales
        factor = clip_norm / norm
        for before, after in zip(arrays, clipped, strict=True):
            np.testing.assert_allclose(after, before * factor, rtol=1e-5, atol=1e-6)
    for before, original in zip(arrays, originals, strict=True):
        np.testing.assert_array_equal(before, original)  # inputs untouched
    assert all(a.dtype == np.float32 for a in clipped)


def test_an_enormous_update_moves_the_noised_sum_by_at_most_c() -> None:
    """A device sending an update of norm 1e6 (whatever example count it claims: the clipped
    sum has no weights) moves the result by at most C; with the same noise draw, exactly."""
    # Prepare
    rng = np.random.default_rng(1)
    clip_norm, noise_multiplier = 0.5, 1.2
    honest = [[rng.normal(size=(4, 3)), rng.normal(size=7)] for _ in range(9)]
    attack = [np.full((4, 3), 1e6 / math.sqrt(19)), np.full(7, 1e6 / math.sqrt(19))]
    assert global_norm(attack) == pytest.approx(1e6)

    # Execute
    without = noise_sum(
        clipped_sum(honest, clip_norm=clip_norm),
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        rng=np.random.default_rng(99),
    )
    with_attack = noise_sum(
        clipped_sum([*honest, attack], clip_norm=clip_norm),
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        rng=np.random.default_rng(99),
    )

    # Assert
    moved = global_norm([a - b for a, b in zip(with_attack, without, strict=True)])
    assert moved <= clip_norm * (1 + 1e-9)
    assert moved == pytest.approx(clip_norm, rel=1e-9)


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_engine_clips_then_noises_with_its_calibration(mechanism: Mechanism) -> None:
    # Prepare
    epsilon = 0.5
    engine = DifferentialPrivacyEngine(
        epsilon=epsilon,
        delta=1e-5,
        mechanism=mechanism,
        clip_norm=2.0,
        rng=np.random.default_rng(3),
    )
    gradients = [np.full(SAMPLES // 2, 10.0), np.full(SAMPLES // 2, -10.0)]

    # Execute
    clipped = engine.clip_gradients(gradients)
    noised = engine.add_noise([np.zeros_like(a) for a in clipped])

    # Assert
    order = 1 if mechanism is Mechanism.LAPLACE else 2
    assert global_norm(clipped, order=order) == pytest.approx(2.0, rel=1e-9)
    values = np.concatenate(noised)
    if mechanism is Mechanism.LAPLACE:
        assert engine.noise.scale == laplace_scale(epsilon=epsilon, sensitivity=2.0)
        z_score = abs(np.mean(values**2) - 2 * engine.noise.scale**2) / math.sqrt(
            20 * engine.noise.scale**4 / values.size
        )
        assert z_score <= stats.norm.isf(FALSE_FAILURE_RATE / 2)
    else:
        statistic = (values.size - 1) * np.var(values, ddof=1) / engine.noise.scale**2
        low, high = _chi_square_interval(values.size)
        assert low <= statistic <= high


def test_engine_refuses_classic_gaussian_at_epsilon_one() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="analytic"):
        DifferentialPrivacyEngine(epsilon=1.0, delta=1e-5, mechanism="gaussian")


def test_engine_refuses_to_clip_above_its_sensitivity() -> None:
    # Prepare
    engine = DifferentialPrivacyEngine(
        epsilon=0.5, delta=1e-5, clip_norm=1.0, rng=np.random.default_rng(0)
    )

    # Execute / Assert
    with pytest.raises(ValueError, match="sensitivity"):
        engine.clip_gradients([np.ones(3)], clip_norm=5.0)
    assert global_norm(engine.clip_gradients([np.ones(3)], clip_norm=0.5)) == pytest.approx(0.5)


def test_noise_never_touches_the_global_numpy_state() -> None:
    """The model builder reseeds numpy's global state; DP noise must not come from it."""
    # Prepare
    np.random.seed(0)
    before = np.random.get_state()[1].copy()  # type: ignore[index]
    engine = DifferentialPrivacyEngine(epsilon=0.5, delta=1e-5, mechanism="analytic_gaussian")
    other = DifferentialPrivacyEngine(epsilon=0.5, delta=1e-5, mechanism="analytic_gaussian")

    # Execute
    first = engine.add_noise([np.zeros(8)])[0]
    second = other.add_noise([np.zeros(8)])[0]

    # Assert
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # type: ignore[index]
    assert not np.array_equal(first, second)  # two OS-entropy seeds: equal with p ≈ 0


@pytest.mark.parametrize(
    "arrays",
    [[], [np.array([1.0, np.nan])], [np.array([np.inf])]],
)
def test_clipping_refuses_empty_or_non_finite_input(arrays: list[np.ndarray]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        clip_by_norm(arrays, clip_norm=1.0)
