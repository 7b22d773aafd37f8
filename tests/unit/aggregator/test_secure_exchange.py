"""The aggregator's SecAgg+ side, pure: real device state machines against ``SecureExchange``,
with the real delivery bytes each way, stage deadlines counted from each stage's start, a
restart from a stage's checkpoint, and the refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import secagg_round, signing
from fedcommon.messages.v1 import (
    FedAvgStrategy,
    MedianStrategy,
    Participant,
    RoundOpened,
    RoundSecAgg,
    SecAggSubmitted,
)
from fedengine_aggregator.core import secure_exchange
from fedengine_aggregator.core.protocol import StageFailed
from fedengine_aggregator.core.secure_exchange import (
    STAGE_NAMES,
    Delivery,
    SecureExchange,
    StageName,
)
from fedengine_aggregator.core.stages import Placement, Progress, RoundStages
from fedengine_aggregator.core.validation import Rejected, RejectReason
from fedprivacy.secagg import (
    AggregateResult,
    InvalidSecAggMessage,
    RoundConfig,
    SecAggClient,
    Stage,
    choose_degree,
)
from fedprivacy.secagg.delivery import AdvertDelivery, ShareDelivery, UnmaskingDelivery

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SHAPES = [[3, 4], [4]]
DIM = 16


def opened_round(
    n: int = 6, *, strategy: object = None, stage_timeout_s: float = 10.0
) -> tuple[RoundOpened, dict[str, Ed25519PrivateKey]]:
    keys = {f"dev-{i}": Ed25519PrivateKey.generate() for i in range(n)}
    degree = secagg_round.round_degree(n, neighbours=None, default=choose_degree(n))
    opened = RoundOpened(
        producer="test",
        round_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        round_number=3,
        attempt=1,
        model_version=2,
        participants=[
            Participant(device_id=d, public_key=signing.public_key_bytes(k))
            for d, k in keys.items()
        ],
        min_updates=3,
        deadline=T0 + timedelta(seconds=30),
        param_shapes=SHAPES,
        max_update_norm=100.0,
        strategy=strategy or FedAvgStrategy(),
        secure_aggregation=RoundSecAgg(
            bits=16,
            clip_norm=10.0,
            weight_cap=100,
            degree=degree,
            threshold=secagg_round.round_threshold(degree, threshold=None),
            graph_seed=bytes(range(32)),
            stage_timeout_s=stage_timeout_s,
        ),
    )
    return opened, keys


class Fleet:
    """The devices' side, run with the library's client exactly as a device runs it."""

    def __init__(self, opened: RoundOpened, keys: dict[str, Ed25519PrivateKey]) -> None:
        assert opened.secure_aggregation is not None
        self.opened, self.keys = opened, keys
        self.config = RoundConfig(
            **secagg_round.config_fields(  # type: ignore[arg-type]
                opened.secure_aggregation,
                task_id=opened.task_id,
                round_number=opened.round_number,
                num_clients=len(opened.participants),
                dim=DIM,
            )
        )
        self.ids = [p.device_id for p in opened.participants]
        self.clients = {d: SecAggClient(self.config, index=i) for i, d in enumerate(self.ids)}
        rng = np.random.default_rng(7)
        self.updates = {d: rng.normal(0, 0.5, DIM).astype(np.float32) for d in self.ids}
        self.examples = {d: 10 + i for i, d in enumerate(self.ids)}

    def sign(self, device_id: str, stage: Stage, payload: bytes) -> bytes:
        assert self.opened.round_id is not None
        return self.keys[device_id].sign(
            signing.secagg_payload(
                task_id=self.opened.task_id,
                round_id=self.opened.round_id,
                device_id=device_id,
                round_number=self.opened.round_number,
                stage=int(stage),
                payload=payload,
            )
        )

    def answer(self, delivery: Delivery) -> bytes:
        client = self.clients[delivery.device_id]
        if delivery.stage == Stage.SHARE_KEYS:
            adverts = AdvertDelivery.from_bytes(delivery.payload)
            return client.share_keys([a for a, _ in adverts.adverts]).to_bytes()
        if delivery.stage == Stage.MASKED_INPUT:
            shares = ShareDelivery.from_bytes(delivery.payload)
            return client.masked_input(
                shares.ciphertexts,
                self.updates[delivery.device_id],
                num_examples=self.examples[delivery.device_id],
                rng=np.random.default_rng(1),
            ).to_bytes()
        request = UnmaskingDelivery.from_bytes(delivery.payload).request()
        return client.unmask(request).to_bytes()


def send(
    exchange: SecureExchange, fleet: Fleet, device_id: str, stage: Stage, payload: bytes
) -> None:
    exchange.accept(stage, device_id, payload, uuid.uuid4(), fleet.sign(device_id, stage, payload))


def tolerance(fleet: Fleet, contributors: list[str]) -> float:
    """Each device's quantisation is off by less than one step (2C / (2^B - 1)) per
    coordinate; the mean scales the summed error by W / sum(w)."""
    step = 2 * 10.0 / (2**16 - 1)
    weights = sum(min(fleet.examples[d], 100) for d in contributors)
    return len(contributors) * step * 100 / weights


def expected_mean(fleet: Fleet, contributors: list[str]) -> np.ndarray:
    weights = np.array([min(fleet.examples[d], 100) for d in contributors], dtype=np.float64)
    stacked = np.stack([fleet.updates[d].astype(np.float64) for d in contributors])
    mean: np.ndarray = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
    return mean


def run(
    exchange: SecureExchange, fleet: Fleet, *, silent: dict[Stage, set[str]] | None = None
) -> list[list[Delivery]]:
    """Every stage in turn; ``silent[stage]`` devices send nothing from that stage on."""
    quiet: set[str] = set()
    silent = silent or {}
    quiet |= silent.get(Stage.ADVERTISE_KEYS, set())
    for d in fleet.ids:
        if d not in quiet:
            send(
                exchange,
                fleet,
                d,
                Stage.ADVERTISE_KEYS,
                fleet.clients[d].advertise_keys().to_bytes(),
            )
    sent = []
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING):
        deliveries = exchange.deliveries(STAGE_NAMES[stage])
        sent.append(deliveries)
        quiet |= silent.get(stage, set())
        for delivery in deliveries:
            if delivery.device_id not in quiet:
                send(exchange, fleet, delivery.device_id, stage, fleet.answer(delivery))
    return sent


def test_the_unmasked_result_is_the_weighted_mean_of_the_quantised_updates() -> None:
    opened, keys = opened_round()
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)

    run(exchange, fleet)
    total = exchange.finish()

    assert sorted(exchange.ids[i] for i in total.contributors) == sorted(fleet.ids)
    assert np.allclose(
        total.weighted_mean(),
        expected_mean(fleet, fleet.ids),
        atol=tolerance(fleet, fleet.ids),
    )


def test_a_device_dropping_after_its_masked_input_still_counts_and_one_before_does_not() -> None:
    opened, keys = opened_round(8)
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)

    run(exchange, fleet, silent={Stage.MASKED_INPUT: {"dev-1"}, Stage.UNMASKING: {"dev-5"}})
    total = exchange.finish()

    counted = [d for d in fleet.ids if d != "dev-1"]
    assert sorted(exchange.ids[i] for i in total.contributors) == sorted(counted)
    assert np.allclose(
        total.weighted_mean(),
        expected_mean(fleet, counted),
        atol=tolerance(fleet, counted),
    )


def test_deliveries_are_addressed_with_ids_fixed_by_task_round_attempt_stage_and_recipient() -> (
    None
):
    opened, keys = opened_round()
    fleet = Fleet(opened, keys)
    first = run(SecureExchange(opened), fleet)

    ids = [d.message_id for stage in first for d in stage]
    assert len(set(ids)) == len(ids)
    again = SecureExchange(opened)
    assert [d.message_id for d in first[0]] == [
        again._delivery(Stage.SHARE_KEYS, i, b"").message_id for i in range(len(fleet.ids))
    ]


def test_a_restart_from_a_stage_checkpoint_sends_the_same_bytes_and_sums_the_same() -> None:
    # Prepare: a round through key sharing; the checkpoint taken when masked input began.
    opened, keys = opened_round()
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)
    for d in fleet.ids:
        send(exchange, fleet, d, Stage.ADVERTISE_KEYS, fleet.clients[d].advertise_keys().to_bytes())
    adverts = exchange.deliveries(STAGE_NAMES[Stage.SHARE_KEYS])
    for delivery in adverts:
        send(exchange, fleet, delivery.device_id, Stage.SHARE_KEYS, fleet.answer(delivery))
    shares = exchange.deliveries(STAGE_NAMES[Stage.MASKED_INPUT])
    checkpoint = exchange.checkpoint()
    masked = {d.device_id: fleet.answer(d) for d in shares}
    for device_id, payload in list(masked.items())[:3]:
        send(exchange, fleet, device_id, Stage.MASKED_INPUT, payload)

    # Execute: a new aggregator restores the checkpoint and re-reads the stage's records.
    restarted = SecureExchange(opened)
    restarted.restore(StageName.MASKED_INPUT, checkpoint)
    for device_id, payload in masked.items():
        send(restarted, fleet, device_id, Stage.MASKED_INPUT, payload)
    unmasking = restarted.deliveries(STAGE_NAMES[Stage.UNMASKING])
    for delivery in unmasking:
        send(restarted, fleet, delivery.device_id, Stage.UNMASKING, fleet.answer(delivery))

    # Assert: earlier stages count as decided; the sum is exact.
    assert restarted.decided_before_restart(StageName.SHARE_KEYS)
    assert not restarted.decided_before_restart(StageName.MASKED_INPUT)
    total = restarted.finish()
    assert np.allclose(
        total.weighted_mean(),
        expected_mean(fleet, fleet.ids),
        atol=tolerance(fleet, fleet.ids),
    )


def test_too_few_left_after_a_stage_fails_closed_naming_the_stage() -> None:
    opened, keys = opened_round(6)
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)
    for d in fleet.ids[:2]:
        send(exchange, fleet, d, Stage.ADVERTISE_KEYS, fleet.clients[d].advertise_keys().to_bytes())

    with pytest.raises(StageFailed, match="advertise-keys"):
        exchange.deliveries(STAGE_NAMES[Stage.SHARE_KEYS])


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("garbage", "advertise_keys"),
        ("other sender", "index"),
        ("repeat", "twice"),
    ],
)
def test_a_bad_protocol_message_is_rejected_as_malformed(case: str, detail: str) -> None:
    opened, keys = opened_round()
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)
    advert = fleet.clients["dev-0"].advertise_keys().to_bytes()
    if case == "repeat":
        send(exchange, fleet, "dev-0", Stage.ADVERTISE_KEYS, advert)
    payload = {"garbage": b"\x00" * 40, "other sender": advert, "repeat": advert}[case]
    device = "dev-1" if case == "other sender" else "dev-0"

    with pytest.raises(Rejected) as caught:
        send(exchange, fleet, device, Stage.ADVERTISE_KEYS, payload)

    assert caught.value.reason == RejectReason.MALFORMED
    assert detail in caught.value.detail


def test_a_redelivered_message_is_recognised_by_its_id() -> None:
    opened, keys = opened_round()
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)
    payload = fleet.clients["dev-0"].advertise_keys().to_bytes()
    message_id = uuid.uuid4()
    exchange.accept(
        Stage.ADVERTISE_KEYS,
        "dev-0",
        payload,
        message_id,
        fleet.sign("dev-0", Stage.ADVERTISE_KEYS, payload),
    )

    assert exchange.redelivered(Stage.ADVERTISE_KEYS, "dev-0", message_id)
    assert not exchange.redelivered(Stage.ADVERTISE_KEYS, "dev-0", uuid.uuid4())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"strategy": MedianStrategy()}, "needs every update"),
        ({"participants": 2}, "at least 3 participants"),
    ],
)
def test_rounds_secure_aggregation_cannot_serve_are_refused(
    change: dict[str, object], reason: str
) -> None:
    opened, _ = opened_round(int(change.get("participants", 6)))  # type: ignore[call-overload]
    if "strategy" in change:
        opened = opened.model_copy(update={"strategy": change["strategy"]})

    assert reason in (secure_exchange.refusal(opened) or "")
    with pytest.raises(ValueError, match=reason):
        SecureExchange(opened)


def test_later_stages_run_their_own_timeout_from_their_start() -> None:
    opened, _ = opened_round(stage_timeout_s=10.0)
    stages: RoundStages[object] = RoundStages(secure_exchange.secure_plan(opened, received_at=T0))
    for p in opened.participants:
        stages.current.survive(p.device_id)

    began = T0 + timedelta(seconds=25)
    assert stages.advance(began) == Progress.NEXT

    assert stages.current.name == StageName.SHARE_KEYS
    assert stages.current.deadline == began + timedelta(seconds=10)
    assert stages.advance(began + timedelta(seconds=9)) == Progress.WAIT
    assert (
        stages.advance(began + timedelta(seconds=10)) == Progress.NEXT
    )  # nobody: the protocol decides


def test_a_resumed_round_is_in_its_stage_with_earlier_ones_over() -> None:
    opened, _ = opened_round(stage_timeout_s=10.0)
    stages: RoundStages[object] = RoundStages(secure_exchange.secure_plan(opened, received_at=T0))
    expected = {p.device_id: p for p in opened.participants[:4]}

    stages.resume(StageName.MASKED_INPUT, expected=expected, started_at=T0 + timedelta(seconds=40))

    assert stages.current.name == StageName.MASKED_INPUT
    assert set(stages.current.expected) == set(expected)
    assert stages.current.deadline == T0 + timedelta(seconds=50)
    assert stages.place(StageName.SHARE_KEYS) == Placement.LATE
    assert stages.place(StageName.UNMASKING) == Placement.EARLY


def test_split_cuts_the_flat_vector_into_the_models_tensors() -> None:
    parts = secure_exchange.split(np.arange(16, dtype=np.float64), SHAPES)

    assert [p.shape for p in parts] == [(3, 4), (4,)]
    assert parts[1].tolist() == [12, 13, 14, 15]
    with pytest.raises(ValueError, match="does not fill"):
        secure_exchange.split(np.arange(15, dtype=np.float64), SHAPES)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("stranger", RejectReason.NOT_SELECTED),
        ("too large", RejectReason.TOO_LARGE),
        ("second", RejectReason.DUPLICATE),
    ],
)
def test_only_a_participants_one_message_per_later_stage_is_held(
    case: str, reason: RejectReason
) -> None:
    # Prepare: anyone can write to fed.secagg; what waits in memory for its stage is bounded.
    opened, _ = opened_round()
    exchange = SecureExchange(opened)
    device = "stranger" if case == "stranger" else "dev-1"
    payload = b"\x00" * (64 if case != "too large" else 1_000_000)
    message = SecAggSubmitted(
        producer="t",
        round_id=opened.round_id,
        task_id=opened.task_id,
        device_id=device,
        round_number=opened.round_number,
        stage=3,
        payload=payload,
        signature=bytes(64),
    )
    if case == "second":
        exchange.screen(StageName.MASKED_INPUT, message)

    # Execute / Assert
    with pytest.raises(Rejected) as caught:
        exchange.screen(StageName.MASKED_INPUT, message)
    assert caught.value.reason == reason


def test_after_a_restart_in_unmasking_the_contributors_come_from_the_restored_state() -> None:
    # Prepare: a round up to the start of unmasking, one device silent from masked input on.
    opened, keys = opened_round()
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)
    run_until = [Stage.SHARE_KEYS, Stage.MASKED_INPUT]
    for d in fleet.ids:
        send(exchange, fleet, d, Stage.ADVERTISE_KEYS, fleet.clients[d].advertise_keys().to_bytes())
    for stage in run_until:
        for delivery in exchange.deliveries(STAGE_NAMES[stage]):
            if not (stage == Stage.MASKED_INPUT and delivery.device_id == "dev-2"):
                send(exchange, fleet, delivery.device_id, stage, fleet.answer(delivery))
    exchange.deliveries(StageName.UNMASKING)
    checkpoint = exchange.checkpoint()

    # Execute
    restarted = SecureExchange(opened)
    restarted.restore(StageName.UNMASKING, checkpoint)
    stages: RoundStages[object] = RoundStages(restarted.plan(received_at=T0))
    stages.resume(StageName.UNMASKING, expected={}, started_at=T0)

    # Assert
    assert restarted.contributors(stages) == sorted(d for d in fleet.ids if d != "dev-2")


def test_a_round_without_dp_needs_its_minimum_of_masked_inputs() -> None:
    # Prepare: min_updates 6 of 6; one device drops before its masked input.
    opened, keys = opened_round(6)
    opened = opened.model_copy(update={"min_updates": 6})
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)

    # Execute / Assert
    with pytest.raises(StageFailed, match="5 of 6 masked inputs"):
        run(exchange, fleet, silent={Stage.MASKED_INPUT: {"dev-4"}})


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("coordinate", "coordinate no honest devices send"),
        ("weight", "weight sum"),
        ("norm", "norm"),
    ],
)
def test_an_unmasked_sum_no_honest_devices_can_produce_fails_closed(change: str, says: str) -> None:
    # Prepare: the honest sum of a round, then what one malicious device could wrap it to
    # (a masked input is uniform modulo 2^k: it can encode anything).
    opened, keys = opened_round()
    fleet, exchange = Fleet(opened, keys), SecureExchange(opened)
    run(exchange, fleet)
    honest = exchange.finish()
    secure_exchange.check_total(honest)  # the honest sum passes
    total = honest.total.copy()
    levels = 2**16 - 1
    count = len(honest.contributors)
    if change == "coordinate":
        total[0] = count * levels + 1
    elif change == "weight":
        total[DIM] = count * 100 + 1
    else:
        total[: DIM // 2] = count * levels  # every coordinate at +C: far longer than C
        total[DIM] = 1
    forged = AggregateResult(total=total, contributors=honest.contributors, config=honest.config)

    # Execute / Assert
    with pytest.raises(InvalidSecAggMessage, match=says):
        secure_exchange.check_total(forged)
