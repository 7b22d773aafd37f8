"""Liveness and readiness: does the database answer, does the broker answer, and (a local
stack only) does a supervisor run it.

Each check is bounded (``GATEWAY_HEALTH_TIMEOUT_S``) and the two run concurrently, so /health
and /ready answer within about that bound whatever state the servers are in: a stopped server
refuses at once, a frozen one is cut off by the bound. The checks go through the gateway's own
pool and its producer's connections, so a probe opens nothing new, and callers that arrive
while a check is in flight share it: probes, which need no token, cannot multiply the load on
the database or the broker.

A gateway that ``fedengine up`` started (``GATEWAY_SUPERVISOR_LOCK`` set) also checks that a
supervisor holds the stack's lock: without one, a service that crashes stays down, so the stack
is not ready. Deployments have no supervisor (their orchestrator restarts) and no such check.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import NoBrokersAvailable
from aiokafka.protocol.metadata import MetadataRequest
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)


class Dependency(StrEnum):
    DATABASE = "database"
    BROKER = "broker"
    # A local stack's supervisor (checked only when configured).
    SUPERVISOR = "supervisor"


class NotReady(Exception):
    """A dependency answered, but not in a state to serve (its message is fixed text)."""


@dataclass(frozen=True)
class CheckResult:
    """One check: whether the dependency answered, how long the check took, and why not.

    ``error`` names the kind of failure only (an exception's type or a fixed phrase): the
    endpoints that show it need no token, so server addresses and messages stay in the log.
    """

    up: bool
    seconds: float
    error: str | None = None


Check = Callable[[], Awaitable[None]]


# Checks given up on at their bound and still cleaning up; held so that they run to the end.
_ABANDONED: set[asyncio.Task[None]] = set()


async def run_check(check: Check, *, timeout_s: float) -> CheckResult:
    """Run ``check`` for at most ``timeout_s``; any exception, or no answer in time, is down.

    The answer never waits for a check's cleanup: psycopg, cancelled in the middle of a query
    to a frozen server, first tries to cancel it there and waits up to 10 s for that. A check
    past its bound is cancelled and left to finish in the background.
    """
    began = time.monotonic()
    task = asyncio.ensure_future(check())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        _abandon(task)
        raise
    seconds = time.monotonic() - began
    if not done:
        _abandon(task)
        return CheckResult(False, seconds, f"no answer within {timeout_s:g} s")
    failure = task.exception()
    if failure is None:
        return CheckResult(True, seconds)
    if isinstance(failure, NotReady):
        return CheckResult(False, seconds, str(failure))
    logger.debug("health check failed", exc_info=failure)
    return CheckResult(False, seconds, type(failure).__name__)


def _abandon(task: asyncio.Task[None]) -> None:
    task.cancel()
    _ABANDONED.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Task[None]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.debug("abandoned health check ended", exc_info=task.exception())


def down(results: Mapping[Dependency, CheckResult]) -> list[Dependency]:
    """Return the dependencies in ``results`` that are down, in a fixed order."""
    return [d for d in Dependency if d in results and not results[d].up]


class Prober:
    """Run the checks, one in flight per dependency, and log each change of state once."""

    def __init__(self, checks: Mapping[Dependency, Check], *, timeout_s: float) -> None:
        self._checks = dict(checks)
        self._timeout_s = timeout_s
        self._in_flight: dict[Dependency, asyncio.Task[CheckResult]] = {}
        self._last_up: dict[Dependency, bool] = {}

    async def check(self, dependency: Dependency) -> CheckResult:
        """Return the result of a check of ``dependency`` started now or already in flight."""
        task = self._in_flight.get(dependency)
        if task is None or task.done():
            task = asyncio.create_task(self._run(dependency), name=f"health.{dependency}")
            self._in_flight[dependency] = task
        # A caller that goes away (a client disconnecting) must not cancel the shared check.
        return await asyncio.shield(task)

    async def check_all(self) -> dict[Dependency, CheckResult]:
        """Check every dependency that has a check, concurrently."""
        checked = [d for d in Dependency if d in self._checks]
        results = await asyncio.gather(*(self.check(d) for d in checked))
        return dict(zip(checked, results, strict=True))

    async def _run(self, dependency: Dependency) -> CheckResult:
        result = await run_check(self._checks[dependency], timeout_s=self._timeout_s)
        if self._last_up.get(dependency, True) != result.up:
            if result.up:
                logger.info("%s answers again", dependency)
            else:
                logger.warning("%s is down: %s", dependency, result.error)
        self._last_up[dependency] = result.up
        return result


async def database_answers(pool: AsyncConnectionPool, *, timeout_s: float) -> None:
    """``SELECT 1`` on a pooled connection, waiting at most ``timeout_s`` for the connection."""
    async with pool.connection(timeout=timeout_s) as conn:
        await conn.execute("SELECT 1")


async def supervisor_runs(lock: Path) -> None:
    """Raise ``NotReady`` unless a supervisor holds ``lock`` (an exclusive ``flock``).

    A shared lock is tried and dropped at once: it conflicts with the supervisor's, so failing
    to get it means a supervisor runs. The kernel drops a dead holder's lock whatever killed it.
    A supervisor starting in that instant tries again before it gives way (fedengine.standby).
    """
    try:
        descriptor = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        raise NotReady("no supervisor runs the stack") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return
        raise
    finally:
        os.close(descriptor)  # also drops the shared lock
    raise NotReady("no supervisor runs the stack")


async def broker_answers(producer: AIOKafkaProducer, topic_names: Sequence[str]) -> None:
    """Ask the brokers the producer knows for the metadata of ``topic_names``, over the
    producer's own connections; ready when one answers and names a leader for every partition.

    A metadata request is what a send needs first, so it is the cheapest question whose answer
    says a command could be written now: an ApiVersions answer would not show that the topics
    exist or have leaders (after a restart of an in-memory broker they may not, yet).
    """
    client = producer.client
    nodes = sorted({broker.nodeId for broker in client.cluster.brokers()}, key=str)
    request = MetadataRequest(list(topic_names), allow_auto_topic_creation=False)
    answer = await _first_answer(client.send(node, request) for node in nodes)
    cluster = ClusterMetadata()
    cluster.update_metadata(answer)
    for name in topic_names:
        partitions = cluster.partitions_for_topic(name)
        if not partitions:
            raise NotReady("a command topic is missing")
        if cluster.available_partitions_for_topic(name) != partitions:
            raise NotReady("a command topic has a partition without a leader")


async def _first_answer(requests: Iterable[Awaitable[Any]]) -> Any:
    """Return the first successful answer of ``requests``; raise the last failure if none."""
    tasks = [asyncio.ensure_future(r) for r in requests]
    try:
        failure: Exception = NoBrokersAvailable()
        for next_done in asyncio.as_completed(tasks):
            try:
                return await next_done
            except Exception as exc:
                failure = exc
        raise failure
    finally:
        for task in tasks:
            task.cancel()
