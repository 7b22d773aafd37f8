"""Adaptive clipping's arithmetic: the split of z costs exactly z, C moves towards the target
quantile and stays finite, the count's noise has the std it claims."""

from __future__ import annotations

import logging
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from hypothesis import given
from hypothesis import strategies as st

from fedcommon.constraints import MAX_SETTING
from fedcommon.messages.v1 import MIN_ADAPTIVE_CLIP_NORM, AdaptiveClipping
from fedprivacy import adaptive_clipping

logging.getLogger("absl").setLevel(logging.ERROR)

# The task schema's bounds on C, which the coordinator passes to next_clip_norm.
BOUNDS = {"lowest": MIN_ADAPTIVE_CLIP_NORM, "highest": MAX_SETTING}


def _rdp_epsilon(event: dp_accounting.DpEvent, delta: float = 1e-5) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("z", "count_std"), [(1.0, 5.0), (0.8, 0.5), (3.0, 3.0), (5.0, 40.0)])
def test_the_sum_and_the_count_together_cost_one_gaussian_release_at_z(
    z: float, count_std: float
) -> None:
    """Composing the sum (sensitivity 1 in units of C, noise z_Δ) and the count (sensitivity ½,
    noise σ_b, i.e. multiplier 2σ_b) costs, by dp-accounting's RDP, what one release at z does:
    Gaussian RDP α/(2z²) adds, so the match is exact up to float rounding."""
    # Execute
    update_z = adaptive_clipping.update_noise_multiplier(z, count_std)
    both = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(update_z), dp_accounting.GaussianDpEvent(2 * count_std)]
    )

    # Assert
    assert update_z > z
    assert _rdp_epsilon(both) == pytest.approx(_rdp_epsilon(dp_accounting.GaussianDpEvent(z)))
    assert adaptive_clipping.combined_noise_multiplier(update_z, count_std) == pytest.approx(z)


@pytest.mark.parametrize(("z", "count_std"), [(2.0, 1.0), (2.0, 0.5), (1.0, 0.1)])
def test_a_count_noise_that_would_cost_the_whole_round_is_refused(
    z: float, count_std: float
) -> None:
    with pytest.raises(ValueError, match="count_noise_std"):
        adaptive_clipping.update_noise_multiplier(z, count_std)


@pytest.mark.parametrize(
    ("expected", "z", "settings", "std"),
    [
        (200.0, 1.0, AdaptiveClipping(), 10.0),  # the paper's m / 20
        (10.0, 1.0, AdaptiveClipping(), 1.0),  # raised to z on a small round
        (200.0, 1.0, AdaptiveClipping(count_noise_std=3.0), 3.0),  # the task's own
    ],
)
def test_the_count_noise_is_the_papers_raised_to_z_or_the_tasks(
    expected: float, z: float, settings: AdaptiveClipping, std: float
) -> None:
    got = adaptive_clipping.count_noise_std(
        settings.count_noise_std, expected_participants=expected, noise_multiplier=z
    )

    assert got == std


def test_c_shrinks_when_more_than_the_target_share_is_unclipped_and_grows_otherwise() -> None:
    # C·exp(−η(b̃ − γ)), η = 0.2, γ = 0.5
    shrink = adaptive_clipping.next_clip_norm(
        1.0, 0.9, target_quantile=0.5, learning_rate=0.2, **BOUNDS
    )
    grow = adaptive_clipping.next_clip_norm(
        1.0, 0.1, target_quantile=0.5, learning_rate=0.2, **BOUNDS
    )
    still = adaptive_clipping.next_clip_norm(
        1.0, 0.5, target_quantile=0.5, learning_rate=0.2, **BOUNDS
    )

    assert shrink == pytest.approx(math.exp(-0.08))
    assert grow == pytest.approx(math.exp(0.08))
    assert still == 1.0


def test_c_converges_to_the_target_quantile_of_the_norms() -> None:
    """Iterating on norms spread log-uniformly over [0.01, 100] with the real noised count
    (σ_b = m/20, m = 1,000) brings C to the median norm, 1, from C = 0.05 (the paper's
    behaviour; 300 rounds at η = 0.2)."""
    rng = np.random.default_rng(3)
    norms = np.exp(rng.uniform(math.log(0.01), math.log(100), size=1000))
    clip = 0.05
    for _ in range(300):
        centered = float(np.sum(np.where(norms <= clip, 0.5, -0.5)))
        fraction = adaptive_clipping.unclipped_fraction(
            centered, count_std=50.0, expected_participants=1000.0, rng=rng
        )
        clip = adaptive_clipping.next_clip_norm(
            clip, fraction, target_quantile=0.5, learning_rate=0.2, **BOUNDS
        )

    assert float(np.median(norms)) == pytest.approx(1.0, rel=0.1)
    assert clip == pytest.approx(float(np.median(norms)), rel=0.15)


@given(
    clip=st.floats(min_value=MIN_ADAPTIVE_CLIP_NORM, max_value=MAX_SETTING),
    fraction=st.floats(min_value=-MAX_SETTING, max_value=MAX_SETTING),
    quantile=st.floats(min_value=1e-6, max_value=1 - 1e-6),
    rate=st.floats(min_value=1e-9, max_value=10),
)
def test_c_stays_finite_and_within_bounds_whatever_the_noised_fraction(
    clip: float, fraction: float, quantile: float, rate: float
) -> None:
    moved = adaptive_clipping.next_clip_norm(
        clip, fraction, target_quantile=quantile, learning_rate=rate, **BOUNDS
    )

    assert MIN_ADAPTIVE_CLIP_NORM <= moved <= MAX_SETTING


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_fraction_or_count_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        adaptive_clipping.next_clip_norm(1.0, bad, target_quantile=0.5, learning_rate=0.2, **BOUNDS)
    with pytest.raises(ValueError, match="finite"):
        adaptive_clipping.unclipped_fraction(
            bad, count_std=1.0, expected_participants=10.0, rng=np.random.default_rng(0)
        )
