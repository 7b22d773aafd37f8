"""The registry as a faust-streaming app (the product card's choice).

- an agent over ``fed.devices`` runs every record through the shared ``RecordProcessor``
  (decode, dead-letter with provenance, transient retries, unhandled limit) into
  :class:`Registry`, which changes PostgreSQL and the outbox in one transaction;
- a changelog-backed Table holds each device's last sign of life, partitioned like the
  topic, so each worker's offline timer watches only the devices of its own partitions and a
  restarted worker recovers the table from the changelog;
- PostgreSQL stays the source of truth: the timer proposes silent devices and the database
  re-checks the silence before marking them offline.

faust acknowledges an event once the agent moves past it and commits acknowledged offsets
periodically: at-least-once delivery, made effectively-once by ``processed_messages``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import faust

from fedcommon import db, kafka, runtime, topics
from fedcommon.errors import TransientError
from fedcommon.outbox import OutboxRelay
from fedcommon.service import ServiceContext
from fedengine_registry import store
from fedengine_registry.handlers import Registry
from fedengine_registry.settings import Settings

logger = logging.getLogger(__name__)

HEARTBEAT_TABLE = "last-heartbeats"
SERVICE = "registry"


def app_id(settings: Settings) -> str:
    """The faust app id, which is also the consumer group id."""
    return f"{settings.kafka.topic_prefix}registry"


def changelog_topic(settings: Settings) -> str:
    return f"{app_id(settings)}-{HEARTBEAT_TABLE}-changelog"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def build_app(settings: Settings) -> faust.App:
    """Build the faust app with broker.md's settings for the local broker."""
    kafka_settings = settings.kafka
    data_dir = (settings.run_dir or Path(".fedengine/run")) / "registry-faust"
    app = faust.App(
        app_id(settings),
        broker=[f"kafka://{server}" for server in kafka_settings.bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(data_dir),
        topic_partitions=kafka_settings.partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,  # every topic is created up front (broker.md)
        table_standby_replicas=settings.table_standby_replicas,
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_max_request_size=kafka_settings.max_message_bytes,
        consumer_max_fetch_size=kafka_settings.max_message_bytes,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=kafka_settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=kafka_settings.heartbeat_interval_ms / 1000,
        web_enabled=False,
        web_bind="127.0.0.1",
        web_port=settings.web_port or _free_port(),
        worker_redirect_stdouts=False,
    )
    devices_topic = app.topic(
        topics.topic_name(kafka_settings.topic_prefix, topics.DEVICES),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=kafka_settings.partitions,
    )
    last_seen = app.Table(HEARTBEAT_TABLE, default=float, partitions=kafka_settings.partitions)
    resources_ready = asyncio.Event()
    assigned = asyncio.Event()
    state: dict[str, Any] = {}
    known_offline: set[str] = set()

    def on_seen(device_id: str) -> None:
        last_seen[device_id] = time.time()
        known_offline.discard(device_id)

    def on_gone(device_id: str) -> None:
        last_seen.pop(device_id, None)

    @app.on_rebalance_complete.connect
    async def _rebalanced(sender: Any, **_: Any) -> None:
        assigned.set()

    @app.task
    async def resources() -> None:
        pool = await db.open_pool(settings.postgres, name=SERVICE)
        producer = kafka.make_producer(kafka_settings, client_id=SERVICE)
        await producer.start()
        relay = OutboxRelay(pool=pool, producer=producer, schema=store.SCHEMA)
        context = ServiceContext(SERVICE, kafka_settings, pool, producer, relay)
        registry = Registry(context, on_seen=on_seen, on_gone=on_gone)
        state["registry"] = registry
        state["processor"] = kafka.RecordProcessor(
            producer=producer, settings=kafka_settings, handle=registry.handle
        )
        resources_ready.set()
        try:
            await relay.run()
        finally:
            await producer.stop()
            await pool.close()

    @app.task
    async def readiness() -> None:
        await resources_ready.wait()
        await assigned.wait()
        runtime.mark_ready(settings.run_dir, SERVICE)

    @app.agent(devices_topic)
    async def device_events(stream: Any) -> None:
        await resources_ready.wait()
        processor: kafka.RecordProcessor = state["processor"]
        async for event in stream.events():
            try:
                await processor.process(event.message)
            except (TransientError, RuntimeError):
                # Exit without acknowledging: the record is redelivered after the restart.
                logger.critical("registry cannot go on; exiting uncommitted", exc_info=True)
                os._exit(1)

    @app.timer(interval=settings.check_interval_s)
    async def offline_timer() -> None:
        if not resources_ready.is_set():
            return
        now = time.time()
        silent = [
            device_id
            for device_id, seen in last_seen.items()
            if device_id not in known_offline and now - seen > settings.offline_after_s
        ]
        if silent:
            registry: Registry = state["registry"]
            await registry.mark_offline(silent, offline_after_s=settings.offline_after_s)
            known_offline.update(silent)

    return app


async def prepare(settings: Settings) -> None:
    """Migrate the schema and create the topics (the heartbeat changelog too) before faust."""
    pool = await db.open_pool(settings.postgres, name=f"{SERVICE}-migrate")
    try:
        await db.migrate(pool, schema=store.SCHEMA, package="fedengine_registry")
    finally:
        await pool.close()
    await kafka.create_topics(settings.kafka, extra=[changelog_topic(settings)])
