"""The aggregator's open rounds live in Kafka: a SIGKILLed aggregator re-reads the round from its
committed offset and completes it with the updates it had before the crash; while the round is
open, the aggregator's commit on that topic and partition stays at the round's opening record. A
graceful stop (SIGTERM) exits 0."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fedcommon import codec, kafka, topics
from fedcommon.settings import KafkaSettings
from fedengine import launcher
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually
from tests.integration.kafka_tools import find_record, send
from tests.integration.manual_devices import constant_delta, mlp_arrays, open_manual_round

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def committed_offset(settings: KafkaSettings, base: str, partition: int) -> int | None:
    """The aggregator group's committed offset on ``base``/``partition`` (None: none yet)."""
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    await admin.start()
    try:
        tp = TopicPartition(topics.topic_name(settings.topic_prefix, base), partition)
        offsets = await admin.list_consumer_group_offsets(
            f"{settings.topic_prefix}aggregator", partitions=[tp]
        )
    finally:
        await admin.close()
    found = offsets.get(tp)
    return None if found is None or found.offset < 0 else found.offset


async def test_sigkilled_aggregator_recovers_the_open_round_from_the_log(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    manual = await open_manual_round(stack, client, label="agg-crash", round_timeout_s=120)
    first, second, third = manual.names
    for name, value in ((first, 0.001), (second, 0.002)):
        await send(
            stack.kafka,
            topics.UPDATES,
            key=manual.task_id,
            message=manual.update(name, constant_delta(value)),
        )

    # The aggregator has accepted both (in memory; their offsets stay uncommitted while the
    # round is open) before it is killed.
    async def accepted() -> bool:
        cursor = await db.execute(
            "SELECT count(*) FROM aggregator.device_results WHERE task_id = %s "
            "AND status = 'accepted'",
            (uuid.UUID(manual.task_id),),
        )
        row = await cursor.fetchone()
        return bool(row and row[0] == 2)

    await eventually(accepted)
    assert (await client.get_rounds(manual.task_id))[0]["status"] == "open"
    # The round's records are only in memory (its updates folded into a running sum): the
    # aggregator's commit on their topic and partition has not passed the round's opening.
    opening = await find_record(
        stack.kafka,
        topics.UPDATES,
        lambda r: (
            r.key == manual.task_id.encode()
            and codec.fields_of(r.value).get("type") == "round.opened"
        ),
    )
    committed = await committed_offset(stack.kafka, topics.UPDATES, opening.partition)
    # (None: nothing committed yet, so a restart reads the partition from its start.)
    assert committed is None or committed <= opening.offset

    launcher.restart(stack.settings, "aggregator", kill=True)
    await send(
        stack.kafka,
        topics.UPDATES,
        key=manual.task_id,
        message=manual.update(third, constant_delta(0.003)),
    )

    task = await client.wait_for_task(
        manual.task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=90
    )
    assert task["state"] == "completed"
    (round_row,) = await client.get_rounds(manual.task_id)
    assert sorted(round_row["aggregated"]) == sorted(manual.names)
    new, _, _ = await client.download_model(manual.task_id, version=1)
    old, _, _ = await client.download_model(manual.task_id, version=0)
    for after, before in zip(mlp_arrays(new), mlp_arrays(old), strict=True):
        np.testing.assert_allclose(after - before, 0.002, atol=1e-6)  # mean of the three


async def test_graceful_stop_exits_zero(stack: Stack) -> None:
    _, status = launcher.restart(stack.settings, "aggregator")

    assert status == 0
    log = (stack.settings.log_dir / "aggregator.log").read_text()
    assert "aggregator stopped" in log
