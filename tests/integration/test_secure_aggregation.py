"""SecAgg+ through the real aggregator process (issue 15), on Tansu and PostgreSQL.

The test plays the coordinator (a round.opened with ``secure_aggregation``, signed with the
key ``fedengine up`` generated for it) and the devices: each runs the protocol library's
client, exactly as a device does, reading the aggregator's deliveries from
fed.device.commands and sending its signed stage messages on fed.secagg. So the aggregator
is tested against the protocol itself, whatever the simulator does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import arrays, secagg_round, signing, topics
from fedcommon.messages.v1 import (
    Participant,
    RoundAggregated,
    RoundFailed,
    RoundOpened,
    RoundPrivacy,
    RoundSecAgg,
    SecAggDelivered,
    SecAggSubmitted,
)
from fedcommon.settings import KafkaSettings
from fedengine import launcher
from fedengine.sdk import FedEngineClient
from fedprivacy.secagg import RoundConfig, SecAggClient, Stage, choose_degree
from fedprivacy.secagg.delivery import AdvertDelivery, ShareDelivery, UnmaskingDelivery
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually, run_fleet_task
from tests.integration.kafka_tools import all_records, decoded, send

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SHAPES = [[20, 10], [10]]
DIM = 210
CLIP = 10.0
CAP = 100
BITS = 16


@dataclass
class Device:
    device_id: str
    key: Ed25519PrivateKey
    client: SecAggClient
    update: np.ndarray
    examples: int


@dataclass
class SecureRound:
    opened: RoundOpened
    devices: dict[str, Device]
    # Deliveries seen, by (stage, device): the aggregator's message, once.
    seen: dict[tuple[int, str], SecAggDelivered] = field(default_factory=dict)

    @property
    def round_id(self) -> uuid.UUID:
        assert self.opened.round_id is not None
        return self.opened.round_id

    @property
    def task_id(self) -> str:
        return str(self.opened.task_id)

    def message(
        self,
        device: Device,
        stage: Stage,
        payload: bytes,
        *,
        round_id: uuid.UUID | None = None,
        signed_round_id: uuid.UUID | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> SecAggSubmitted:
        signature = (key or device.key).sign(
            signing.secagg_payload(
                task_id=self.opened.task_id,
                round_id=signed_round_id or round_id or self.round_id,
                device_id=device.device_id,
                round_number=self.opened.round_number,
                stage=int(stage),
                payload=payload,
            )
        )
        return SecAggSubmitted(
            producer="pytest",
            round_id=round_id or self.round_id,
            task_id=self.opened.task_id,
            device_id=device.device_id,
            round_number=self.opened.round_number,
            stage=int(stage),
            payload=payload,
            signature=signature,
        )

    def answer(self, device: Device, delivery: SecAggDelivered) -> bytes:
        stage = Stage(delivery.stage)
        if stage == Stage.SHARE_KEYS:
            adverts = AdvertDelivery.from_bytes(delivery.payload)
            return device.client.share_keys([a for a, _ in adverts.adverts]).to_bytes()
        if stage == Stage.MASKED_INPUT:
            shares = ShareDelivery.from_bytes(delivery.payload)
            return device.client.masked_input(
                shares.ciphertexts,
                device.update,
                num_examples=device.examples,
                rng=np.random.default_rng(5),
            ).to_bytes()
        request = UnmaskingDelivery.from_bytes(delivery.payload).request()
        return device.client.unmask(request).to_bytes()

    def mean(self, contributors: Iterable[str]) -> np.ndarray:
        chosen = [self.devices[d] for d in contributors]
        weights = np.array([min(d.examples, CAP) for d in chosen], dtype=np.float64)
        stacked = np.stack([d.update.astype(np.float64) for d in chosen])
        mean: np.ndarray = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
        return mean

    def tolerance(self, contributors: Iterable[str]) -> float:
        chosen = [self.devices[d] for d in contributors]
        step = 2 * CLIP / (2**BITS - 1)
        weights = sum(min(d.examples, CAP) for d in chosen)
        return float(len(chosen) * step * CAP / weights + 1e-6)


def secure_round(
    *,
    devices: int = 6,
    stage_timeout_s: float = 30.0,
    deadline_s: float = 60.0,
    privacy: RoundPrivacy | None = None,
    seed: int = 0,
) -> SecureRound:
    tag = uuid.uuid4().hex[:6]
    keys = {f"sa-{tag}-{i}": signing.generate_private_key() for i in range(devices)}
    now = datetime.now(UTC)
    degree = secagg_round.round_degree(devices, neighbours=None, default=choose_degree(devices))
    secagg = RoundSecAgg(
        bits=BITS,
        clip_norm=privacy.clip_norm if privacy else CLIP,
        weight_cap=1 if privacy else CAP,
        degree=degree,
        threshold=secagg_round.round_threshold(degree, threshold=None),
        graph_seed=uuid.uuid4().bytes * 2,
        stage_timeout_s=stage_timeout_s,
    )
    opened = RoundOpened(
        producer="coordinator",
        round_id=uuid.uuid4(),
        sent_at=now,
        task_id=uuid.uuid4(),
        round_number=1,
        attempt=0,
        model_version=0,
        participants=[
            Participant(device_id=name, public_key=signing.public_key_bytes(key))
            for name, key in keys.items()
        ],
        min_updates=3,
        deadline=now + timedelta(seconds=deadline_s),
        param_shapes=SHAPES,
        max_update_norm=1e3,
        privacy=privacy,
        secure_aggregation=secagg,
    )
    config = RoundConfig(
        **secagg_round.config_fields(  # type: ignore[arg-type]
            secagg,
            task_id=opened.task_id,
            round_number=1,
            num_clients=devices,
            dim=DIM,
        )
    )
    rng = np.random.default_rng(seed)
    members = {
        name: Device(
            name,
            key,
            SecAggClient(config, index=i),
            rng.normal(0, 0.3, DIM).astype(np.float32),
            20 + 7 * i,
        )
        for i, (name, key) in enumerate(keys.items())
    }
    return SecureRound(opened, members)


async def deliveries(
    settings: KafkaSettings, round_: SecureRound, stage: Stage
) -> dict[str, SecAggDelivered]:
    """The aggregator's deliveries of ``stage`` for the round so far; every copy of one
    message id must carry the same bytes (a restarted aggregator never sends another)."""
    found: dict[str, SecAggDelivered] = {}
    values: dict[uuid.UUID, bytes] = {}
    for record in await all_records(settings, topics.DEVICE_COMMANDS):
        message = decoded(record)
        if (
            isinstance(message, SecAggDelivered)
            and message.round_id == round_.round_id
            and message.stage == stage
        ):
            assert values.setdefault(message.message_id, record.value) == record.value
            found[message.device_id] = message
    return found


async def results_of(
    settings: KafkaSettings, round_id: uuid.UUID
) -> list[RoundAggregated | RoundFailed]:
    found: list[RoundAggregated | RoundFailed] = []
    for record in await all_records(settings, topics.ROUNDS):
        message = decoded(record)
        if isinstance(message, RoundAggregated | RoundFailed) and message.round_id == round_id:
            found.append(message)
    return found


async def open_round(stack: Stack, round_: SecureRound) -> None:
    await send(
        stack.kafka,
        topics.UPDATES,
        key=round_.task_id,
        message=round_.opened,
        signer=stack.signer("coordinator"),
    )


async def submit(stack: Stack, round_: SecureRound, message: SecAggSubmitted) -> None:
    await send(stack.kafka, topics.SECAGG, key=round_.task_id, message=message)


async def advertise(stack: Stack, round_: SecureRound, names: Iterable[str]) -> None:
    for name in names:
        device = round_.devices[name]
        payload = device.client.advertise_keys().to_bytes()
        await submit(stack, round_, round_.message(device, Stage.ADVERTISE_KEYS, payload))


async def answer_stage(
    stack: Stack,
    round_: SecureRound,
    stage: Stage,
    *,
    expect: int,
    silent: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> dict[str, SecAggDelivered]:
    """Wait for ``expect`` deliveries of ``stage``, then answer them (but ``silent``'s)."""
    got = await eventually(lambda: _at_least(stack.kafka, round_, stage, expect), timeout_s=120)
    names = set(only) if only is not None else set(got)
    for name, delivery in sorted(got.items()):
        if name in set(silent) or name not in names or (stage, name) in round_.seen:
            continue
        round_.seen[(int(stage), name)] = delivery
        device = round_.devices[name]
        payload = round_.answer(device, delivery)
        await submit(stack, round_, round_.message(device, stage, payload))
    return got


async def _at_least(
    settings: KafkaSettings, round_: SecureRound, stage: Stage, count: int
) -> dict[str, SecAggDelivered]:
    got = await deliveries(settings, round_, stage)
    return got if len(got) >= count else {}


async def secagg_log(db: psycopg.AsyncConnection, round_id: uuid.UUID) -> list[tuple[object, ...]]:
    cursor = await db.execute(
        "SELECT stage_name, expected, delivered, dropped, rejected, bytes_up > 0, seconds >= 0 "
        "FROM aggregator.secagg_log WHERE round_id = %s ORDER BY stage",
        (round_id,),
    )
    return list(await cursor.fetchall())


async def rejections(db: psycopg.AsyncConnection, round_id: uuid.UUID) -> dict[str, str]:
    cursor = await db.execute(
        "SELECT device_id, reason FROM aggregator.device_results "
        "WHERE round_id = %s AND status = 'rejected'",
        (round_id,),
    )
    return {row[0]: row[1] for row in await cursor.fetchall()}


async def test_a_secure_round_releases_the_weighted_mean_despite_forged_and_foreign_messages(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    """Six devices; one drops after its masked input. Along the way: a stage message with a
    bad signature, one replayed from another round, one from a device never selected, and a
    key-share bundle whose ciphertext was tampered with on the way: each is refused, and the
    round completes with the exact weighted mean of the devices that sent a masked input."""
    # Prepare
    round_ = secure_round(devices=6, stage_timeout_s=8.0)
    names = list(round_.devices)
    other = secure_round(devices=3)  # another round, whose messages are replayed here
    stranger = other.devices[next(iter(other.devices))]

    # Execute: stage 1, with the forged and foreign messages among the real ones.
    await open_round(stack, round_)
    first = round_.devices[names[0]]
    advert = first.client.advertise_keys().to_bytes()
    forged = round_.message(first, Stage.ADVERTISE_KEYS, advert, key=stranger.key)
    replayed = round_.message(first, Stage.ADVERTISE_KEYS, advert, signed_round_id=other.round_id)
    unselected = round_.message(
        stranger, Stage.ADVERTISE_KEYS, stranger.client.advertise_keys().to_bytes()
    )
    for message in (forged, replayed, unselected):
        await submit(stack, round_, message)
    await submit(stack, round_, round_.message(first, Stage.ADVERTISE_KEYS, advert))
    await advertise(stack, round_, names[1:])
    # Stage 2: the last device's bundle is altered in one ciphertext byte after signing.
    adverts = await eventually(
        lambda: _at_least(stack.kafka, round_, Stage.SHARE_KEYS, 6), timeout_s=120
    )
    last = round_.devices[names[-1]]
    payload = round_.answer(last, adverts[names[-1]])
    round_.seen[(int(Stage.SHARE_KEYS), names[-1])] = adverts[names[-1]]
    message = round_.message(last, Stage.SHARE_KEYS, payload)
    tampered = bytearray(payload)
    tampered[-1] ^= 0x01
    await submit(stack, round_, message.model_copy(update={"payload": bytes(tampered)}))
    await submit(stack, round_, message)
    await answer_stage(stack, round_, Stage.SHARE_KEYS, expect=6)
    await answer_stage(stack, round_, Stage.MASKED_INPUT, expect=6)
    # Stage 4: the first device has gone (its masked input counts; its neighbours reveal).
    await answer_stage(stack, round_, Stage.UNMASKING, expect=6, silent={names[0]})

    # Assert
    (result,) = await eventually(lambda: results_of(stack.kafka, round_.round_id), timeout_s=120)
    assert isinstance(result, RoundAggregated), result
    assert result.participants == sorted(names)
    delta = np.concatenate([a.astype(np.float64).ravel() for a in arrays.from_bytes(result.delta)])
    assert np.allclose(delta, round_.mean(names), atol=round_.tolerance(names))
    assert result.num_examples == sum(min(d.examples, CAP) for d in round_.devices.values())
    refused = await rejections(db, round_.round_id)
    assert refused[stranger.device_id] == "not_selected"
    assert refused[first.device_id] == "bad_signature"  # both the forged and the replayed
    assert refused[last.device_id] == "bad_signature"  # the tampered bundle
    cursor = await db.execute(
        "SELECT count(*) FROM aggregator.device_results WHERE round_id = %s "
        "AND status = 'rejected' AND reason = 'bad_signature'",
        (round_.round_id,),
    )
    assert await cursor.fetchone() == (3,)
    assert result.rejected == {"bad_signature": 3, "not_selected": 1}
    log = await secagg_log(db, round_.round_id)
    assert [row[0] for row in log] == [
        "advertise_keys",
        "share_keys",
        "masked_input",
        "unmasking",
    ]
    assert [row[1:5] for row in log] == [(6, 6, 0, 3), (6, 6, 0, 1), (6, 6, 0, 0), (6, 5, 1, 0)]


async def test_too_many_dropouts_fail_the_round_closed_with_the_stage(stack: Stack) -> None:
    # Prepare: five of six devices go silent after advertising their keys.
    round_ = secure_round(devices=6, stage_timeout_s=3.0)
    names = list(round_.devices)

    # Execute
    await open_round(stack, round_)
    await advertise(stack, round_, names)
    await answer_stage(stack, round_, Stage.SHARE_KEYS, expect=6, only=names[:1])

    # Assert: no sum, and the reason names the stage.
    (result,) = await eventually(lambda: results_of(stack.kafka, round_.round_id), timeout_s=120)
    assert isinstance(result, RoundFailed)
    assert "secure aggregation failed closed at stage 'share-keys'" in result.reason


@pytest.mark.parametrize("kill_in", list(Stage), ids=lambda s: s.name.lower())
async def test_an_aggregator_killed_in_a_stage_completes_the_round_sending_nothing_twice(
    stack: Stack, db: psycopg.AsyncConnection, kill_in: Stage
) -> None:
    """SIGKILL once half the devices have answered stage ``kill_in``; the rest answer after.
    The restarted aggregator resumes from the stage's checkpoint: the round ends with the
    exact sum, and every delivery id seen on the topic carries one set of bytes
    (``deliveries`` asserts it)."""
    # Prepare
    round_ = secure_round(devices=5, stage_timeout_s=60.0, deadline_s=120.0, seed=int(kill_in))
    names = list(round_.devices)

    async def kill() -> None:
        launcher.restart(stack.settings, "aggregator", kill=True)

    # Execute
    await open_round(stack, round_)
    if kill_in == Stage.ADVERTISE_KEYS:
        await advertise(stack, round_, names[:2])
        await kill()
        await advertise(stack, round_, names[2:])
    else:
        await advertise(stack, round_, names)
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING):
        if stage == kill_in:
            await answer_stage(stack, round_, stage, expect=5, only=names[:2])
            await kill()
        await answer_stage(stack, round_, stage, expect=5)

    # Assert
    (result,) = await eventually(lambda: results_of(stack.kafka, round_.round_id), timeout_s=180)
    assert isinstance(result, RoundAggregated), result
    delta = np.concatenate([a.astype(np.float64).ravel() for a in arrays.from_bytes(result.delta)])
    assert np.allclose(delta, round_.mean(names), atol=round_.tolerance(names))
    assert (result.participants, result.dropped) == (sorted(names), [])
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING):
        assert len(await deliveries(stack.kafka, round_, stage)) == 5
    cursor = await db.execute(
        "SELECT count(*) FROM aggregator.secagg_checkpoints WHERE round_id = %s",
        (round_.round_id,),
    )
    assert await cursor.fetchone() == (0,)


async def test_a_dp_round_with_secure_aggregation_releases_noise_on_the_unmasked_sum(
    stack: Stack,
) -> None:
    """Each device clips to C and weights itself 1; the aggregator noises the unmasked sum at
    z·C over the fixed denominator and says nothing per device. With z tiny next to the
    updates, the release is the clipped sum over W within a few noise deviations."""
    # Prepare
    privacy = RoundPrivacy(
        approval_id=uuid.uuid4(),
        clip_norm=1.0,
        noise_multiplier=0.05,
        expected_participants=4.0,
    )
    round_ = secure_round(devices=4, privacy=privacy)
    names = list(round_.devices)
    for device in round_.devices.values():
        device.update = (device.update / np.linalg.norm(device.update) * 3.0).astype(np.float32)

    # Execute
    await open_round(stack, round_)
    await advertise(stack, round_, names)
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING):
        await answer_stage(stack, round_, stage, expect=4)

    # Assert
    (result,) = await eventually(lambda: results_of(stack.kafka, round_.round_id), timeout_s=120)
    assert isinstance(result, RoundAggregated), result
    assert result.privacy_approval_id == privacy.approval_id
    assert (result.participants, result.num_examples, result.bytes_up) == ([], 0, 0)
    clipped_sum = sum(d.update.astype(np.float64) / 3.0 for d in round_.devices.values())
    delta = np.concatenate([a.astype(np.float64).ravel() for a in arrays.from_bytes(result.delta)])
    noise_std = 0.05 * 1.0 / 4.0
    assert np.abs(delta - clipped_sum / 4.0).max() < 6 * noise_std + 1e-3


async def test_a_task_with_secure_aggregation_trains_on_the_fleet_and_shows_its_stages(
    client: FedEngineClient, fleet: str
) -> None:
    """The whole path: the gateway takes the section, the coordinator opens secure tries, the
    simulator's devices run the protocol, the aggregator unmasks the sum, the rounds view
    shows each stage's counts, seconds and bytes."""
    # Execute
    task_id = await run_fleet_task(
        client, fleet, wait=False, rounds=3, min_devices=3, secure_aggregation={}
    )
    task = await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=180
    )

    # Assert
    assert task["state"] == "completed", task
    assert task["secure_aggregation"]["bits"] == 16
    rounds = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
    assert [r["round_number"] for r in rounds] == [1, 2, 3]
    assert rounds[-1]["accuracy"] > 0.5
    for round_ in rounds:
        stages = round_["secure_stages"]
        assert [s["stage_name"] for s in stages] == [
            "advertise_keys",
            "share_keys",
            "masked_input",
            "unmasking",
        ]
        assert all(s["expected"] == 4 and s["delivered"] == 4 for s in stages)
        assert all(s["bytes_up"] > 0 for s in stages)
        assert all(s["bytes_down"] > 0 for s in stages[1:])
        assert sorted(round_["aggregated"]) == sorted(round_["participants"])
