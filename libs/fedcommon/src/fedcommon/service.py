"""The async shell every service runs: pool, migrations, producer, consumer, outbox, loop.

A service supplies what is its own (a handler, background jobs, a commit policy); start-up,
readiness, graceful SIGTERM and shutdown are the same everywhere (style.md, rule 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from fedcommon import background, db, kafka, runtime
from fedcommon import logging as fedlogging
from fedcommon.failures import describe
from fedcommon.fetch_pacing import FetchPacing
from fedcommon.outbox import OutboxRelay
from fedcommon.settings import KafkaSettings, PostgresSettings, TrustSettings

logger = logging.getLogger(__name__)

# The longest one shutdown step (final commit, closing a client) may take.
SHUTDOWN_STEP_S = 5.0


@dataclass
class ServiceContext:
    """The clients a service's handlers and jobs use."""

    name: str
    kafka: KafkaSettings
    pool: AsyncConnectionPool
    producer: AIOKafkaProducer
    relay: OutboxRelay


@dataclass
class ServiceParts:
    handle: kafka.Handler
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=tuple)
    commit_position: kafka.CommitPosition | None = None
    on_stop: Callable[[], None] | None = None
    # Message types handled many at a time, one transaction and one commit per run.
    batching: kafka.Batching | None = None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    schema: str
    migrations_package: str
    group_id: str
    topic_bases: Sequence[str]
    concurrent_partitions: bool = False
    # How long handled message ids are kept for deduplication, and how often they are purged.
    dedupe_window_s: float = 86_400.0
    purge_every_s: float = 3_600.0
    # Whether what this service produces is signed as the service (fedcommon.trust). The
    # simulator plays devices: it speaks with their keys, not as a service.
    signs: bool = True
    # Whether a round waits on what this service consumes. One that is not polls with the
    # idle fetch wait always (the registry: a fleet's heartbeats would keep it awake).
    on_round_path: bool = True
    # The most records the consume loop takes per poll (the size of a batch, with batching).
    max_records: int = 100


async def run_service(
    spec: ServiceSpec,
    *,
    kafka_settings: KafkaSettings,
    postgres_settings: PostgresSettings,
    trust_settings: TrustSettings,
    build: Callable[[ServiceContext], ServiceParts],
    run_dir: Path | None = None,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Run a service until SIGTERM/SIGINT; return after a clean shutdown."""
    runtime.serve_metrics(metrics_port, host=metrics_host)
    pool = await db.open_pool(postgres_settings, name=spec.name)
    signer = trust_settings.signer(spec.name) if spec.signs else None
    verifier = trust_settings.verifier(
        prefix=kafka_settings.topic_prefix, window_s=spec.dedupe_window_s
    )
    producer = kafka.make_producer(kafka_settings, client_id=spec.name, signer=signer)
    consumer = kafka.make_consumer(
        kafka_settings,
        group_id=spec.group_id,
        topic_bases=spec.topic_bases,
        client_id=spec.name,
        fetch_max_wait_ms=None if spec.on_round_path else kafka_settings.idle_fetch_max_wait_ms,
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await db.migrate(pool, schema=spec.schema, package=spec.migrations_package)
        await kafka.create_topics(kafka_settings)
        await producer.start()
        relay = OutboxRelay(
            pool=pool, producer=producer, schema=spec.schema, settings=kafka_settings
        )
        context = ServiceContext(spec.name, kafka_settings, pool, producer, relay)
        parts = build(context)
        loop = kafka.ConsumeLoop(
            consumer=consumer,
            processor=kafka.RecordProcessor(
                producer=producer,
                settings=kafka_settings,
                handle=parts.handle,
                verifier=verifier,
                batching=parts.batching,
            ),
            commit_position=parts.commit_position,
            max_records=spec.max_records,
            concurrent_partitions=spec.concurrent_partitions,
            pacing=FetchPacing(
                busy_ms=kafka_settings.fetch_max_wait_ms,
                idle_ms=kafka_settings.idle_fetch_max_wait_ms,
                idle_after_s=kafka_settings.idle_after_s,
            )
            if spec.on_round_path
            else None,
        )

        stopping = asyncio.Event()

        def stop() -> None:
            logger.info("%s stopping", spec.name)
            stopping.set()
            loop.stop()
            relay.stop()
            if parts.on_stop is not None:
                parts.on_stop()

        runtime.on_shutdown_signal(stop)
        await consumer.start()
        tasks.append(asyncio.create_task(relay.run(), name="outbox"))
        for job in parts.background:
            tasks.append(asyncio.create_task(job(), name=getattr(job, "__name__", "job")))
        tasks.append(asyncio.create_task(_purge_processed(spec, pool), name="purge"))
        await kafka.wait_for_assignment(consumer)
        runtime.mark_ready(run_dir, spec.name)
        if run_dir is not None:
            ready_dir = run_dir

            async def keep_alive() -> None:
                await background.every(
                    f"{spec.name}.alive",
                    runtime.ALIVE_EVERY_S,
                    lambda: asyncio.to_thread(runtime.touch_ready, ready_dir, spec.name),
                )

            tasks.append(asyncio.create_task(keep_alive(), name="alive"))
        consume = asyncio.create_task(loop.run(), name="consume")
        tasks.append(consume)
        watched: set[asyncio.Task[None]] = {consume, *tasks}
        while consume in watched:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()  # re-raise a crash of the loop or of a background job
                if finished is not consume and not stopping.is_set():
                    # Background jobs run until the service stops; one that ends on its own
                    # would leave the service half alive, unnoticed.
                    raise RuntimeError(f"background job {finished.get_name()} ended on its own")
            watched -= done
        # A shutdown during an outage must not wait for the outage: each step is bounded, and
        # what is not committed is read again after the restart.
        try:
            async with asyncio.timeout(SHUTDOWN_STEP_S):
                await loop.commit_current()
        except TimeoutError:
            logger.warning("final commit timed out; uncommitted records will be read again")
        relay.stop()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for closing in (consumer.stop(), producer.stop(), pool.close(timeout=SHUTDOWN_STEP_S)):
            try:
                async with asyncio.timeout(SHUTDOWN_STEP_S):
                    await closing
            except Exception as exc:
                logger.warning("shutdown step failed (%s); going on", describe(exc))
        logger.info("%s stopped", spec.name)


async def _purge_processed(spec: ServiceSpec, pool: AsyncConnectionPool) -> None:
    """Keep ``processed_messages`` bounded: drop ids older than the dedupe window, hourly."""

    async def purge() -> None:
        async with pool.connection() as conn:
            purged = await db.purge_processed(
                conn, schema=spec.schema, older_than_s=spec.dedupe_window_s
            )
        if purged:
            logger.info("purged %d processed message ids", purged)

    await background.run_step(f"{spec.name}.purge", purge)
    await background.every(f"{spec.name}.purge", spec.purge_every_s, purge)


class ServiceSettings(Protocol):
    """What ``main`` needs of a service's Settings class."""

    kafka: KafkaSettings
    postgres: PostgresSettings
    run_dir: Path | None
    metrics_port: int
    metrics_host: str
    log_json: bool

    @property
    def trust(self) -> TrustSettings: ...


def main(
    spec: ServiceSpec, settings: ServiceSettings, build: Callable[[ServiceContext], ServiceParts]
) -> None:
    """Run a service process: logging, then :func:`run_service` until SIGTERM."""
    fedlogging.configure(service=spec.name, json_output=settings.log_json)
    asyncio.run(
        run_service(
            spec,
            kafka_settings=settings.kafka,
            postgres_settings=settings.postgres,
            trust_settings=settings.trust,
            build=build,
            run_dir=settings.run_dir,
            metrics_port=settings.metrics_port,
            metrics_host=settings.metrics_host,
        )
    )
