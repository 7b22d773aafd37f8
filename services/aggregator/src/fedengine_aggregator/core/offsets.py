"""Which offsets the aggregator may commit, per topic and partition: the log is its buffer.

An open round keeps every record it consumed only in memory (updates fold into a running
sum), so the records must stay on the log until the round's result is out: committing past
one would lose it in a crash. Each holder (an open round, records parked before their round
opened) remembers the first offset it needs on every topic and partition it read from, and a
commit on that topic and partition never passes the smallest of them. After a crash every
topic a round's stages use is re-read from there, whatever order the topics are read in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar
from uuid import UUID

TopicPartition = tuple[str, int]
T = TypeVar("T")


@dataclass
class Holds:
    """The first offset needed, per (topic, partition): what one holder keeps on the log."""

    first: dict[TopicPartition, int] = field(default_factory=dict)

    def hold(self, topic: str, partition: int, offset: int) -> None:
        """Keep the record at ``offset`` (and everything after it) on the log."""
        if offset < 0:
            raise ValueError(f"Holds.hold: offset must be >= 0, got {offset}")
        key = (topic, partition)
        current = self.first.get(key)
        if current is None or offset < current:
            self.first[key] = offset

    def on(self, topic: str, partition: int) -> int | None:
        """The first offset held on ``topic``/``partition``, or None if none is."""
        return self.first.get((topic, partition))


def safe_commit_offset(
    holds: Iterable[Holds], *, topic: str, partition: int, next_offset: int
) -> int:
    """Return the offset to commit on ``topic``/``partition``: never past a held record."""
    needed = [h.first[(topic, partition)] for h in holds if (topic, partition) in h.first]
    return min([next_offset, *needed])


@dataclass(frozen=True)
class Parked(Generic[T]):
    item: T
    topic: str
    partition: int
    offset: int
    parked_at: datetime
    size: int = 0


@dataclass
class Unplaced(Generic[T]):
    """Records of rounds not open yet, kept (and kept on the log) until their round opens.

    Topics are read independently: a stage's record on one topic can be read before the
    round's opening record on another, always so when a restarted aggregator re-reads both.
    Such a record is parked, up to ``max_items`` of them holding ``max_bytes`` at most, and for
    ``max_age_s`` at most: a round that never opens must not hold a topic's commits back for
    ever, and whoever can write to a topic must not fill the aggregator's memory with records
    of rounds that do not exist.
    """

    max_items: int
    max_age_s: float
    max_bytes: int = 256 * 1024 * 1024
    _by_round: dict[UUID, list[Parked[T]]] = field(default_factory=dict)
    _count: int = 0
    _bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError(f"Unplaced: max_items must be >= 1, got {self.max_items}")
        if self.max_age_s <= 0:
            raise ValueError(f"Unplaced: max_age_s must be > 0, got {self.max_age_s}")

    def __len__(self) -> int:
        return self._count

    def park(
        self,
        round_id: UUID,
        item: T,
        *,
        topic: str,
        partition: int,
        offset: int,
        now: datetime,
        size: int = 0,
    ) -> bool:
        """Park ``item`` (``size`` bytes) for ``round_id``; False (nothing parked) when the
        buffer is full, by count or by bytes."""
        if self._count >= self.max_items or self._bytes + size > self.max_bytes:
            return False
        self._by_round.setdefault(round_id, []).append(
            Parked(item, topic, partition, offset, now, size)
        )
        self._count += 1
        self._bytes += size
        return True

    def take(self, round_id: UUID) -> list[Parked[T]]:
        """Hand over (and forget) what was parked for ``round_id``, in the order it came."""
        parked = self._by_round.pop(round_id, [])
        self._count -= len(parked)
        self._bytes -= sum(p.size for p in parked)
        return parked

    def put_back(self, round_id: UUID, parked: list[Parked[T]]) -> None:
        """Give back records ``take`` handed over but that were not handled (an outage), ahead
        of any parked since; the bound does not apply to them (they were in before)."""
        if parked:
            self._by_round[round_id] = [*parked, *self._by_round.get(round_id, [])]
            self._count += len(parked)
            self._bytes += sum(p.size for p in parked)

    def expire(self, now: datetime) -> list[T]:
        """Hand over (and forget) every record parked longer than ``max_age_s``."""
        expired: list[T] = []
        for round_id in list(self._by_round):
            kept = []
            for parked in self._by_round[round_id]:
                if (now - parked.parked_at).total_seconds() >= self.max_age_s:
                    expired.append(parked.item)
                    self._bytes -= parked.size
                else:
                    kept.append(parked)
            if kept:
                self._by_round[round_id] = kept
            else:
                del self._by_round[round_id]
        self._count -= len(expired)
        return expired

    def holds(self) -> Holds:
        """What the parked records keep on the log."""
        holds = Holds()
        for parked_list in self._by_round.values():
            for parked in parked_list:
                holds.hold(parked.topic, parked.partition, parked.offset)
        return holds
