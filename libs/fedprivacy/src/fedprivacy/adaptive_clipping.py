"""Adaptive clipping's arithmetic, pure: split z between the two releases, noise the count,
move C.

Paper: Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning with Adaptive
Clipping", https://arxiv.org/abs/1905.03871 (Algorithm 1 and Theorem 1). A round of a task
with adaptive clipping releases two things from the same sampled devices:

- the sum of updates clipped to C, sensitivity C, with noise std z_Δ·C, and
- the count Σᵢ (bᵢ − ½), bᵢ = 1 when update i was no longer than C, sensitivity ½ (adding or
  removing one device moves it by ½), with noise std σ_b.

Together they are one Gaussian mechanism on the stacked vector (sum / C, 2·count), whose noise
multiplier is z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2). So the privacy service charges a round at z, as
for fixed clipping, and gives the updates z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) > z: the quantile
estimate's own cost is paid by slightly more noise on the updates, never outside the ledger.
This needs 2σ_b > z. No maintained library ships this for a server we run (TensorFlow
Federated's is tied to TFF's runtime, Opacus's AdaClip is per-example local clipping), so the
few lines are ours.

C then moves geometrically towards the target quantile γ of the update norms:
C ← C·exp(−η·(b̃ − γ)), b̃ = (Σ(bᵢ − ½) + N(0, σ_b²)) / m + ½ with m the expected number of
participants (the fixed denominator: the actual count must not show). b̃ is a noised release,
so anything computed from it is post-processing and costs nothing more.
"""

from __future__ import annotations

import math

import numpy as np

# The paper's count noise: σ_b = m / 20 (m the expected participants per round).
PAPER_COUNT_NOISE_FRACTION = 1 / 20


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def count_noise_std(
    configured: float | None, *, expected_participants: float, noise_multiplier: float
) -> float:
    """σ_b for a round: the task's (``configured``), else max(m / 20, z).

    m / 20 is the paper's choice for rounds of hundreds of devices; on small rounds it would
    leave no room for the updates' noise (2σ_b must exceed z), so it is raised to z, which
    costs the updates at most a factor 1/√(1 − ¼) ≈ 1.155 in noise.
    """
    _check_positive("expected_participants", expected_participants)
    _check_positive("noise_multiplier", noise_multiplier)
    if configured is not None:
        _check_positive("count_noise_std", configured)
        return configured
    return max(expected_participants * PAPER_COUNT_NOISE_FRACTION, noise_multiplier)


def update_noise_multiplier(noise_multiplier: float, count_std: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the updates' noise that, with the count's σ_b, costs z.

    Raises ``ValueError`` when 2σ_b ≤ z: the count alone would cost more than the whole round.
    """
    _check_positive("noise_multiplier", noise_multiplier)
    _check_positive("count_noise_std", count_std)
    left = noise_multiplier**-2 - (2 * count_std) ** -2
    if left <= 0:
        raise ValueError(
            f"adaptive clipping needs count_noise_std > noise_multiplier / 2: {count_std:g} "
            f"against z = {noise_multiplier:g} (the count alone would cost more than the round)"
        )
    return float(left**-0.5)


def combined_noise_multiplier(update_multiplier: float, count_std: float) -> float:
    """The one Gaussian release's z that the split (z_Δ, σ_b) is worth: what was charged."""
    _check_positive("update_noise_multiplier", update_multiplier)
    _check_positive("count_noise_std", count_std)
    return float((update_multiplier**-2 + (2 * count_std) ** -2) ** -0.5)


def unclipped_fraction(
    centered_count: float,
    *,
    count_std: float,
    expected_participants: float,
    rng: np.random.Generator,
) -> float:
    """b̃ = (Σ(bᵢ − ½) + N(0, σ_b²)) / m + ½: the noised share of updates no longer than C.

    ``centered_count`` is Σ(bᵢ − ½) over the round's accepted updates; ``rng`` is the
    release's generator (OS entropy in production). Call once per round: a second call is a
    second, uncharged release.
    """
    _check_positive("count_noise_std", count_std)
    _check_positive("expected_participants", expected_participants)
    if not math.isfinite(centered_count):
        raise ValueError(f"centered_count must be finite, got {centered_count}")
    noised = centered_count + float(rng.normal(0.0, count_std))
    return noised / expected_participants + 0.5


def next_clip_norm(
    clip_norm: float,
    fraction: float,
    *,
    target_quantile: float,
    learning_rate: float,
    lowest: float,
    highest: float,
) -> float:
    """C·exp(−η·(b̃ − γ)), kept within [``lowest``, ``highest``].

    The bounds are the task schema's (fedcommon: MIN_ADAPTIVE_CLIP_NORM, MAX_SETTING), passed
    in so that this module needs numpy alone.

    Too many updates unclipped (b̃ > γ): C shrinks; too few: it grows. The exponent is bounded
    by the schema's bounds on b̃ and η only loosely, so the result is clamped, never inf or 0.
    """
    _check_positive("clip_norm", clip_norm)
    _check_positive("lowest", lowest)
    if not lowest <= highest:
        raise ValueError(f"lowest must be <= highest, got {lowest} > {highest}")
    if not math.isfinite(fraction):
        raise ValueError(f"the unclipped fraction must be finite, got {fraction}")
    exponent = -learning_rate * (fraction - target_quantile)
    # exp overflows past ~709; anything beyond ±50 is clamped by the bounds anyway.
    moved = clip_norm * math.exp(max(-50.0, min(50.0, exponent)))
    return min(highest, max(lowest, moved))
