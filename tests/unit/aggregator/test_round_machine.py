"""Every transition of a round, as the pure round machine decides it: records (unknown round,
closed round, accepted, redelivered, refused for each reason the shell owns, held for a later
stage) and ticks (wait, store a stage's start until it is stored, hand held records in, close,
fail closed), on real protocols: the plain exchange, DP-FedAvg and SecAgg+."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from fedcommon.messages.v1 import (
    AnyMessage,
    RoundOpened,
    RoundPrivacy,
    SecAggDelivered,
    SecAggSubmitted,
)
from fedengine_aggregator.core import protocols, round_machine
from fedengine_aggregator.core.round_machine import (
    Close,
    CountRefusal,
    Fold,
    RecordRead,
    Replay,
    StoreStage,
    Tick,
    WriteVerdict,
)
from fedengine_aggregator.core.secure_exchange import STAGE_NAMES
from fedengine_aggregator.core.validation import RejectReason
from fedengine_aggregator.core.window import OpenRound, Outcome
from fedprivacy.secagg import Stage
from tests.unit.aggregator.test_secure_exchange import T0, Fleet, opened_round
from tests.unit.aggregator.test_validation import OPENED, update

DEADLINE = OPENED.deadline
PRIVACY = RoundPrivacy(
    approval_id=uuid.uuid4(), clip_norm=1.0, noise_multiplier=1.0, expected_participants=2.0
)


def start(opened: RoundOpened) -> OpenRound:
    protocol, reason = protocols.protocol_for(opened)
    assert reason is None
    return OpenRound.begin(
        opened,
        protocol.plan(received_at=None),
        protocol,
        topic="fed.updates",
        partition=0,
        offset=0,
    )


def read(message: AnyMessage, *, closed: bool = False) -> RecordRead:
    return RecordRead(message, "fed.updates", 0, 7, closed=closed, item=message)


def kinds(effects: list[Any]) -> list[str]:
    return [type(e).__name__ for e in effects]


def carry_out(round_: OpenRound, message: AnyMessage, effects: list[Any]) -> None:
    for effect in effects:
        if isinstance(effect, CountRefusal | Fold):
            round_machine.apply(round_, message, effect)


# --- records -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "effects", "reason", "private"),
    [
        pytest.param("accepted", ["WriteVerdict", "Fold"], None, False, id="accepted"),
        pytest.param(
            "accepted-dp", ["WriteVerdict", "Fold"], None, True, id="accepted-dp-is-private"
        ),
        pytest.param("unknown-round", ["WriteVerdict"], RejectReason.UNKNOWN_ROUND, False),
        pytest.param("closed-round", ["WriteVerdict"], RejectReason.LATE, False),
        pytest.param(
            "unselected", ["WriteVerdict", "CountRefusal"], RejectReason.NOT_SELECTED, False
        ),
        pytest.param(
            "bad-signature", ["WriteVerdict", "CountRefusal"], RejectReason.BAD_SIGNATURE, False
        ),
        pytest.param(
            "not-this-protocols",
            ["WriteVerdict", "CountRefusal"],
            RejectReason.UNKNOWN_ROUND,
            False,
            id="a-secagg-message-to-a-plain-round",
        ),
        pytest.param("finishing", ["WriteVerdict"], RejectReason.LATE, False),
        pytest.param("duplicate", ["WriteVerdict", "CountRefusal"], RejectReason.DUPLICATE, False),
        pytest.param("redelivered", [], None, False),
    ],
)
def test_a_record_of_a_plain_round(
    case: str, effects: list[str], reason: RejectReason | None, private: bool
) -> None:
    # Prepare
    opened = OPENED.model_copy(update={"privacy": PRIVACY}) if case == "accepted-dp" else OPENED
    round_: OpenRound | None = start(opened)
    message: AnyMessage = update("a")
    if case == "unknown-round" or case == "closed-round":
        round_ = None
    elif case == "unselected":
        message = update("mallory", signer="a")
    elif case == "bad-signature":
        message = update("a", signer="b")
    elif case == "not-this-protocols":
        message = SecAggSubmitted(
            producer="t",
            round_id=OPENED.round_id,
            task_id=OPENED.task_id,
            device_id="a",
            round_number=3,
            stage=1,
            payload=b"",
            signature=bytes(64),
        )
    elif case == "finishing" and round_ is not None:
        round_.closing = True
    elif case in ("duplicate", "redelivered") and round_ is not None:
        first = update("a")
        carry_out(round_, first, round_machine.on_record(round_, read(first)).effects)
        message = first if case == "redelivered" else update("a")

    # Execute
    decision = round_machine.on_record(round_, read(message, closed=case == "closed-round"))

    # Assert
    assert kinds(decision.effects) == effects
    assert decision.counted == (case.startswith("accepted"))
    assert (decision.refused.reason if decision.refused else None) == reason
    verdicts = [e for e in decision.effects if isinstance(e, WriteVerdict)]
    assert all(v.private == private for v in verdicts)


def test_folding_an_accepted_update_counts_its_sender_and_a_refusal_counts_once() -> None:
    # Prepare
    round_ = start(OPENED)
    good, forged = update("a"), update("b", signer="a")

    # Execute: the accepted one folds in; the forged one is refused, then read again.
    carry_out(round_, good, round_machine.on_record(round_, read(good)).effects)
    for _ in range(2):
        carry_out(round_, forged, round_machine.on_record(round_, read(forged)).effects)

    # Assert
    assert round_.stages.current.survivors == ["a"]
    assert round_.participants() == ["a"]
    assert dict(round_.rejected) == {"bad_signature": 1}
    assert round_.holds.on("fed.updates", 0) == 0  # round.opened's own offset first


# --- ticks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("senders", "at", "step"),
    [
        pytest.param([], DEADLINE - timedelta(seconds=1), None, id="waits"),
        pytest.param(["a", "b"], DEADLINE - timedelta(seconds=1), Outcome.AGGREGATE, id="all-in"),
        pytest.param(["a"], DEADLINE, Outcome.AGGREGATE, id="deadline-with-its-minimum"),
        pytest.param([], DEADLINE, Outcome.FAIL, id="deadline-short"),
    ],
)
def test_a_tick_of_a_plain_round(senders: list[str], at: Any, step: Outcome | None) -> None:
    # Prepare
    round_ = start(OPENED)
    for device in senders:
        message = update(device)
        carry_out(round_, message, round_machine.on_record(round_, read(message)).effects)

    # Execute
    got = round_machine.on_tick(round_, Tick(at))

    # Assert
    assert (got.outcome if isinstance(got, Close) else got) == step


def secure_round(n: int = 5) -> tuple[OpenRound, Fleet]:
    opened, keys = opened_round(n, stage_timeout_s=10.0)
    return start(opened), Fleet(opened, keys)


def secagg(fleet: Fleet, device: str, stage: Stage, payload: bytes) -> SecAggSubmitted:
    opened = fleet.opened
    return SecAggSubmitted(
        producer="t",
        round_id=opened.round_id,
        task_id=opened.task_id,
        device_id=device,
        round_number=opened.round_number,
        stage=int(stage),
        payload=payload,
        signature=fleet.sign(device, stage, payload),
    )


def advertise(round_: OpenRound, fleet: Fleet, devices: list[str]) -> None:
    for device in devices:
        message = secagg(
            fleet,
            device,
            Stage.ADVERTISE_KEYS,
            fleet.clients[device].advertise_keys().to_bytes(),
        )
        decision = round_machine.on_record(round_, read(message))
        assert decision.counted, decision.refused
        carry_out(round_, message, decision.effects)


def test_a_stage_that_begins_is_stored_until_stored_then_hands_in_its_held_records() -> None:
    # Prepare: a stage-2 message read during stage 1 (each topic is read on its own).
    round_, fleet = secure_round()
    early = secagg(fleet, "dev-0", Stage.SHARE_KEYS, b"\x01" * 40)
    held = round_machine.on_record(round_, read(early))
    advertise(round_, fleet, fleet.ids)
    now = T0 + timedelta(seconds=1)

    # Execute / Assert: the stage begins; its start is asked for until it is stored.
    assert held.held and held.effects == []
    first = round_machine.on_tick(round_, Tick(now))
    assert isinstance(first, StoreStage)
    assert first.start.stage_name == STAGE_NAMES[Stage.SHARE_KEYS]
    assert first.start.position == 2 and first.start.checkpoint
    assert sorted(o.key for o in first.start.outgoing) == sorted(fleet.ids)
    again = round_machine.on_tick(round_, Tick(now))
    assert isinstance(again, StoreStage) and again.start is first.start
    round_machine.stored(round_, first.start)
    replay = round_machine.on_tick(round_, Tick(now))
    assert isinstance(replay, Replay) and replay.items == [early]
    assert round_machine.on_tick(round_, Tick(now)) is None


def test_a_stranger_s_message_for_a_later_stage_is_refused_not_held() -> None:
    # Prepare
    round_, fleet = secure_round()
    stranger = secagg(fleet, "dev-0", Stage.MASKED_INPUT, b"\x00" * 8)
    stranger = stranger.model_copy(update={"device_id": "mallory"})

    # Execute
    decision = round_machine.on_record(round_, read(stranger))

    # Assert
    assert not decision.held
    assert decision.refused is not None and decision.refused.reason == RejectReason.NOT_SELECTED
    assert kinds(decision.effects) == ["WriteVerdict", "CountRefusal"]


def test_too_few_for_the_protocol_fails_the_round_closed_with_the_stage() -> None:
    # Prepare: two of five advertise, then stage 1's deadline (the round's) passes.
    round_, fleet = secure_round()
    advertise(round_, fleet, fleet.ids[:2])

    # Execute
    step = round_machine.on_tick(round_, Tick(fleet.opened.deadline))

    # Assert
    assert isinstance(step, Close) and step.outcome == Outcome.FAIL
    assert round_.result is not None and "advertise-keys" in getattr(round_.result, "reason", "")
    assert round_.unsent is None


def test_a_secure_round_goes_through_its_four_stages_to_close() -> None:
    # Prepare
    round_, fleet = secure_round()
    advertise(round_, fleet, fleet.ids)
    now = T0

    # Execute: each stage begins, is stored, and every device answers it.
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING):
        step = round_machine.on_tick(round_, Tick(now))
        assert isinstance(step, StoreStage), step
        round_machine.stored(round_, step.start)
        for outgoing in step.start.outgoing:
            delivered = outgoing.message
            assert isinstance(delivered, SecAggDelivered)
            device = delivered.device_id
            answer = fleet.answer(delivered)  # type: ignore[arg-type]
            message = secagg(fleet, device, stage, answer)
            decision = round_machine.on_record(round_, read(message))
            assert decision.counted, decision.refused
            carry_out(round_, message, decision.effects)
    step = round_machine.on_tick(round_, Tick(now))

    # Assert
    assert isinstance(step, Close) and step.outcome == Outcome.AGGREGATE
    result = round_.exchange.result(round_, now=now, rng=np.random.default_rng(0))
    assert getattr(result, "participants", None) == sorted(fleet.ids)


@pytest.mark.parametrize(
    ("second", "closes_early"),
    [
        pytest.param("too-long", True, id="its-own-update-refused-norm"),
        pytest.param("nan", True, id="its-own-update-refused-non-finite"),
        pytest.param("forged", False, id="a-forgery-under-its-name-does-not-answer-for-it"),
        pytest.param("oversize", False, id="refused-before-its-signature-does-not-answer"),
    ],
)
def test_a_round_closes_once_every_selected_device_answered_even_if_refused(
    second: str, closes_early: bool
) -> None:
    # Prepare: a accepted; then a record under b's name is refused.
    round_ = start(OPENED)
    good = update("a")
    carry_out(round_, good, round_machine.on_record(round_, read(good)).effects)
    shape = [np.full((2, 2), 0.5, np.float32), np.ones(2, np.float32)]
    if second == "too-long":
        bad = update("b", [np.full((2, 2), 100.0, np.float32), np.ones(2, np.float32)])
    elif second == "nan":
        bad = update("b", [np.full((2, 2), np.nan, np.float32), shape[1]])
    elif second == "forged":
        bad = update("b", signer="a")
    else:
        bad = update("b", raw=b"\x00" * 10_000)
    early = DEADLINE - timedelta(seconds=20)

    # Execute
    decision = round_machine.on_record(round_, read(bad))
    carry_out(round_, bad, decision.effects)
    step = round_machine.on_tick(round_, Tick(early))

    # Assert: the refusal is counted either way; only b's own signed record answers for b.
    assert decision.refused is not None
    assert decision.answered == closes_early
    assert (isinstance(step, Close) and step.outcome == Outcome.AGGREGATE) == closes_early
    assert round_.participants() == ["a"]
    assert round_.stages.current.dropped() == ["b"]
