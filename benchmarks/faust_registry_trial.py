"""Time-boxed trial: can the registry run on faust-streaming against the local broker?

Builds the registry's stream part on faust as the product card asks (device event stream, a
Table of last heartbeats, a timer that marks silent devices offline), with broker.md's
workarounds (topics created up front, producer_max_batch_size=1, web bound to 127.0.0.1,
session timeout 6 s), and measures against a fresh Tansu broker:

  1. worker start -> first event handled (process start, group join, table recovery);
  2. produce -> handled latency for heartbeat events;
  3. Table state after a worker restart (recovery from the changelog);
  4. what the worker does with a malformed record.

Usage (prints JSON):  .venv/bin/python benchmarks/faust_registry_trial.py
The worker half runs as ``python benchmarks/faust_registry_trial.py worker <bootstrap> <tag>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPIC_PARTITIONS = 4


def build_app(bootstrap: str, tag: str, data_dir: str):  # type: ignore[no-untyped-def]
    import faust

    app = faust.App(
        f"registry-trial-{tag}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=data_dir,
        topic_partitions=TOPIC_PARTITIONS,
        topic_replication_factor=1,
        producer_max_batch_size=int(os.environ.get("TRIAL_BATCH", "1")),
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        web_enabled=False,
        web_bind="127.0.0.1",
        web_port=int(os.environ.get("TRIAL_WEB_PORT", "0")) or 16066,
        consumer_auto_offset_reset="earliest",
    )
    events = app.topic(
        f"trial-{tag}.devices",
        value_serializer="raw",
        key_serializer="raw",
        partitions=TOPIC_PARTITIONS,
    )
    last_seen = app.Table("last-seen", default=float, partitions=TOPIC_PARTITIONS)
    counts = app.Table("heartbeat-counts", default=int, partitions=TOPIC_PARTITIONS)

    @app.agent(events)
    async def registry(stream):  # type: ignore[no-untyped-def]
        async for _key, value in stream.items():
            try:
                device, sent = value.decode().split("|")
                float(sent)
            except ValueError:
                print(json.dumps({"malformed": value[:40].decode(errors="replace")}), flush=True)
                continue
            last_seen[device] = time.time()
            counts[device] += 1
            print(
                json.dumps(
                    {
                        "handled": device,
                        "sent": float(sent),
                        "at": time.time(),
                        "count": counts[device],
                    }
                ),
                flush=True,
            )

    @app.timer(interval=1.0)
    async def mark_offline() -> None:
        now = time.time()
        silent = [d for d, seen in last_seen.items() if now - seen > 3.0]
        if silent:
            print(json.dumps({"offline": sorted(silent)}), flush=True)

    return app


def run_worker(bootstrap: str, tag: str) -> None:
    data_dir = tempfile.mkdtemp(prefix="faust-trial-")
    app = build_app(bootstrap, tag, data_dir)
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=16384)
    await producer.start()
    try:
        for key, value in records:
            if value == b"now":  # stamp at send time, so latency excludes queueing here
                value = f"{key.decode()}|{time.time()}".encode()
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def start_worker(bootstrap: str, tag: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "worker", bootstrap, tag],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def read_events(log: Path) -> list[dict[str, object]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        # faust redirects stdout into its logger: "[time] [pid] [WARNING] {json}"
        start = line.find("{")
        if start >= 0:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line[start:]))
    return events


def wait_for(log: Path, predicate, timeout_s: float) -> float | None:  # type: ignore[no-untyped-def]
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if predicate(read_events(log)):
            return time.monotonic() - began
        time.sleep(0.05)
    return None


def trial() -> dict[str, object]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from fedengine import infra

    work = Path(tempfile.mkdtemp(prefix="faust-trial-"))
    broker_pid, bootstrap = infra.start_broker(log_path=work / "broker.log")
    tag = os.urandom(3).hex()
    topic = f"trial-{tag}.devices"
    result: dict[str, object] = {"bootstrap": bootstrap}
    try:

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            names = [
                topic,
                f"registry-trial-{tag}-last-seen-changelog",
                f"registry-trial-{tag}-heartbeat-counts-changelog",
            ]
            await admin.create_topics([NewTopic(n, TOPIC_PARTITIONS, 1) for n in names])
            await admin.close()

        asyncio.run(create())
        log = work / "worker1.log"
        started = time.monotonic()
        worker = start_worker(bootstrap, tag, log)
        asyncio.run(produce(bootstrap, topic, [(b"d0", f"d0|{time.time()}".encode())]))
        first = wait_for(log, lambda ev: any("handled" in e for e in ev), 60)
        result["worker_start_to_first_event_s"] = (
            None if first is None else round(time.monotonic() - started, 2)
        )

        records = [(f"d{i % 20}".encode(), b"now") for i in range(200)]
        sent_at = time.monotonic()
        asyncio.run(produce(bootstrap, topic, records))
        done = wait_for(log, lambda ev: sum("handled" in e for e in ev) >= 201, 60)
        handled = [e for e in read_events(log) if "handled" in e]
        latencies = sorted(float(e["at"]) - float(e["sent"]) for e in handled[1:])  # type: ignore[arg-type]
        result["200_events_handled_s"] = (
            None if done is None else round(time.monotonic() - sent_at, 2)
        )
        result["latency_ms_median"] = (
            round(1000 * latencies[len(latencies) // 2], 1) if latencies else None
        )
        result["latency_ms_p90"] = (
            round(1000 * latencies[int(len(latencies) * 0.9)], 1) if latencies else None
        )
        expected = {f"d{i}": 10 for i in range(20)}
        expected["d0"] += 1
        asyncio.run(produce(bootstrap, topic, [(b"bad", b"\xff\xfe no separator")]))
        result["malformed_handled_without_crash"] = (
            wait_for(log, lambda ev: any("malformed" in e for e in ev), 20) is not None
        )
        result["offline_timer_fired"] = (
            wait_for(log, lambda ev: any("offline" in e for e in ev), 20) is not None
        )

        worker.terminate()
        worker.wait(30)
        log2 = work / "worker2.log"
        restarted = time.monotonic()
        worker = start_worker(bootstrap, tag, log2)
        asyncio.run(
            produce(
                bootstrap,
                topic,
                [(f"d{i}".encode(), f"d{i}|{time.time()}".encode()) for i in range(20)],
            )
        )
        recovered = wait_for(log2, lambda ev: sum("handled" in e for e in ev) >= 20, 60)
        result["restart_to_events_handled_s"] = (
            None if recovered is None else round(time.monotonic() - restarted, 2)
        )
        after = {str(e["handled"]): int(e["count"]) for e in read_events(log2) if "handled" in e}  # type: ignore[arg-type]
        wrong = {d: (after.get(d), n + 1) for d, n in expected.items() if after.get(d) != n + 1}
        result["table_counts_correct_after_restart"] = not wrong
        result["table_count_mismatches"] = wrong
        worker.terminate()
        worker.wait(30)
    finally:
        os.kill(broker_pid, 15)
    result["logs"] = str(work)
    return result


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "worker":
        run_worker(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(trial(), indent=2))
