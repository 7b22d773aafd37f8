"""What every result of a closed round carries, and its failure: pure, the time passed in.

Each protocol builds its own ``RoundAggregated`` (:mod:`.exchange`, :mod:`.secure_exchange`)
from these pieces; a round that ended short fails the same way whatever its protocol.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.messages.v1 import RoundFailed
from fedengine_aggregator.core.stages import UPDATES_STAGE

if TYPE_CHECKING:
    from fedengine_aggregator.core.window import OpenRound

PRODUCER = "aggregator"


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


def duration_s(state: OpenRound, now: datetime) -> float:
    """Seconds from round.opened to ``now``, within what a message may carry."""
    return min(max(0.0, (now - state.opened.sent_at).total_seconds()), MAX_TIMEOUT_S)


def failed(state: OpenRound, reason: str, *, producer: str) -> RoundFailed:
    return RoundFailed(
        **about(state, producer=producer),
        reason=reason,
        received=len(state.participants()),
        rejected=dict(state.rejected),
    )


def shortfall(state: OpenRound) -> str:
    """Why a round that ended below a stage's minimum failed, naming the stage."""
    stage = state.stages.current
    if stage.name == UPDATES_STAGE:
        return f"{len(stage.survivors)} of {state.opened.min_updates} updates by the deadline"
    return (
        f"stage {stage.name}: {len(stage.survivors)} of {stage.spec.min_senders} senders "
        "by its deadline"
    )
