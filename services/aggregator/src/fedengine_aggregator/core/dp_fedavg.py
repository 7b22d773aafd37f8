"""Central DP-FedAvg: a clipped, unweighted running sum, then Gaussian noise on the sum, pure.

Paper: McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
https://arxiv.org/abs/1710.06963 (Algorithm 1, DP-FedAvg with the fixed-denominator
estimator f̃_f). A round of a DP task (its round.opened carries ``privacy``) releases

    Δ = (Σᵢ clip(Δᵢ, C) + N(0, (z·C)² I)) / W

where each accepted update Δᵢ is clipped to L2 norm C over all its arrays together and added
with weight 1, z is the noise multiplier the privacy service approved, and W is the expected
number of participants (q times the pool the round was sampled from), not the number that
answered: the count of devices that took part must not show in the result.

Weight 1 is what makes the accountant's sensitivity true: one device moves the sum by at most
C in L2, whatever example count it claims (FedAvg's example weights would let a device that
claims 2³¹ examples own the mean). The three steps are separate on purpose:
:class:`ClippedSum` (runs as updates arrive), :func:`add_noise` (a function of the sum only,
so that it can run after secure aggregation has unmasked the sum, in a later issue) and
:func:`private_mean` (post-processing, which costs no privacy).

With adaptive clipping (Andrew et al. 2021, fedprivacy.adaptive_clipping) the sum
also counts, per update, whether it was no longer than C (bᵢ − ½, from the raw norm), and the
release adds N(0, σ_b²) to that count: the noised unclipped fraction b̃ goes out with the delta
and the coordinator moves C by it. The sum's noise is then z_Δ·C, z_Δ > z, so that both
releases together cost the z the privacy service charged.

Trust model: the aggregator sees every clipped update and the un-noised sum in memory; only
the noised mean leaves it. Randomness is a parameter (``rng``): production passes
``fedprivacy.mechanisms.os_entropy_rng()``, never the global numpy or torch state,
which the model builder reseeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedcommon.arrays import NDArrays
from fedcommon.messages.v1 import DP_STRATEGIES, RoundOpened, RoundPrivacy
from fedcommon.server_opt import Float64Arrays, Shapes, to_float32
from fedengine_aggregator.core.strategies import Accumulator
from fedprivacy import adaptive_clipping, mechanisms

# How far the split (z_Δ, σ_b) of an approval may fall short of its z by float rounding.
_SPLIT_TOLERANCE = 1e-9


def refusal(opened: RoundOpened) -> str | None:
    """Why a round cannot be aggregated with DP, or None when it can (or is not a DP round).

    Only a sum strategy's aggregate moves by at most C when one clipped update changes: a
    median or Krum has a different sensitivity, which the accountant does not assume.
    """
    if opened.privacy is None or opened.strategy.name in DP_STRATEGIES:
        return None
    return (
        f"differential privacy cannot be used with strategy {opened.strategy.name}: "
        f"only sum strategies ({', '.join(sorted(DP_STRATEGIES))}) bound one device's "
        "influence by the clipping norm"
    )


class ClippedSum(Accumulator):
    """Σ clip(Δᵢ, C) in float64, each update with weight 1 whatever example count it claims.

    Holds one float64 array per parameter tensor whatever the number of updates: memory does
    not grow with the participants. Its own ``result`` is refused: a DP round's aggregate
    leaves only noised (:func:`release`), never as the plain mean of the clipped updates.
    """

    buffers = False

    def __init__(self, param_shapes: Shapes, *, clip_norm: float) -> None:
        if isinstance(clip_norm, bool) or not math.isfinite(clip_norm) or clip_norm <= 0:
            raise ValueError(f"ClippedSum: clip_norm must be a finite number > 0, got {clip_norm}")
        super().__init__(param_shapes)
        self.clip_norm = float(clip_norm)
        self._sums = [np.zeros(shape, dtype=np.float64) for shape in self.param_shapes]
        # Σ(bᵢ − ½), bᵢ = 1 when update i was no longer than C: adaptive clipping's count.
        self._centered_count = 0.0

    def centered_count(self) -> float:
        """Σ(bᵢ − ½) over the updates added (never to be released un-noised)."""
        return self._centered_count

    def clipped_sum(self) -> Float64Arrays:
        """Return a copy of the un-noised sum of the clipped updates (never to be released)."""
        return [acc.copy() for acc in self._sums]

    def _add(self, update: Float64Arrays, num_examples: int) -> None:
        # ``num_examples`` is deliberately unused: weight 1 (bounded weights).
        arrays: NDArrays = list(update)
        unclipped = mechanisms.global_norm(arrays) <= self.clip_norm
        self._centered_count += 0.5 if unclipped else -0.5
        clipped = mechanisms.clip_by_norm(arrays, clip_norm=self.clip_norm)
        for acc, array in zip(self._sums, clipped, strict=True):
            acc += np.asarray(array, dtype=np.float64)  # already float64: no copy

    def _result(self) -> Float64Arrays:
        raise ValueError("a DP round's sum is released only noised (dp_fedavg.release)")


def add_noise(
    summed: Float64Arrays, *, approval: RoundPrivacy, rng: np.random.Generator
) -> Float64Arrays:
    """Return ``summed`` plus N(0, (z·C)²) in every coordinate, z and C from ``approval``.

    A function of the sum alone (no update, count or device enters it), so that it can run
    unchanged after secure aggregation has unmasked the sum: the masks cancel in the sum, and
    the noise is added to what they reveal. ``summed`` is not modified.

    With adaptive clipping z is the approval's ``update_noise_multiplier`` z_Δ, checked to be
    worth, with the count's σ_b, at least the z that was charged.

    Raises ``ValueError`` if ``summed`` is empty or not finite, or if the approval's split of
    z is worth less than z.
    """
    arrays: NDArrays = [np.asarray(a, dtype=np.float64) for a in summed]
    noised = mechanisms.noise_sum(
        arrays,
        noise_multiplier=sum_noise_multiplier(approval),
        clip_norm=approval.clip_norm,
        rng=rng,
    )
    return [np.asarray(a, dtype=np.float64) for a in noised]


def sum_noise_multiplier(approval: RoundPrivacy) -> float:
    """The noise multiplier of the updates' sum: z, or z_Δ when z is split with the count.

    Raises ``ValueError`` when the split (z_Δ, σ_b) is worth less than the z charged: a
    message that asks for less noise than was paid for is never obeyed.
    """
    z = approval.noise_multiplier
    if approval.update_noise_multiplier is None or approval.count_noise_std is None:
        return z
    worth = adaptive_clipping.combined_noise_multiplier(
        approval.update_noise_multiplier, approval.count_noise_std
    )
    if worth < z * (1 - _SPLIT_TOLERANCE):
        raise ValueError(
            f"the approval's split (z_Δ {approval.update_noise_multiplier:g}, σ_b "
            f"{approval.count_noise_std:g}) is worth noise multiplier {worth:g}, less than the "
            f"{z:g} charged"
        )
    return approval.update_noise_multiplier


def private_mean(noised: Float64Arrays, *, expected_participants: float) -> NDArrays:
    """Return the noised sum divided by the fixed denominator, as float32 (the model's dtype).

    Post-processing of a DP release: it costs no privacy. The denominator is the expected
    number of participants, so how many devices answered does not show.
    """
    if not math.isfinite(expected_participants) or expected_participants <= 0:
        raise ValueError(
            f"expected_participants must be a finite number > 0, got {expected_participants}"
        )
    return to_float32([a / expected_participants for a in noised])


@dataclass(frozen=True)
class PrivateRelease:
    """What a DP round publishes: the noised delta, and with adaptive clipping b̃."""

    delta: NDArrays
    unclipped_fraction: float | None = None


def release(
    accumulator: ClippedSum, *, approval: RoundPrivacy, rng: np.random.Generator
) -> PrivateRelease:
    """Return the round's DP-FedAvg delta (noise on the clipped sum, over the expected count)
    and, with adaptive clipping, the noised fraction of updates no longer than C.

    Call once per round: every call draws fresh noise, so a second call is a second release
    the accountant never charged (the aggregator stores the first result in its outbox).

    Raises ``ValueError`` if the clipping norm of ``approval`` is not the accumulator's.
    """
    if approval.clip_norm != accumulator.clip_norm:
        raise ValueError(
            f"clip_norm {approval.clip_norm} of the approval is not the sum's "
            f"{accumulator.clip_norm}"
        )
    return release_sum(
        accumulator.clipped_sum(),
        centered_count=accumulator.centered_count(),
        approval=approval,
        rng=rng,
    )


def release_sum(
    summed: Float64Arrays,
    *,
    centered_count: float,
    approval: RoundPrivacy,
    rng: np.random.Generator,
) -> PrivateRelease:
    """The release of a sum of clipped updates, however it was summed (in the clear, or
    unmasked by secure aggregation): noise, the fixed denominator and, with adaptive clipping,
    the noised count Σ(bᵢ − ½). One call, one release (fresh noise)."""
    noised = add_noise(summed, approval=approval, rng=rng)
    delta = private_mean(noised, expected_participants=approval.expected_participants)
    if approval.count_noise_std is None:
        return PrivateRelease(delta)
    fraction = adaptive_clipping.unclipped_fraction(
        centered_count,
        count_std=approval.count_noise_std,
        expected_participants=approval.expected_participants,
        rng=rng,
    )
    return PrivateRelease(delta, fraction)
