from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

from fedcommon.constraints import MAX_TIMEOUT_S
from fedcommon.messages.v1 import Participant, RoundOpened, UpdateMetrics
from fedengine_aggregator.core.exchange import (
    Accepted,
    UpdateExchange,
    plain_plan,
    start_accumulator,
)
from fedengine_aggregator.core.window import OpenRound, Outcome

DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)
BEFORE, AFTER = DEADLINE - timedelta(seconds=1), DEADLINE + timedelta(seconds=1)
TOPIC = "fed.updates"


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


def open_round(
    message: RoundOpened, *, offset: int = 0, received_at: datetime | None = None
) -> OpenRound:
    return OpenRound.begin(
        message,
        plain_plan(message, received_at=received_at),
        UpdateExchange(message, start_accumulator("fedavg", {}, message.param_shapes)),
        topic=TOPIC,
        partition=0,
        offset=offset,
    )


def accept(
    state: OpenRound,
    device: str,
    examples: int = 1,
    loss: float = 1.0,
    message_id: uuid.UUID | None = None,
) -> None:
    prepared = state.exchange.prepare([np.zeros(1, np.float32)], examples)
    state.exchange.accept(
        device,
        prepared,
        Accepted(
            examples, UpdateMetrics(train_loss=loss, train_accuracy=0, duration_s=0), 8, message_id
        ),
    )
    state.updates.survive(device)


def test_round_waits_then_aggregates_when_all_are_in() -> None:
    state = open_round(opened(), offset=10)
    accept(state, "d0")
    assert state.outcome(BEFORE) == Outcome.WAIT
    accept(state, "d1")
    accept(state, "d2")
    assert state.outcome(BEFORE) == Outcome.AGGREGATE
    assert state.holds.on(TOPIC, 0) == 10


def test_at_the_deadline_enough_updates_aggregate_and_too_few_fail() -> None:
    enough = open_round(opened())
    accept(enough, "d0", examples=1, loss=1.0)
    accept(enough, "d2", examples=3, loss=3.0)
    too_few = open_round(opened())
    accept(too_few, "d0")

    assert enough.outcome(AFTER) == Outcome.AGGREGATE
    assert enough.dropped() == ["d1"]
    assert enough.participants() == ["d0", "d2"]
    assert enough.exchange.mean_train_loss() == 2.5
    assert enough.exchange.num_examples() == 4
    assert too_few.outcome(AFTER) == Outcome.FAIL


def test_a_round_with_everyone_in_aggregates_even_below_its_minimum() -> None:
    state = open_round(opened(participants=1, min_updates=2))
    accept(state, "d0")

    assert state.outcome(BEFORE) == Outcome.AGGREGATE


def test_a_closing_round_is_not_closed_twice() -> None:
    state = open_round(opened(participants=1, min_updates=1))
    accept(state, "d0")
    state.closing = True

    assert state.outcome(AFTER) == Outcome.WAIT


def test_the_deadline_is_bounded_from_when_the_round_was_first_read() -> None:
    received = DEADLINE - timedelta(seconds=MAX_TIMEOUT_S + 100)
    state = open_round(opened(), received_at=received)
    accept(state, "d0")
    accept(state, "d1")
    bound = received + timedelta(seconds=MAX_TIMEOUT_S)

    assert state.stages.current.spec.deadline == bound
    assert state.outcome(bound - timedelta(seconds=1)) == Outcome.WAIT
    assert state.outcome(bound) == Outcome.AGGREGATE


def test_a_redelivered_accepted_update_is_recognised_and_a_second_message_is_not() -> None:
    state = open_round(opened())
    first = uuid.uuid4()
    accept(state, "d1", message_id=first)

    assert state.exchange.redelivered("d1", first)
    assert not state.exchange.redelivered("d1", uuid.uuid4())
    assert not state.exchange.redelivered("d2", first)


def test_rejections_are_counted_once_per_message() -> None:
    state = open_round(opened())
    message_id = uuid.uuid4()

    state.count_rejection(message_id, "non_finite")
    state.count_rejection(message_id, "non_finite")
    state.count_rejection(uuid.uuid4(), "duplicate")

    assert dict(state.rejected) == {"non_finite": 1, "duplicate": 1}
