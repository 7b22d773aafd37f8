"""The device runtime's shell: identity, enrolment, heartbeats, train and evaluate requests.

One device per process. It reads only its own partition of fed.device.commands (commands are
keyed by device id, so a device's all land in one partition: no consumer-group join, and a
device reads a fraction of the topic), checks that each command is signed by the service that
may send it (the coordinator's and aggregator's keys come with the enrolment token), and
answers a train request with the update its user code trained, and an evaluate request with
the evaluation its user code made, each signed with its own key.

Restart safety: the answer is kept on disk (feddevice.state.SentResults) before it is sent,
and the request's offset is committed after; a request redelivered after a crash is answered
with the same record (same message id), which the aggregator (or the coordinator) counts once.
Outages: the broker and the gateway are retried with backoff; a heartbeat lost in an outage is
simply the next one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.partitioner import DefaultPartitioner

from fedcommon import codec, enrolment_tokens, signing, topics, trust
from fedcommon.backoff import Backoff
from fedcommon.errors import InvalidMessage
from fedcommon.kafka_client import client_options
from fedcommon.messages.v1 import (
    AnyMessage,
    DeclineReason,
    DeviceCapabilities,
    DeviceEnrolled,
    DeviceType,
    Envelope,
    EvaluateRequested,
    HeartbeatSent,
    NetworkKind,
    PrivacyLevel,
    SecAggDelivered,
    TrainRequested,
)
from fedcommon.settings import KafkaSettings
from feddevice import answer
from feddevice.client import Client, FitResult
from feddevice.model_fetch import FetchRefused, ModelFetcher
from feddevice.secure_rounds import SecureRounds
from feddevice.state import Identity, SentResults, load_or_create_identity

logger = logging.getLogger("feddevice")
# A command signed longer ago than this is refused as a replay (its deadline is long past).
COMMAND_WINDOW = timedelta(hours=1)
# Kept in place of an update for a secure round the device started: its SecAgg+ keys live in
# memory only, so after a restart the device has left that round (the protocol tolerates it)
# and must not start it again with new keys.
SECURE_ROUND_STARTED = b"secure-round-started"
# How long before a round's deadline a device gives up on a fit that has not returned, so that
# its decline still arrives in time (at most a fifth of the time it had).
DECLINE_MARGIN_S = 2.0


@dataclass(frozen=True)
class DeviceConfig:
    """Where the device keeps its state, what it connects to, and how it presents itself."""

    state_dir: Path
    gateway_url: str
    kafka: KafkaSettings
    # Enrols the device itself (fedcommon.enrolment_tokens); None: an operator enrolled it
    # through the gateway, and ``coordinator_key`` must then be given.
    token: enrolment_tokens.EnrolmentToken | None = None
    coordinator_key: bytes | None = None
    aggregator_key: bytes | None = None
    device_id: str | None = None
    device_name: str | None = None
    device_type: DeviceType = DeviceType.DESKTOP
    privacy_level: PrivacyLevel = PrivacyLevel.NONE
    capabilities: DeviceCapabilities | None = None
    heartbeat_s: float = 5.0
    gateway_verify: bool | str = True
    # The longest one model download may take before it is tried again.
    fetch_try_s: float = 15.0
    # The link the device is on, where whoever runs it knows (a phone app does; a Python
    # process cannot tell Wi-Fi from cellular by itself). Sent with every heartbeat.
    network: NetworkKind | None = None

    def service_keys(self) -> dict[str, bytes]:
        coordinator = self.coordinator_key or (self.token and self.token.coordinator_key)
        if not coordinator:
            raise ValueError("the coordinator's public key is needed: give a token or the key")
        keys = {"coordinator": coordinator}
        aggregator = self.aggregator_key or (self.token and self.token.aggregator_key)
        if aggregator:
            keys["aggregator"] = aggregator
        return keys


def command_group(device_id: str) -> str:
    """The consumer group (before the topic prefix) whose committed offset is this device's
    place in the command topic; deployments with ACLs grant the devices' user ``device.*``."""
    return f"device.{device_id}"


def power() -> tuple[float | None, bool | None]:
    """Battery level and whether it charges, where the platform tells (psutil, when installed
    and the machine has a battery), else (None, None)."""
    try:
        import psutil
    except ImportError:
        return None, None
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    if battery is None:
        return None, None
    plugged = battery.power_plugged
    return float(min(max(battery.percent, 0.0), 100.0)), None if plugged is None else bool(plugged)


class DeviceRuntime:
    def __init__(self, config: DeviceConfig, client: Client) -> None:
        self.config = config
        self.client = client
        self.identity: Identity = load_or_create_identity(config.state_dir, config.device_id)
        self.sent = SentResults(config.state_dir)
        self.verifier = trust.Verifier(
            public_keys=config.service_keys(),
            prefix=config.kafka.topic_prefix,
            window=COMMAND_WINDOW,
        )
        self.producer = AIOKafkaProducer(
            **client_options(config.kafka),
            client_id=f"feddevice-{self.identity.device_id}",
            acks="all",
            max_request_size=config.kafka.max_message_bytes,
        )
        self.fetcher = ModelFetcher(
            config.gateway_url,
            self.identity,
            verify=config.gateway_verify,
            try_s=config.fetch_try_s,
        )
        self.secure = SecureRounds(
            self._send_message,
            keys={self.identity.device_id: self.identity.key},
            producer=answer.PRODUCER,
        )
        self._sequence = 0
        self.commands = topics.topic_name(config.kafka.topic_prefix, topics.DEVICE_COMMANDS)
        # User code runs on a thread of its own, one call (fit or evaluate) at a time (a hung
        # call holds it, and later requests are declined rather than piling up threads).
        self._fit_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="feddevice-fit"
        )
        self._fitting: asyncio.Future[Any] | None = None

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, base: str, key: str, value: bytes, *, until: datetime | None) -> bool:
        """Send one record, retrying through broker outages until ``until`` (None: forever).
        Returns False when ``until`` passed first."""
        backoff = Backoff(first=0.2, cap=5.0)
        topic = topics.topic_name(self.config.kafka.topic_prefix, base)
        while True:
            try:
                await self.producer.send_and_wait(topic, value, key=key.encode())
                return True
            except KafkaError as exc:
                if until is not None and datetime.now(UTC) >= until:
                    logger.error("could not send to %s before %s: %s", base, until, exc)
                    return False
                delay = backoff.next_delay()
                logger.warning("broker unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _send_message(self, base: str, key: str, message: Envelope) -> None:
        await self._send(base, key, codec.encode(message), until=None)

    async def enrol(self) -> None:
        """Enrol with the token (at every start: the registry keeps the device as it is when
        the key is the one it knows)."""
        token = self.config.token
        if token is None:
            logger.info("device %s: no enrolment token, an operator enrols it", self.device_id)
            return
        battery, _ = power()
        capabilities = self.config.capabilities or DeviceCapabilities(
            has_battery=battery is not None, battery_pct=battery if battery is not None else 100.0
        )
        message = enrolment_tokens.sign_enrolment(
            DeviceEnrolled(
                producer=answer.PRODUCER,
                device_id=self.device_id,
                device_name=self.config.device_name or f"{self.config.device_type.value} device",
                device_type=self.config.device_type,
                privacy_level=self.config.privacy_level,
                capabilities=capabilities,
                public_key=self.identity.public_key,
            ),
            device_key=self.identity.key,
            token=token,
        )
        await self._send(topics.DEVICES, self.device_id, codec.encode(message), until=None)
        logger.info("device %s: enrolment sent (fleet %s)", self.device_id, token.fleet)

    async def heartbeat(self) -> None:
        sequence = max(self._sequence + 1, time.time_ns() // 1_000_000)
        self._sequence = sequence
        sent_at = datetime.now(UTC)
        payload = signing.heartbeat_payload(
            device_id=self.device_id,
            sequence=sequence,
            sent_at_us=int(sent_at.timestamp() * 1_000_000),
        )
        battery, charging = power()
        message = HeartbeatSent(
            producer=answer.PRODUCER,
            device_id=self.device_id,
            sequence=sequence,
            sent_at=sent_at,
            battery_pct=battery,
            charging=charging,
            network=self.config.network,
            signature=self.identity.key.sign(payload),
        )
        # A heartbeat is worth sending only now: in an outage, the next one replaces it.
        await self._send(
            topics.DEVICES,
            self.device_id,
            codec.encode(message),
            until=sent_at + timedelta(seconds=self.config.heartbeat_s),
        )

    async def heartbeats(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception:
                logger.exception("heartbeat failed; the next one follows")
            await asyncio.sleep(self.config.heartbeat_s)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    # --- receiving -------------------------------------------------------------------------

    def refusal(self, record: ConsumerRecord, message: AnyMessage) -> str | None:
        """Why a decoded record addressed to this device must not be acted on, or None."""
        return self.verifier.refusal(
            topic=record.topic,
            key=record.key,
            value=record.value,
            headers=list(record.headers or ()),
            message_type=message.type,
            sent_at=message.sent_at,
            now=datetime.now(UTC),
        )

    async def handle(self, record: ConsumerRecord) -> None:
        if record.key != self.device_id.encode():
            return  # another device's command, in the same partition
        try:
            message = codec.decode(record.value)
            why = self.refusal(record, message)
        except InvalidMessage as exc:
            why = str(exc)
        if why is not None:
            logger.warning("device %s: command refused: %s", self.device_id, why)
            return
        if isinstance(message, SecAggDelivered) and message.device_id == self.device_id:
            # Signed by the aggregator (checked above against the key in the token).
            await self.secure.handle(message)
            return
        if isinstance(message, TrainRequested) and message.device_id == self.device_id:
            logger.info(
                "device %s: asked to train round %d of task %s on model v%d",
                self.device_id,
                message.round_number,
                message.task_id,
                message.model_version,
            )
            outcome = await self.train(message)
            logger.info(
                "device %s: round %d of task %s: %s",
                self.device_id,
                message.round_number,
                message.task_id,
                outcome,
            )
            return
        if isinstance(message, EvaluateRequested) and message.device_id == self.device_id:
            # Signed by the coordinator, like a train request (the trust matrix says only it
            # may send either; checked above).
            logger.info(
                "device %s: asked to evaluate model v%d of task %s (evaluation %s)",
                self.device_id,
                message.model_version,
                message.task_id,
                message.evaluation_id,
            )
            outcome = await self.evaluate(message)
            logger.info(
                "device %s: evaluation %s of task %s: %s",
                self.device_id,
                message.evaluation_id,
                message.task_id,
                outcome,
            )

    async def train(self, request: TrainRequested) -> str:
        """Answer one train request; return what happened, in words."""
        if request.round_id is None:
            return "refused: no round id"
        kept = self.sent.get(request.round_id)
        if kept == SECURE_ROUND_STARTED:
            return "left the secure round: its keys did not survive the restart"
        if kept is not None:
            # Answered before a restart: the same record again, never a second answer.
            sent = await self._send(topics.UPDATES, str(request.task_id), kept, until=None)
            return "resent the answer kept on disk" if sent else "resend failed"
        if datetime.now(UTC) >= request.deadline:
            return "skipped: past its deadline"
        if request.secure_aggregation is not None and "aggregator" not in self.verifier.public_keys:
            return "skipped: a secure round, and no aggregator key to check its deliveries"
        if request.local_dp is not None and not getattr(self.client, "supports_local_dp", False):
            # The privacy service charges the device for DP-SGD at these settings: a client
            # that cannot train so must not answer at all.
            return "skipped: local DP-SGD requested, and this client does not run it"
        try:
            data = await self.fetcher.fetch(
                request.task_id, request.model_version, request.model_sha256, until=request.deadline
            )
            model = answer.GlobalModel(data)
        except (FetchRefused, TimeoutError, ValueError, OSError) as exc:
            logger.error("device %s: no model: %s", self.device_id, exc)
            return await self.decline(request, DeclineReason.NO_MODEL, f"failed: {exc}")
        if self._fitting is not None and not self._fitting.done():
            # The last fit (or evaluate) never returned (its thread cannot be stopped): one
            # at a time.
            return await self.decline(
                request,
                DeclineReason.FIT_TIMEOUT,
                "failed: the previous fit or evaluate has still not returned",
            )
        began = time.perf_counter()
        # Give up on fit a little before the deadline, so that the decline still counts.
        left = (request.deadline - datetime.now(UTC)).total_seconds()
        left -= min(DECLINE_MARGIN_S, 0.2 * max(left, 0.0))
        loop = asyncio.get_running_loop()
        fit = loop.run_in_executor(
            self._fit_thread, self.client.fit, dict(model.parameters), answer.config_for(request)
        )
        self._fitting = fit
        try:
            result = await asyncio.wait_for(asyncio.shield(fit), timeout=max(left, 0.0))
        except TimeoutError:
            # The thread cannot be stopped; its result is dropped when it comes.
            fit.add_done_callback(_ignore_result)
            logger.error("device %s: fit did not return before the deadline", self.device_id)
            return await self.decline(
                request,
                DeclineReason.FIT_TIMEOUT,
                "failed: fit did not return before the round's deadline",
            )
        except Exception as exc:
            logger.exception("device %s: fit raised", self.device_id)
            return await self.decline(
                request,
                DeclineReason.FIT_FAILED,
                f"failed: fit raised {type(exc).__name__}: {exc}",
            )
        duration = time.perf_counter() - began
        try:
            if not isinstance(result, FitResult):
                raise answer.FitRefused(
                    f"fit returned a {type(result).__name__}, not a FitResult",
                    DeclineReason.FIT_FAILED,
                )
            delta = answer.delta_of(model, result)
            update = (
                None
                if request.secure_aggregation is not None
                else answer.signed_update(
                    request, self.identity, delta, result, duration_s=duration
                )
            )
        except answer.FitRefused as exc:
            logger.error("device %s: %s", self.device_id, exc)
            return await self.decline(request, exc.reason, f"failed: {exc}")
        except Exception as exc:  # whatever else user code handed back: its fault, declined
            logger.exception("device %s: fit's result cannot be sent", self.device_id)
            return await self.decline(
                request,
                DeclineReason.FIT_FAILED,
                f"failed: fit's result cannot be sent ({type(exc).__name__}: {exc})",
            )
        if request.secure_aggregation is not None:
            self.sent.put(request.round_id, SECURE_ROUND_STARTED)
            await self.secure.start(
                request,
                round_id=request.round_id,
                assignment=request.secure_aggregation,
                device_id=self.device_id,
                num_examples=result.num_examples,
                delta=delta,
            )
            return f"secure round started with {result.num_examples} examples"
        if update is None:
            raise RuntimeError("a round without secure aggregation has its update")
        value = codec.encode(update)
        self.sent.put(request.round_id, value)
        if not await self._send(
            topics.UPDATES, str(request.task_id), value, until=request.deadline
        ):
            return "failed: the broker was unreachable until the deadline"
        return f"sent an update of {result.num_examples} examples"

    async def evaluate(self, request: EvaluateRequested) -> str:
        """Answer one evaluate request; return what happened, in words.

        Whatever goes wrong (no model, evaluate raising, hanging past the deadline, or
        returning what the wire cannot carry) sends nothing: there is no decline for an
        evaluation, and the coordinator counts only the answers that came in time.
        """
        kept = self.sent.get(request.evaluation_id)
        if kept is not None:
            # Answered before a restart: the same record again (the coordinator keeps one
            # answer per evaluation and device).
            sent = await self._send(topics.EVALUATIONS, str(request.task_id), kept, until=None)
            return "resent the evaluation kept on disk" if sent else "resend failed"
        if datetime.now(UTC) >= request.deadline:
            return "skipped: past its deadline"
        try:
            data = await self.fetcher.fetch(
                request.task_id, request.model_version, request.model_sha256, until=request.deadline
            )
            model = answer.GlobalModel(data)
        except (FetchRefused, TimeoutError, ValueError, OSError) as exc:
            logger.error("device %s: no model to evaluate: %s", self.device_id, exc)
            return f"failed: no model ({exc}); nothing sent"
        if self._fitting is not None and not self._fitting.done():
            # A fit or evaluate that never returned holds the one thread user code runs on.
            return "failed: the previous fit or evaluate has still not returned; nothing sent"
        # Give up a little before the deadline, so that the answer can still arrive in time.
        left = (request.deadline - datetime.now(UTC)).total_seconds()
        left -= min(DECLINE_MARGIN_S, 0.2 * max(left, 0.0))
        loop = asyncio.get_running_loop()
        scoring = loop.run_in_executor(
            self._fit_thread,
            self.client.evaluate,
            dict(model.parameters),
            answer.config_for_evaluation(request),
        )
        self._fitting = scoring
        try:
            result = await asyncio.wait_for(asyncio.shield(scoring), timeout=max(left, 0.0))
        except TimeoutError:
            scoring.add_done_callback(_ignore_result)
            logger.error("device %s: evaluate did not return before the deadline", self.device_id)
            return "failed: evaluate did not return before the deadline; nothing sent"
        except ValueError as exc:
            # What the ready-made clients raise without test data: a device may have none.
            logger.warning("device %s: evaluate raised ValueError: %s", self.device_id, exc)
            return f"failed: evaluate raised ValueError: {exc}; nothing sent"
        except Exception as exc:
            logger.exception("device %s: evaluate raised", self.device_id)
            return f"failed: evaluate raised {type(exc).__name__}: {exc}; nothing sent"
        try:
            evaluation = answer.signed_evaluation(request, self.identity, result)
        except answer.EvaluationRefused as exc:
            logger.error("device %s: %s; nothing sent", self.device_id, exc)
            return f"failed: {exc}; nothing sent"
        except Exception as exc:  # whatever else user code handed back: not sent
            logger.exception("device %s: evaluate's result cannot be sent", self.device_id)
            return (
                f"failed: evaluate's result cannot be sent ({type(exc).__name__}: {exc}); "
                "nothing sent"
            )
        value = codec.encode(evaluation)
        self.sent.put(request.evaluation_id, value)
        if not await self._send(
            topics.EVALUATIONS, str(request.task_id), value, until=request.deadline
        ):
            return "failed: the broker was unreachable until the deadline"
        return f"sent an evaluation of {evaluation.num_examples} examples"

    async def decline(self, request: TrainRequested, reason: DeclineReason, outcome: str) -> str:
        """Tell the round this device has no update, and why (kept on disk first, like an
        update, so that a restart answers with the same record); return ``outcome``. A secure
        round takes no decline: the device simply does not start it."""
        if request.round_id is None or request.secure_aggregation is not None:
            return outcome
        value = codec.encode(answer.signed_decline(request, self.identity, reason))
        self.sent.put(request.round_id, value)
        sent = await self._send(topics.UPDATES, str(request.task_id), value, until=request.deadline)
        return f"{outcome} (declined: {reason.value})" if sent else outcome

    async def consume(self, ready: asyncio.Event | None = None) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.config.kafka),
            group_id=self.config.kafka.topic_prefix + command_group(self.device_id),
            client_id=f"feddevice-{self.device_id}",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=200,
            max_partition_fetch_bytes=self.config.kafka.max_message_bytes,
        )
        await _retry("connect to the broker", consumer.start)
        try:
            partition = await self._my_partition(consumer)
            consumer.assign([partition])
            # Resolve the start (the committed offset, else the end) before enrolling, so that
            # no request sent after enrolment can fall before it.
            await _retry("find the command offset", lambda: consumer.position(partition))
            if ready is not None:
                ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10)
                for records in batches.values():
                    for record in records:
                        await self.handle(record)
                        await _commit(consumer, partition, record.offset + 1)
        finally:
            await consumer.stop()

    async def _my_partition(self, consumer: AIOKafkaConsumer) -> TopicPartition:
        """The partition the services' producers put this device's commands in (murmur2 of
        the key, as every Kafka client's default partitioner)."""
        while True:
            partitions = consumer.partitions_for_topic(self.commands)
            if partitions:
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.5)
        ordered = sorted(partitions)
        chosen = DefaultPartitioner()(self.device_id.encode(), ordered, ordered)
        return TopicPartition(self.commands, chosen)

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Run until cancelled."""
        removed = self.sent.prune()
        if removed:
            logger.info("removed %d results of long-closed rounds", removed)
        await _retry("connect to the broker", self.producer.start)
        try:
            listening = asyncio.Event()
            consumer = asyncio.create_task(self.consume(listening))
            await listening.wait()
            await self.enrol()
            beats = asyncio.create_task(self.heartbeats())
            if ready is not None:
                ready.set()
            try:
                await asyncio.gather(consumer, beats)
            finally:
                for task in (consumer, beats):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            await self.fetcher.close()
            await self.producer.stop()
            self._fit_thread.shutdown(wait=False, cancel_futures=True)


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _commit(consumer: AIOKafkaConsumer, partition: TopicPartition, offset: int) -> None:
    """Commit the device's place; an outage is waited out, but a commit the group refuses
    (another member joined the device's group) is logged and skipped: a lost commit only
    means a request read again, which the kept answers make harmless."""
    try:
        await _retry("commit the command offset", lambda: consumer.commit({partition: offset}))
    except CommitFailedError as exc:
        logger.error("command offset %d not committed (%s); going on", offset, exc)


async def _retry(what: str, step: Callable[[], Awaitable[object]]) -> None:
    backoff = Backoff(first=0.2, cap=5.0)
    while True:
        try:
            await step()
            return
        except CommitFailedError:
            raise
        except (KafkaError, OSError) as exc:
            delay = backoff.next_delay()
            logger.warning("could not %s (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
