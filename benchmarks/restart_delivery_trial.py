"""Does a restarted aiokafka consumer group see every record on the local broker?

Mirrors the faust trial's restart step with FedEngine's own consumer settings: a group reads
and commits record by record, stops gracefully, a new member joins the same group while 20
records are produced, and we check that all 20 arrive. Prints JSON; ``--runs N`` repeats.

    .venv/bin/python benchmarks/restart_delivery_trial.py --runs 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from fedengine import infra


def consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )


async def read(c: AIOKafkaConsumer, want: int, timeout_s: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        batches = await c.getmany(timeout_ms=200)
        for tp, records in batches.items():
            for record in records:
                got.append(record.value)
                await c.commit({TopicPartition(tp.topic, tp.partition): record.offset + 1})
    return got


async def run_once(bootstrap: str) -> dict[str, object]:
    tag = os.urandom(3).hex()
    topic, group = f"restart-{tag}", f"group-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 4, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    first = consumer(bootstrap, topic, group)
    await first.start()
    for i in range(200):
        await producer.send_and_wait(topic, f"a{i}".encode(), key=f"d{i % 20}".encode())
    before = await read(first, 200, 60)
    await first.stop()
    second = consumer(bootstrap, topic, group)
    began = time.monotonic()
    await second.start()
    for i in range(20):
        await producer.send_and_wait(topic, f"b{i}".encode(), key=f"d{i}".encode())
    after = await read(second, 20, 60)
    elapsed = time.monotonic() - began
    await second.stop()
    await producer.stop()
    missing = sorted({f"b{i}" for i in range(20)} - {v.decode() for v in after})
    return {
        "first_read": len(before),
        "after_restart": len(after),
        "missing": missing,
        "restart_to_all_s": round(elapsed, 2),
        "old_redelivered": sum(v.startswith(b"a") for v in after),
    }


async def main(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="restart-trial-"))
    pid, bootstrap = infra.start_broker(log_path=work / "broker.log")
    try:
        results = [await run_once(bootstrap) for _ in range(runs)]
    finally:
        os.kill(pid, 15)
    print(
        json.dumps(
            {
                "benchmark": "restart_delivery",
                "runs": results,
                "runs_missing_records": sum(bool(r["missing"]) for r in results),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
