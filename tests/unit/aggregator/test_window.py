from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

from fedcommon.messages.v1 import Participant, RoundOpened, UpdateMetrics
from fedengine_aggregator.core.window import Accepted, OpenRound, Outcome, safe_commit_offset

DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)
BEFORE, AFTER = DEADLINE - timedelta(seconds=1), DEADLINE + timedelta(seconds=1)


def opened(participants: int = 3, min_updates: int = 2) -> RoundOpened:
    return RoundOpened(
        producer="t",
        round_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        round_number=1,
        attempt=0,
        model_version=0,
        participants=[
            Participant(device_id=f"d{i}", public_key=b"k" * 32) for i in range(participants)
        ],
        min_updates=min_updates,
        deadline=DEADLINE,
        param_shapes=[[1]],
        max_update_norm=1.0,
    )


def accept(state: OpenRound, device: str, examples: int = 1, loss: float = 1.0) -> None:
    state.accepted[device] = Accepted(
        examples,
        [np.zeros(1, np.float32)],
        UpdateMetrics(train_loss=loss, train_accuracy=0, duration_s=0),
        8,
    )


def test_round_waits_then_aggregates_when_all_are_in() -> None:
    state = OpenRound(opened(), partition=0, first_offset=10)
    accept(state, "d0")
    assert state.outcome(BEFORE) == Outcome.WAIT
    accept(state, "d1")
    accept(state, "d2")
    assert state.outcome(BEFORE) == Outcome.AGGREGATE


def test_at_the_deadline_enough_updates_aggregate_and_too_few_fail() -> None:
    enough = OpenRound(opened(), partition=0, first_offset=0)
    accept(enough, "d0", examples=1, loss=1.0)
    accept(enough, "d2", examples=3, loss=3.0)
    too_few = OpenRound(opened(), partition=0, first_offset=0)
    accept(too_few, "d0")

    assert enough.outcome(AFTER) == Outcome.AGGREGATE
    assert enough.dropped() == ["d1"]
    assert enough.mean_train_loss() == 2.5
    assert too_few.outcome(AFTER) == Outcome.FAIL


def test_a_closing_round_is_not_closed_twice() -> None:
    state = OpenRound(opened(participants=1, min_updates=1), partition=0, first_offset=0)
    accept(state, "d0")
    state.closing = True

    assert state.outcome(AFTER) == Outcome.WAIT


def test_commit_never_passes_an_open_rounds_first_record() -> None:
    rounds = [
        OpenRound(opened(), partition=0, first_offset=7),
        OpenRound(opened(), partition=1, first_offset=3),
    ]

    assert safe_commit_offset(rounds, partition=0, next_offset=20) == 7
    assert safe_commit_offset(rounds, partition=1, next_offset=20) == 3
    assert safe_commit_offset(rounds, partition=2, next_offset=20) == 20
    assert safe_commit_offset([], partition=0, next_offset=4) == 4


def test_a_redelivered_accepted_update_is_recognised_and_a_second_message_is_not() -> None:
    state = OpenRound(opened(), partition=0, first_offset=0)
    first = uuid.uuid4()
    state.accepted["d1"] = Accepted(
        1,
        [np.zeros(1, np.float32)],
        UpdateMetrics(train_loss=1.0, train_accuracy=0, duration_s=0),
        8,
        first,
    )

    assert state.redelivered("d1", first)
    assert not state.redelivered("d1", uuid.uuid4())
    assert not state.redelivered("d2", first)
