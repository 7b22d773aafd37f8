"""A closed round's result message, built from its state: pure, the time passed in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from fedcommon import arrays
from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.messages.v1 import RoundAggregated, RoundFailed
from fedengine_aggregator.core import dp_fedavg
from fedengine_aggregator.core.exchange import UPDATES_STAGE
from fedengine_aggregator.core.window import OpenRound


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


def failed(state: OpenRound, reason: str, *, producer: str) -> RoundFailed:
    return RoundFailed(
        **about(state, producer=producer),
        reason=reason,
        received=len(state.exchange.accepted),
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
