"""Which protocol a round runs, from its round.opened alone, and why one is refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from fedcommon.messages.v1 import (
    FedAdamStrategy,
    KrumStrategy,
    MedianStrategy,
    Participant,
    RoundOpened,
    RoundPrivacy,
    RoundSecAgg,
    SecAggSubmitted,
    UpdateMetrics,
    UpdateSubmitted,
)
from fedengine_aggregator.core import protocols
from fedengine_aggregator.core.exchange import PrivateExchange, UpdateExchange
from fedengine_aggregator.core.secure_exchange import SecureExchange

PRIVACY = RoundPrivacy(
    approval_id=uuid.uuid4(), clip_norm=1.0, noise_multiplier=1.0, expected_participants=5.0
)
SECURE = RoundSecAgg(
    bits=16,
    clip_norm=10.0,
    weight_cap=100,
    degree=4,
    threshold=3,
    graph_seed=bytes(32),
    stage_timeout_s=10.0,
)


def opened(devices: int = 5, **fields: object) -> RoundOpened:
    return RoundOpened.model_validate(
        {
            **RoundOpened(
                producer="t",
                round_id=uuid.uuid4(),
                task_id=uuid.uuid4(),
                round_number=1,
                attempt=0,
                model_version=0,
                participants=[
                    Participant(device_id=f"d{i}", public_key=bytes([i + 1]) * 32)
                    for i in range(devices)
                ],
                min_updates=1,
                deadline=datetime(2030, 1, 1, tzinfo=UTC),
                param_shapes=[[2, 2]],
                max_update_norm=10.0,
                privacy=PRIVACY,
            ).model_dump(),
            "privacy": None,
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("message", "protocol", "refused"),
    [
        pytest.param(opened(), UpdateExchange, None, id="plain"),
        pytest.param(opened(strategy=MedianStrategy()), UpdateExchange, None, id="robust"),
        pytest.param(opened(privacy=PRIVACY), PrivateExchange, None, id="dp"),
        pytest.param(
            opened(privacy=PRIVACY, strategy=KrumStrategy()),
            UpdateExchange,
            "differential privacy cannot be used with strategy krum",
            id="dp-robust-refused",
        ),
        pytest.param(opened(secure_aggregation=SECURE), SecureExchange, None, id="secure"),
        pytest.param(
            opened(secure_aggregation=SECURE, strategy=FedAdamStrategy()),
            SecureExchange,
            None,
            id="secure-fedadam",
        ),
        pytest.param(
            opened(secure_aggregation=SECURE, privacy=PRIVACY), SecureExchange, None, id="secure-dp"
        ),
        pytest.param(
            opened(secure_aggregation=SECURE, strategy=MedianStrategy()),
            UpdateExchange,
            "secure aggregation cannot be used with strategy median",
            id="secure-robust-refused",
        ),
        pytest.param(
            opened(2, secure_aggregation=SECURE),
            UpdateExchange,
            "at least 3 participants",
            id="secure-two-devices-refused",
        ),
        pytest.param(
            opened(0, secure_aggregation=SECURE, privacy=PRIVACY),
            PrivateExchange,
            None,
            id="secure-dp-empty-draw-releases-noise",
        ),
        pytest.param(
            opened(1, secure_aggregation=SECURE, privacy=PRIVACY),
            UpdateExchange,
            "at least 3 participants",
            id="secure-dp-one-device-refused",
        ),
    ],
)
def test_the_protocol_of_each_kind_of_round(
    message: RoundOpened, protocol: type, refused: str | None
) -> None:
    # Execute
    chosen, reason = protocols.protocol_for(message)

    # Assert
    assert type(chosen) is protocol
    assert (reason is None) == (refused is None)
    if refused is not None:
        assert reason is not None and refused in reason


@pytest.mark.parametrize(
    ("message", "takes_updates", "takes_secagg"),
    [
        pytest.param(opened(), True, False, id="plain"),
        pytest.param(opened(privacy=PRIVACY), True, False, id="dp"),
        pytest.param(opened(secure_aggregation=SECURE), False, True, id="secure"),
    ],
)
def test_each_protocol_owns_its_message_types(
    message: RoundOpened, takes_updates: bool, takes_secagg: bool
) -> None:
    protocol, _ = protocols.protocol_for(message)
    about = {
        "producer": "t",
        "round_id": message.round_id,
        "task_id": message.task_id,
        "device_id": "d0",
        "round_number": 1,
        "signature": bytes(64),
    }
    update = UpdateSubmitted(
        **about,
        model_version=0,
        num_examples=1,
        update=b"",
        metrics=UpdateMetrics(train_loss=0.0, train_accuracy=0.0, duration_s=0.0),
    )
    secagg = SecAggSubmitted(**about, stage=2, payload=b"")

    assert (protocol.stage_of(update) is not None) == takes_updates
    assert (protocol.stage_of(secagg) is not None) == takes_secagg
    assert {spec.name for spec in protocol.plan(received_at=None)} >= (
        {protocol.stage_of(secagg) or protocol.stage_of(update)}
    )
