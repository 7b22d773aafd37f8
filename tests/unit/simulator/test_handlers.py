"""The simulator's answers to evaluate requests, and to requests of a task on an uploaded model,
with its database and broker replaced by fakes; records go through the consume loop's own
processor, so that what it would dead-letter shows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka import ConsumerRecord
from pydantic import SecretStr

from fedcommon import codec, enrolment_tokens, kafka, models, signing, topics, trust
from fedcommon.messages.v1 import (
    DeclineReason,
    Envelope,
    EvaluateRequested,
    EvaluationSubmitted,
    ModelArchitecture,
    TrainRequested,
    UpdateDeclined,
)
from fedcommon.service import ServiceContext
from fedcommon.settings import KafkaSettings
from fedengine_simulator import handlers
from fedengine_simulator.settings import Settings

PREFIX = "t."
COORDINATOR_KEY = signing.generate_private_key()
MODEL = models.to_safetensors(
    models.build_model(ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0)
)


@dataclass
class FakeCursor:
    rows: list[tuple[Any, ...]]
    rowcount: int = 0

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows


@dataclass
class FakeDatabase:
    """The queries the simulator runs: the coordinator's model store, its own processed
    messages and trained rows."""

    models: dict[tuple[UUID, int], bytes] = field(default_factory=dict)
    processed: set[UUID] = field(default_factory=set)
    # Rows written with executemany, by the table they went to.
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    transactions: int = 0

    async def executemany(self, query: str, rows: list[tuple[Any, ...]]) -> None:
        table = query.split("INTO ", 1)[1].split(" ", 1)[0]
        self.rows.setdefault(table, []).extend(rows)

    @contextlib.asynccontextmanager
    async def cursor(self) -> AsyncIterator[FakeDatabase]:
        yield self

    async def execute(self, query: Any, params: tuple[Any, ...] = ()) -> FakeCursor:
        text = query if isinstance(query, str) else query.as_string()
        if "models_public" in text:
            data = self.models.get((params[0], params[1]))
            return FakeCursor([] if data is None else [(data,)])
        if "processed_messages" in text and "ANY" in text:
            return FakeCursor([(m,) for m in params[0] if m in self.processed])
        if "processed_messages" in text and "unnest" in text:
            self.processed.update(params[0])
            return FakeCursor([])
        if "processed_messages" in text and text.startswith("SELECT"):
            return FakeCursor([(1,)] if params[0] in self.processed else [])
        if "processed_messages" in text and text.startswith("INSERT"):
            new = params[0] not in self.processed
            self.processed.add(params[0])
            return FakeCursor([], rowcount=int(new))
        return FakeCursor([])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        yield

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[FakeDatabase]:
        yield self


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> None:
        self.sent.append((topic, value, key))

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, key))
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged

    def on(self, base: str) -> list[tuple[Envelope, bytes | None]]:
        """What was sent to topic ``base``, decoded, with its key."""
        name = topics.topic_name(PREFIX, base)
        return [(codec.decode(value), key) for topic, value, key in self.sent if topic == name]


@dataclass
class Simulator:
    fleet: handlers.Fleet
    database: FakeDatabase
    producer: FakeProducer
    processor: kafka.RecordProcessor

    async def deliver(self, message: TrainRequested | EvaluateRequested) -> None:
        """Deliver ``message`` as the coordinator signs it, through the consume loop's
        processor (decode, topic check, trust check, handler, dead-lettering)."""
        topic = topics.topic_name(PREFIX, topics.DEVICE_COMMANDS)
        key, value = message.device_id.encode(), codec.encode(message)
        headers = trust.Signer("coordinator", COORDINATOR_KEY).headers(topic, key, value)
        await self.processor.process(
            ConsumerRecord(topic, 0, 0, 0, 0, key, value, None, len(key), len(value), headers)
        )


def simulator(tmp_path: Path, devices: int = 4, **settings_: Any) -> Simulator:
    token = enrolment_tokens.issue("f", coordinator_key=signing.public_key_bytes(COORDINATOR_KEY))
    settings = Settings(
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        kafka=KafkaSettings(topic_prefix=PREFIX),
        fleet="f",
        devices=devices,
        enrolment_token=SecretStr(token.encode()),
        FEDENGINE_HOME=tmp_path,  # type: ignore[call-arg]
        **settings_,
    )
    database, producer = FakeDatabase(), FakeProducer()
    context = ServiceContext(
        name="simulator-f",
        kafka=settings.kafka,
        pool=database,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        relay=None,  # type: ignore[arg-type]
    )
    fleet = handlers.Fleet(context, settings)
    processor = kafka.RecordProcessor(
        producer=producer,  # type: ignore[arg-type]
        settings=settings.kafka,
        handle=fleet.handle,
        verifier=settings.trust.verifier(prefix=PREFIX, window_s=3600),
    )
    return Simulator(fleet, database, producer, processor)


def evaluate_request(
    device_id: str, task_id: UUID, *, uploaded: bool = False, seconds: float = 30
) -> EvaluateRequested:
    return EvaluateRequested(
        producer="coordinator",
        task_id=task_id,
        evaluation_id=uuid4(),
        device_id=device_id,
        round_number=1,
        model_version=1,
        model_sha256=models.sha256_hex(MODEL),
        deadline=datetime.now(UTC) + timedelta(seconds=seconds),
        model_architecture=None if uploaded else ModelArchitecture.MLP,
        dataset=None if uploaded else "digits",
        batch_size=16,
        seed=3,
    )


def train_request(device_id: str, task_id: UUID) -> TrainRequested:
    return TrainRequested(
        producer="coordinator",
        round_id=uuid4(),
        task_id=task_id,
        device_id=device_id,
        round_number=1,
        model_version=1,
        model_sha256=models.sha256_hex(MODEL),
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        model_architecture=None,
        dataset=None,
        learning_rate=0.1,
        local_epochs=1,
        batch_size=8,
        seed=0,
    )


async def test_a_device_evaluates_on_its_held_out_share_and_signs_its_answer(
    tmp_path: Path,
) -> None:
    # Prepare
    sim = simulator(tmp_path)
    task_id = uuid4()
    sim.database.models[(task_id, 1)] = MODEL
    asked = evaluate_request("f-0002", task_id)

    # Execute: delivered twice (at-least-once), answered once.
    await sim.deliver(asked)
    await sim.deliver(asked)

    # Assert
    assert sim.producer.on(topics.DLQ) == []
    ((message, key),) = sim.producer.on(topics.EVALUATIONS)
    assert isinstance(message, EvaluationSubmitted) and key == str(task_id).encode()
    assert message.producer == "simulator" and message.device_id == "f-0002"
    assert message.evaluation_id == asked.evaluation_id
    assert message.num_examples == len(sim.fleet.held_out_of("digits", 2)) > 0
    assert 0 <= message.metrics["accuracy"] <= 1 and message.loss > 0
    signing.verify(
        public_key=signing.public_key_bytes(sim.fleet.keys["f-0002"]),
        signature=message.signature,
        payload=signing.evaluation_payload(
            task_id=task_id,
            evaluation_id=asked.evaluation_id,
            device_id="f-0002",
            round_number=1,
            model_version=1,
            num_examples=message.num_examples,
            loss=message.loss,
            metrics=message.metrics,
        ),
    )


async def test_evaluating_does_not_change_what_a_device_trains_on(tmp_path: Path) -> None:
    sim = simulator(tmp_path)
    before = sim.fleet.partition_of("digits", 1).copy()
    request = train_request("f-0001", uuid4()).model_copy(
        update={"model_architecture": ModelArchitecture.MLP, "dataset": "digits"}
    )
    client = sim.fleet.client_for(sim.fleet.devices["f-0001"], request)
    assert len(client.y) == len(before)
    assert client.x_test is not None and len(client.x_test) == len(
        sim.fleet.held_out_of("digits", 1)
    )
    assert (sim.fleet.partition_of("digits", 1) == before).all()


async def test_a_device_trains_the_model_and_features_its_task_names(tmp_path: Path) -> None:
    sim = simulator(tmp_path)
    device = sim.fleet.devices["f-0001"]
    plain = train_request("f-0001", uuid4()).model_copy(
        update={"model_architecture": ModelArchitecture.MLP, "dataset": "digits"}
    )
    wide = plain.model_copy(update={"model_hidden": 128, "standardize": True})

    default_client = sim.fleet.client_for(device, plain)
    wide_client = sim.fleet.client_for(device, wide)

    shapes = [
        [tuple(a.shape) for a in models.get_arrays(c.build())]
        for c in (default_client, wide_client)
    ]
    assert shapes[0][0] == (64, 64) and shapes[1][0] == (128, 64)
    # Standardised by the training split's statistics: no longer pixels / 16 in [0, 1].
    assert default_client.x.min() >= 0 and wide_client.x.min() < 0
    assert sim.fleet.forward_flops(wide) > sim.fleet.forward_flops(plain)


async def test_a_task_on_an_uploaded_model_is_declined_for_training_and_not_evaluated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = simulator(tmp_path)
    task_id = uuid4()
    with caplog.at_level(logging.WARNING, logger=handlers.__name__):
        for device_id in ("f-0000", "f-0001"):
            await sim.deliver(train_request(device_id, task_id))
            await sim.deliver(evaluate_request(device_id, task_id, uploaded=True))

    assert sim.producer.on(topics.DLQ) == []
    assert sim.producer.on(topics.EVALUATIONS) == []
    declines = sim.producer.on(topics.UPDATES)
    assert [type(m) for m, _ in declines] == [UpdateDeclined, UpdateDeclined]
    for message, key in declines:
        assert isinstance(message, UpdateDeclined) and key == str(task_id).encode()
        assert message.reason == DeclineReason.NO_MODEL and message.producer == "simulator"
        signing.verify(
            public_key=signing.public_key_bytes(sim.fleet.keys[message.device_id]),
            signature=message.signature,
            payload=signing.decline_payload(
                task_id=task_id,
                round_id=message.round_id,  # type: ignore[arg-type]
                device_id=message.device_id,
                round_number=1,
                model_version=1,
                reason=DeclineReason.NO_MODEL.value,
            ),
        )
    logged = [r for r in caplog.records if "uploaded model" in r.getMessage()]
    assert len(logged) == 1  # once per task


async def test_late_and_data_less_evaluate_requests_send_nothing(tmp_path: Path) -> None:
    # Prepare: a fleet larger than the digits test split leaves some devices no held-out data.
    sim = simulator(tmp_path, devices=500)
    task_id = uuid4()
    sim.database.models[(task_id, 1)] = MODEL
    empty = next(i for i in range(500) if len(sim.fleet.held_out_of("digits", i)) == 0)

    # Execute
    await sim.deliver(evaluate_request(f"f-{empty:04d}", task_id))
    await sim.deliver(evaluate_request(f"f-{(empty + 1) % 500:04d}", task_id, seconds=-1))
    await sim.deliver(evaluate_request("someone-else", task_id))

    # Assert: nothing sent, nothing dead-lettered.
    assert sim.producer.sent == []


def built_in_request(device_id: str, task_id: UUID, **changes: Any) -> TrainRequested:
    return train_request(device_id, task_id).model_copy(
        update={"model_architecture": ModelArchitecture.MLP, "dataset": "digits", **changes}
    )


def record_of(message: Envelope) -> ConsumerRecord:
    value = codec.encode(message)
    return ConsumerRecord("t", 0, 0, 0, 0, b"k", value, None, 1, len(value), [])


async def test_a_batch_of_train_requests_is_answered_once_and_marked_in_one_transaction(
    tmp_path: Path,
) -> None:
    # Prepare: four devices asked in one round, one of them asked twice (a redelivery).
    sim = simulator(tmp_path, devices=4)
    task_id = uuid4()
    sim.database.models[(task_id, 1)] = MODEL
    asked = [built_in_request(f"f-{i:04d}", task_id) for i in range(4)]
    items = [(m, record_of(m)) for m in [*asked, asked[0]]]

    # Execute
    answers = await sim.fleet.handle_batch(items)
    again = await sim.fleet.handle_batch(items)

    # Assert: one signed update per device, all marked processed at once, outcomes kept.
    assert answers == [None] * 5 and again == [None] * 5
    updates = sim.producer.on(topics.UPDATES)
    assert sorted(m.device_id for m, _ in updates) == [f"f-{i:04d}" for i in range(4)]
    for message, key in updates:
        assert key == str(task_id).encode()
        device = message.device_id  # type: ignore[attr-defined]
        signing.verify(
            public_key=signing.public_key_bytes(sim.fleet.keys[device]),
            signature=message.signature,  # type: ignore[attr-defined]
            payload=signing.update_payload(
                task_id=task_id,
                round_id=message.round_id,  # type: ignore[arg-type]
                device_id=device,
                round_number=1,
                model_version=1,
                num_examples=message.num_examples,  # type: ignore[attr-defined]
                update=message.update,  # type: ignore[attr-defined]
            ),
        )
    assert {m.message_id for m in asked} <= sim.database.processed
    assert sim.database.transactions == 1
    assert len(sim.database.rows["simulator.trained"]) == 4
    assert [row[3] for row in sim.database.rows["simulator.outcomes"]] == ["completed"] * 4


async def test_a_batch_declines_for_unavailable_devices_and_stays_silent_for_failed_ones(
    tmp_path: Path,
) -> None:
    # Prepare: nobody is available; then everybody crashes.
    (tmp_path / "t.json").write_text('{"period_s": 86400, "devices": [[[0, 1]]]}')
    unavailable = simulator(tmp_path / "a", devices=3, availability=str(tmp_path / "t.json"))
    crashing = simulator(tmp_path / "b", devices=3, failure_rate=1.0, failure_mix="crash:1")
    task_id = uuid4()
    for sim in (unavailable, crashing):
        sim.database.models[(task_id, 1)] = MODEL

    # Execute
    for sim in (unavailable, crashing):
        asked = [built_in_request(f"f-{i:04d}", task_id) for i in range(3)]
        assert await sim.fleet.handle_batch([(m, record_of(m)) for m in asked]) == [None] * 3

    # Assert: three signed declines (unavailable), then nothing at all (crashes), both counted.
    declines = unavailable.producer.on(topics.UPDATES)
    assert [(type(m), m.reason) for m, _ in declines] == [  # type: ignore[attr-defined]
        (UpdateDeclined, DeclineReason.UNAVAILABLE)
    ] * 3
    assert crashing.producer.on(topics.UPDATES) == []
    outcomes = [row[3] for row in crashing.database.rows["simulator.outcomes"]]
    assert outcomes == ["crash"] * 3
