"""Schemathesis over the live gateway's OpenAPI: no server errors, no undocumented status codes,
responses shaped as documented; then nothing the gateway accepted (202) is dead-lettered by the
services behind it.

The fuzzer creates tasks and devices, so it runs against a stack of its own (its own topic
prefix, database and FEDENGINE_HOME; the session's broker and PostgreSQL server; no fleets),
where nothing it starts can pick the shared fleet's devices.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fedcommon import auth, topics
from fedcommon.settings import KafkaSettings
from fedengine import infra, launcher
from fedengine.settings import LauncherSettings
from tests.integration.conftest import Stack, _drop_database, _fresh_database
from tests.integration.kafka_tools import headers_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Bounded so that the run stays well inside CI's limit: about 1,200 requests in about 30 s on
# two cores (the test prints the time it took). Deterministic generation makes it reproducible.
MAX_EXAMPLES = 25
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
PHASES = "examples,coverage,fuzzing,stateful"


@dataclass
class FuzzStack:
    gateway_url: str
    kafka: KafkaSettings
    secret: str


@pytest.fixture(scope="module")
def fuzz_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    database_url = _fresh_database(stack.database_url)
    settings = LauncherSettings(
        FEDENGINE_HOME=tmp_path_factory.mktemp("fedengine-fuzz"),
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS=stack.kafka.bootstrap_servers,
        KAFKA_TOPIC_PREFIX=f"z{uuid.uuid4().hex[:8]}.",
        FEDENGINE_GATEWAY_PORT=infra.free_port(),
    )
    try:
        running = launcher.up(settings, log=lambda *_: None)
        secret, _ = launcher.jwt_secret(settings)
        yield FuzzStack(
            gateway_url=running.gateway_url,
            kafka=KafkaSettings(
                bootstrap_servers=running.bootstrap_servers, topic_prefix=running.topic_prefix
            ),
            secret=secret,
        )
    finally:
        launcher.down(settings)
        _drop_database(stack.database_url, database_url)


def _schemathesis(fuzz_stack: FuzzStack) -> list[str]:
    token = auth.issue_token(secret=fuzz_stack.secret, subject="schemathesis", role=auth.Role.ADMIN)
    return [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{fuzz_stack.gateway_url}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        PHASES,
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
        "--output-sanitize",
        "true",
    ]


async def _consumed(settings: KafkaSettings, base: str, group: str) -> tuple[int, bool]:
    """Return how many records ``base`` holds and whether ``group`` has committed them all."""
    name = topics.topic_name(settings.topic_prefix, base)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    await admin.start()
    try:
        partitions = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        ends = await consumer.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(
            f"{settings.topic_prefix}{group}", partitions=partitions
        )
        done = all(
            tp in committed and committed[tp].offset >= end for tp, end in ends.items() if end > 0
        )
        return sum(ends.values()), done
    finally:
        await admin.close()
        await consumer.stop()


async def _dead_letters(settings: KafkaSettings) -> list[dict[str, str]]:
    """Return the headers of every record now in the dead-letter topic."""
    name = topics.topic_name(settings.topic_prefix, topics.DLQ)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[dict[str, str]] = []
        pending = {tp for tp, end in ends.items() if end > 0}
        async with asyncio.timeout(30):
            while pending:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    found.extend(headers_of(record) for record in records)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        return found
    finally:
        await consumer.stop()


async def test_fuzzing_finds_no_server_errors_and_nothing_accepted_is_dead_lettered(
    fuzz_stack: FuzzStack, tmp_path: Path
) -> None:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *_schemathesis(fuzz_stack), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    async with asyncio.timeout(240):
        raw, _ = await process.communicate()
    output = raw.decode(errors="replace")
    print(f"schemathesis took {time.monotonic() - started:.1f}s\n{output[-3000:]}")
    assert process.returncode == 0, output[-20000:]

    # A 202 means the services accept the command: wait until they have consumed every one,
    # then nothing from the command topics may sit in the dead-letter topic.
    settings = fuzz_stack.kafka
    deadline = time.monotonic() + 60
    while True:
        tasks, tasks_done = await _consumed(settings, topics.TASKS, "coordinator")
        devices, devices_done = await _consumed(settings, topics.DEVICES, "registry")
        if tasks_done and devices_done:
            break
        assert time.monotonic() < deadline, "the services did not consume the fuzzer's commands"
        await asyncio.sleep(0.5)
    assert tasks > 0 and devices > 0, "the fuzzer had no command accepted"
    letters = await _dead_letters(settings)
    commands = {
        topics.topic_name(settings.topic_prefix, topics.TASKS),
        topics.topic_name(settings.topic_prefix, topics.DEVICES),
    }
    print(f"{tasks} task and {devices} device commands accepted; {len(letters)} dead letters")
    refused = [h for h in letters if h.get("original_topic") in commands]
    assert refused == [], [h.get("error") for h in refused]
