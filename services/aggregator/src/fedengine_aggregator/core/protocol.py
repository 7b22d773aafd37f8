"""How a round exchanges its records: the one interface the aggregator's shell drives, pure.

A round's protocol owns its message types and the stages they belong to (``plan``,
``stage_of``), checks each record a participant sends and folds it in (``check``, ``commit``),
says what goes out to the devices when a later stage begins (``begin``: message ids derived
from task, round, attempt, stage and recipient, so that a restarted aggregator sends the same
message, never another), keeps what a restart needs (``checkpoint``, ``restore``), and builds
the round's result (``result``). Who survives into a stage, and each stage's deadline counted
from its own start, is the stage machinery's (:mod:`.stages`), which every protocol shares.

Three protocols: the update exchange of the FedAvg family and the robust rules
(:class:`.exchange.UpdateExchange`), DP-FedAvg's clipped and noised sum
(:class:`.exchange.PrivateExchange`), and SecAgg+ (:class:`.secure_exchange.SecureExchange`),
with or without DP. The shell (``handlers``) has no branch for any of them: it routes records
to stages, runs the checks common to every record (round open, stage under way, late), writes
what a protocol asks to be recorded, stores a stage's start with its deliveries, and closes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcommon.messages.v1 import AnyMessage, Envelope, RoundOpened
from fedengine_aggregator.core.validation import Rejected, RejectReason

if TYPE_CHECKING:
    from fedengine_aggregator.core.stages import RoundStages, Stage, StageSpec
    from fedengine_aggregator.core.window import OpenRound, RoundResult


class StageFailed(Exception):
    """A stage cannot begin: too few are left for the protocol (it fails closed, with why)."""


@dataclass(frozen=True)
class Outgoing:
    """A message a stage sends when it begins: its topic (base name), key and message, whose
    id the protocol derives from task, round, attempt, stage and recipient."""

    base: str
    key: str
    message: Envelope


@dataclass(frozen=True)
class StageLog:
    """What the log keeps of one stage of a round: counts, seconds, bytes (never contents)."""

    stage: int
    stage_name: str
    expected: int
    delivered: int
    rejected: int
    seconds: float
    bytes_up: int
    bytes_down: int


class RoundProtocol(ABC):
    """One round's exchange: its records, its accumulator and its result."""

    def __init__(self, opened: RoundOpened) -> None:
        self.opened = opened

    # What the round reads ---------------------------------------------------------------
    @abstractmethod
    def plan(self, *, received_at: datetime | None) -> list[StageSpec]:
        """The round's stages, the first naming its senders."""

    @abstractmethod
    def stage_of(self, message: AnyMessage) -> str | None:
        """The stage of this protocol ``message`` is a record of (None: not one of its)."""

    # Records ---------------------------------------------------------------------------
    @abstractmethod
    def is_redelivery(self, stage: str, message: AnyMessage) -> bool:
        """Whether ``message`` is the very record already counted (at-least-once delivery)."""

    def decided_before_restart(self, stage: str) -> bool:
        """Whether ``stage`` was over before a restart (its records were judged then)."""
        return False

    def screen(self, stage: str, message: AnyMessage) -> None:
        """Refuse (``Rejected``) a record of a later ``stage`` that must not be held in memory
        until its stage begins: one from a sender the round does not know, too large, or a
        second one from the same sender for that stage. The full checks come at its stage."""
        raise Rejected(RejectReason.UNKNOWN_ROUND, f"this round has no later stage {stage}")

    @abstractmethod
    def check(self, stage: Stage, message: AnyMessage) -> Any:
        """Check ``message`` for the stage under way, from a sender it expects (or not:
        ``stage.expects``). Return what ``commit`` folds in; raise ``Rejected`` to refuse."""

    @abstractmethod
    def commit(self, stage: Stage, message: AnyMessage, checked: Any) -> None:
        """Count ``message`` (checked, and its verdict recorded when the protocol records
        acceptances). Raises ``Rejected`` only for what could not be told before."""

    def records_acceptance(self, message: AnyMessage) -> bool:
        """Whether an accepted record is written to the audit (before ``commit``)."""
        return False

    def count_rejection(self, stage: str) -> None:  # noqa: B027 (optional: most log nothing)
        """Note a refused record of ``stage`` (for the stage's log)."""

    # Stages ----------------------------------------------------------------------------
    def begin(self, stage: str, *, now: datetime) -> list[Outgoing]:
        """A later stage begins at ``now``: close the protocol's previous one and return what
        it sends. Raises ``StageFailed`` when the round must fail closed."""
        raise StageFailed(f"stage {stage}: this round has no later stage")

    def checkpoint(self) -> bytes | None:
        """What a restart resumes a stage from (taken when it begins); None: nothing."""
        return None

    def restore(self, stage: str, state: bytes) -> None:
        """Resume at the start of ``stage`` from its checkpoint."""
        raise ValueError(f"{type(self).__name__} keeps no checkpoint")

    def stage_logs(self, stages: Sequence[Stage], *, now: datetime) -> list[StageLog]:
        """The log rows of the stages begun so far (none for a one-stage exchange)."""
        return []

    # The result ------------------------------------------------------------------------
    @property
    def private(self) -> bool:
        """A DP round: nothing per device leaves the aggregator, counts included."""
        return self.opened.privacy is not None

    @abstractmethod
    def contributors(self, stages: RoundStages[Any]) -> list[str]:
        """The devices whose update is in the round's result, sorted."""

    @abstractmethod
    def bytes_up(self) -> int:
        """Bytes of the records counted."""

    @abstractmethod
    def result(self, state: OpenRound, *, now: datetime, rng: np.random.Generator) -> RoundResult:
        """The result of a round whose stages completed (a ``RoundFailed`` when the protocol
        cannot build its sum). Raises ``ValueError`` / ``ArithmeticError`` when the result
        cannot be built: building it again would fail again."""
