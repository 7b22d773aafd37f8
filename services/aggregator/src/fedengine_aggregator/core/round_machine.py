"""One round's transitions, pure: what a record or a tick does to an open round, as effects.

``decide(round, event)`` takes a record read from the log (:class:`RecordRead`) or the
passing of time (:class:`Tick`) and says what must happen, in order: write a record's verdict
to the audit, count a refusal, fold a checked record into its stage, keep a record for a later
stage, store a stage's start with what it sends, hand held records back in, or close the round.
The shell (``handlers``) carries the effects out in the order given: a database write comes
before the change in memory that depends on it, so that an outage, which makes the consume
loop read the record again, finds the round as it was. Memory changes are effects too
(:class:`Fold`, :class:`CountRefusal`), applied by :func:`apply` once what precedes them is
done. No I/O, no clock (times are passed in), no protocol branch: the round's protocol
(:mod:`.protocol`) checks and folds its own records.

Protocol checks can change protocol state only where the protocol's own check and fold are one
step (SecAgg+'s ``SecAggServer.receive_*``); such a protocol records no acceptance, so there is
no database write for that change to wait on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fedcommon.messages.v1 import AnyMessage
from fedengine_aggregator.core.protocol import StageFailed
from fedengine_aggregator.core.results import PRODUCER, failed
from fedengine_aggregator.core.stages import Placement, Stage
from fedengine_aggregator.core.validation import ANSWERED_BADLY, Rejected, RejectReason
from fedengine_aggregator.core.window import OpenRound, Outcome, StageStart

# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordRead:
    """A stage record for this round (``round`` None: no round of that id is open), read at
    ``topic``/``partition``/``offset``. ``closed``: its round id is of a round already closed;
    ``item``: what the shell keeps of it while it waits for its stage."""

    message: AnyMessage
    topic: str
    partition: int
    offset: int
    closed: bool = False
    item: Any = None


@dataclass(frozen=True)
class Tick:
    """Time passes: move the round on through its stages as far as it goes at ``now``."""

    now: datetime


Event = RecordRead | Tick

# --- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteVerdict:
    """Write the record's verdict to the audit (the shell's database, once per record)."""

    status: str  # accepted | rejected
    rejected: Rejected | None
    private: bool


@dataclass(frozen=True)
class CountRefusal:
    """Count the refusal in the round (once per message) and in its stage's log; with
    ``answered``, the stage under way (``stage``) stops waiting for that sender, whose own
    signed record was refused (:data:`.validation.ANSWERED_BADLY`)."""

    reason: str
    stage_name: str | None
    answered: str | None = None
    stage: Stage | None = None


@dataclass(frozen=True)
class Fold:
    """Count the checked record in its stage: the protocol folds it in, its sender survives."""

    stage: Stage
    checked: Any


@dataclass(frozen=True)
class StoreStage:
    """Store a later stage's start (its checkpoint and what it sends) in one transaction, then
    tell the round it is stored (:func:`stored`)."""

    start: StageStart


@dataclass(frozen=True)
class Replay:
    """Hand these held records of the stage that began back in, in the order they came (what
    an outage interrupts goes back: :meth:`RoundStages.return_early`)."""

    items: list[Any]


@dataclass(frozen=True)
class Close:
    """The round is over: build its result (fixed in ``round.result`` if already there) and
    store it with the round's close."""

    outcome: Outcome


# What a record does (in order), and the one next step time asks for.
RecordEffect = WriteVerdict | CountRefusal | Fold
Step = StoreStage | Replay | Close


@dataclass
class Decision:
    """What a record does: its effects in order, whether it counted, was refused (and why),
    or waits for its stage."""

    effects: list[RecordEffect] = field(default_factory=list)
    counted: bool = False
    refused: Rejected | None = None
    held: bool = False
    # The sender's own record was refused: its stage stops waiting for it (it may be over).
    answered: bool = False


# --- records ---------------------------------------------------------------------------------


def on_record(round_: OpenRound | None, event: RecordRead) -> Decision:
    """Route and judge one record: held for a later stage, skipped (the very record already
    counted, or judged before a restart), refused with its reason, or counted.

    The checks every record gets come first (its round open, its stage under way, not late),
    then its protocol's (``check``). Keeping a record on the log until its round closes
    (``holds``) and holding an early one are memory only and happen here.
    """
    message = event.message
    if round_ is None:
        reason = (
            Rejected(RejectReason.LATE, "round already closed")
            if event.closed
            else Rejected(RejectReason.UNKNOWN_ROUND, f"no open round {message.round_id}")
        )
        return _refused(None, None, reason)
    protocol = round_.exchange
    stage_name = protocol.stage_of(message)
    placement = Placement.UNKNOWN if stage_name is None else round_.stages.place(stage_name)
    if not round_.finishing:
        # Whatever becomes of it, a record of an open round stays on the log until the round
        # is closed: a restart re-reads it, and comes to the same verdict.
        round_.holds.hold(event.topic, event.partition, event.offset)
    if stage_name is not None:
        if protocol.is_redelivery(stage_name, message):
            # The very message already counted, read again after a rebalance or a restart:
            # at least once delivery, not a device sending twice.
            return Decision()
        if placement == Placement.LATE and protocol.decided_before_restart(stage_name):
            return Decision()  # judged before the restart, read again: not a new record
    try:
        if event.closed or round_.finishing:
            raise Rejected(RejectReason.LATE, "round already closed")
        if placement == Placement.LATE:
            raise Rejected(RejectReason.LATE, f"stage {stage_name} is over")
        if stage_name is None or placement == Placement.UNKNOWN:
            raise Rejected(
                RejectReason.UNKNOWN_ROUND,
                f"round {round_.round_id} ({type(protocol).__name__}) takes no {message.type}",
            )
        if placement == Placement.EARLY:
            # Held in memory until its stage: only what the protocol would take from that
            # sender there, once (anyone can write to the topic).
            protocol.screen(stage_name, message)
            round_.stages.hold_early(stage_name, event.item)
            return Decision(held=True)
        stage = round_.stages.current
    except Rejected as rejected:
        return _refused(round_, stage_name, rejected)
    try:
        checked = protocol.check(stage, message)
    except Rejected as rejected:
        return _refused(round_, stage_name, rejected, stage=stage, sender=_sender(message))
    effects: list[RecordEffect] = []
    if protocol.records_acceptance(message):
        effects.append(WriteVerdict("accepted", None, protocol.private))
    effects.append(Fold(stage, checked))
    return Decision(effects, counted=True)


def _refused(
    round_: OpenRound | None,
    stage_name: str | None,
    rejected: Rejected,
    *,
    stage: Stage | None = None,
    sender: str | None = None,
) -> Decision:
    private = round_ is not None and round_.exchange.private
    effects: list[RecordEffect] = [WriteVerdict("rejected", rejected, private)]
    answered = (
        sender
        if stage is not None and sender is not None and rejected.reason in ANSWERED_BADLY
        else None
    )
    if round_ is not None and not round_.finishing:
        effects.append(CountRefusal(rejected.reason.value, stage_name, answered, stage))
    return Decision(effects, refused=rejected, answered=answered is not None)


def _sender(message: AnyMessage) -> str | None:
    sender = getattr(message, "device_id", None)
    return sender if isinstance(sender, str) else None


def apply(round_: OpenRound, message: AnyMessage, effect: CountRefusal | Fold) -> None:
    """Carry out a memory effect of ``on_record`` (once what precedes it is done)."""
    if isinstance(effect, CountRefusal):
        round_.count_rejection(message.message_id, effect.reason)
        if effect.stage_name is not None:
            round_.exchange.count_rejection(effect.stage_name)
        if effect.answered is not None and effect.stage is not None:
            effect.stage.refuse(effect.answered)
        return
    round_.exchange.commit(effect.stage, message, effect.checked)
    sender = getattr(message, "device_id", None)
    if not isinstance(sender, str):
        raise TypeError(f"{message.type} names no device")
    effect.stage.survive(sender)


# --- time ------------------------------------------------------------------------------------


def on_tick(round_: OpenRound, event: Tick) -> Step | None:
    """The round's next step at ``event.now``: store the stage that began (first), hand in the
    records held for it, begin the next stage, or close; None: nothing to do yet.

    Call again after each effect is carried out, until it answers None or :class:`Close`.
    """
    if round_.unsent is not None:
        return StoreStage(round_.unsent)
    held = round_.stages.take_early()
    if held:
        return Replay(held)
    outcome = round_.outcome(event.now)
    if outcome == Outcome.WAIT:
        return None
    if outcome != Outcome.NEXT:
        return Close(outcome)
    current = round_.stages.current
    try:
        outgoing = round_.exchange.begin(current.name, now=event.now)
    except StageFailed as exc:
        round_.result = failed(round_, str(exc)[:500], producer=PRODUCER)
        return Close(Outcome.FAIL)
    round_.unsent = StageStart(
        position=len(round_.stages.stages),
        stage_name=current.name,
        started_at=event.now,
        expected=list(current.expected),
        checkpoint=round_.exchange.checkpoint(),
        outgoing=outgoing,
    )
    return StoreStage(round_.unsent)


def stored(round_: OpenRound, start: StageStart) -> None:
    """The stage's start is stored: its records may be handed in."""
    if round_.unsent is start:
        round_.unsent = None


def decide(round_: OpenRound | None, event: Event) -> Decision | Step | None:
    """The one entry point: a record's :class:`Decision`, or a tick's next :data:`Step`."""
    if isinstance(event, RecordRead):
        return on_record(round_, event)
    return None if round_ is None else on_tick(round_, event)
