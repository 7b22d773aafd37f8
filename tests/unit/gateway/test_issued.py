from __future__ import annotations

import uuid

import pytest

from fedengine_gateway.issued import IssuedIds


def test_an_issued_id_is_pending_until_its_ttl_and_an_unknown_one_never() -> None:
    issued = IssuedIds(ttl_s=10, max_ids=5)
    mine, unknown = uuid.uuid4(), uuid.uuid4()

    issued.add(mine, now=100.0)

    assert issued.pending(mine, now=109.9)
    assert not issued.pending(unknown, now=100.0)
    assert not issued.pending(mine, now=110.0)
    assert len(issued) == 0  # expired ids are forgotten, not kept


def test_a_seen_id_no_longer_waits() -> None:
    issued = IssuedIds(ttl_s=10, max_ids=5)
    mine = uuid.uuid4()
    issued.add(mine, now=0.0)

    issued.discard(mine)
    issued.discard(uuid.uuid4())  # discarding what is not there is fine

    assert not issued.pending(mine, now=1.0)


def test_the_record_is_bounded_and_drops_the_oldest_first() -> None:
    issued = IssuedIds(ttl_s=1000, max_ids=3)
    ids = [uuid.uuid4() for _ in range(5)]

    for at, each in enumerate(ids):
        issued.add(each, now=float(at))

    assert len(issued) == 3
    assert [issued.pending(each, now=5.0) for each in ids] == [False, False, True, True, True]


def test_adding_an_id_again_renews_it() -> None:
    issued = IssuedIds(ttl_s=10, max_ids=2)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    issued.add(first, now=0.0)
    issued.add(second, now=1.0)

    issued.add(first, now=2.0)
    issued.add(third, now=3.0)  # evicts the oldest entry: second, not the renewed first

    assert issued.pending(first, now=11.0)
    assert not issued.pending(second, now=3.0)


@pytest.mark.parametrize(("ttl_s", "max_ids"), [(0, 1), (1, 0), (-1, 5)])
def test_a_record_that_could_hold_nothing_is_refused(ttl_s: float, max_ids: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        IssuedIds(ttl_s=ttl_s, max_ids=max_ids)
