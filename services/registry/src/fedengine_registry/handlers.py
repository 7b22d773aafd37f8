"""The registry's message handling: each message in one transaction with its outbox writes,
enrolments and heartbeats in batches (one transaction per batch), and the timer that marks
silent devices offline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg
from prometheus_client import Counter, Gauge

from fedcommon import background, codec, db, kafka, outbox, signing, topics, trust
from fedcommon.errors import InvalidMessage, ProtocolViolation
from fedcommon.kafka import SourceRecord
from fedcommon.messages.v1 import (
    AnyMessage,
    DeviceEnrolled,
    DeviceRemoved,
    DeviceRestored,
    DeviceStatus,
    DeviceStatusChanged,
    EnrolmentTokenIssued,
    EnrolmentTokenRevoked,
    HeartbeatSent,
)
from fedcommon.service import ServiceContext, ServiceParts
from fedengine_registry import store
from fedengine_registry.core.device_batches import EnrolmentRequest, apply_device_batch
from fedengine_registry.core.enrolment import check_key
from fedengine_registry.core.heartbeats import apply_heartbeats
from fedengine_registry.settings import Settings

logger = logging.getLogger(__name__)

PRODUCER = "registry"
HEARTBEATS = Counter("fedengine_registry_heartbeats_total", "Heartbeats accepted")
WENT_OFFLINE = Counter("fedengine_registry_offline_total", "Devices marked offline after silence")
DEVICES = Gauge("fedengine_registry_devices", "Devices by status", ["status"])
HEARTBEAT_BATCHES = Counter(
    "fedengine_registry_heartbeat_batches_total", "Heartbeat batches applied (one transaction each)"
)
DEVICE_BATCHES = Counter(
    "fedengine_registry_device_batches_total",
    "Batches of enrolments and heartbeats applied (one transaction each)",
)
ENROLMENTS = Counter("fedengine_registry_enrolments_total", "Enrolments accepted")
HEARTBEAT_TYPE: str = HeartbeatSent.model_fields["type"].default
ENROLMENT_TYPE: str = DeviceEnrolled.model_fields["type"].default


class Registry:
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    async def _status_changed(
        self, conn: psycopg.AsyncConnection, device_id: str, status: DeviceStatus
    ) -> None:
        await outbox.enqueue(
            conn,
            schema=store.SCHEMA,
            settings=self.context.kafka,
            base=topics.EVENTS,
            key=device_id,
            message=DeviceStatusChanged(producer=PRODUCER, device_id=device_id, status=status),
        )

    async def handle(self, message: AnyMessage, record: SourceRecord) -> None:
        if isinstance(message, HeartbeatSent | DeviceEnrolled):
            # A batch of one: the rules are the batch's (``handle_batch``).
            (refusal,) = await self.handle_batch([(message, record)])
            if refusal is not None:
                raise refusal
            return
        async with self.context.pool.connection() as conn, conn.transaction():
            if not await db.mark_processed(
                conn, schema=store.SCHEMA, message_id=message.message_id
            ):
                logger.info("duplicate %s %s skipped", message.type, message.message_id)
                return
            if isinstance(message, EnrolmentTokenIssued):
                check_key(message.public_key, what=f"enrolment token {message.token_id}")
                if not await store.insert_token(conn, message):
                    raise ProtocolViolation(f"enrolment token {message.token_id} exists already")
                logger.info(
                    "enrolment token %s issued for fleet %s by %s",
                    message.token_id,
                    message.fleet,
                    message.issued_by,
                )
            elif isinstance(message, EnrolmentTokenRevoked):
                revoked = await store.revoke_token(
                    conn, message.token_id, issued_by=message.issued_by
                )
                if revoked is None:
                    raise ProtocolViolation(f"enrolment token {message.token_id} is unknown")
                # Two revocations can both pass the gateway's check before the first lands:
                # the second finds the token revoked already, which is what it asked for.
                logger.info(
                    "enrolment token %s %s by %s",
                    message.token_id,
                    "revoked" if revoked else "was revoked already; revocation ignored",
                    message.issued_by,
                )
            elif isinstance(message, DeviceRestored):
                device = await store.get_device(conn, message.device_id)
                if device is None:
                    raise ProtocolViolation(f"device {message.device_id} is unknown")
                if device.status != DeviceStatus.REMOVED:
                    # Restored already (two restores both passed the gateway's check): what it
                    # asked for holds; recorded as ignored.
                    await store.log_event(
                        conn,
                        device_id=message.device_id,
                        kind="restore_ignored",
                        issued_by=message.issued_by,
                    )
                else:
                    await store.restore(conn, message.device_id)
                    await store.log_event(
                        conn,
                        device_id=message.device_id,
                        kind="restored",
                        issued_by=message.issued_by,
                    )
                    await self._status_changed(conn, message.device_id, DeviceStatus.OFFLINE)
            elif isinstance(message, DeviceRemoved):
                if await store.mark_removed(conn, message.device_id):
                    await store.log_event(
                        conn,
                        device_id=message.device_id,
                        kind="removed",
                        issued_by=message.issued_by,
                    )
                    await self._status_changed(conn, message.device_id, DeviceStatus.REMOVED)
            else:
                raise ProtocolViolation(f"the registry does not handle {message.type}")
        self.context.relay.wake()

    async def handle_batch(
        self, items: Sequence[tuple[AnyMessage, SourceRecord]]
    ) -> list[InvalidMessage | None]:
        """Apply a partition's run of enrolments and heartbeats in one transaction; return, per
        message, None or its refusal.

        A run of heartbeats alone takes ``handle_heartbeats``; one with enrolments,
        ``handle_devices``.
        """
        if all(isinstance(message, HeartbeatSent) for message, _ in items):
            return await self.handle_heartbeats(items)
        return await self.handle_devices(items)

    async def handle_devices(
        self, items: Sequence[tuple[AnyMessage, SourceRecord]]
    ) -> list[InvalidMessage | None]:
        """Apply enrolments and heartbeats in one transaction; return, per message, None or
        its refusal.

        Each is judged in order as if handled alone (``core.device_batches``): against the
        devices and tokens as the messages before it left them, so a heartbeat after its
        device's enrolment is accepted and a token's places are taken one at a time. An
        accepted enrolment writes its dedupe row, its event row and its status event, as one
        handled alone did; a refused one writes nothing.
        """
        requests: list[EnrolmentRequest | HeartbeatSent] = []
        for message, record in items:
            if isinstance(message, DeviceEnrolled):
                requests.append(
                    EnrolmentRequest(
                        message,
                        # The consume loop has verified the signature: the gateway vouches for
                        # an operator's enrolment.
                        by_operator=trust.signer_of(record.headers) == "gateway",
                        # Over the fields as the device sent them, not as this version parsed
                        # them.
                        payload=signing.enrolment_payload(codec.fields_of(record.value or b"")),
                    )
                )
            elif isinstance(message, HeartbeatSent):
                requests.append(message)
            else:
                raise TypeError(f"a device batch holds {message.type}")
        enrolments = [r.message for r in requests if isinstance(r, EnrolmentRequest)]
        async with self.context.pool.connection() as conn, conn.transaction():
            devices = await store.get_batch_devices(
                conn,
                [
                    r.message.device_id if isinstance(r, EnrolmentRequest) else r.device_id
                    for r in requests
                ],
            )
            tokens = await store.get_tokens(
                conn, [m.enrolment_token_id for m in enrolments if m.enrolment_token_id]
            )
            processed = await db.processed_among(
                conn, schema=store.SCHEMA, message_ids=[m.message_id for m in enrolments]
            )
            batch = apply_device_batch(
                requests,
                devices=devices,
                tokens=tokens,
                processed=processed,
                now=datetime.now(UTC),
            )
            async with conn.pipeline():
                await store.upsert_enrolments(conn, batch.enrolments)
                await store.record_heartbeats(conn, batch.heartbeats)
                await db.mark_all_processed(
                    conn, schema=store.SCHEMA, message_ids=[m.message_id for m in batch.enrolled]
                )
                await store.log_events(
                    conn, [(m.device_id, "enrolled", m.issued_by) for m in batch.enrolled]
                )
                for device_id in batch.online:
                    await self._status_changed(conn, device_id, DeviceStatus.ONLINE)
        ENROLMENTS.inc(len(batch.enrolled))
        HEARTBEATS.inc(batch.accepted_heartbeats)
        DEVICE_BATCHES.inc()
        for message_type, message_id in batch.duplicates:
            logger.info("duplicate %s %s skipped", message_type, message_id)
        if batch.online:
            self.context.relay.wake()
        return batch.refusals

    async def handle_heartbeats(
        self, items: Sequence[tuple[AnyMessage, SourceRecord]]
    ) -> list[InvalidMessage | None]:
        """Apply heartbeats in one transaction; return, per heartbeat, None or its refusal.

        Each is judged as if handled alone, in order (``core.heartbeats.apply_heartbeats``);
        each device's row is written once, with its newest accepted heartbeat.
        """
        messages: list[HeartbeatSent] = []
        for message, _ in items:
            if not isinstance(message, HeartbeatSent):
                raise TypeError(f"a heartbeat batch holds {message.type}")
            messages.append(message)
        async with self.context.pool.connection() as conn, conn.transaction():
            devices = await store.get_heartbeat_devices(conn, [m.device_id for m in messages])
            batch = apply_heartbeats(messages, devices)
            await store.record_heartbeats(conn, batch.devices)
            came_online = [d.device_id for d in batch.devices if d.came_online]
            for device_id in came_online:
                await self._status_changed(conn, device_id, DeviceStatus.ONLINE)
        HEARTBEAT_BATCHES.inc()
        HEARTBEATS.inc(batch.accepted)
        for message_id in batch.duplicates:
            logger.info("duplicate %s %s skipped", HEARTBEAT_TYPE, message_id)
        if came_online:
            self.context.relay.wake()
        return list(batch.refusals)

    async def count_devices(self) -> None:
        """Set the devices-by-status gauge (a count of every device: not every second)."""
        async with self.context.pool.connection() as conn:
            for status, count in await store.count_by_status(conn):
                DEVICES.labels(status).set(count)

    async def mark_offline(self, *, offline_after_s: float) -> list[str]:
        """Mark online devices silent for longer than ``offline_after_s`` offline."""
        async with self.context.pool.connection() as conn, conn.transaction():
            silent = await store.mark_silent_offline(conn, offline_after_s=offline_after_s)
            for device_id in silent:
                await self._status_changed(conn, device_id, DeviceStatus.OFFLINE)
        if silent:
            WENT_OFFLINE.inc(len(silent))
            logger.info("%d device(s) went offline", len(silent))
            self.context.relay.wake()
        return silent


def build(context: ServiceContext, settings: Settings) -> ServiceParts:
    """Wire the registry's handler and its offline timer to the service shell."""
    registry = Registry(context)

    async def offline_timer() -> None:
        await background.every(
            "registry.offline",
            settings.check_interval_s,
            lambda: registry.mark_offline(offline_after_s=settings.offline_after_s),
        )

    async def device_counts() -> None:
        await background.run_step("registry.devices", registry.count_devices)
        await background.every(
            "registry.devices", settings.count_interval_s, registry.count_devices
        )

    return ServiceParts(
        handle=registry.handle,
        background=(offline_timer, device_counts),
        batching=kafka.Batching(
            types=frozenset({HEARTBEAT_TYPE, ENROLMENT_TYPE}), handle=registry.handle_batch
        ),
    )
