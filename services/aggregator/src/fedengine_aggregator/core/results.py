"""A closed round's result message, built from its state: pure, the time passed in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from fedcommon import arrays
from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.messages.v1 import RoundAggregated, RoundFailed
from fedcommon.server_opt import to_float32
from fedengine_aggregator.core import dp_fedavg, secure_exchange
from fedengine_aggregator.core.exchange import UPDATES_STAGE
from fedengine_aggregator.core.window import OpenRound
from fedprivacy.secagg import AggregateResult
from fedprivacy.secagg.encoding import dequantize_sum


def about(state: OpenRound, *, producer: str) -> dict[str, Any]:
    """The fields every result of ``state``'s round carries."""
    opened = state.opened
    return {
        "producer": producer,
        "round_id": state.round_id,
        "correlation_id": opened.message_id,
        "task_id": opened.task_id,
        "round_number": opened.round_number,
        "attempt": opened.attempt,
    }


def aggregated(state: OpenRound, *, producer: str, now: datetime) -> RoundAggregated:
    """The round's aggregate and what it was built from.

    Raises ``ValueError`` (pydantic's ValidationError among them) or ``ArithmeticError`` when
    the strategy cannot build it or the result does not fit the message: building it again
    would fail again.
    """
    opened, exchange = state.opened, state.exchange
    return RoundAggregated(
        **about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(exchange.delta())),
        participants=state.participants(),
        dropped=state.dropped(),
        rejected=dict(state.rejected),
        num_examples=exchange.num_examples(),
        train_loss=exchange.mean_train_loss(),
        bytes_up=exchange.bytes_up(),
        duration_s=min(max(0.0, (now - opened.sent_at).total_seconds()), MAX_TIMEOUT_S),
    )


def private_aggregated(
    state: OpenRound, *, producer: str, now: datetime, rng: np.random.Generator
) -> RoundAggregated:
    """A DP round's result: the noised delta under its approval, and nothing per device.

    No participants, drops, rejection counts, example counts, losses or bytes: each would
    tell, un-noised, who took part or how many did (adaptive clipping's count goes out
    noised). Every call draws fresh noise, so the
    caller builds it once and stores it (the aggregator's outbox).

    Raises ``ValueError`` if the round is not a DP round or its sum is not a clipped one.
    """
    opened, accumulator, approval = state.opened, state.exchange.accumulator, state.opened.privacy
    if approval is None:
        raise ValueError(f"round {state.round_id} is not a DP round")
    if not isinstance(accumulator, dp_fedavg.ClippedSum):
        raise ValueError(f"round {state.round_id}: a DP round needs a clipped sum")
    released = dp_fedavg.release(accumulator, approval=approval, rng=rng)
    return RoundAggregated(
        **about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(released.delta)),
        participants=[],
        dropped=[],
        rejected={},
        num_examples=0,
        train_loss=0.0,
        bytes_up=0,
        duration_s=min(max(0.0, (now - opened.sent_at).total_seconds()), MAX_TIMEOUT_S),
        privacy_approval_id=approval.approval_id,
        privacy_unclipped_fraction=released.unclipped_fraction,
    )


def secure_aggregated(
    state: OpenRound, total: AggregateResult, *, producer: str, now: datetime
) -> RoundAggregated:
    """A secure round's result: the weighted mean the unmasked sum gives, and who sent a
    masked input (the aggregator knows who answered; it never saw an update)."""
    opened, secure = state.opened, _secure(state)
    delta = secure_exchange.split(total.weighted_mean(), opened.param_shapes)
    return RoundAggregated(
        **about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(to_float32(delta))),
        participants=secure.contributors(total),
        dropped=state.dropped(),
        rejected=dict(state.rejected),
        num_examples=total.weight_sum,
        # Each device's loss would be one more thing it tells about its data: not sent.
        train_loss=0.0,
        bytes_up=secure.bytes_up(),
        duration_s=min(max(0.0, (now - opened.sent_at).total_seconds()), MAX_TIMEOUT_S),
    )


def secure_private_aggregated(
    state: OpenRound,
    total: AggregateResult,
    *,
    producer: str,
    now: datetime,
    rng: np.random.Generator,
) -> RoundAggregated:
    """A DP round with secure aggregation: the unmasked sum of the clipped updates (each
    device clipped and weighted 1 itself), noised here exactly as a DP round in the clear,
    and nothing per device. The aggregator sees the un-noised sum before it adds the noise
    (docs/architecture.md, trust model). One call, one release: the caller stores it.

    Raises ``ValueError`` if the round is not a DP round or its masking does not match the
    approval (another clip norm, example weights).
    """
    opened, secure, approval = state.opened, _secure(state), state.opened.privacy
    if approval is None:
        raise ValueError(f"round {state.round_id} is not a DP round")
    config = secure.config
    if config.clip_norm != approval.clip_norm or config.weight_cap != 1:
        raise ValueError(
            f"round {state.round_id}: masked with clip norm {config.clip_norm} and weight cap "
            f"{config.weight_cap}, the approval needs {approval.clip_norm} and 1"
        )
    count = len(total.contributors)
    summed = dequantize_sum(
        total.total[: config.dim], count=count, clip_norm=config.clip_norm, bits=config.bits
    )
    unclipped = total.unclipped_count
    released = dp_fedavg.release_sum(
        secure_exchange.split(summed, opened.param_shapes),
        centered_count=0.0 if unclipped is None else unclipped - count / 2,
        approval=approval,
        rng=rng,
    )
    return RoundAggregated(
        **about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(released.delta)),
        participants=[],
        dropped=[],
        rejected={},
        num_examples=0,
        train_loss=0.0,
        bytes_up=0,
        duration_s=min(max(0.0, (now - opened.sent_at).total_seconds()), MAX_TIMEOUT_S),
        privacy_approval_id=approval.approval_id,
        privacy_unclipped_fraction=released.unclipped_fraction,
    )


def _secure(state: OpenRound) -> secure_exchange.SecureExchange:
    if state.secure is None:
        raise ValueError(f"round {state.round_id} has no secure aggregation")
    return state.secure


def failed(state: OpenRound, reason: str, *, producer: str) -> RoundFailed:
    received = len(state.participants()) if state.secure else len(state.exchange.accepted)
    return RoundFailed(
        **about(state, producer=producer),
        reason=reason,
        received=received,
        rejected=dict(state.rejected),
    )


def shortfall(state: OpenRound) -> str:
    """Why a round that ended below a stage's minimum failed, naming the stage."""
    stage = state.stages.current
    if stage.name == UPDATES_STAGE:
        return (
            f"{len(state.exchange.accepted)} of {state.opened.min_updates} updates by the deadline"
        )
    return (
        f"stage {stage.name}: {len(stage.survivors)} of {stage.spec.min_senders} senders "
        "by its deadline"
    )
