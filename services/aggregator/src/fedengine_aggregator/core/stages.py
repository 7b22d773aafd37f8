"""A round as a sequence of stages (issue 8), pure: who is expected, by when, who survived.

Today's update exchange is the one-stage case: the participants send their updates, and the
ones whose update counted are the round's survivors. Secure aggregation adds stages around
it (keys, shares, masked updates, unmasking): each with its own expected senders (the
previous stage's survivors, or a subset), its own deadline, its own minimum, and the topics
its records come on. This module knows nothing of what a stage's records mean: the shell
hands each record to its stage's handler and tells the round who delivered.

Records can arrive out of stage order: each topic is read on its own, and after a crash every
topic is re-read from the first record an open round needs there (:mod:`.offsets`). A record
for a later stage is held (``hold_early``) until the round gets there; one for a stage that is
over is late.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, TypeVar

from fedcommon.messages.v1 import Participant

T = TypeVar("T")

# The one stage of a round without secure aggregation: the participants send their updates.
UPDATES_STAGE = "updates"


class Placement(StrEnum):
    CURRENT = "current"  # the stage under way takes it
    EARLY = "early"  # a later stage's record: hold it until the round gets there
    LATE = "late"  # its stage is over (or the round is)
    UNKNOWN = "unknown"  # this round has no stage of that name


class Progress(StrEnum):
    WAIT = "wait"  # the current stage goes on
    NEXT = "next"  # the current stage is done and the next one has begun
    COMPLETE = "complete"  # the last stage is done: the round can produce its result
    FAIL = "fail"  # a stage ended with too few senders


@dataclass(frozen=True)
class StageSpec:
    """What a stage is: its name, the topics its records come on, its deadline and minimum.

    ``expected`` names the senders the stage waits for; None means the previous stage's
    survivors (the first stage must name them). A sender the previous stage lost never comes
    back, whatever ``expected`` says. ``timeout``: the stage's deadline is counted from its
    own start (a later stage of a secure round); None: ``deadline`` (fixed when the round
    opened) is the stage's.
    """

    name: str
    topics: frozenset[str]
    deadline: datetime
    min_senders: int
    expected: Mapping[str, Participant] | None = None
    timeout: timedelta | None = None
    # The stage ends as soon as this many delivered (an over-selected round); None: it waits
    # for every expected sender, or its deadline.
    enough: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("StageSpec: name must not be empty")
        if not self.topics:
            raise ValueError(f"StageSpec {self.name}: topics must not be empty")
        if self.min_senders < 0:
            raise ValueError(f"StageSpec {self.name}: min_senders must be >= 0")


@dataclass
class Stage:
    """One stage under way: its expected senders by id (an O(1) look-up) and its survivors."""

    spec: StageSpec
    expected: dict[str, Participant]
    deadline: datetime
    started_at: datetime | None = None
    # The senders that delivered, in the order they did (a dict as an ordered set).
    _survivors: dict[str, None] = field(default_factory=dict)
    # Expected senders whose own (signed) record was refused: they answered, with nothing
    # that counts, so the stage need not wait for them.
    _refused: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.spec.name

    def expects(self, sender: str) -> Participant | None:
        """The expected sender ``sender`` (its key, for its signature), or None."""
        return self.expected.get(sender)

    def delivered(self, sender: str) -> bool:
        return sender in self._survivors

    def survive(self, sender: str) -> None:
        """Count ``sender`` as delivered (its record passed the stage's checks)."""
        if sender not in self.expected:
            raise ValueError(f"stage {self.name}: {sender!r} is not an expected sender")
        self._survivors[sender] = None
        self._refused.discard(sender)

    def refuse(self, sender: str) -> None:
        """Note that ``sender`` answered with a record that was refused (one it signed): the
        stage does not wait for it any more, and it does not survive into the next."""
        if sender in self.expected and sender not in self._survivors:
            self._refused.add(sender)

    @property
    def survivors(self) -> list[str]:
        return list(self._survivors)

    def dropped(self) -> list[str]:
        """The expected senders that did not deliver, in the order they were expected."""
        return [sender for sender in self.expected if sender not in self._survivors]

    def progress(self, now: datetime) -> Progress:
        """WAIT, or whether the stage ended with enough senders (COMPLETE) or not (FAIL).

        A stage ends when every expected sender answered (delivered, or sent a signed record
        that was refused), when ``enough`` delivered, or at its deadline.
        """
        answered = len(self._survivors) + len(self._refused)
        if self.spec.enough is not None and len(self._survivors) >= self.spec.enough:
            return Progress.COMPLETE
        if answered < len(self.expected) and now < self.deadline:
            return Progress.WAIT
        return Progress.COMPLETE if len(self._survivors) >= self.spec.min_senders else Progress.FAIL


class RoundStages(Generic[T]):
    """A round's progress through its stages, with the records that came before their stage.

    ``T`` is whatever the shell keeps for a held record (the decoded message and where it lay).
    """

    def __init__(self, specs: Sequence[StageSpec]) -> None:
        if not specs:
            raise ValueError("RoundStages: a round has at least one stage")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"RoundStages: stage names repeat: {names}")
        if specs[0].expected is None:
            raise ValueError(f"RoundStages: the first stage ({names[0]}) must name its senders")
        self.specs = tuple(specs)
        self._index = {spec.name: i for i, spec in enumerate(self.specs)}
        self.stages = [Stage(specs[0], dict(specs[0].expected), specs[0].deadline)]
        self._early: dict[str, list[T]] = {}
        self._ended: Progress | None = None

    @property
    def current(self) -> Stage:
        """The stage under way (the last one, once the round has ended)."""
        return self.stages[-1]

    @property
    def ended(self) -> Progress | None:
        """COMPLETE or FAIL once the round has ended, else None."""
        return self._ended

    def stage(self, name: str) -> Stage | None:
        """The stage ``name`` if it has begun."""
        index = self._index.get(name)
        return self.stages[index] if index is not None and index < len(self.stages) else None

    def topics(self) -> frozenset[str]:
        """Every topic a stage of this round reads from."""
        return frozenset().union(*(spec.topics for spec in self.specs))

    def place(self, stage_name: str) -> Placement:
        """Where a record for ``stage_name`` belongs now."""
        index = self._index.get(stage_name)
        if index is None:
            return Placement.UNKNOWN
        if self._ended is not None or index < len(self.stages) - 1:
            return Placement.LATE
        return Placement.CURRENT if index == len(self.stages) - 1 else Placement.EARLY

    def hold_early(self, stage_name: str, item: T) -> None:
        """Keep ``item`` until the round reaches ``stage_name`` (a later stage)."""
        if self.place(stage_name) != Placement.EARLY:
            raise ValueError(f"RoundStages: {stage_name} is not a later stage")
        self._early.setdefault(stage_name, []).append(item)

    def take_early(self) -> list[T]:
        """Hand over (and forget) the records held for the current stage, in arrival order."""
        return self._early.pop(self.current.name, [])

    def return_early(self, items: Sequence[T]) -> None:
        """Give back records ``take_early`` handed over but that were not handled (an outage),
        ahead of any held since."""
        if items and self._ended is None:
            name = self.current.name
            self._early[name] = [*items, *self._early.get(name, [])]

    def advance(self, now: datetime) -> Progress:
        """Take one step: end the current stage if it is over, and begin the next one.

        The next stage expects the survivors of this one (narrowed to its own ``expected``,
        if it names any). NEXT means its held records should be handed in and ``advance``
        asked again; COMPLETE and FAIL are final and returned again on every later call.
        """
        if self._ended is not None:
            return self._ended
        current = self.current
        progress = current.progress(now)
        if progress == Progress.WAIT:
            return progress
        if progress == Progress.FAIL or len(self.stages) == len(self.specs):
            self._ended = progress
            self._early.clear()
            return progress
        spec = self.specs[len(self.stages)]
        survivors = {sender: current.expected[sender] for sender in current.survivors}
        if spec.expected is not None:
            survivors = {s: p for s, p in survivors.items() if s in spec.expected}
        self.stages.append(Stage(spec, survivors, _deadline(spec, now), started_at=now))
        return Progress.NEXT

    def resume(
        self,
        name: str,
        *,
        expected: Mapping[str, Participant],
        started_at: datetime,
        not_before: datetime | None = None,
    ) -> None:
        """Put a round read again after a restart back in stage ``name``, as it began at
        ``started_at`` expecting ``expected`` (its deadline counted from then, but not before
        ``not_before``: the stage's records must be read again before it is decided): the
        stages before it are over, decided before the restart."""
        index = self._index.get(name)
        if index is None or self._ended is not None:
            raise ValueError(f"RoundStages: cannot resume at {name!r}")
        for spec in self.specs[len(self.stages) : index]:
            self.stages.append(Stage(spec, {}, _deadline(spec, started_at), started_at))
        spec = self.specs[index]
        if index >= len(self.stages):
            deadline = _deadline(spec, started_at)
            if not_before is not None:
                deadline = max(deadline, not_before)
            self.stages.append(Stage(spec, dict(expected), deadline, started_at=started_at))
        self._early.clear()


def _deadline(spec: StageSpec, started_at: datetime) -> datetime:
    return spec.deadline if spec.timeout is None else started_at + spec.timeout
