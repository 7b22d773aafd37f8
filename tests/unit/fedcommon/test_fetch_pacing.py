"""The fetch wait goes up after a quiet spell and down with the first record; the aiokafka
attribute it sets is the one aiokafka's Fetcher reads when it builds a FetchRequest."""

from __future__ import annotations

import inspect

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer import fetcher

from fedcommon.fetch_pacing import FetchPacing, set_fetch_max_wait


def _pacing() -> FetchPacing:
    return FetchPacing(busy_ms=5, idle_ms=200, idle_after_s=5.0)


@pytest.mark.parametrize(
    ("polls", "expected"),
    [
        # (got records?, at second) -> the switches asked for, in order
        pytest.param([(False, 0.0), (False, 4.9)], [], id="quiet for less than idle_after"),
        pytest.param([(False, 0.0), (False, 5.0)], [200], id="quiet for idle_after: slow down"),
        pytest.param(
            [(False, 0.0), (False, 5.0), (False, 9.0), (False, 60.0)], [200], id="asked once"
        ),
        pytest.param(
            [(False, 0.0), (False, 5.0), (True, 6.0)], [200, 5], id="a record: speed up at once"
        ),
        pytest.param(
            [(True, 0.0), (True, 4.0), (False, 8.0), (False, 9.0)],
            [200],
            id="the quiet spell counts from the last record",
        ),
        pytest.param([(True, 0.0), (True, 1.0), (True, 30.0)], [], id="busy stays busy"),
        pytest.param(
            [(False, 0.0), (False, 5.0), (True, 6.0), (False, 10.9), (False, 11.0)],
            [200, 5, 200],
            id="idle again after the next quiet spell",
        ),
    ],
)
def test_the_wait_follows_the_records(polls: list[tuple[bool, float]], expected: list[int]) -> None:
    # Prepare
    pacing = _pacing()

    # Execute
    switches = [pacing.observe(got, at) for got, at in polls]

    # Assert
    assert [s for s in switches if s is not None] == expected


def test_the_attribute_set_is_the_one_the_fetcher_reads() -> None:
    # Prepare: aiokafka has no public setter; if it renames this, pacing silently stops.
    source = inspect.getsource(fetcher.Fetcher)

    # Assert: set at construction, read when a FetchRequest is built.
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in source
    assert "FetchRequest(\n                self._fetch_max_wait_ms," in source


async def test_a_consumer_not_started_is_left_alone() -> None:
    # Prepare: no fetcher before start().
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")

    # Execute / Assert
    assert set_fetch_max_wait(consumer, 200) is False


def test_the_quiet_spell_counts_from_the_end_of_handling() -> None:
    # Prepare: records at 0 s whose handling (local training, say) takes until 8 s.
    pacing = _pacing()
    pacing.observe(True, 0.0)
    pacing.handled(8.0)

    # Execute / Assert: 5 s after the arrival is not idle; 5 s after the handling is.
    assert pacing.observe(False, 9.0) is None
    assert pacing.observe(False, 13.0) == 200
