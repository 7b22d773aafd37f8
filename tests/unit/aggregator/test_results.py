"""A closed round's result, built from its stages and its accumulator."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fedcommon import arrays
from fedcommon.messages.v1 import Participant, RoundOpened, RoundPrivacy, UpdateMetrics
from fedengine_aggregator.core import exchange, results
from fedengine_aggregator.core.exchange import (
    Accepted,
    UpdateExchange,
    round_accumulator,
    start_accumulator,
    update_stage,
)
from fedengine_aggregator.core.stages import StageSpec
from fedengine_aggregator.core.window import OpenRound, Outcome

DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)


def opened() -> RoundOpened:
    return RoundOpened(
        producer="t",
        round_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        round_number=4,
        attempt=1,
        model_version=3,
        participants=[Participant(device_id=f"d{i}", public_key=b"k" * 32) for i in range(3)],
        min_updates=2,
        deadline=DEADLINE,
        param_shapes=[[2]],
        max_update_norm=10.0,
        sent_at=DEADLINE - timedelta(seconds=30),
    )


def begin(message: RoundOpened, *extra: StageSpec) -> OpenRound:
    return OpenRound.begin(
        message,
        [update_stage(message, received_at=None), *extra],
        UpdateExchange(message, start_accumulator("fedavg", {}, message.param_shapes)),
        topic="fed.updates",
        partition=0,
        offset=0,
    )


def send(state: OpenRound, device: str, value: float, examples: int, loss: float) -> None:
    prepared = state.exchange.prepare([np.full(2, value, np.float32)], examples)
    metrics = UpdateMetrics(train_loss=loss, train_accuracy=0.5, duration_s=1)
    state.exchange.accept(device, prepared, Accepted(examples, metrics, 16))
    state.updates.survive(device)


def test_an_aggregated_round_carries_the_weighted_mean_and_who_made_it() -> None:
    # Prepare: d1 drops out; d0 and d2 send, weighted 1 and 3.
    message = opened()
    state = begin(message)
    send(state, "d2", 1.0, 3, loss=2.0)
    send(state, "d0", 5.0, 1, loss=6.0)
    state.count_rejection(uuid.uuid4(), "non_finite")

    # Execute
    outcome = state.outcome(DEADLINE)
    result = exchange.aggregated(state, producer="aggregator", now=DEADLINE)

    # Assert
    assert outcome == Outcome.AGGREGATE
    np.testing.assert_array_equal(arrays.from_bytes(result.delta)[0], np.full(2, 2.0, np.float32))
    assert result.participants == ["d0", "d2"] and result.dropped == ["d1"]
    assert result.num_examples == 4 and result.train_loss == 3.0 and result.bytes_up == 32
    assert result.rejected == {"non_finite": 1}
    assert result.duration_s == 30.0
    assert (result.round_id, result.correlation_id) == (message.round_id, message.message_id)
    assert (result.round_number, result.attempt, result.model_version) == (4, 1, 3)


def test_a_round_short_of_updates_fails_saying_so() -> None:
    # Prepare
    state = begin(opened())
    send(state, "d0", 1.0, 1, loss=1.0)

    # Execute
    outcome = state.outcome(DEADLINE)
    result = results.failed(state, results.shortfall(state), producer="aggregator")

    # Assert
    assert outcome == Outcome.FAIL
    assert result.reason == "1 of 2 updates by the deadline"
    assert result.received == 1


def test_a_round_failing_in_a_later_stage_names_that_stage() -> None:
    # Prepare: after the updates, a confirmation stage that three must pass by T+10 s.
    message = opened()
    state = begin(
        message,
        StageSpec("confirm", frozenset({"fed.secagg"}), DEADLINE + timedelta(seconds=10), 3),
    )
    for device in ("d0", "d1", "d2"):
        send(state, device, 1.0, 1, loss=1.0)

    # Execute: all updates in, the confirmation stage begins; one device confirms.
    first = state.outcome(DEADLINE - timedelta(seconds=5))
    state.stages.current.survive("d1")
    waiting = state.outcome(DEADLINE)
    last = state.outcome(DEADLINE + timedelta(seconds=10))

    # Assert
    assert (first, waiting, last) == (Outcome.NEXT, Outcome.WAIT, Outcome.FAIL)
    assert results.shortfall(state) == "stage confirm: 1 of 3 senders by its deadline"


def dp_begin(message: RoundOpened) -> OpenRound:
    return OpenRound.begin(
        message,
        [update_stage(message, received_at=None)],
        UpdateExchange(message, round_accumulator(message)),
        topic="fed.updates",
        partition=0,
        offset=0,
    )


def test_a_dp_round_carries_the_noised_mean_its_approval_and_nothing_per_device() -> None:
    # Prepare: C = 1, W = 4; d2 sends 3 (clipped to 1), d0 sends 0.5, each with weight 1.
    approval = uuid.uuid4()
    privacy = RoundPrivacy(
        approval_id=approval, clip_norm=1.0, noise_multiplier=0.5, expected_participants=4.0
    )
    message = opened().model_copy(update={"privacy": privacy})
    state = dp_begin(message)
    send(state, "d2", 3.0 / np.sqrt(2), 1000, loss=2.0)
    send(state, "d0", 0.5 / np.sqrt(2), 1, loss=6.0)
    state.count_rejection(uuid.uuid4(), "non_finite")

    # Execute
    outcome = state.outcome(DEADLINE)
    result = exchange.private_aggregated(
        state, producer="aggregator", now=DEADLINE, rng=np.random.default_rng(11)
    )

    # Assert: the delta is (clipped sum + the seed's noise of std 0.5) / 4.
    noise = np.random.default_rng(11).normal(0.0, 0.5, size=2)
    expected = (np.full(2, 1.5 / np.sqrt(2)) + noise) / 4.0
    assert outcome == Outcome.AGGREGATE
    np.testing.assert_allclose(arrays.from_bytes(result.delta)[0], expected, rtol=1e-6)
    assert result.privacy_approval_id == approval
    assert (result.participants, result.dropped, result.rejected) == ([], [], {})
    assert (result.num_examples, result.train_loss, result.bytes_up) == (0, 0.0, 0)
    assert (result.round_id, result.correlation_id) == (message.round_id, message.message_id)


def test_a_round_without_dp_has_no_private_result() -> None:
    state = begin(opened())
    send(state, "d0", 1.0, 1, loss=1.0)

    with pytest.raises(ValueError, match="not a DP round"):
        exchange.private_aggregated(
            state, producer="aggregator", now=DEADLINE, rng=np.random.default_rng(0)
        )
