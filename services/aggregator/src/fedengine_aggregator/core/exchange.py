"""The update exchange: the stage in which participants send their updates, pure.

Each validated update goes into the round's accumulator as it arrives, so a sum strategy
(the FedAvg family) holds one running weighted sum whatever the number of participants, and
only a few numbers per sender stay (for the result's metadata and the audit). A robust
strategy's accumulator buffers the updates itself, by necessity (:mod:`.robust`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from fedcommon import topics
from fedcommon.arrays import NDArrays
from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.messages.v1 import RoundOpened, UpdateMetrics
from fedcommon.server_opt import Shapes
from fedengine_aggregator.core.catalog import Params, make_strategy
from fedengine_aggregator.core.dp_fedavg import ClippedSum
from fedengine_aggregator.core.stages import StageSpec
from fedengine_aggregator.core.strategies import Accumulator, Prepared

UPDATES_STAGE = "updates"


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


@dataclass
class UpdateExchange:
    """The updates accepted so far: folded into ``accumulator``, a few numbers per sender."""

    accumulator: Accumulator
    accepted: dict[str, Accepted] = field(default_factory=dict)

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
