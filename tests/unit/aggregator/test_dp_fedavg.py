"""Central DP-FedAvg: clipped unweighted sum, Gaussian noise of std z·C, fixed denominator.

The statistical test uses a seeded generator, so it is deterministic here; its docstring states
the false-failure rate it would have over random seeds.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import stats

from fedcommon.messages.v1 import (
    MedianStrategy,
    Participant,
    RoundOpened,
    RoundPrivacy,
)
from fedengine_aggregator.core import dp_fedavg
from fedengine_aggregator.core.dp_fedavg import ClippedSum

FALSE_FAILURE_RATE = 1e-6
SHAPES = [[200, 250], [50, 10], [500]]  # 51,000 coordinates
COORDINATES = sum(math.prod(shape) for shape in SHAPES)


def privacy(
    *,
    clip_norm: float = 1.0,
    z: float = 1.0,
    expected: float = 10.0,
    update_z: float | None = None,
    count_std: float | None = None,
) -> RoundPrivacy:
    return RoundPrivacy(
        approval_id=uuid.uuid4(),
        clip_norm=clip_norm,
        noise_multiplier=z,
        expected_participants=expected,
        update_noise_multiplier=update_z,
        count_noise_std=count_std,
    )


def update(rng: np.random.Generator, *, norm: float) -> list[np.ndarray]:
    """A random float32 update of L2 norm ``norm`` over all its arrays."""
    arrays = [rng.normal(size=shape) for shape in SHAPES]
    scale = norm / math.sqrt(sum(float(np.sum(a * a)) for a in arrays))
    return [(a * scale).astype(np.float32) for a in arrays]


def norm_of(arrays: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def test_the_noise_std_is_z_times_c() -> None:
    """The sample variance of the noise over 2·51,000 coordinates matches (z·C)².

    With mean known (0), n·s²/σ² follows χ²(n) exactly; the bounds are its 5e-7 and 1 - 5e-7
    quantiles, so over random seeds this test fails falsely with probability 1e-6 (two-sided).
    At n = 102,000 that band is about ±2.2% of σ², so a std off by 3% would fail.
    """
    # Prepare: a zero sum, so what comes out is the noise alone; z·C = 2.5·0.8 = 2.
    rounds = 2
    z, clip_norm = 2.5, 0.8
    zero = [np.zeros(shape, dtype=np.float64) for shape in SHAPES]
    rng = np.random.default_rng(20_260_101)

    # Execute
    noise = np.concatenate(
        [
            a.ravel()
            for _ in range(rounds)
            for a in dp_fedavg.add_noise(zero, approval=privacy(clip_norm=clip_norm, z=z), rng=rng)
        ]
    )

    # Assert
    n = noise.size
    assert n == rounds * COORDINATES
    statistic = float(np.sum(noise**2)) / (z * clip_norm) ** 2
    low = stats.chi2.ppf(FALSE_FAILURE_RATE / 2, n)
    high = stats.chi2.isf(FALSE_FAILURE_RATE / 2, n)
    assert low < statistic < high, (low, statistic, high)
    # The noise is centred too: |mean| < 5.33 standard errors (two-sided 1e-7).
    assert abs(float(np.mean(noise))) < 5.33 * z * clip_norm / math.sqrt(n)


def test_an_update_of_norm_1e6_claiming_2_31_examples_moves_the_sum_by_at_most_c() -> None:
    # Prepare: five honest updates; an attacker adds one of norm 1e6 claiming 2**31 examples
    # (the bus message would refuse that count: the core is called directly). The same seed
    # gives both releases the same noise draw.
    data = np.random.default_rng(1)
    honest = [update(data, norm=0.5) for _ in range(5)]
    attack = update(data, norm=1e6)
    spec = privacy(clip_norm=1.0, z=1.0, expected=10.0)
    without, with_attack = ClippedSum(SHAPES, clip_norm=1.0), ClippedSum(SHAPES, clip_norm=1.0)
    for arrays in honest:
        without.add(arrays, 10)
        with_attack.add(arrays, 10)
    with_attack.add(attack, 2**31)

    # Execute
    noised_without = dp_fedavg.add_noise(
        without.clipped_sum(), approval=spec, rng=np.random.default_rng(7)
    )
    noised_with = dp_fedavg.add_noise(
        with_attack.clipped_sum(), approval=spec, rng=np.random.default_rng(7)
    )
    released_without = dp_fedavg.release(without, approval=spec, rng=np.random.default_rng(7)).delta
    released_with = dp_fedavg.release(
        with_attack, approval=spec, rng=np.random.default_rng(7)
    ).delta

    # Assert: with the same noise, the noised sums differ by the clipped attack alone, of
    # norm C (it reaches the bound, never more); the released means by C / W.
    moved = norm_of([a - b for a, b in zip(noised_with, noised_without, strict=True)])
    assert moved == pytest.approx(1.0, rel=1e-9)
    moved_mean = norm_of(
        [
            a.astype(np.float64) - b.astype(np.float64)
            for a, b in zip(released_with, released_without, strict=True)
        ]
    )
    assert moved_mean <= 1.0 / 10.0 + 1e-4
    # Against the un-noised honest sum, the attack moves it by at most C plus the noise.
    noise = norm_of([a - b for a, b in zip(noised_without, without.clipped_sum(), strict=True)])
    shift = norm_of([a - b for a, b in zip(noised_with, without.clipped_sum(), strict=True)])
    assert shift <= 1.0 + noise + 1e-9


def test_every_update_weighs_1_whatever_example_count_it_claims() -> None:
    # Prepare: a large update (clipped to C = 2) and a small one (kept as it is).
    data = np.random.default_rng(2)
    big, small = update(data, norm=50.0), update(data, norm=0.5)
    counts = ClippedSum(SHAPES, clip_norm=2.0)
    ones = ClippedSum(SHAPES, clip_norm=2.0)

    # Execute
    counts.add(big, 1)
    counts.add(small, 1_000_000)
    ones.add(big, 1)
    ones.add(small, 1)

    # Assert: the counts changed nothing; the sum is clip(big) + small.
    for a, b in zip(counts.clipped_sum(), ones.clipped_sum(), strict=True):
        np.testing.assert_array_equal(a, b)
    expected = [
        b.astype(np.float64) * (2.0 / norm_of(big)) + s.astype(np.float64)
        for b, s in zip(big, small, strict=True)
    ]
    for got, want in zip(counts.clipped_sum(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def _held_bytes(value: object) -> int:
    """The bytes of every numpy array ``value`` holds (in attributes, lists, tuples, dicts)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, list | tuple | set):
        return sum(_held_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_held_bytes(item) for item in value.values())
    if hasattr(value, "__dict__"):
        return sum(_held_bytes(item) for item in vars(value).values())
    return 0


def test_the_sum_holds_one_float64_array_per_tensor_whatever_the_number_of_updates() -> None:
    # Prepare
    data = np.random.default_rng(3)
    accumulator = ClippedSum(SHAPES, clip_norm=1.0)
    one_sum = 8 * COORDINATES

    # Execute
    sizes = []
    for count in range(1, 201):
        accumulator.add(update(data, norm=float(count)), count)
        sizes.append(_held_bytes(accumulator))

    # Assert
    assert accumulator.count == 200
    assert set(sizes) == {one_sum}
    assert not accumulator.buffers


def test_the_mean_divides_by_the_expected_participants_not_by_who_answered() -> None:
    # Prepare: three updates of 0.1 everywhere (inside C), W = 7.5.
    spec = privacy(clip_norm=10.0, z=1e-9, expected=7.5)
    accumulator = ClippedSum([[4]], clip_norm=10.0)
    for _ in range(3):
        accumulator.add([np.full(4, 0.1, np.float32)], 5)

    # Execute
    (delta,) = dp_fedavg.release(accumulator, approval=spec, rng=np.random.default_rng(0)).delta

    # Assert: float32, (3 · 0.1) / 7.5 (the noise, of std 1e-8, does not show at 1e-6).
    assert delta.dtype == np.float32
    np.testing.assert_allclose(delta, 0.3 / 7.5, rtol=1e-6)


def test_the_noise_step_is_a_function_of_the_sum_alone_and_leaves_it_unchanged() -> None:
    summed = [np.arange(6, dtype=np.float64).reshape(2, 3)]
    before = summed[0].copy()

    first = dp_fedavg.add_noise(summed, approval=privacy(), rng=np.random.default_rng(5))
    second = dp_fedavg.add_noise(summed, approval=privacy(), rng=np.random.default_rng(5))

    np.testing.assert_array_equal(summed[0], before)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[0].dtype == np.float64
    assert not np.array_equal(first[0], before)


def test_the_plain_result_of_a_clipped_sum_is_refused() -> None:
    accumulator = ClippedSum([[2]], clip_norm=1.0)
    accumulator.add([np.ones(2, np.float32)], 1)

    with pytest.raises(ValueError, match="only noised"):
        accumulator.result()


def test_a_release_under_another_clip_norm_is_refused() -> None:
    accumulator = ClippedSum([[2]], clip_norm=1.0)
    accumulator.add([np.ones(2, np.float32)], 1)

    with pytest.raises(ValueError, match="clip_norm"):
        dp_fedavg.release(
            accumulator, approval=privacy(clip_norm=2.0), rng=np.random.default_rng(0)
        )


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_clip_norm_is_refused(clip_norm: float) -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        ClippedSum([[2]], clip_norm=clip_norm)


def _opened(**fields: object) -> RoundOpened:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    return RoundOpened.model_validate(
        {
            "producer": "t",
            "round_id": uuid.uuid4(),
            "task_id": uuid.uuid4(),
            "round_number": 1,
            "attempt": 0,
            "model_version": 0,
            "participants": [Participant(device_id="d0", public_key=b"k" * 32)],
            "min_updates": 1,
            "deadline": deadline,
            "param_shapes": [[2]],
            "max_update_norm": 10.0,
            "sent_at": deadline - timedelta(seconds=30),
            **fields,
        }
    )


def test_dp_with_a_robust_strategy_is_refused_with_the_reason() -> None:
    reason = dp_fedavg.refusal(_opened(privacy=privacy(), strategy=MedianStrategy()))

    assert reason is not None
    assert "strategy median" in reason and "fedavg" in reason


def test_dp_with_a_sum_strategy_and_a_round_without_dp_are_not_refused() -> None:
    assert dp_fedavg.refusal(_opened(privacy=privacy())) is None
    assert dp_fedavg.refusal(_opened(strategy=MedianStrategy())) is None


# --- adaptive clipping (Andrew et al. 2021) -------------------------------------------------


def test_the_count_is_of_updates_no_longer_than_c_centred() -> None:
    # Prepare: norms 0.5, 1.0 (on the bound: unclipped) and 3.0 against C = 1.
    accumulator = ClippedSum([[2]], clip_norm=1.0)
    for norm in (0.5, 1.0, 3.0):
        accumulator.add([np.array([norm, 0.0], np.float32)], 1)

    # Assert: two unclipped, one clipped: (1 - 1/2)·2 + (0 - 1/2) = 0.5.
    assert accumulator.centered_count() == 0.5


def test_a_split_release_noises_the_sum_at_z_delta_and_the_count_at_sigma_b() -> None:
    """Over 2,000 releases of a zero sum (50 coordinates) with 8 updates all inside C, the
    count's noise has std σ_b / W (2,000 draws) and the sum's z_Δ·C / W (100,000 draws); χ²
    bounds at 1e-6 false failure each, two-sided. σ_b = 0.6 against z = 1 makes z_Δ = 1.81:
    noise at z would fail the sum's bound by far."""
    # Prepare: z = 1, σ_b = 0.6 → z_Δ = (1 − 1/1.44)^(−1/2); C = 0.5, W = 8.
    z, count_std, clip_norm, expected = 1.0, 0.6, 0.5, 8.0
    update_z = (z**-2 - (2 * count_std) ** -2) ** -0.5
    spec = privacy(
        clip_norm=clip_norm, z=z, expected=expected, update_z=update_z, count_std=count_std
    )
    accumulator = ClippedSum([[50]], clip_norm=clip_norm)
    for _ in range(8):
        accumulator.add([np.zeros(50, np.float32)], 1)
    rng = np.random.default_rng(11)

    # Execute
    releases = [dp_fedavg.release(accumulator, approval=spec, rng=rng) for _ in range(2000)]

    # Assert: b̃ = (4 + N(0, σ_b²)) / 8 + 1/2 centres on 1 (every update unclipped).
    fractions = np.array([r.unclipped_fraction for r in releases], dtype=np.float64)
    sums = np.concatenate([r.delta[0].astype(np.float64) for r in releases])
    count_stat = float(np.sum(np.square(fractions - 1.0))) / (count_std / expected) ** 2
    sum_stat = float(np.sum(np.square(sums))) / (update_z * clip_norm / expected) ** 2
    for statistic, n in ((count_stat, len(fractions)), (sum_stat, len(sums))):
        low, high = stats.chi2.ppf([5e-7, 1 - 5e-7], n)
        assert low < statistic < high
    assert update_z == pytest.approx(1.809, abs=1e-3)


def test_a_split_worth_less_than_the_charged_z_is_refused() -> None:
    # Prepare: z_Δ = z with any finite σ_b is worth less than z.
    accumulator = ClippedSum([[1]], clip_norm=1.0)
    spec = privacy(z=1.0, update_z=1.0, count_std=3.0)

    with pytest.raises(ValueError, match="less than"):
        dp_fedavg.release(accumulator, approval=spec, rng=np.random.default_rng(0))


def test_a_round_without_adaptive_clipping_releases_no_fraction() -> None:
    accumulator = ClippedSum([[1]], clip_norm=1.0)
    accumulator.add([np.ones(1, np.float32)], 1)

    released = dp_fedavg.release(accumulator, approval=privacy(), rng=np.random.default_rng(0))

    assert released.unclipped_fraction is None


def test_the_split_goes_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        privacy(update_z=1.2)
