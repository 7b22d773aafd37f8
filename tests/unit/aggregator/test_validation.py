from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from fedcommon import arrays, signing
from fedcommon.messages.v1 import (
    DeclineReason,
    Participant,
    RoundOpened,
    UpdateDeclined,
    UpdateMetrics,
    UpdateSubmitted,
)
from fedengine_aggregator.core.validation import (
    ANSWERED_BADLY,
    Rejected,
    RejectReason,
    judge_decline,
    max_update_bytes,
    validate_update,
)

TASK, ROUND = uuid.UUID(int=1), uuid.UUID(int=2)
KEYS = {name: signing.generate_private_key() for name in ("a", "b")}
OPENED = RoundOpened(
    producer="t",
    round_id=ROUND,
    task_id=TASK,
    round_number=3,
    attempt=0,
    model_version=2,
    participants=[
        Participant(device_id=n, public_key=signing.public_key_bytes(k)) for n, k in KEYS.items()
    ],
    min_updates=1,
    deadline=datetime(2030, 1, 1, tzinfo=UTC),
    param_shapes=[[2, 2], [2]],
    max_update_norm=10.0,
)
EXPECTED = {p.device_id: p for p in OPENED.participants}
GOOD = [np.full((2, 2), 0.5, np.float32), np.ones(2, np.float32)]


def update(
    device: str = "a",
    values: list[np.ndarray] | None = None,
    *,
    signer: str | None = None,
    round_number: int = 3,
    round_id: uuid.UUID = ROUND,
    raw: bytes | None = None,
) -> UpdateSubmitted:
    data = raw if raw is not None else arrays.to_bytes(values if values is not None else GOOD)
    payload = signing.update_payload(
        task_id=TASK,
        round_id=round_id,
        device_id=device,
        round_number=round_number,
        model_version=2,
        num_examples=4,
        update=data,
    )
    return UpdateSubmitted(
        producer="t",
        round_id=round_id,
        task_id=TASK,
        device_id=device,
        round_number=round_number,
        model_version=2,
        num_examples=4,
        update=data,
        metrics=UpdateMetrics(train_loss=1, train_accuracy=0.5, duration_s=0.1),
        signature=KEYS[signer or device].sign(payload)
        if (signer or device) in KEYS
        else KEYS["a"].sign(payload),
    )


def test_a_valid_update_is_decoded() -> None:
    decoded = validate_update(OPENED, update(), participant=EXPECTED["a"], already_accepted=False)

    np.testing.assert_array_equal(decoded[0], GOOD[0])


def test_a_participant_found_for_another_device_is_not_selected() -> None:
    with pytest.raises(Rejected) as caught:
        validate_update(OPENED, update("a"), participant=EXPECTED["b"], already_accepted=False)

    assert caught.value.reason == RejectReason.NOT_SELECTED


nan = [GOOD[0].copy(), GOOD[1]]
nan[0][0, 0] = np.nan
inf = [GOOD[0], np.array([np.inf, 1], np.float32)]


@pytest.mark.parametrize(
    ("message", "accepted", "reason"),
    [
        (update(round_number=2), False, RejectReason.STALE_MODEL),
        (update("z"), False, RejectReason.NOT_SELECTED),
        (update(round_id=uuid.UUID(int=9)), False, RejectReason.UNKNOWN_ROUND),
        (update("a", signer="b"), False, RejectReason.BAD_SIGNATURE),
        (update(), True, RejectReason.DUPLICATE),
        (update(raw=b"garbage"), False, RejectReason.MALFORMED),
        (update(values=[np.zeros((200, 200), np.float32), GOOD[1]]), False, RejectReason.TOO_LARGE),
        (update(values=[np.zeros((3, 3), np.float32), GOOD[1]]), False, RejectReason.WRONG_SHAPE),
        (update(values=GOOD[:1]), False, RejectReason.WRONG_SHAPE),
        (update(values=nan), False, RejectReason.NON_FINITE),
        (update(values=inf), False, RejectReason.NON_FINITE),
        (update(values=[GOOD[0] * 100, GOOD[1]]), False, RejectReason.NORM_EXCEEDED),
        (update(values=[GOOD[0].astype(np.int64), GOOD[1]]), False, RejectReason.NON_FINITE),
    ],
    ids=lambda v: getattr(v, "value", None) if isinstance(v, RejectReason) else None,
)
def test_each_bad_update_is_rejected_with_its_reason(
    message: UpdateSubmitted, accepted: bool, reason: RejectReason
) -> None:
    with pytest.raises(Rejected) as caught:
        validate_update(
            OPENED,
            message,
            participant=EXPECTED.get(message.device_id),
            already_accepted=accepted,
        )

    assert caught.value.reason == reason


def test_the_size_limit_admits_float32_and_float64_encodings_of_the_round_shapes() -> None:
    limit = max_update_bytes(OPENED.param_shapes)

    as32 = arrays.to_bytes([np.zeros((2, 2), np.float32), np.zeros(2, np.float32)])
    as64 = arrays.to_bytes([np.zeros((2, 2), np.float64), np.zeros(2, np.float64)])

    assert len(as32) < len(as64) <= limit


def decline(
    device: str = "a",
    *,
    signer: str | None = None,
    round_number: int = 3,
    round_id: uuid.UUID = ROUND,
    reason: DeclineReason = DeclineReason.FIT_FAILED,
) -> UpdateDeclined:
    payload = signing.decline_payload(
        task_id=TASK,
        round_id=round_id,
        device_id=device,
        round_number=round_number,
        model_version=2,
        reason=reason.value,
    )
    return UpdateDeclined(
        producer="t",
        round_id=round_id,
        task_id=TASK,
        device_id=device,
        round_number=round_number,
        model_version=2,
        reason=reason,
        signature=KEYS[signer or device].sign(payload),
    )


@pytest.mark.parametrize("reason", list(DeclineReason))
def test_a_selected_devices_own_decline_answers_for_it_with_its_reason(
    reason: DeclineReason,
) -> None:
    verdict = judge_decline(
        OPENED, decline(reason=reason), participant=EXPECTED["a"], already_accepted=False
    )
    assert verdict.reason == RejectReason.DECLINED and verdict.detail == reason.value
    assert verdict.reason in ANSWERED_BADLY


@pytest.mark.parametrize(
    ("message", "participant", "accepted", "reason"),
    [
        (decline(signer="b"), "a", False, RejectReason.BAD_SIGNATURE),
        (decline(round_number=4), "a", False, RejectReason.STALE_MODEL),
        (decline(round_id=uuid.UUID(int=9)), "a", False, RejectReason.UNKNOWN_ROUND),
        (decline(), None, False, RejectReason.NOT_SELECTED),
        (decline(), "a", True, RejectReason.DUPLICATE),
    ],
)
def test_a_decline_that_is_not_the_devices_own_for_this_try_never_speaks_for_it(
    message: UpdateDeclined, participant: str | None, accepted: bool, reason: RejectReason
) -> None:
    verdict = judge_decline(
        OPENED,
        message,
        participant=EXPECTED.get(participant or ""),
        already_accepted=accepted,
    )
    assert verdict.reason == reason
    assert verdict.reason not in ANSWERED_BADLY
