"""Measure how fast the registry applies heartbeats (issue 17), against a real local stack.

Starts a stack of its own (Tansu, embedded PostgreSQL, every service; no fleet) under a
temporary FEDENGINE_HOME, enrols ``--devices`` devices over Kafka with signed enrolments
(an operator's token for fleet "bench"; all signed before the clock starts) and times until
all are recorded (``enrol_s``, ``enrolments_per_s``; ``--cycles 0`` stops there), then publishes
``--cycles`` signed heartbeats per device (cycle c carries sequence c; all signed before the
clock starts) as fast as one producer sends them, and times until every device's stored
sequence is the last cycle's. The rate is heartbeats / (last applied - first sent).

To time another version of the registry, run this script with that version first on
PYTHONPATH: the services inherit the environment, e.g. from a ``git worktree`` of an older
commit::

    PYTHONPATH=/tmp/registry-before/services/registry/src:/tmp/registry-before/libs/fedcommon/src \\
        .venv/bin/python services/registry/benchmarks/heartbeat_rate.py --devices 2000 --cycles 5

Prints one JSON line of figures (rates, the registry module's file, the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import codec, enrolment_tokens, kafka, signing, topics
from fedcommon.enrolment_tokens import EnrolmentToken
from fedcommon.messages.v1 import DeviceEnrolled, DeviceType, HeartbeatSent
from fedcommon.settings import KafkaSettings
from fedengine import infra, launcher
from fedengine.settings import LauncherSettings

logger = logging.getLogger("heartbeat_rate")


def _enrolment(device_id: str, key: Ed25519PrivateKey, token: EnrolmentToken) -> bytes:
    return codec.encode(
        enrolment_tokens.sign_enrolment(
            DeviceEnrolled(
                producer="bench",
                device_id=device_id,
                device_name=device_id,
                device_type=DeviceType.IOT,
                public_key=signing.public_key_bytes(key),
            ),
            device_key=key,
            token=token,
        )
    )


def _heartbeat(device_id: str, key: Ed25519PrivateKey, sequence: int) -> bytes:
    sent_at = datetime.now(UTC)
    payload = signing.heartbeat_payload(
        device_id=device_id, sequence=sequence, sent_at_us=int(sent_at.timestamp() * 1_000_000)
    )
    return codec.encode(
        HeartbeatSent(
            producer="bench",
            device_id=device_id,
            sequence=sequence,
            sent_at=sent_at,
            signature=key.sign(payload),
        )
    )


async def _publish(settings: KafkaSettings, records: list[tuple[str, bytes]]) -> float:
    """Send every (key, value) to fed.devices as fast as one producer can; return seconds."""
    topic = topics.topic_name(settings.topic_prefix, topics.DEVICES)
    producer = AIOKafkaProducer(**kafka.client_options(settings), linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        futures = [await producer.send(topic, value, key=key.encode()) for key, value in records]
        await asyncio.gather(*futures)
        return time.monotonic() - started
    finally:
        await producer.stop()


async def _wait_count(database_url: str, query: str, params: tuple[object, ...], want: int) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(query, params)
            row = await cursor.fetchone()
            if row is not None and row[0] >= want:
                return
            await asyncio.sleep(0.05)


async def measure(
    stack: launcher.Stack, token: EnrolmentToken, devices: int, cycles: int
) -> dict[str, object]:
    kafka_settings = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers, topic_prefix=stack.topic_prefix
    )
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    keys = {f"{prefix}{i:05d}": signing.generate_private_key() for i in range(devices)}
    like = (f"{prefix}%",)

    enrolments = [(device_id, _enrolment(device_id, key, token)) for device_id, key in keys.items()]
    started = time.monotonic()
    await _publish(kafka_settings, enrolments)
    await _wait_count(
        stack.database_url,
        "SELECT count(*) FROM registry.devices WHERE device_id LIKE %s",
        like,
        devices,
    )
    enrol_s = time.monotonic() - started
    figures: dict[str, object] = {
        "devices": devices,
        "enrol_s": round(enrol_s, 2),
        "enrolments_per_s": round(devices / enrol_s, 1),
    }
    if cycles == 0:
        return figures

    beats = [
        (device_id, _heartbeat(device_id, key, cycle))
        for cycle in range(1, cycles + 1)
        for device_id, key in keys.items()
    ]
    started = time.monotonic()
    send_s = await _publish(kafka_settings, beats)
    await _wait_count(
        stack.database_url,
        "SELECT count(*) FROM registry.devices WHERE device_id LIKE %s AND heartbeat_sequence = "
        + str(cycles),
        like,
        devices,
    )
    apply_s = time.monotonic() - started
    return figures | {
        "cycles": cycles,
        "heartbeats": len(beats),
        "send_s": round(send_s, 2),
        "apply_s": round(apply_s, 2),
        "heartbeats_per_s": round(len(beats) / apply_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=5, help="0: time the enrolments only")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import fedengine_registry.handlers as registry_handlers

    with tempfile.TemporaryDirectory(prefix="heartbeat-rate-") as home:
        settings = LauncherSettings(
            FEDENGINE_HOME=Path(home),
            KAFKA_TOPIC_PREFIX=f"b{uuid.uuid4().hex[:8]}.",
            FEDENGINE_GATEWAY_PORT=infra.free_port(),
            service_env={"REGISTRY_OFFLINE_AFTER_S": "600"},
        )
        load_before = os.getloadavg()
        stack = launcher.up(settings, log=logger.info)
        try:
            secret, _ = launcher.jwt_secret(settings)
            token = EnrolmentToken.decode(
                launcher.issue_enrolment_token(
                    stack.gateway_url, secret, "bench", max_devices=options.devices
                )
            )
            figures = asyncio.run(measure(stack, token, options.devices, options.cycles))
        finally:
            launcher.down(settings)
    figures["registry"] = registry_handlers.__file__
    figures["load_before"] = [round(x, 2) for x in load_before]
    figures["load_after"] = [round(x, 2) for x in os.getloadavg()]
    sys.stdout.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
