"""Offsets held per topic and partition: by open rounds, and by records parked before their
round opened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from fedengine_aggregator.core.offsets import Holds, Unplaced, safe_commit_offset

T0 = datetime(2030, 1, 1, tzinfo=UTC)
REVEALS = "toy.reveals"


def test_commits_never_pass_a_held_record_on_its_own_topic_and_partition() -> None:
    # Prepare: one round read from two topics, another from one.
    first, second = Holds(), Holds()
    first.hold("fed.updates", 0, 7)
    first.hold("fed.updates", 0, 9)  # a later record of the same round: the first stays
    first.hold("fed.secagg", 0, 3)
    second.hold("fed.updates", 1, 2)

    # Execute
    def commit(topic: str, partition: int) -> int:
        return safe_commit_offset([first, second], topic=topic, partition=partition, next_offset=20)

    # Assert: each topic and partition is held on its own.
    assert commit("fed.updates", 0) == 7
    assert commit("fed.secagg", 0) == 3
    assert commit("fed.updates", 1) == 2
    assert commit("fed.secagg", 1) == 20
    assert safe_commit_offset([], topic="fed.updates", partition=0, next_offset=4) == 4
    assert first.on("fed.updates", 0) == 7 and first.on("fed.rounds", 0) is None
    with pytest.raises(ValueError, match="offset"):
        first.hold("fed.updates", 0, -1)


def test_records_parked_before_their_round_opens_hold_their_offsets_until_taken() -> None:
    # Prepare: reveal records of two rounds not yet open, read on a topic of their own.
    first, second = UUID(int=1), UUID(int=2)
    parked: Unplaced[str] = Unplaced(max_items=3, max_age_s=5)
    assert parked.park(first, "x1", topic=REVEALS, partition=0, offset=4, now=T0)
    assert parked.park(second, "y1", topic=REVEALS, partition=0, offset=6, now=T0)
    assert parked.park(first, "x2", topic=REVEALS, partition=1, offset=2, now=T0)

    # Execute / Assert: full; the first round opens; the second never does.
    assert not parked.park(second, "y2", topic=REVEALS, partition=0, offset=7, now=T0)
    assert safe_commit_offset([parked.holds()], topic=REVEALS, partition=0, next_offset=9) == 4
    taken = parked.take(first)
    assert [p.item for p in taken] == ["x1", "x2"]
    assert [(p.partition, p.offset) for p in taken] == [(0, 4), (1, 2)]
    assert safe_commit_offset([parked.holds()], topic=REVEALS, partition=0, next_offset=9) == 6
    assert safe_commit_offset([parked.holds()], topic=REVEALS, partition=1, next_offset=9) == 9
    assert parked.expire(T0 + timedelta(seconds=4)) == []
    assert parked.expire(T0 + timedelta(seconds=5)) == ["y1"]
    assert len(parked) == 0
    assert safe_commit_offset([parked.holds()], topic=REVEALS, partition=0, next_offset=9) == 9


def test_records_given_back_after_an_outage_are_held_again_and_come_first() -> None:
    # Prepare: a full buffer; the round opens and its records are taken.
    round_id = UUID(int=1)
    parked: Unplaced[str] = Unplaced(max_items=2, max_age_s=5)
    parked.park(round_id, "x1", topic=REVEALS, partition=0, offset=4, now=T0)
    parked.park(round_id, "x2", topic=REVEALS, partition=0, offset=5, now=T0)
    taken = parked.take(round_id)
    parked.park(round_id, "x3", topic=REVEALS, partition=0, offset=6, now=T0)

    # Execute: x1 was handled, then an outage: x2 goes back (past the bound).
    parked.put_back(round_id, taken[1:])

    # Assert
    assert len(parked) == 2
    assert safe_commit_offset([parked.holds()], topic=REVEALS, partition=0, next_offset=9) == 5
    assert [p.item for p in parked.take(round_id)] == ["x2", "x3"]


def test_parked_records_are_bounded_by_bytes_too_and_free_them_when_taken_or_expired() -> None:
    # Prepare: room for 1,000 bytes; records of rounds that may never open.
    parked: Unplaced[str] = Unplaced(max_items=100, max_age_s=5, max_bytes=1_000)
    first, second = UUID(int=1), UUID(int=2)
    assert parked.park(first, "a", topic=REVEALS, partition=0, offset=1, now=T0, size=600)

    # Execute / Assert: a record that would pass the bound is refused; room comes back.
    assert not parked.park(second, "b", topic=REVEALS, partition=0, offset=2, now=T0, size=401)
    assert parked.park(second, "c", topic=REVEALS, partition=0, offset=3, now=T0, size=400)
    assert not parked.park(second, "d", topic=REVEALS, partition=0, offset=4, now=T0, size=1)
    parked.take(first)
    assert parked.park(second, "e", topic=REVEALS, partition=0, offset=5, now=T0, size=600)
    assert parked.expire(T0 + timedelta(seconds=5)) == ["c", "e"]
    assert parked.park(first, "f", topic=REVEALS, partition=0, offset=6, now=T0, size=1_000)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_items"):
        Unplaced[str](max_items=0, max_age_s=1)
    with pytest.raises(ValueError, match="max_age_s"):
        Unplaced[str](max_items=1, max_age_s=0)
