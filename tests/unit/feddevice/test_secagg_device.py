"""Simulated devices' SecAgg+ state machines against the real server, over real delivery bytes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing
from fedcommon.messages.v1 import RoundSecAgg, SecAggAssignment, SecAggPeer
from fedcommon.secagg_round import config_fields
from feddevice.secagg_device import (
    Action,
    DeviceRound,
    DeviceRounds,
    DropCause,
    DropPolicy,
    RoundIdentity,
    Step,
    flatten,
    submission_id,
)
from fedprivacy.secagg import (
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    RoundConfig,
    SecAggServer,
    Stage,
    UnmaskingShares,
)
from fedprivacy.secagg.delivery import (
    AdvertDelivery,
    DeliveryHeader,
    ShareDelivery,
    UnmaskingDelivery,
)
from fedprivacy.secagg.server import AggregateResult
from tests.unit.fedprivacy.secagg.conftest import TASK, expected_sum, make_updates

TASK_ID = uuid.UUID(bytes=TASK)
ROUND_ID = uuid.UUID("6f1c2a9e-0000-4000-8000-000000000001")
ROUND_NUMBER = 7
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _round_params(num_clients: int, degree: int) -> RoundSecAgg:
    return RoundSecAgg(
        bits=16,
        clip_norm=1.0,
        weight_cap=20,
        degree=degree,
        threshold=degree // 2 + 1,
        graph_seed=bytes(range(32)),
        stage_timeout_s=30.0,
    )


@dataclass
class Fleet:
    """``num_clients`` devices of one round, their identity keys and the aggregator."""

    num_clients: int
    degree: int
    dim: int = 9
    drop_policy: DropPolicy | None = None
    config: RoundConfig = field(init=False)
    server: SecAggServer = field(init=False)
    keys: list[Ed25519PrivateKey] = field(init=False)
    devices: list[DeviceRound] = field(init=False)
    updates: list[np.ndarray] = field(init=False)
    examples: list[int] = field(init=False)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        params = _round_params(self.num_clients, self.degree)
        self.config = RoundConfig(
            **config_fields(  # type: ignore[arg-type]
                params,
                task_id=TASK_ID,
                round_number=ROUND_NUMBER,
                num_clients=self.num_clients,
                dim=self.dim,
            )
        )
        self.server = SecAggServer(self.config)
        self.keys = [Ed25519PrivateKey.generate() for _ in range(self.num_clients)]
        self.updates, self.examples = make_updates(self.config, 5)
        self.rng = np.random.default_rng(3)  # one stream, used in index order at stage 3
        self.devices = [self.device(i) for i in range(self.num_clients)]

    def assignment(self, index: int) -> SecAggAssignment:
        return SecAggAssignment(
            round=_round_params(self.num_clients, self.degree),
            num_clients=self.num_clients,
            index=index,
            dim=self.dim,
            neighbours=[
                SecAggPeer(
                    index=n,
                    device_id=f"d-{n}",
                    public_key=signing.public_key_bytes(self.keys[n]),
                )
                for n in self.config.neighbours[index]
            ],
        )

    def device(self, index: int) -> DeviceRound:
        return DeviceRound(
            identity=RoundIdentity(
                task_id=TASK_ID,
                round_id=ROUND_ID,
                round_number=ROUND_NUMBER,
                device_id=f"d-{index}",
            ),
            assignment=self.assignment(index),
            update=self.updates[index],
            num_examples=self.examples[index],
            expires_at=NOW + timedelta(minutes=5),
            rng=self.rng,
            drop_policy=self.drop_policy,
        )

    def deliver(self, index: int, stage: Stage, payload: bytes) -> Step:
        step = self.devices[index].on_delivery(
            task_id=TASK_ID,
            round_id=ROUND_ID,
            round_number=ROUND_NUMBER,
            device_id=f"d-{index}",
            stage=int(stage),
            payload=payload,
        )
        if step.action is Action.SEND:
            self.devices[index].mark_sent(step.stage)
        return step

    def header(self, recipient: int) -> DeliveryHeader:
        return DeliveryHeader(task_id=TASK, round_number=ROUND_NUMBER, recipient=recipient)


def _advertise(fleet: Fleet) -> dict[int, bytes]:
    """Stage 1 for every device; return each sender's signature over its advertisement."""
    signatures = {}
    for index, device in enumerate(fleet.devices):
        step = device.advertise()
        if step.action is not Action.SEND:
            continue
        signatures[index] = fleet.keys[index].sign(
            device.signing_payload(stage=1, payload=step.payload)
        )
        fleet.server.receive_advertisement(KeyAdvertisement.from_bytes(step.payload))
        device.mark_sent(1)
    return signatures


def _advert_delivery(
    fleet: Fleet, index: int, adverts: tuple[KeyAdvertisement, ...], signatures: dict[int, bytes]
) -> AdvertDelivery:
    ordered = sorted(adverts, key=lambda a: a.header.sender)
    return AdvertDelivery(
        header=fleet.header(index),
        adverts=tuple((a, signatures[a.header.sender]) for a in ordered),
    )


def _run(fleet: Fleet) -> AggregateResult:
    """A whole round, as the aggregator's shell would route it."""
    signatures = _advertise(fleet)
    broadcasts = fleet.server.close_advertisement()
    inbox: dict[int, list[tuple[int, bytes]]] = {}
    for index, adverts in broadcasts.items():
        adverts_to = _advert_delivery(fleet, index, adverts, signatures)
        step = fleet.deliver(index, Stage.SHARE_KEYS, adverts_to.to_bytes())
        if step.action is Action.SEND:
            shares = EncryptedShares.from_bytes(step.payload)
            fleet.server.receive_encrypted_shares(shares)
            for recipient, ciphertext in shares.ciphertexts:
                inbox.setdefault(recipient, []).append((index, ciphertext))
    shared = fleet.server.close_share_keys()
    for index in sorted(shared):
        ciphertexts = tuple(sorted((s, ct) for s, ct in inbox.get(index, []) if s in shared))
        shares_to = ShareDelivery(header=fleet.header(index), ciphertexts=ciphertexts)
        step = fleet.deliver(index, Stage.MASKED_INPUT, shares_to.to_bytes())
        if step.action is Action.SEND:
            fleet.server.receive_masked_input(MaskedInput.from_bytes(step.payload))
    request = fleet.server.close_masked_input()
    for index in request.survivors:
        unmasking_to = UnmaskingDelivery.of(request, recipient=index)
        step = fleet.deliver(index, Stage.UNMASKING, unmasking_to.to_bytes())
        if step.action is Action.SEND:
            fleet.server.receive_unmasking(UnmaskingShares.from_bytes(step.payload))
    return fleet.server.finish()


def test_simulated_devices_give_the_server_the_exact_sum() -> None:
    # Prepare: 7 devices, each with 4 neighbours of 6 (a sparse graph).
    fleet = Fleet(num_clients=7, degree=4)

    # Execute
    result = _run(fleet)

    # Assert: every device contributed, the sum is exact, and every state may be forgotten.
    assert result.contributors == tuple(range(7))
    np.testing.assert_array_equal(
        result.total,
        expected_sum(fleet.config, fleet.updates, fleet.examples, range(7), rng_seed=3),
    )
    assert all(device.finished for device in fleet.devices)


@pytest.mark.parametrize("stage", [2, 3, 4])
def test_injected_dropout_at_a_stage_keeps_the_sum_exact(stage: int) -> None:
    # Prepare: a complete graph of 8 (threshold 4), 30 % drop at ``stage`` only.
    policy = DropPolicy(probability=0.3, stages=frozenset({stage}), seed=11)
    fleet = Fleet(num_clients=8, degree=7, drop_policy=policy)
    dropped = {i for i in range(8) if policy.drops(round_id=ROUND_ID, index=i, stage=stage)}
    assert 0 < len(dropped) <= 4  # this seed drops some, and the round can still finish

    # Execute
    result = _run(fleet)

    # Assert: a device silent from stage 4 on still sent its masked input.
    contributors = set(range(8)) - (dropped if stage <= Stage.MASKED_INPUT else set())
    assert set(result.contributors) == contributors
    np.testing.assert_array_equal(
        result.total,
        expected_sum(fleet.config, fleet.updates, fleet.examples, contributors, rng_seed=3),
    )
    for index in dropped:
        step = fleet.devices[index].dropped
        assert step is not None and step.cause is DropCause.INJECTED


def test_a_forged_or_foreign_advertisement_makes_the_device_refuse_the_round() -> None:
    # Prepare: a sparse graph, so that some device is not device 0's neighbour.
    fleet = Fleet(num_clients=7, degree=2)
    signatures = _advertise(fleet)
    broadcasts = fleet.server.close_advertisement()
    adverts = broadcasts[0]
    forged = dict(signatures)
    victim = adverts[0].header.sender
    forged[victim] = Ed25519PrivateKey.generate().sign(
        fleet.devices[victim].signing_payload(stage=1, payload=adverts[0].to_bytes())
    )
    recipient = 1
    stranger = next(i for i in range(2, 7) if i not in fleet.config.neighbours[recipient])
    with_stranger = tuple(
        sorted(
            (*broadcasts[recipient], fleet.server.advertisement(stranger)),
            key=lambda a: a.header.sender,
        )
    )

    # Execute
    forged_step = fleet.deliver(
        0, Stage.SHARE_KEYS, _advert_delivery(fleet, 0, adverts, forged).to_bytes()
    )
    foreign_step = fleet.deliver(
        recipient,
        Stage.SHARE_KEYS,
        _advert_delivery(fleet, recipient, with_stranger, signatures).to_bytes(),
    )

    # Assert: refused as invalid, nothing sent, and later deliveries are no-ops.
    assert forged_step.action is Action.DROP and forged_step.cause is DropCause.INVALID
    assert "bad signature" in forged_step.reason
    assert foreign_step.action is Action.DROP and "not a neighbour" in foreign_step.reason
    again = fleet.deliver(0, Stage.MASKED_INPUT, b"")
    assert again.action is Action.IGNORE and fleet.devices[0].finished


def test_an_advertisement_signed_for_another_try_is_refused() -> None:
    # The signature binds the round id: an advertisement replayed from another try fails.
    fleet = Fleet(num_clients=5, degree=4)
    _advertise(fleet)
    adverts = fleet.server.close_advertisement()[0]
    other_try = {
        a.header.sender: fleet.keys[a.header.sender].sign(
            signing.secagg_payload(
                task_id=TASK_ID,
                round_id=uuid.uuid4(),
                device_id=f"d-{a.header.sender}",
                round_number=ROUND_NUMBER,
                stage=1,
                payload=a.to_bytes(),
            )
        )
        for a in adverts
    }

    step = fleet.deliver(
        0, Stage.SHARE_KEYS, _advert_delivery(fleet, 0, adverts, other_try).to_bytes()
    )

    assert step.action is Action.DROP and step.cause is DropCause.INVALID


def test_a_delivery_for_another_recipient_or_round_is_refused() -> None:
    # Prepare: stage 2 done by all; build device 1's share delivery.
    fleet = Fleet(num_clients=5, degree=4)
    signatures = _advertise(fleet)
    broadcasts = fleet.server.close_advertisement()
    for index, adverts in broadcasts.items():
        step = fleet.deliver(
            index,
            Stage.SHARE_KEYS,
            _advert_delivery(fleet, index, adverts, signatures).to_bytes(),
        )
        assert step.action is Action.SEND
    to_1 = ShareDelivery(header=fleet.header(1), ciphertexts=()).to_bytes()
    other_round = ShareDelivery(
        header=DeliveryHeader(task_id=TASK, round_number=ROUND_NUMBER + 1, recipient=2),
        ciphertexts=(),
    ).to_bytes()

    # Execute: an envelope of another round id, then misaddressed payloads.
    elsewhere = fleet.devices[0].on_delivery(
        task_id=TASK_ID,
        round_id=uuid.uuid4(),
        round_number=ROUND_NUMBER,
        device_id="d-0",
        stage=3,
        payload=to_1,
    )
    kept = fleet.devices[0].dropped is None
    misaddressed = fleet.deliver(0, Stage.MASKED_INPUT, to_1)
    wrong_round = fleet.deliver(2, Stage.MASKED_INPUT, other_round)

    # Assert: the foreign envelope is not this state's business (ignored, state kept), the
    # misaddressed payloads make the device leave the round.
    assert elsewhere.action is Action.IGNORE and kept
    assert misaddressed.action is Action.DROP and "not 0" in misaddressed.reason
    assert wrong_round.action is Action.DROP and "another task or round" in wrong_round.reason


def test_a_repeated_delivery_never_makes_a_device_answer_twice() -> None:
    # Prepare
    fleet = Fleet(num_clients=5, degree=4)
    signatures = _advertise(fleet)
    adverts = fleet.server.close_advertisement()[0]
    payload = _advert_delivery(fleet, 0, adverts, signatures).to_bytes()
    device = fleet.devices[0]

    def deliver() -> Step:
        return device.on_delivery(
            task_id=TASK_ID,
            round_id=ROUND_ID,
            round_number=ROUND_NUMBER,
            device_id="d-0",
            stage=2,
            payload=payload,
        )

    # Execute: delivered, redelivered before the answer is on the log, then after.
    first = deliver()
    before_sent = deliver()
    device.mark_sent(first.stage)
    after_sent = deliver()

    # Assert: the same bytes until sent (an identical re-send), then nothing.
    assert first.action is Action.SEND
    assert before_sent == first
    assert after_sent.action is Action.IGNORE and "already answered" in after_sent.reason
    assert device.advertise().action is Action.IGNORE  # stage 1 was sent as well
    assert device.dropped is None


def test_too_few_neighbours_make_the_device_drop_out_not_raise() -> None:
    fleet = Fleet(num_clients=5, degree=4)  # threshold 3
    signatures = _advertise(fleet)
    adverts = fleet.server.close_advertisement()[0][:2]

    step = fleet.deliver(
        0, Stage.SHARE_KEYS, _advert_delivery(fleet, 0, adverts, signatures).to_bytes()
    )

    assert step.action is Action.DROP and step.cause is DropCause.THRESHOLD


def test_a_delivery_out_of_order_or_of_no_stage_drops_the_device() -> None:
    fleet = Fleet(num_clients=5, degree=4)
    _advertise(fleet)
    share = ShareDelivery(header=fleet.header(0), ciphertexts=()).to_bytes()
    unmask = UnmaskingDelivery(header=fleet.header(1), survivors=(1,), dropped=()).to_bytes()

    skipped = fleet.deliver(0, Stage.MASKED_INPUT, share)  # stage 2 never ran
    no_stage = fleet.deliver(1, Stage.ADVERTISE_KEYS, b"")
    garbage = fleet.deliver(2, Stage.UNMASKING, unmask[:-1])

    assert skipped.action is Action.DROP and skipped.cause is DropCause.ORDER
    assert no_stage.action is Action.DROP and no_stage.cause is DropCause.INVALID
    assert garbage.action is Action.DROP and garbage.cause is DropCause.INVALID


def test_the_dropout_decision_is_a_pure_function_of_its_inputs() -> None:
    policy = DropPolicy(probability=0.3, stages=frozenset({2, 3}), seed=4)
    round_id = uuid.UUID(int=99)

    decisions = [policy.drops(round_id=round_id, index=i, stage=2) for i in range(4000)]

    assert decisions == [
        DropPolicy(probability=0.3, stages=frozenset({2, 3}), seed=4).drops(
            round_id=round_id, index=i, stage=2
        )
        for i in range(4000)
    ]
    assert 0.27 < sum(decisions) / len(decisions) < 0.33
    other_seed = DropPolicy(probability=0.3, stages=frozenset({2, 3}), seed=5)
    assert decisions != [other_seed.drops(round_id=round_id, index=i, stage=2) for i in range(4000)]
    assert decisions != [policy.drops(round_id=round_id, index=i, stage=3) for i in range(4000)]
    assert not any(policy.drops(round_id=round_id, index=i, stage=4) for i in range(4000))
    assert not any(DropPolicy().drops(round_id=round_id, index=i, stage=2) for i in range(100))


@pytest.mark.parametrize(
    "values", [{"probability": 1.0}, {"probability": -0.1}, {"stages": frozenset({5})}]
)
def test_a_drop_policy_out_of_range_is_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        DropPolicy(**values)  # type: ignore[arg-type]


def test_a_device_refuses_an_assignment_it_cannot_follow() -> None:
    fleet = Fleet(num_clients=5, degree=2)
    identity = RoundIdentity(
        task_id=TASK_ID, round_id=ROUND_ID, round_number=ROUND_NUMBER, device_id="d-0"
    )
    assignment = fleet.assignment(0)
    wrong_peers = assignment.model_copy(update={"neighbours": [*fleet.assignment(1).neighbours]})

    for bad_assignment, update in (
        (assignment, np.zeros(fleet.dim + 1, dtype=np.float32)),
        (wrong_peers, fleet.updates[0]),
    ):
        with pytest.raises(ValueError, match=r"parameters|neighbours"):
            DeviceRound(
                identity=identity,
                assignment=bad_assignment,
                update=update,
                num_examples=3,
                expires_at=NOW,
                rng=np.random.default_rng(0),
            )


def test_flatten_concatenates_in_order_as_new_float32() -> None:
    delta: list[npt.NDArray[np.generic]] = [
        np.arange(6, dtype=np.float64).reshape(2, 3),
        np.array([7.5], dtype=np.float32),
    ]

    flat = flatten(delta)

    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 7.5])
    assert flat.dtype == np.float32 and flat.shape == (7,)
    flat[0] = 42
    assert delta[0][0, 0] == 0


def test_states_are_forgotten_when_they_expire() -> None:
    fleet = Fleet(num_clients=5, degree=4)
    rounds = DeviceRounds()
    for device in fleet.devices:
        rounds.add(device)

    assert rounds.forget_expired(NOW) == []
    expired = rounds.forget_expired(NOW + timedelta(minutes=5))

    assert len(expired) == 5 and rounds.rounds == {}
    assert rounds.get(ROUND_ID, "d-0") is None and rounds.get(None, "d-0") is None


def test_stage_message_ids_are_stable_per_round_device_and_stage() -> None:
    first = submission_id(round_id=ROUND_ID, device_id="d-1", stage=2)

    assert first == submission_id(round_id=ROUND_ID, device_id="d-1", stage=2)
    assert first != submission_id(round_id=ROUND_ID, device_id="d-1", stage=3)
    assert first != submission_id(round_id=ROUND_ID, device_id="d-2", stage=2)
