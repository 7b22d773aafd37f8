"""The update exchange: the stage in which participants send their updates, pure.

Two protocols (:mod:`.protocol`) over it. :class:`UpdateExchange`, the FedAvg family's and the
robust rules': each validated update goes into the round's accumulator as it arrives, so a sum
strategy holds one running weighted sum whatever the number of participants, and only a few
numbers per sender stay (for the result's metadata and the audit); a robust strategy's
accumulator buffers the updates itself, by necessity (:mod:`.robust`). :class:`PrivateExchange`,
DP-FedAvg's: the same exchange into a clipped sum, released only noised and with nothing per
device (:mod:`.dp_fedavg`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import numpy as np

from fedcommon import arrays, topics
from fedcommon.arrays import NDArrays
from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.messages.v1 import (
    AnyMessage,
    RoundAggregated,
    RoundOpened,
    UpdateDeclined,
    UpdateMetrics,
    UpdateSubmitted,
)
from fedcommon.server_opt import Shapes
from fedengine_aggregator.core import dp_fedavg, results
from fedengine_aggregator.core.catalog import Params, make_strategy
from fedengine_aggregator.core.dp_fedavg import ClippedSum
from fedengine_aggregator.core.protocol import RoundProtocol
from fedengine_aggregator.core.stages import UPDATES_STAGE, Stage, StageSpec
from fedengine_aggregator.core.strategies import Accumulator, Prepared
from fedengine_aggregator.core.validation import (
    Rejected,
    RejectReason,
    judge_decline,
    validate_update,
)

if TYPE_CHECKING:
    from fedengine_aggregator.core.stages import RoundStages
    from fedengine_aggregator.core.window import OpenRound, RoundResult

__all__ = ["UPDATES_STAGE", "Accepted", "PrivateExchange", "UpdateExchange"]


def start_accumulator(strategy: str, params: Params | None, param_shapes: Shapes) -> Accumulator:
    """The one place a round's accumulator is chosen: by strategy name and parameters.

    Raises ``ValueError`` for an unknown strategy or parameter (:func:`.catalog.make_strategy`).
    """
    return make_strategy(strategy, params).rule.start(param_shapes)


def round_accumulator(opened: RoundOpened) -> Accumulator:
    """The accumulator of ``opened``'s round: a clipped sum for a DP round (whatever its sum
    strategy: they all start from the same mean), else its strategy's.

    Raises ``ValueError`` for an unknown strategy or parameter.
    """
    approval = opened.privacy
    if approval is not None:
        return ClippedSum(opened.param_shapes, clip_norm=approval.clip_norm)
    return start_accumulator(
        opened.strategy.name,
        opened.strategy.params.model_dump(exclude_none=True),
        opened.param_shapes,
    )


def stage_deadline(opened: RoundOpened, received_at: datetime | None) -> datetime:
    """The round's deadline, but no later than ``MAX_TIMEOUT_S`` after this aggregator first
    read the round: that bounds how long a round (and the offsets it holds) stays open,
    whatever deadline its definition claims."""
    if received_at is None:
        return opened.deadline
    return min(opened.deadline, received_at + timedelta(seconds=MAX_TIMEOUT_S))


def update_stage(opened: RoundOpened, *, received_at: datetime | None) -> StageSpec:
    """The update exchange of ``opened``: every participant, on fed.updates, by the deadline.

    When every participant delivered, the round goes on even below ``min_updates`` (a round
    cannot ask for more updates than it has participants). A DP round never fails short: it
    releases its noised sum over the fixed denominator however many answered (none: pure
    noise), since whether one device answered must not decide what is published.
    """
    needed = 0 if opened.privacy is not None else min(opened.min_updates, len(opened.participants))
    return StageSpec(
        name=UPDATES_STAGE,
        topics=frozenset({topics.UPDATES}),
        deadline=stage_deadline(opened, received_at),
        min_senders=needed,
        expected={p.device_id: p for p in opened.participants},
        enough=opened.target_updates if opened.privacy is None else None,
    )


def plain_plan(opened: RoundOpened, *, received_at: datetime | None) -> list[StageSpec]:
    """The stages of a round without secure aggregation: the update exchange alone."""
    return [update_stage(opened, received_at=received_at)]


@dataclass(frozen=True)
class Accepted:
    """What stays of an accepted update once its arrays are in the accumulator."""

    num_examples: int
    metrics: UpdateMetrics
    size_bytes: int
    message_id: UUID | None = None


class UpdateExchange(RoundProtocol):
    """The updates accepted so far: folded into ``accumulator``, a few numbers per sender."""

    def __init__(self, opened: RoundOpened, accumulator: Accumulator) -> None:
        super().__init__(opened)
        self.accumulator = accumulator
        self.accepted: dict[str, Accepted] = {}

    # The protocol ----------------------------------------------------------------------
    def plan(self, *, received_at: datetime | None) -> list[StageSpec]:
        return plain_plan(self.opened, received_at=received_at)

    def stage_of(self, message: AnyMessage) -> str | None:
        return UPDATES_STAGE if isinstance(message, UpdateSubmitted | UpdateDeclined) else None

    def is_redelivery(self, stage: str, message: AnyMessage) -> bool:
        return isinstance(message, UpdateSubmitted) and self.redelivered(
            message.device_id, message.message_id
        )

    def check(self, stage: Stage, message: AnyMessage) -> Prepared:
        """Every check of :func:`.validation.validate_update`, then the accumulator's; a
        device's decline is always refused, as ``declined`` when it is the device's own."""
        if isinstance(message, UpdateDeclined):
            raise judge_decline(
                self.opened,
                message,
                participant=stage.expects(message.device_id),
                already_accepted=stage.delivered(message.device_id),
            )
        if not isinstance(message, UpdateSubmitted):
            raise Rejected(RejectReason.UNKNOWN_ROUND, f"{message.type} is no update")
        decoded = validate_update(
            self.opened,
            message,
            participant=stage.expects(message.device_id),
            already_accepted=stage.delivered(message.device_id),
        )
        try:
            return self.prepare(decoded, message.num_examples)
        except ValueError as exc:
            raise Rejected(RejectReason.MALFORMED, str(exc)) from exc

    def commit(self, stage: Stage, message: AnyMessage, checked: Any) -> None:
        if not isinstance(message, UpdateSubmitted) or not isinstance(checked, Prepared):
            raise TypeError("UpdateExchange commits a checked update")
        self.accept(
            message.device_id,
            checked,
            Accepted(
                message.num_examples, message.metrics, len(message.update), message.message_id
            ),
        )

    def records_acceptance(self, message: AnyMessage) -> bool:
        return True

    def contributors(self, stages: RoundStages[Any]) -> list[str]:
        return sorted(self.accepted)

    def result(self, state: OpenRound, *, now: datetime, rng: np.random.Generator) -> RoundResult:
        return aggregated(state, producer=results.PRODUCER, now=now)

    # The exchange itself ---------------------------------------------------------------
    def prepare(self, update: NDArrays, num_examples: int) -> Prepared:
        """Check an update for the accumulator without counting it (``ValueError`` if bad)."""
        return self.accumulator.prepare(update, num_examples)

    def accept(self, device_id: str, prepared: Prepared, accepted: Accepted) -> None:
        """Count ``device_id``'s update, once."""
        if device_id in self.accepted:
            raise ValueError(f"UpdateExchange: {device_id} already accepted")
        self.accumulator.fold(prepared)
        self.accepted[device_id] = accepted

    def redelivered(self, device_id: str, message_id: UUID) -> bool:
        """Whether ``message_id`` is the update already accepted from ``device_id``."""
        accepted = self.accepted.get(device_id)
        return accepted is not None and accepted.message_id == message_id

    def delta(self) -> NDArrays:
        """The round's aggregate (``ValueError`` when the strategy cannot build it)."""
        return self.accumulator.result()

    def num_examples(self) -> int:
        return sum(a.num_examples for a in self.accepted.values())

    def bytes_up(self) -> int:
        return sum(a.size_bytes for a in self.accepted.values())

    def mean_train_loss(self) -> float:
        total = self.num_examples()
        if not total:
            return float("nan")
        return sum(a.metrics.train_loss * a.num_examples for a in self.accepted.values()) / total


class PrivateExchange(UpdateExchange):
    """DP-FedAvg's exchange: the same updates into a clipped sum, released only noised."""

    def __init__(self, opened: RoundOpened, accumulator: Accumulator | None = None) -> None:
        if opened.privacy is None:
            raise ValueError(f"round {opened.round_id} is not a DP round")
        super().__init__(opened, accumulator or round_accumulator(opened))

    def result(self, state: OpenRound, *, now: datetime, rng: np.random.Generator) -> RoundResult:
        return private_aggregated(state, producer=results.PRODUCER, now=now, rng=rng)


def _exchange(state: OpenRound) -> UpdateExchange:
    if not isinstance(state.exchange, UpdateExchange):
        raise ValueError(f"round {state.round_id} has no update exchange")
    return state.exchange


def aggregated(state: OpenRound, *, producer: str, now: datetime) -> RoundAggregated:
    """The round's aggregate and what it was built from.

    Raises ``ValueError`` (pydantic's ValidationError among them) or ``ArithmeticError`` when
    the strategy cannot build it or the result does not fit the message: building it again
    would fail again.
    """
    opened, exchange = state.opened, _exchange(state)
    return RoundAggregated(
        **results.about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(exchange.delta())),
        participants=state.participants(),
        dropped=state.dropped(),
        rejected=dict(state.rejected),
        num_examples=exchange.num_examples(),
        train_loss=exchange.mean_train_loss(),
        bytes_up=exchange.bytes_up(),
        duration_s=results.duration_s(state, now),
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
    opened, accumulator, approval = state.opened, _exchange(state).accumulator, state.opened.privacy
    if approval is None:
        raise ValueError(f"round {state.round_id} is not a DP round")
    if not isinstance(accumulator, dp_fedavg.ClippedSum):
        raise ValueError(f"round {state.round_id}: a DP round needs a clipped sum")
    released = dp_fedavg.release(accumulator, approval=approval, rng=rng)
    return RoundAggregated(
        **results.about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(released.delta)),
        participants=[],
        dropped=[],
        rejected={},
        num_examples=0,
        train_loss=0.0,
        bytes_up=0,
        duration_s=results.duration_s(state, now),
        privacy_approval_id=approval.approval_id,
        privacy_unclipped_fraction=released.unclipped_fraction,
    )
