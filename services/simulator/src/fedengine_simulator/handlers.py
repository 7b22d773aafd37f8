"""The simulator's shell: enrol the fleet, heartbeat, answer train requests with updates and
evaluate requests with evaluations.

In a round with secure aggregation a device sends no update.submitted: it keeps its flat
update in memory and runs SecAgg+ over fed.secagg, one stage per delivery the aggregator sends
it on fed.device.commands (feddevice.secure_rounds, around feddevice.secagg_device, the same
code the device runtime runs).

An evaluate request is scored by the device's client on its held-out share of the data set's
test split (core/held_out.py) and answered, signed with the device's key, on fed.evaluations
(feddevice.answer, as a real device answers). The simulator runs built-in models only: a task
on a user's uploaded model (no model_architecture, no dataset) is declined (NO_MODEL) when it
asks for training, and its evaluate requests get no answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeGuard
from uuid import UUID

import numpy as np
import psycopg
import torch
from aiokafka import ConsumerRecord
from prometheus_client import Counter
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedcommon import (
    background,
    codec,
    datasets,
    db,
    enrolment_tokens,
    kafka,
    models,
    signing,
    topics,
)
from fedcommon.constraints import MAX_SETTING
from fedcommon.errors import InvalidMessage, ProtocolViolation
from fedcommon.messages.v1 import (
    AnyMessage,
    DatasetName,
    DeclineReason,
    DeviceEnrolled,
    Envelope,
    EvaluateRequested,
    HeartbeatSent,
    ModelArchitecture,
    SecAggDelivered,
    TrainRequested,
)
from fedcommon.service import ServiceContext, ServiceParts
from feddevice import answer
from feddevice.array_client import ArrayTorchClient
from feddevice.client import FitResult
from feddevice.secure_rounds import SecureRounds
from feddevice.state import Identity
from feddevice.torch_training import train_local
from fedengine_simulator import identities
from fedengine_simulator.core import attacks, behaviour, fleet, held_out, profiles
from fedengine_simulator.settings import Settings

logger = logging.getLogger(__name__)

SCHEMA = "simulator"
PRODUCER = "simulator"
TRAINED = Counter("fedengine_simulator_updates_sent_total", "Updates sent by simulated devices")
SKIPPED = Counter("fedengine_simulator_requests_skipped_total", "Train requests skipped", ["why"])
EVALUATED = Counter(
    "fedengine_simulator_evaluations_sent_total", "Evaluations sent by simulated devices"
)
EVALUATIONS_SKIPPED = Counter(
    "fedengine_simulator_evaluations_skipped_total", "Evaluate requests not answered", ["why"]
)
DECLINED = Counter("fedengine_simulator_declines_sent_total", "Train requests declined", ["reason"])
FAILED = Counter(
    "fedengine_simulator_failures_total",
    "Selected devices that failed a round (core/behaviour.py), by kind",
    ["kind"],
)
POISONED = Counter(
    "fedengine_simulator_poisoned_updates_total", "Updates sent by malicious devices", ["attack"]
)
SECAGG_SENT = Counter(
    "fedengine_simulator_secagg_messages_total", "SecAgg+ stage messages sent", ["stage"]
)
SECAGG_DROPPED = Counter(
    "fedengine_simulator_secagg_dropouts_total",
    "Devices that left a secure round, by stage and cause",
    ["stage", "cause"],
)
SECAGG_IGNORED = Counter(
    "fedengine_simulator_secagg_ignored_total", "SecAgg+ deliveries that changed nothing", ["why"]
)


# Decisions remembered for redeliveries: many rounds' worth of a 10,000-device fleet.
_DECISIONS_KEPT = 100_000
_INSERT_TRAINED = (
    "INSERT INTO simulator.trained (round_id, device_id, task_id, round_number, num_examples, "
    "train_loss, duration_s) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_INSERT_OUTCOME = (
    "INSERT INTO simulator.outcomes (task_id, round_number, device_id, outcome, sim_s, "
    "compute_s, transfer_s, battery_pct, shard) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)


class SecAggMetrics:
    """The fleet's secure rounds, counted as Prometheus metrics (feddevice.secure_rounds)."""

    def sent(self, stage: int) -> None:
        SECAGG_SENT.labels(str(stage)).inc()

    def dropped(self, stage: int, cause: str) -> None:
        SECAGG_DROPPED.labels(str(stage), cause).inc()

    def ignored(self, why: str) -> None:
        SECAGG_IGNORED.labels(why).inc()


class Fleet:
    def __init__(self, context: ServiceContext, settings: Settings) -> None:
        self.context = context
        self.settings = settings
        self.devices = {
            d.device_id: d
            for d in fleet.layout(
                settings.fleet,
                settings.devices,
                settings.privacy_level,
                types=settings.type_mix,
                privacy_levels=settings.privacy_mix,
                seed=settings.seed,
            )
        }
        shard, shards = settings.shard_of
        # The devices this process enrols and heartbeats (all of them unless the fleet is
        # shared among processes).
        self.own = [d for d in self.devices.values() if d.index % shards == shard]
        self.clock = settings.clock
        self.failures = settings.failures
        # Each device's battery as last known, in simulated time (core/behaviour.py); the
        # latest simulated moment any request was at, for the heartbeats' battery and charging.
        self._battery = {
            d.index: behaviour.Battery(d.profile.initial_battery_pct, self.clock.start_s)
            for d in self.devices.values()
        }
        self._sim_now = self.clock.start_s
        self._decisions: dict[tuple[UUID, int, int], behaviour.Decision] = {}
        # Devices train one at a time (threads under the GIL made four at once slower than
        # one after another), whichever partition's batch they came in.
        self._training = asyncio.Lock()
        self._modules: dict[tuple[ModelArchitecture, str, int | None], nn.Module] = {}
        self._forward_flops: dict[tuple[DatasetName, ModelArchitecture, int | None], float] = {}
        self.keys = identities.load_or_create(
            settings.home / "simulator" / settings.fleet, list(self.devices)
        )
        # The latest version of each task's model asked for, parsed once for all devices.
        self._models: dict[tuple[UUID, int], answer.GlobalModel] = {}
        self._clients: dict[
            tuple[int, str, ModelArchitecture, int | None, bool], ArrayTorchClient
        ] = {}
        self._sequence = 0
        self._partitions: dict[str, list[np.ndarray]] = {}
        self._held_out: dict[str, list[np.ndarray]] = {}
        # Tasks on an uploaded model already logged (their requests are refused each time).
        self._uploaded_model_tasks: set[UUID] = set()
        self.secure = SecureRounds(
            self._publish,
            keys=self.keys,
            producer=PRODUCER,
            drop_policy=settings.secagg_drop_policy,
            counts=SecAggMetrics(),
        )
        self._warned_no_aggregator_key = False
        self.attack = settings.attack_spec
        self.attackers = attacks.choose_attackers(
            settings.devices, settings.malicious, attacks.attackers_rng(settings.seed)
        )
        if self.attackers:
            logger.warning(
                "fleet %s: %d malicious device(s) (%s, scale %g): %s",
                settings.fleet,
                len(self.attackers),
                self.attack.kind.value,
                self.attack.scale,
                ", ".join(f"{settings.fleet}-{i:04d}" for i in sorted(self.attackers)),
            )

    async def _publish(self, base: str, key: str, message: Envelope) -> None:
        await kafka.publish(
            self.context.producer, self.context.kafka, base, key=key, message=message
        )

    def partition_of(self, dataset: str, index: int) -> np.ndarray:
        if dataset not in self._partitions:
            data = datasets.load_dataset(dataset)
            self._partitions[dataset] = datasets.partition(
                data.y_train,
                num_clients=self.settings.devices,
                scheme=self.settings.partitioning,
                alpha=self.settings.alpha,
                seed=self.settings.seed,
                min_size=self.settings.partition_min_size,
            )
        return self._partitions[dataset][index]

    def held_out_of(self, dataset: str, index: int) -> np.ndarray:
        """The device's held-out indices into ``dataset``'s test split (core/held_out.py: a
        share of the test split mirroring its training partition class by class)."""
        if dataset not in self._held_out:
            data = datasets.load_dataset(dataset)
            self.partition_of(dataset, 0)  # the training shares it mirrors, cached
            self._held_out[dataset] = held_out.held_out_shares(
                data.y_train,
                self._partitions[dataset],
                data.y_test,
                rng=held_out.held_out_rng(self.settings.seed),
            )
        return self._held_out[dataset][index]

    def warm_up(self) -> None:
        """Load the data set, partition it (training and held-out shares) and run one training
        step, before enrolling.

        The first train request would otherwise pay for imports, data loading and torch's first
        backward pass (about 2 s here), and a device that answers late may miss its deadline.
        """
        torch.set_num_threads(1)
        dataset = datasets.load_dataset(self.settings.dataset)
        indices = self.partition_of(self.settings.dataset, 0)
        self.held_out_of(self.settings.dataset, 0)
        model = models.build_model(
            ModelArchitecture.MLP,
            input_shape=dataset.input_shape,
            num_classes=dataset.num_classes,
            seed=0,
        )
        train_local(
            model,
            dataset.x_train[indices],
            dataset.y_train[indices],
            epochs=1,
            batch_size=8,
            learning_rate=0.01,
            seed=0,
        )

    async def _publish_all(self, base: str, messages: list[tuple[str, Envelope]]) -> None:
        """Send many records and wait for all their acknowledgements together: one awaited
        record per device (about 7 ms each) made a 10,000-device heartbeat cycle outlast the
        registry's 15 s offline limit. The producer batches what is queued."""
        topic = topics.topic_name(self.context.kafka.topic_prefix, base)
        pending = [
            await self.context.producer.send(topic, codec.encode(message), key=key.encode())
            for key, message in messages
        ]
        await asyncio.gather(*pending)

    async def enrol(self) -> None:
        await self._publish_all(
            topics.DEVICES,
            [
                (
                    device.device_id,
                    enrolment_tokens.sign_enrolment(
                        DeviceEnrolled(
                            producer=PRODUCER,
                            device_id=device.device_id,
                            device_name=f"simulated {device.device_type.value} {device.index}",
                            device_type=device.device_type,
                            privacy_level=device.privacy_level,
                            capabilities=device.capabilities,
                            public_key=signing.public_key_bytes(self.keys[device.device_id]),
                        ),
                        device_key=self.keys[device.device_id],
                        token=self.settings.token,
                    ),
                )
                for device in self.own
            ],
        )
        logger.info(
            "enrolled %d devices of fleet %s (shard %s)",
            len(self.own),
            self.settings.fleet,
            self.settings.shard,
        )

    async def heartbeats(self) -> None:
        await background.every("simulator.heartbeats", self.settings.heartbeat_s, self.heartbeat)

    async def heartbeat(self) -> None:
        """Send one signed heartbeat per device, with its simulated battery and charging (as
        of the latest simulated moment of any round); the sequence is the clock in
        milliseconds, so it grows across restarts and retries without stored state."""
        sequence = max(self._sequence + 1, int(time.time() * 1000))
        self._sequence = sequence
        beats: list[tuple[str, Envelope]] = []
        for device in self.own:
            key = self.keys[device.device_id]
            sent_at = datetime.now(UTC)
            payload = signing.heartbeat_payload(
                device_id=device.device_id,
                sequence=sequence,
                sent_at_us=int(sent_at.timestamp() * 1_000_000),
            )
            battery_pct: float | None = None
            charging: bool | None = None
            if device.profile.has_battery:
                battery = behaviour.battery_at(
                    device.profile, self._battery[device.index], self._sim_now
                )
                battery_pct = round(battery.pct, 1)
                charging = behaviour.charging_at(device.profile, self._sim_now)
            beats.append(
                (
                    device.device_id,
                    HeartbeatSent(
                        producer=PRODUCER,
                        device_id=device.device_id,
                        sequence=sequence,
                        sent_at=sent_at,
                        signature=key.sign(payload),
                        battery_pct=battery_pct,
                        charging=charging,
                    ),
                )
            )
        await self._publish_all(topics.DEVICES, beats)

    async def global_model(self, request: TrainRequested | EvaluateRequested) -> answer.GlobalModel:
        cache_key = (request.task_id, request.model_version)
        if cache_key not in self._models:
            async with self.context.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT data FROM coordinator.models_public "
                    "WHERE task_id = %s AND version = %s",
                    (request.task_id, request.model_version),
                )
                row = await cursor.fetchone()
            if row is None:
                raise ProtocolViolation(
                    f"model v{request.model_version} of task {request.task_id} not in the store"
                )
            data = bytes(row[0])
            if models.sha256_hex(data) != request.model_sha256:
                raise ProtocolViolation("model bytes do not match the announced sha256")
            self._models = {k: v for k, v in self._models.items() if k[0] != request.task_id}
            self._models[cache_key] = answer.GlobalModel(data)
        return self._models[cache_key]

    def _on_uploaded_model(self, request: TrainRequested | EvaluateRequested) -> bool:
        """Whether ``request`` is of a task on a user's uploaded model, which the simulator
        cannot run (it runs built-in models on built-in data only); logged once per task."""
        if request.model_architecture is not None and request.dataset is not None:
            return False
        if request.task_id not in self._uploaded_model_tasks:
            self._uploaded_model_tasks.add(request.task_id)
            logger.warning(
                "fleet %s: task %s trains a user's uploaded model, which simulated devices "
                "cannot run: its train requests are declined and its evaluate requests not "
                "answered",
                self.settings.fleet,
                request.task_id,
            )
        return True

    async def handle(self, message: AnyMessage, record: ConsumerRecord) -> None:
        if isinstance(message, SecAggDelivered):
            if message.device_id in self.devices:
                await self.secure.handle(message)
            return
        if isinstance(message, EvaluateRequested):
            if message.device_id in self.devices:
                await self.evaluate(message, self.devices[message.device_id])
            return
        if not isinstance(message, TrainRequested) or message.device_id not in self.devices:
            return
        if datetime.now(UTC) >= message.deadline:
            SKIPPED.labels("past_deadline").inc()
            return
        if self._on_uploaded_model(message):
            SKIPPED.labels("uploaded_model").inc()
            await self.decline(message, self.devices[message.device_id], DeclineReason.NO_MODEL)
            return
        if message.dataset != self.settings.dataset:
            # A device holds its fleet's data set only (SIMULATOR_DATASET); to a task on another
            # one it is a device without data, and sends nothing, as a real device would not.
            SKIPPED.labels("other_dataset").inc()
            logger.warning(
                "device %s holds %s, not %s: train request of task %s skipped",
                message.device_id,
                self.settings.dataset,
                message.dataset,
                message.task_id,
            )
            return
        if message.round_id is None:
            raise ProtocolViolation("train request without round_id")
        if message.secure_aggregation is not None and self.settings.token.aggregator_key is None:
            # Its deliveries could not be verified: the device cannot take part.
            SKIPPED.labels("no_aggregator_key").inc()
            if not self._warned_no_aggregator_key:
                self._warned_no_aggregator_key = True
                logger.warning(
                    "fleet %s: its enrolment token carries no aggregator key, so its devices "
                    "cannot take part in secure rounds (issue a new token)",
                    self.settings.fleet,
                )
            return
        async with self.context.pool.connection() as conn:
            if await db.is_processed(conn, schema=SCHEMA, message_id=message.message_id):
                SKIPPED.labels("duplicate").inc()
                return
        device = self.devices[message.device_id]
        pending = self.secure.pending(message.round_id, device.device_id)
        if pending is not None:
            # Redelivered after stage 1 left but before the request was marked processed:
            # never train again (new keys would be a second, different stage 1).
            await self.secure.step(pending, pending.advertise())
            async with self.context.pool.connection() as conn:
                await db.mark_processed(conn, schema=SCHEMA, message_id=message.message_id)
            return
        received = time.time()
        decision = await self.decide(message, device)
        if decision.outcome != behaviour.Outcome.COMPLETED:
            await self.fail(message, device, decision)
            return
        trained = await self.train(message, device)
        if trained is None:
            async with self.context.pool.connection() as conn:
                await db.mark_processed(conn, schema=SCHEMA, message_id=message.message_id)
            return
        result, duration, delta = trained
        # It answers when its simulated download, training and upload would have ended.
        answer_at = self._answer_at(message, decision, received=received)
        await asyncio.sleep(max(0.0, answer_at - time.time()))
        if message.secure_aggregation is None:
            await self.submit_update(
                message,
                device=device,
                result=result,
                duration=duration,
                delta=delta,
            )
        else:
            await self.secure.start(
                message,
                round_id=message.round_id,
                assignment=message.secure_aggregation,
                device_id=device.device_id,
                num_examples=result.num_examples,
                delta=delta,
            )
        # Marked processed only once the update (or stage 1) is on the log: a crash before this
        # line means the request is redelivered and trained again, and the aggregator drops the
        # duplicate.
        async with self.context.pool.connection() as conn, conn.transaction():
            await db.mark_processed(conn, schema=SCHEMA, message_id=message.message_id)
            await conn.execute(
                _INSERT_TRAINED,
                (
                    message.round_id,
                    device.device_id,
                    message.task_id,
                    message.round_number,
                    result.num_examples,
                    result.metrics.get("train_loss", 0.0),
                    duration,
                ),
            )
            await self._record(conn, message, device, decision)

    def _batchable(self, message: AnyMessage) -> TypeGuard[TrainRequested]:
        """Whether ``handle_batch`` answers ``message`` itself: a train request of a round in
        the clear, for one of this fleet's devices, on its data set's built-in model."""
        return (
            isinstance(message, TrainRequested)
            and message.device_id in self.devices
            and message.secure_aggregation is None
            and message.round_id is not None
            and message.model_architecture is not None
            and message.dataset == self.settings.dataset
        )

    async def handle_batch(
        self, items: Sequence[tuple[AnyMessage, ConsumerRecord]]
    ) -> list[InvalidMessage | None]:
        """Answer train requests fetched together (kafka.Batching): one duplicate check for
        all, the devices trained one after another, each answer sent at its simulated time
        without waiting for the broker's acknowledgement of the one before, and one
        transaction marking them all processed once every answer is on the log. One record
        at a time had cost a query, an awaited publish and a transaction per device, more
        than its training. A request it does not take (a secure round, another data set, an
        uploaded model) goes through ``handle``."""
        answers: list[InvalidMessage | None] = [None] * len(items)
        batch: list[tuple[int, TrainRequested, fleet.SimulatedDevice]] = []
        for i, (message, record) in enumerate(items):
            if self._batchable(message):
                batch.append((i, message, self.devices[message.device_id]))
                continue
            try:
                await self.handle(message, record)
            except InvalidMessage as exc:
                answers[i] = exc
        if not batch:
            return answers
        received = time.time()
        async with self.context.pool.connection() as conn:
            done = await db.processed_among(
                conn, schema=SCHEMA, message_ids=[m.message_id for _, m, _ in batch]
            )
        sends: list[asyncio.Task[None]] = []
        handled: list[UUID] = []
        trained_rows: list[tuple[object, ...]] = []
        outcome_rows: list[tuple[object, ...]] = []
        try:
            for i, message, device in batch:
                if message.message_id in done:
                    SKIPPED.labels("duplicate").inc()
                    continue
                done.add(message.message_id)  # delivered twice in one batch: answered once
                if datetime.now(UTC) >= message.deadline:
                    SKIPPED.labels("past_deadline").inc()
                    continue
                try:
                    decision = await self.decide(message, device)
                except InvalidMessage as exc:
                    answers[i] = exc
                    continue
                handled.append(message.message_id)
                outcome_rows.append(self._outcome_row(message, device, decision))
                identity = Identity(device.device_id, self.keys[device.device_id])
                key = str(message.task_id)
                if decision.outcome == behaviour.Outcome.UNAVAILABLE:
                    reason = DeclineReason.UNAVAILABLE
                    decline = answer.signed_decline(message, identity, reason, producer=PRODUCER)
                    sends.append(self._send_at(0.0, topics.UPDATES, key, decline))
                    DECLINED.labels(reason.value).inc()
                    continue
                if decision.outcome != behaviour.Outcome.COMPLETED:
                    FAILED.labels(decision.outcome.value).inc()
                    continue
                trained = await self.train(message, device)
                if trained is None:
                    continue
                result, duration, delta = trained
                update = answer.signed_update(
                    message, identity, delta, result, duration_s=duration, producer=PRODUCER
                )
                answer_at = self._answer_at(message, decision, received=received)
                sends.append(self._send_at(answer_at, topics.UPDATES, key, update))
                TRAINED.inc()
                trained_rows.append(
                    (
                        message.round_id,
                        device.device_id,
                        message.task_id,
                        message.round_number,
                        result.num_examples,
                        result.metrics.get("train_loss", 0.0),
                        duration,
                    )
                )
            await asyncio.gather(*sends)
        except BaseException:
            for send in sends:
                send.cancel()
            raise
        if not handled:
            return answers
        # Marked processed only once every answer is on the log: a crash before this means
        # the requests come again, and the aggregator drops what it already counted.
        async with self.context.pool.connection() as conn, conn.transaction():
            await db.mark_all_processed(conn, schema=SCHEMA, message_ids=handled)
            async with conn.cursor() as cursor:
                if trained_rows:
                    await cursor.executemany(_INSERT_TRAINED, trained_rows)
                if outcome_rows:
                    await cursor.executemany(_INSERT_OUTCOME, outcome_rows)
        return answers

    def _answer_at(
        self, message: TrainRequested, decision: behaviour.Decision, *, received: float
    ) -> float:
        """When the device answers: its simulated seconds (scaled) after the request was sent,
        by the coordinator's stamp, or after it arrived if that is earlier (a clock behind the
        coordinator's must not hold answers back past the deadline)."""
        return min(message.sent_at.timestamp(), received) + self.clock.wall_s(decision.sim_s)

    def _send_at(self, wall: float, base: str, key: str, message: Envelope) -> asyncio.Task[None]:
        """Send ``message`` at wall-clock time ``wall`` (at once if past), without holding up
        the caller; the task ends when the broker has acknowledged it."""

        async def send() -> None:
            await asyncio.sleep(max(0.0, wall - time.time()))
            topic = topics.topic_name(self.context.kafka.topic_prefix, base)
            acknowledged = await self.context.producer.send(
                topic, codec.encode(message), key=key.encode()
            )
            await acknowledged

        return asyncio.create_task(send())

    def forward_flops(self, request: TrainRequested) -> float:
        """One example's forward-pass FLOPs of the built-in model (counted once by torch)."""
        dataset_name, architecture = request.dataset, request.model_architecture
        if dataset_name is None or architecture is None:
            raise ProtocolViolation("train request of a task on an uploaded model")
        key = (dataset_name, architecture, request.model_hidden)
        if key not in self._forward_flops:
            dataset = datasets.load_dataset(dataset_name)
            model = models.build_model(
                architecture,
                input_shape=dataset.input_shape,
                num_classes=dataset.num_classes,
                seed=0,
                hidden=request.model_hidden,
            )
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(torch.from_numpy(dataset.x_train[:1]))
            self._forward_flops[key] = float(counter.get_total_flops())
        return self._forward_flops[key]

    async def decide(
        self, message: TrainRequested, device: fleet.SimulatedDevice
    ) -> behaviour.Decision:
        """The device's fate in this round, from its profile, its battery and the simulated
        clock (core/behaviour.py), drawn from the fleet's seed, the task's, the round's
        number and the device's index: the same seed gives the same fates."""
        if message.dataset is None or message.model_architecture is None:
            raise ProtocolViolation("train request of a task on an uploaded model")
        model = await self.global_model(message)
        size = sum(array.nbytes for array in model.parameters.values())
        # DP-SGD's steps of a Poisson share of the examples are so many passes over them.
        dp = message.local_dp
        epochs = message.local_epochs if dp is None else dp.steps * dp.sample_rate
        work = behaviour.Work(
            examples=len(self.partition_of(message.dataset, device.index)),
            epochs=epochs,
            forward_flops=self.forward_flops(message),
            download_bytes=size,
            upload_bytes=size,
        )
        remembered = (message.task_id, message.round_number, device.index)
        if remembered in self._decisions:
            # Decided before (a redelivery, or a batch retried after an outage): the same fate,
            # and the battery drained once.
            return self._decisions[remembered]
        window = self.clock.window_s(sent_at=message.sent_at, deadline=message.deadline)
        at_s = self.clock.round_start_s(message.round_number, window)
        if self.settings.trace is not None:
            available_p = float(self.settings.trace.available(device.index, at_s))
        elif self.settings.availability == "diurnal":
            available_p = device.profile.kind.availability[int((at_s % profiles.DAY_S) // 3600)]
        else:
            available_p = 1.0
        rng = np.random.default_rng(
            [self.settings.seed, message.seed, message.round_number, device.index, 0xBE4A]
        )
        decision = behaviour.decide(
            device.profile,
            battery=self._battery[device.index],
            at_s=at_s,
            work=work,
            budget_s=window,
            available_p=available_p,
            failures=self.failures,
            rng=rng,
        )
        self._battery[device.index] = decision.battery
        self._sim_now = max(self._sim_now, at_s)
        self._decisions[remembered] = decision
        if len(self._decisions) > _DECISIONS_KEPT:
            del self._decisions[next(iter(self._decisions))]
        return decision

    async def fail(
        self, message: TrainRequested, device: fleet.SimulatedDevice, decision: behaviour.Decision
    ) -> None:
        """Act out a device that does not complete the round: an unavailable one declines at
        once (in a secure round it simply does not start); one that fails sends nothing, as a
        crashed, disconnected, flat or late device does not."""
        if decision.outcome == behaviour.Outcome.UNAVAILABLE:
            await self.decline(message, device, DeclineReason.UNAVAILABLE, decision=decision)
            return
        FAILED.labels(decision.outcome.value).inc()
        async with self.context.pool.connection() as conn, conn.transaction():
            await db.mark_processed(conn, schema=SCHEMA, message_id=message.message_id)
            await self._record(conn, message, device, decision)

    def _outcome_row(
        self, message: TrainRequested, device: fleet.SimulatedDevice, decision: behaviour.Decision
    ) -> tuple[object, ...]:
        return (
            message.task_id,
            message.round_number,
            device.device_id,
            decision.outcome.value,
            decision.sim_s,
            decision.compute_s,
            decision.transfer_s,
            decision.battery.pct,
            self.settings.shard,
        )

    async def _record(
        self,
        conn: psycopg.AsyncConnection,
        message: TrainRequested,
        device: fleet.SimulatedDevice,
        decision: behaviour.Decision,
    ) -> None:
        await conn.execute(_INSERT_OUTCOME, self._outcome_row(message, device, decision))

    async def decline(
        self,
        message: TrainRequested,
        device: fleet.SimulatedDevice,
        reason: DeclineReason,
        *,
        decision: behaviour.Decision | None = None,
    ) -> None:
        """Send the device's signed update.declined for ``reason``, once per request (a
        secure round takes no decline: the device simply does not start it)."""
        if message.round_id is None:
            raise ProtocolViolation("train request without round_id")
        async with self.context.pool.connection() as conn:
            if await db.is_processed(conn, schema=SCHEMA, message_id=message.message_id):
                SKIPPED.labels("duplicate").inc()
                return
        if message.secure_aggregation is None:
            decline = answer.signed_decline(
                message,
                Identity(device.device_id, self.keys[device.device_id]),
                reason,
                producer=PRODUCER,
            )
            await self._publish(topics.UPDATES, str(message.task_id), decline)
            DECLINED.labels(reason.value).inc()
        async with self.context.pool.connection() as conn, conn.transaction():
            await db.mark_processed(conn, schema=SCHEMA, message_id=message.message_id)
            if decision is not None:
                await self._record(conn, message, device, decision)

    async def evaluate(self, message: EvaluateRequested, device: fleet.SimulatedDevice) -> None:
        """Score the global model version on the device's held-out data and send the signed
        evaluation, as a real device's runtime would. Whatever keeps it from answering (past
        the deadline, an uploaded model, another data set, no held-out data, a result that
        cannot be sent) sends nothing: there is no decline for an evaluation, the
        coordinator's deadline counts the device out."""
        if datetime.now(UTC) >= message.deadline:
            EVALUATIONS_SKIPPED.labels("past_deadline").inc()
            return
        if self._on_uploaded_model(message):
            EVALUATIONS_SKIPPED.labels("uploaded_model").inc()
            return
        if message.dataset != self.settings.dataset or message.model_architecture is None:
            EVALUATIONS_SKIPPED.labels("other_dataset").inc()
            logger.warning(
                "device %s holds %s, not %s: evaluate request of task %s skipped",
                device.device_id,
                self.settings.dataset,
                message.dataset,
                message.task_id,
            )
            return
        async with self.context.pool.connection() as conn:
            if await db.is_processed(conn, schema=SCHEMA, message_id=message.message_id):
                EVALUATIONS_SKIPPED.labels("duplicate").inc()
                return
        model = await self.global_model(message)
        client = self.client_for(device, message)
        config = answer.config_for_evaluation(message)
        try:
            async with self._training:
                result = await asyncio.to_thread(client.evaluate, dict(model.parameters), config)
            evaluation = answer.signed_evaluation(
                message,
                Identity(device.device_id, self.keys[device.device_id]),
                result,
                producer=PRODUCER,
            )
        except Exception as exc:  # no held-out data, a diverged model: nothing to send
            EVALUATIONS_SKIPPED.labels("not_sent").inc()
            logger.warning(
                "device %s: evaluation %s of task %s not sent (%s: %s)",
                device.device_id,
                message.evaluation_id,
                message.task_id,
                type(exc).__name__,
                exc,
            )
        else:
            if datetime.now(UTC) < message.deadline:
                await self._publish(topics.EVALUATIONS, str(message.task_id), evaluation)
                EVALUATED.inc()
            else:
                EVALUATIONS_SKIPPED.labels("late").inc()
        # Marked processed once the evaluation is on the log (or will never be): a crash
        # before this line evaluates again, and the coordinator keeps one answer per device.
        async with self.context.pool.connection() as conn:
            await db.mark_processed(conn, schema=SCHEMA, message_id=message.message_id)

    def _shared_model(
        self, architecture: ModelArchitecture, dataset: datasets.Dataset, hidden: int | None
    ) -> Callable[[], nn.Module]:
        """One module per built-in model for every device of the fleet: a client loads the
        global parameters into it before each fit or evaluation (every tensor is overwritten),
        and devices train and evaluate one at a time (``_training``), so none sees another's
        weights. Building a module per request cost more than a small model's training (torch's
        seeding alone about 0.7 ms)."""
        key = (architecture, dataset.name, hidden)
        if key not in self._modules:
            self._modules[key] = models.build_model(
                architecture,
                input_shape=dataset.input_shape,
                num_classes=dataset.num_classes,
                seed=0,
                hidden=hidden,
            )
        module = self._modules[key]
        return lambda: module

    def client_for(
        self, device: fleet.SimulatedDevice, request: TrainRequested | EvaluateRequested
    ) -> ArrayTorchClient:
        """The device's client: the built-in model's, on its partition (labels flipped for a
        label-flipping attacker; features standardised if the task asks), evaluating on its
        held-out share of the test split (with honest labels; none when its share is empty).
        Kept per device and built-in model."""
        dataset_name, architecture = request.dataset, request.model_architecture
        if dataset_name is None or architecture is None:
            raise ProtocolViolation("a request of a task on an uploaded model")
        hidden, standardize = request.model_hidden, request.standardize
        key = (device.index, dataset_name, architecture, hidden, standardize)
        client = self._clients.get(key)
        if client is None:
            dataset = datasets.load_prepared(dataset_name, standardize=standardize)
            indices = self.partition_of(dataset_name, device.index)
            labels = dataset.y_train[indices]
            if device.index in self.attackers:
                labels = attacks.flip_labels(labels, dataset.num_classes, self.attack)
            test = self.held_out_of(dataset_name, device.index)
            client = ArrayTorchClient(
                self._shared_model(architecture, dataset, hidden),
                dataset.x_train[indices],
                labels,
                dataset.x_test[test] if len(test) else None,
                dataset.y_test[test] if len(test) else None,
            )
            self._clients[key] = client
        return client

    async def train(
        self, message: TrainRequested, device: fleet.SimulatedDevice
    ) -> tuple[FitResult, float, list[np.ndarray]] | None:
        """Run the device's client, as a real device's runtime would; return its result, the
        duration and the (maybe poisoned) update, or None when training diverged (there is
        nothing worth sending)."""
        if message.dataset is None or message.model_architecture is None:
            raise ProtocolViolation("train request of a task on an uploaded model")
        model = await self.global_model(message)
        client = self.client_for(device, message)
        config = {
            **answer.config_for(message),
            # The simulator's seeds, from the fleet's device index (runs repeat as before).
            "seed": message.seed * 1_000_003 + message.round_number * 7919 + device.index,
        }

        def fit() -> tuple[FitResult, float]:
            began = time.perf_counter()
            result = client.fit(dict(model.parameters), config)
            return result, time.perf_counter() - began

        async with self._training:
            result, duration = await asyncio.to_thread(fit)
        loss = result.metrics.get("train_loss", 0.0)
        try:
            if not (math.isfinite(loss) and abs(loss) <= MAX_SETTING):
                raise answer.FitRefused(f"train loss {loss}")
            delta = answer.delta_of(model, result)
        except answer.FitRefused as exc:
            # Training diverged: there is no update worth sending (it would be refused as
            # non-finite), and the request must not come back to train again.
            SKIPPED.labels("diverged").inc()
            logger.warning(
                "device %s diverged in round %s (%s); no update",
                device.device_id,
                message.round_number,
                exc,
            )
            return None
        if device.index in self.attackers:
            rng = attacks.update_rng(
                fleet_seed=self.settings.seed,
                task_seed=message.seed,
                round_number=message.round_number,
                device_index=device.index,
            )
            delta = list(attacks.poison(delta, self.attack, rng))
            POISONED.labels(self.attack.kind.value).inc()
        return result, duration, delta

    async def submit_update(
        self,
        message: TrainRequested,
        *,
        device: fleet.SimulatedDevice,
        result: FitResult,
        duration: float,
        delta: list[np.ndarray],
    ) -> None:
        """Send the update in the clear (a round without secure aggregation)."""
        update = answer.signed_update(
            message,
            Identity(device.device_id, self.keys[device.device_id]),
            delta,
            result,
            duration_s=duration,
            producer=PRODUCER,
        )
        await self._publish(topics.UPDATES, str(message.task_id), update)
        TRAINED.inc()


def build(context: ServiceContext, settings: Settings) -> ServiceParts:
    simulated = Fleet(context, settings)

    async def run_fleet() -> None:
        await asyncio.to_thread(simulated.warm_up)
        await background.until_done("simulator.enrol", simulated.enrol)
        await simulated.heartbeats()

    return ServiceParts(
        handle=simulated.handle,
        background=(run_fleet,),
        batching=kafka.Batching(frozenset({"train.requested"}), simulated.handle_batch),
    )
