"""A secure round's public parameters: what round.opened and each train.requested carry.

SecAgg+ (fedprivacy.secagg; Bonawitz et al. 2017, https://eprint.iacr.org/2017/281, with the
sparse graph of Bell et al. 2020, https://eprint.iacr.org/2020/704). The coordinator fixes the
round's parameters when it opens a try: the graph's degree and threshold for the number of
participants, and the graph seed. The seed is 32 bytes of the operating system's entropy,
drawn by the shell for each try (``DevicesOffered.graph_seed``, ``SpendApproved.graph_seed``)
and never derived from anything public, so that nobody can predict the graph before the try
opens. Device i of the graph is position i of round.opened's participant list, the order the
aggregator reads it in.

A secure round takes three stages more than a plain one after training and key advertisement
(share keys, masked input, unmasking), each bounded by the task's ``stage_timeout_s``: the
try's stored deadline (the lost-round check's) includes them, while the devices' and the
aggregator's first deadline is the plain round timeout (:func:`deadlines`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from fedcommon import secagg_round
from fedcommon.messages.v1 import (
    SECAGG_MIN_PARTICIPANTS,
    Participant,
    RoundPrivacy,
    RoundSecAgg,
    SecAggAssignment,
    SecAggPeer,
    TaskSpec,
)
from fedprivacy.secagg.config import SEED_BYTES, build_neighbours, choose_degree

# The stages of a secure round after the first (train and advertise keys): share keys, masked
# input, unmasking.
STAGES_AFTER_TRAINING = 3
# A try with nobody (a DP task's empty Poisson draw) carries no secure-aggregation section: the
# aggregator releases pure noise, as without it. One or two devices cannot run the protocol
# (two would learn each other's update from the sum): their try carries the section, so that
# the aggregator fails it, and no device is asked (``assignments`` gives none).
MIN_SECURE_PARTICIPANTS = 1
# The graph seed's length (the shell draws it with ``secrets.token_bytes``).
GRAPH_SEED_BYTES = SEED_BYTES
# DP-FedAvg weights every device 1 (the sum is divided by the expected participant count).
DP_WEIGHT_CAP = 1


@dataclass(frozen=True)
class Deadlines:
    """A try's deadlines: ``train`` for the devices and the aggregator's first stage
    (round.opened, train.requested), ``round`` for the try as a whole (``Round.deadline``, past
    which the coordinator takes it as lost)."""

    train: datetime
    round: datetime


def deadlines(spec: TaskSpec, *, now: datetime) -> Deadlines:
    """Return the deadlines of a try of ``spec`` opened at ``now``.

    The first stage ends after ``round_timeout_s``; a task with secure aggregation adds
    ``STAGES_AFTER_TRAINING`` stages of ``stage_timeout_s`` each, and one more for the
    result, to the try's own deadline.
    """
    train = now + timedelta(seconds=spec.round_timeout_s)
    section = spec.secure_aggregation
    if section is None:
        return Deadlines(train=train, round=train)
    # One stage's time more than the stages take: the aggregator's unmasking and its result
    # (seconds at a thousand devices) come after the last stage's deadline.
    extra = timedelta(seconds=(STAGES_AFTER_TRAINING + 1) * section.stage_timeout_s)
    return Deadlines(train=train, round=train + extra)


def round_parameters(
    spec: TaskSpec,
    *,
    num_clients: int,
    graph_seed: bytes | None,
    dp: RoundPrivacy | None = None,
) -> RoundSecAgg | None:
    """Return round.opened's secure-aggregation section for a try of ``num_clients``.

    None when the task has no secure aggregation, or the try has fewer than
    ``MIN_SECURE_PARTICIPANTS``. A DP try (``dp``: round.opened's privacy section) clips to
    its approval's norm, weights every device 1, and masks adaptive clipping's bit when the
    approval has one.

    Raises
    ------
    ValueError
        A secure try without a 32-byte ``graph_seed`` (the shell must draw one).
    """
    section = spec.secure_aggregation
    if section is None or num_clients < MIN_SECURE_PARTICIPANTS:
        return None
    if graph_seed is None or len(graph_seed) != GRAPH_SEED_BYTES:
        raise ValueError(f"graph_seed must be {GRAPH_SEED_BYTES} random bytes for a secure try")
    default = choose_degree(num_clients) if num_clients >= 2 else 1
    degree = secagg_round.round_degree(num_clients, neighbours=section.neighbours, default=default)
    if dp is None:
        clip_norm, weight_cap, clip_bit = section.clip_norm, section.weight_cap, False
    else:
        clip_norm, weight_cap = dp.clip_norm, DP_WEIGHT_CAP
        clip_bit = dp.count_noise_std is not None
    return RoundSecAgg(
        bits=section.bits,
        clip_norm=clip_norm,
        weight_cap=weight_cap,
        degree=degree,
        threshold=secagg_round.round_threshold(degree, threshold=section.threshold),
        graph_seed=graph_seed,
        stage_timeout_s=section.stage_timeout_s,
        clip_bit=clip_bit,
    )


def assignments(
    parameters: RoundSecAgg, participants: Sequence[Participant], *, dim: int
) -> dict[str, SecAggAssignment]:
    """Return each participant's ``SecAggAssignment``, by device id.

    Index i is the device's position in ``participants`` (round.opened's order); its
    neighbours are its row of the graph built once from the round's seed. None below
    ``SECAGG_MIN_PARTICIPANTS``: such a try asks no device.
    """
    if len(participants) < SECAGG_MIN_PARTICIPANTS:
        return {}
    graph = build_neighbours(
        num_clients=len(participants), degree=parameters.degree, seed=parameters.graph_seed
    )
    peers = [
        SecAggPeer(index=i, device_id=p.device_id, public_key=p.public_key)
        for i, p in enumerate(participants)
    ]
    return {
        p.device_id: SecAggAssignment(
            round=parameters,
            num_clients=len(participants),
            index=i,
            dim=dim,
            neighbours=[peers[j] for j in graph[i]],
        )
        for i, p in enumerate(participants)
    }
