"""Central DP-FedAvg through the real aggregator process (issue 9), on Tansu and PostgreSQL.

The test plays the coordinator (a round.opened with ``privacy``, signed with the key
``fedengine up`` generated for it) and the devices (keys it holds), so it needs neither the
privacy service nor the coordinator's DP rounds. A DP round's result carries its approval and
nothing per device, and its delta lies where the noise says it should; the result is stored
once, so an aggregator SIGKILLed right after closing the round sends no second, differently
noised release after its restart.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from fedcommon import arrays, signing, topics
from fedcommon.messages.v1 import (
    MedianStrategy,
    Participant,
    RoundAggregated,
    RoundFailed,
    RoundOpened,
    RoundPrivacy,
    StrategySpec,
    UpdateMetrics,
    UpdateSubmitted,
)
from fedcommon.settings import KafkaSettings
from fedengine import launcher
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually
from tests.integration.kafka_tools import all_records, decoded, send

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SHAPES = [[40, 30], [30]]
CLIP = 1.0
Z = 0.5
EXPECTED = 4.0
# Norms of the devices' updates (two far above C) and the example counts they claim.
NORMS = [0.4, 0.9, 25.0, 1e4]
EXAMPLES = [10, 1, 100_000_000, 3]


@dataclass
class DpRound:
    opened: RoundOpened
    keys: dict[str, Ed25519PrivateKey]

    @property
    def task_id(self) -> str:
        return str(self.opened.task_id)

    def update(self, device_id: str, delta: list[np.ndarray], examples: int) -> UpdateSubmitted:
        round_id = self.opened.round_id
        assert round_id is not None
        payload = arrays.to_bytes(delta)
        signature = self.keys[device_id].sign(
            signing.update_payload(
                task_id=self.opened.task_id,
                round_id=round_id,
                device_id=device_id,
                round_number=self.opened.round_number,
                model_version=self.opened.model_version,
                num_examples=examples,
                update=payload,
            )
        )
        return UpdateSubmitted(
            producer="pytest",
            round_id=round_id,
            task_id=self.opened.task_id,
            device_id=device_id,
            round_number=self.opened.round_number,
            model_version=self.opened.model_version,
            num_examples=examples,
            update=payload,
            metrics=UpdateMetrics(train_loss=1.0, train_accuracy=0.5, duration_s=0.01),
            signature=signature,
        )


def dp_round(
    *,
    task_id: uuid.UUID,
    round_number: int,
    devices: int = 4,
    strategy: StrategySpec | None = None,
    split: tuple[float, float] | None = None,
) -> DpRound:
    """A DP round of ``devices`` new devices (their keys held here), min 3 updates, 60 s."""
    tag = uuid.uuid4().hex[:6]
    keys = {f"dp-{tag}-{i}": signing.generate_private_key() for i in range(devices)}
    now = datetime.now(UTC)
    opened = RoundOpened(
        producer="coordinator",
        round_id=uuid.uuid4(),
        sent_at=now,
        task_id=task_id,
        round_number=round_number,
        attempt=0,
        model_version=round_number - 1,
        participants=[
            Participant(device_id=name, public_key=signing.public_key_bytes(key))
            for name, key in keys.items()
        ],
        min_updates=3,
        deadline=now + timedelta(seconds=60),
        param_shapes=SHAPES,
        max_update_norm=1e5,
        privacy=RoundPrivacy(
            approval_id=uuid.uuid4(),
            clip_norm=CLIP,
            noise_multiplier=Z,
            expected_participants=EXPECTED,
            # Adaptive clipping: (z_Δ, σ_b) as the privacy service split Z.
            update_noise_multiplier=None if split is None else split[0],
            count_noise_std=None if split is None else split[1],
        ),
    )
    if strategy is not None:
        opened = opened.model_copy(update={"strategy": strategy})
    return DpRound(opened, keys)


def delta_of_norm(rng: np.random.Generator, norm: float) -> list[np.ndarray]:
    parts = [rng.normal(size=shape) for shape in SHAPES]
    scale = norm / math.sqrt(sum(float(np.sum(p * p)) for p in parts))
    return [(p * scale).astype(np.float32) for p in parts]


def clipped(delta: list[np.ndarray]) -> list[np.ndarray]:
    norm = math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta))
    factor = min(1.0, CLIP / norm)
    return [d.astype(np.float64) * factor for d in delta]


async def results_of(
    settings: KafkaSettings, round_id: uuid.UUID
) -> list[RoundAggregated | RoundFailed]:
    """Every result for ``round_id`` on fed.rounds, read from the start to its end."""
    found: list[RoundAggregated | RoundFailed] = []
    for record in await all_records(settings, topics.ROUNDS):
        message = decoded(record)
        if isinstance(message, RoundAggregated | RoundFailed) and message.round_id == round_id:
            found.append(message)
    return found


async def send_round(stack: Stack, round_: DpRound, updates: list[UpdateSubmitted]) -> None:
    await send(
        stack.kafka,
        topics.UPDATES,
        key=round_.task_id,
        message=round_.opened,
        signer=stack.signer("coordinator"),
    )
    for message in updates:
        await send(stack.kafka, topics.UPDATES, key=round_.task_id, message=message)


async def test_a_dp_round_releases_a_noised_mean_under_its_approval_and_nothing_per_device(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: four devices, two of them far above C, one claiming 1e8 examples.
    round_ = dp_round(task_id=uuid.uuid4(), round_number=1)
    rng = np.random.default_rng(9)
    deltas = {name: delta_of_norm(rng, norm) for name, norm in zip(round_.keys, NORMS, strict=True)}
    updates = [
        round_.update(name, deltas[name], examples)
        for name, examples in zip(round_.keys, EXAMPLES, strict=True)
    ]
    round_id = round_.opened.round_id
    assert round_id is not None and round_.opened.privacy is not None

    # Execute
    await send_round(stack, round_, updates)
    (result,) = await eventually(lambda: results_of(stack.kafka, round_id), timeout_s=60)
    assert isinstance(result, RoundAggregated)

    # Assert: the approval, and nothing per device.
    assert result.privacy_approval_id == round_.opened.privacy.approval_id
    assert (result.participants, result.dropped, result.rejected) == ([], [], {})
    assert (result.num_examples, result.train_loss, result.bytes_up) == (0, 0.0, 0)
    # The delta is (Σ clip(Δᵢ) + N(0, (z·C)²)) / W: W²·|delta - plain|² / (z·C)² is χ²(d).
    # Its 5e-7 and 1 - 5e-7 quantiles bound it: a false failure has probability 1e-6.
    plain = [sum(parts) / EXPECTED for parts in zip(*map(clipped, deltas.values()), strict=True)]
    released = arrays.from_bytes(result.delta)
    assert [list(a.shape) for a in released] == SHAPES
    assert all(a.dtype == np.float32 for a in released)
    d = sum(math.prod(shape) for shape in SHAPES)
    statistic = (
        sum(
            float(np.sum((r.astype(np.float64) - p) ** 2))
            for r, p in zip(released, plain, strict=True)
        )
        * (EXPECTED / (Z * CLIP)) ** 2
    )
    assert stats.chi2.ppf(5e-7, d) < statistic < stats.chi2.isf(5e-7, d)
    # The aggregator keeps each verdict for its audit, but the public view shows none of them.
    cursor = await db.execute(
        "SELECT count(*) FILTER (WHERE status = 'accepted'), count(*) FILTER (WHERE private) "
        "FROM aggregator.device_results WHERE round_id = %s",
        (round_id,),
    )
    assert await cursor.fetchone() == (4, 4)
    cursor = await db.execute(
        "SELECT count(*) FROM aggregator.device_results_public WHERE round_id = %s", (round_id,)
    )
    assert await cursor.fetchone() == (0,)
    # A device answering after the round closed is rejected late, and stays private too.
    late = round_.update(next(iter(round_.keys)), deltas[next(iter(round_.keys))], 5)
    await send(stack.kafka, topics.UPDATES, key=round_.task_id, message=late)

    async def late_recorded() -> tuple[object, ...] | None:
        cursor = await db.execute(
            "SELECT reason, private FROM aggregator.device_results WHERE message_id = %s",
            (late.message_id,),
        )
        return await cursor.fetchone()

    assert await eventually(late_recorded, timeout_s=30) == ("late", True)
    cursor = await db.execute(
        "SELECT count(*) FROM aggregator.device_results_public WHERE round_id = %s", (round_id,)
    )
    assert await cursor.fetchone() == (0,)


async def test_an_adaptive_round_noises_the_sum_at_z_delta_and_releases_a_noised_fraction(
    stack: Stack,
) -> None:
    """Z = 0.5 split with σ_b = 0.3: z_Δ = (4 − 1/0.36)^(−1/2) ≈ 0.905, so noise at Z would
    fail. The sum's noise is checked against z_Δ·C by χ² (false failure 1e-6); the fraction
    is (Σ(bᵢ − ½) + N(0, σ_b²)) / W + ½ with two of the four updates inside C, so
    Σ(bᵢ − ½) = 0: it lies within 5.3 σ_b / W of ½ (false failure about 1e-7)."""
    # Prepare
    count_std = 0.3
    update_z = (Z**-2 - (2 * count_std) ** -2) ** -0.5
    round_ = dp_round(task_id=uuid.uuid4(), round_number=1, split=(update_z, count_std))
    rng = np.random.default_rng(10)
    deltas = {name: delta_of_norm(rng, norm) for name, norm in zip(round_.keys, NORMS, strict=True)}
    updates = [round_.update(name, deltas[name], 1) for name in round_.keys]
    round_id = round_.opened.round_id
    assert round_id is not None

    # Execute
    await send_round(stack, round_, updates)
    (result,) = await eventually(lambda: results_of(stack.kafka, round_id), timeout_s=60)

    # Assert
    assert isinstance(result, RoundAggregated)
    assert result.privacy_unclipped_fraction is not None
    assert abs(result.privacy_unclipped_fraction - 0.5) < 5.3 * count_std / EXPECTED
    plain = [sum(parts) / EXPECTED for parts in zip(*map(clipped, deltas.values()), strict=True)]
    released = arrays.from_bytes(result.delta)
    d = sum(math.prod(shape) for shape in SHAPES)
    statistic = (
        sum(
            float(np.sum((r.astype(np.float64) - p) ** 2))
            for r, p in zip(released, plain, strict=True)
        )
        * (EXPECTED / (update_z * CLIP)) ** 2
    )
    assert stats.chi2.ppf(5e-7, d) < statistic < stats.chi2.isf(5e-7, d)


async def test_dp_with_a_robust_strategy_fails_the_round_with_the_reason(stack: Stack) -> None:
    # Prepare
    round_ = dp_round(task_id=uuid.uuid4(), round_number=1, strategy=MedianStrategy())
    round_id = round_.opened.round_id
    assert round_id is not None

    # Execute
    await send_round(stack, round_, [])

    # Assert
    (failed,) = await eventually(lambda: results_of(stack.kafka, round_id), timeout_s=60)
    assert isinstance(failed, RoundFailed)
    assert "differential privacy cannot be used with strategy median" in failed.reason


async def test_an_aggregator_killed_right_after_closing_a_dp_round_releases_it_once(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: the round closes as soon as its four updates are in.
    task_id = uuid.uuid4()
    first = dp_round(task_id=task_id, round_number=1)
    rng = np.random.default_rng(3)
    updates = [first.update(name, delta_of_norm(rng, 2.0), 10) for name in first.keys]
    first_id = first.opened.round_id
    assert first_id is not None

    # Execute: SIGKILL as soon as the close is recorded (the relay may or may not have sent
    # the stored result by then; either way it goes out once). The restarted aggregator reads
    # the round's records again (their offsets were not yet committed, or were).
    await send_round(stack, first, updates)

    async def closed() -> bool:
        cursor = await db.execute(
            "SELECT 1 FROM aggregator.rounds WHERE round_id = %s", (first_id,)
        )
        return await cursor.fetchone() is not None

    await eventually(closed, timeout_s=60, interval_s=0.01)
    launcher.restart(stack.settings, "aggregator", kill=True)
    # A second round of the same task (same partition, after the first's records): once its
    # result is out, the restarted aggregator has re-read everything of the first.
    second = dp_round(task_id=task_id, round_number=2)
    second_id = second.opened.round_id
    assert second_id is not None
    await send_round(
        stack, second, [second.update(n, delta_of_norm(rng, 0.5), 1) for n in second.keys]
    )
    await eventually(lambda: results_of(stack.kafka, second_id), timeout_s=90)

    # Assert: exactly one release of the first round on fed.rounds, and nothing left to send.
    released = await results_of(stack.kafka, first_id)
    assert len(released) == 1
    assert isinstance(released[0], RoundAggregated) and first.opened.privacy is not None
    assert released[0].privacy_approval_id == first.opened.privacy.approval_id

    async def outbox_empty() -> bool:
        cursor = await db.execute("SELECT count(*) FROM aggregator.outbox")
        return await cursor.fetchone() == (0,)

    await eventually(outbox_empty)
