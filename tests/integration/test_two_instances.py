"""Past one machine: two instances of each service share the work through Kafka consumer groups.

Beside the supervisor's registry, coordinator, aggregator and privacy service the test starts a
second instance of each (same environment, its own metrics port and run folder) and waits until
each has joined its group. Everything of a task is keyed by its task_id and every topic has the
same number of partitions, so a task's whole work falls to the instance of each service that
owns its key's partition:

1. One DP task on each partition (each with its own number of rounds) all run at once and
   complete, and each instance's counters grew by exactly the work of the tasks on some of the
   partitions, the other instance's by that of the rest: rounds closed (aggregator), rounds
   applied (coordinator), spend decisions (privacy); both registries apply heartbeats (keyed by
   device id) when the fleet's devices span both instances' partitions.
2. SIGKILL of the four second instances while a task on each partition runs: the survivors
   take the partitions over (after the session timeout and a join) and every task completes,
   every round once, each round's aggregated devices unique, each round's result built once,
   and the privacy ledger charged once per round.
3. The assignor the services' consumers use keeps the aggregator's two topics co-partitioned
   (a round's records on one instance) with two, three and five members (the range assignor).

The kills hit the test's own instances, so the supervisor's keep running and own every
partition again afterwards: the session stack is left as it was found.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from fedcommon import kafka, topics
from fedcommon.messages.v1 import RoundAggregated
from fedcommon.settings import KafkaSettings
from fedengine.processes import Process
from fedengine.sdk import FedEngineClient
from fedengine_aggregator.__main__ import SPEC as AGGREGATOR
from tests.integration import instances
from tests.integration.conftest import Stack
from tests.integration.instances import Instance
from tests.integration.kafka_tools import all_records, decoded

pytestmark = [pytest.mark.integration]
on_session_loop = pytest.mark.asyncio(loop_scope="session")

SCALED = ("registry", "coordinator", "aggregator", "privacy")
# What each instance counts of its own work (Prometheus, per process).
WORK = {
    "registry": "fedengine_registry_heartbeats_total",
    "coordinator": "fedengine_rounds_completed_total",
    "aggregator": "fedengine_rounds_closed_total",
    "privacy": "fedengine_privacy_decisions_total",
}
# Central DP with a budget no task here reaches: every round asks the privacy service.
PRIVACY = {"epsilon": 50.0, "delta": 1e-5, "clip_norm": 1.0, "noise_multiplier": 3.0}


@pytest.fixture(scope="module")
def second(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Instance]]:
    """A second, unsupervised instance of each scaled service, joined to its group."""
    home = tmp_path_factory.mktemp("second-instances")
    started: dict[str, Instance] = {}
    try:
        for service in SCALED:
            started[service] = instances.start(stack.settings, service, home / service)
        instances.wait_joined(stack.settings, list(started.values()), timeout_s=120)
        yield started
    finally:
        for instance in started.values():
            instances.stop(instance)


@on_session_loop
async def test_two_instances_share_the_tasks_by_key(
    stack: Stack,
    client: FedEngineClient,
    fleet: str,
    db: psycopg.AsyncConnection,
    second: dict[str, Instance],
) -> None:
    # Arrange: a DP task on each partition, with 1, 2, 3, ... rounds.
    partitions = _partitions(stack)
    first = {service: instances.supervised(stack.settings, service) for service in SCALED}
    before = await _work(first, second)
    on_partition = await _task_per_partition(
        client, fleet, partitions=partitions, rounds=lambda kept: kept + 1
    )

    # Execute: all at once.
    await _start(client, on_partition.values())
    finished = await _finished(client, on_partition.values(), timeout_s=180)
    after = await _work(first, second)

    # Assert: every task completed, every round once, the ledger charged once per round...
    assert [t["state"] for t in finished] == ["completed"] * partitions, finished
    for task_id, task in zip(on_partition.values(), finished, strict=True):
        await _assert_counted_once(stack, client, db, task_id, rounds=task["spec"]["rounds"])
    # ...and each instance did exactly the work of the tasks on its share of the partitions.
    done = {p: await _done(client, db, [task_id]) for p, task_id in on_partition.items()}
    for service in ("coordinator", "aggregator", "privacy"):
        shares = tuple(after[service][i] - before[service][i] for i in (0, 1))
        work = {p: done[p][service] for p in on_partition}
        assert min(shares) > 0, (service, "an instance did nothing", shares, work)
        splits = [
            owned
            for owned in _subsets(list(on_partition))
            if shares
            == (
                sum(work[p] for p in owned),
                sum(work[p] for p in on_partition if p not in owned),
            )
        ]
        assert splits, (service, "shares that no split of the partitions makes", shares, work)
    # The registry's share is by device id: both instances apply heartbeats (8 random device
    # ids on one instance's partitions alone would be a 1-in-128 chance: then one does).
    heartbeats = [after["registry"][i] - before["registry"][i] for i in (0, 1)]
    device_partitions = {instances.partition_of(f"{fleet}-{i:04d}", partitions) for i in range(8)}
    assert max(heartbeats) > 0, heartbeats
    if len(device_partitions) == partitions:
        assert min(heartbeats) > 0, (heartbeats, device_partitions)


@on_session_loop
async def test_a_killed_instance_s_tasks_are_taken_over_and_counted_once(
    stack: Stack,
    client: FedEngineClient,
    fleet: str,
    db: psycopg.AsyncConnection,
    second: dict[str, Instance],
) -> None:
    # Arrange: a DP task on each partition, so that the second instances handle some of them
    # whatever partitions they own; each under way.
    rounds = 4
    on_partition = await _task_per_partition(
        client, fleet, partitions=_partitions(stack), rounds=lambda _: rounds
    )
    await _start(client, on_partition.values())
    await asyncio.gather(
        *(
            client.wait_for_task(task_id, lambda t: t["current_round"] >= 1, timeout_s=90)
            for task_id in on_partition.values()
        )
    )
    survivors = {service: instances.supervised(stack.settings, service) for service in SCALED}
    closed_before = await instances.counter(survivors["aggregator"], WORK["aggregator"])

    # Execute: SIGKILL every second instance mid-task (what closes after that is the
    # survivors' doing).
    for instance in second.values():
        instances.kill(instance)
    killed_at = await _now(db)
    started = time.monotonic()
    finished = await _finished(client, on_partition.values(), timeout_s=200)
    took_s = time.monotonic() - started

    # Assert: all completed, each with rounds closed after the kill, by the survivor...
    assert [t["state"] for t in finished] == ["completed"] * len(finished), (finished, took_s)
    after_kill = {p: await _closed_since(db, t, killed_at) for p, t in on_partition.items()}
    assert all(after_kill.values()), ("rounds closed after the kill, by partition", after_kill)
    closed_by_survivor = (
        await instances.counter(survivors["aggregator"], WORK["aggregator"]) - closed_before
    )
    assert closed_by_survivor >= sum(after_kill.values()), (closed_by_survivor, after_kill)
    # ...which were the instances the supervisor started (none of them was restarted).
    for service, process in survivors.items():
        assert instances.supervised(stack.settings, service).pid == process.pid, service
    # Nothing was counted twice: every round once, its devices unique, its result built
    # once, the privacy ledger charged once per round.
    for task_id in on_partition.values():
        await _assert_counted_once(stack, client, db, task_id, rounds=rounds)


@pytest.mark.parametrize("members", [2, 3, 5])
@on_session_loop
async def test_the_aggregator_s_topics_stay_co_partitioned(members: int) -> None:
    """A round's records (fed.updates: round.opened and updates; fed.secagg: SecAgg+ stages)
    are keyed by task_id and must all reach the instance that holds the round in memory, so
    partition p of both topics must go to the same member, for any number of members. This
    runs the assignor of the consumer the services build on the aggregator's subscription."""
    settings = KafkaSettings(topic_prefix="t.")
    consumer = kafka.make_consumer(
        settings, group_id="aggregator", topic_bases=AGGREGATOR.topic_bases, client_id="test"
    )
    try:
        # The first strategy is the one a group of this version's members agrees on.
        strategy = consumer._partition_assignment_strategy[0]
    finally:
        await consumer.stop()  # never started: this only marks it closed
    subscription = [topics.topic_name(settings.topic_prefix, b) for b in AGGREGATOR.topic_bases]
    metadata = ConsumerProtocolMemberMetadata(0, subscription, b"")
    assignment = strategy.assign(
        _Cluster(partitions=settings.partitions),
        {f"member-{i}": metadata for i in range(members)},
    )
    for member, assigned in assignment.items():
        by_topic = {topic: set(partitions) for topic, partitions in assigned.assignment}
        owned = [by_topic.get(topic, set()) for topic in subscription]
        assert all(p == owned[0] for p in owned), (member, by_topic)


class _Cluster:
    """The one thing an assignor asks of the cluster: each topic's partitions."""

    def __init__(self, *, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))


# --- helpers --------------------------------------------------------------------------------


def _partitions(stack: Stack) -> int:
    partitions: int = stack.kafka.partitions
    return partitions


async def _task_per_partition(
    client: FedEngineClient, fleet: str, *, partitions: int, rounds: Callable[[int], int]
) -> dict[int, str]:
    """Create a DP task on each partition (the gateway draws task ids: one that lands on a
    partition already taken is cancelled); the k-th kept gets ``rounds(k)`` rounds."""
    await client.wait_for_devices(8, prefix=f"{fleet}-")
    on_partition: dict[int, str] = {}
    for _ in range(80):
        if len(on_partition) == partitions:
            return dict(sorted(on_partition.items()))
        task_id = await client.create_federated_task(
            **_spec(fleet, rounds=rounds(len(on_partition)))
        )
        partition = instances.partition_of(task_id, partitions)
        if partition in on_partition:
            await client.cancel_task(task_id)
        else:
            on_partition[partition] = task_id
    raise AssertionError(f"no task on every partition in 80 tries: {on_partition}")


async def _finished(
    client: FedEngineClient, task_ids: Iterable[str], *, timeout_s: float
) -> list[dict[str, Any]]:
    return list(
        await asyncio.gather(
            *(
                client.wait_for_task(
                    task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=timeout_s
                )
                for task_id in task_ids
            )
        )
    )


def _subsets(items: list[int]) -> Iterator[set[int]]:
    for size in range(len(items) + 1):
        for chosen in itertools.combinations(items, size):
            yield set(chosen)


def _spec(fleet: str, *, rounds: int) -> dict[str, Any]:
    return {
        "task_name": "two instances",
        "participating_devices": [f"{fleet}-{i:04d}" for i in range(8)],
        "devices_per_round": 2,
        "min_devices": 2,
        "rounds": rounds,
        "round_timeout_s": 30,
        "privacy": PRIVACY,
    }


async def _start(client: FedEngineClient, task_ids: Iterable[str]) -> None:
    await asyncio.gather(*(client.start_federated_training(task_id) for task_id in task_ids))


async def _work(
    first: dict[str, Process], second: dict[str, Instance]
) -> dict[str, tuple[float, float]]:
    """Each service's work counter on (the supervisor's instance, the second instance)."""
    return {
        service: (
            await instances.counter(first[service], WORK[service]),
            await instances.counter(second[service].process, WORK[service]),
        )
        for service in SCALED
    }


async def _done(
    client: FedEngineClient, db: psycopg.AsyncConnection, task_ids: list[str]
) -> dict[str, float]:
    """The work the tasks ``task_ids`` made, per service, as the database and ledger record it."""
    ids = [uuid.UUID(t) for t in task_ids]
    closed = await _scalar(
        db, "SELECT count(*) FROM aggregator.rounds WHERE task_id = ANY(%s)", ids
    )
    applied = await _scalar(
        db,
        "SELECT count(*) FROM coordinator.rounds WHERE task_id = ANY(%s) AND status = 'completed'",
        ids,
    )
    decisions = 0
    for task_id in task_ids:
        budget = await client.get_privacy_budget(task_id)
        decisions += len(budget["audit"] or [])
    return {"aggregator": closed, "coordinator": applied, "privacy": decisions}


async def _scalar(db: psycopg.AsyncConnection, query: str, *params: object) -> float:
    cursor = await db.execute(query, params)
    row = await cursor.fetchone()
    assert row is not None
    return float(row[0])


async def _now(db: psycopg.AsyncConnection) -> Any:
    cursor = await db.execute("SELECT now()")
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def _closed_since(db: psycopg.AsyncConnection, task_id: str, since: Any) -> int:
    """Rounds of ``task_id`` the aggregator closed after ``since`` (database time)."""
    return int(
        await _scalar(
            db,
            "SELECT count(*) FROM aggregator.rounds WHERE task_id = %s AND closed_at > %s",
            uuid.UUID(task_id),
            since,
        )
    )


async def _assert_counted_once(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection, task_id: str, *, rounds: int
) -> None:
    """Every round of ``task_id`` completed once, aggregated each device once, was built once
    and charged once to the privacy ledger."""
    completed = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
    assert sorted(r["round_number"] for r in completed) == list(range(1, rounds + 1)), completed
    # The aggregator: one closed row per round id, its devices unique and exactly the
    # updates it accepted for that round.
    cursor = await db.execute(
        "SELECT round_id, round_number, attempt, outcome, participants FROM aggregator.rounds "
        "WHERE task_id = %s",
        (uuid.UUID(task_id),),
    )
    closed = await cursor.fetchall()
    aggregated = [(n, a) for _, n, a, outcome, _ in closed if outcome == "aggregate"]
    assert Counter(aggregated) == Counter((r["round_number"], r["attempt"]) for r in completed)
    for round_id, _, _, outcome, participants in closed:
        assert len(set(participants)) == len(participants), (round_id, participants)
        cursor = await db.execute(
            "SELECT device_id FROM aggregator.device_results "
            "WHERE round_id = %s AND status = 'accepted'",
            (round_id,),
        )
        accepted = [row[0] for row in await cursor.fetchall()]
        if outcome == "aggregate":
            assert sorted(accepted) == sorted(participants), (round_id, accepted, participants)
    # Each round's (noised) result went out as one set of bytes, however often it was sent.
    round_ids = {row[0] for row in closed if row[3] == "aggregate"}
    deltas: dict[uuid.UUID, set[bytes]] = defaultdict(set)
    for record in await all_records(stack.kafka, topics.ROUNDS):
        message = decoded(record)
        if isinstance(message, RoundAggregated) and message.round_id in round_ids:
            assert message.round_id is not None
            deltas[message.round_id].add(message.delta)
    assert set(deltas) == round_ids and all(len(d) == 1 for d in deltas.values()), deltas
    # The privacy ledger: one release per round that completed, none twice, one approval each.
    budget = await client.get_privacy_budget(task_id)
    releases = Counter((r["round_number"], r["attempt"]) for r in budget["release_log"])
    assert all(n == 1 for n in releases.values()), releases
    assert all(releases[(r["round_number"], r["attempt"])] == 1 for r in completed), releases
    approvals = [a for a in budget["audit"] if a["decision"] == "approved"]
    assert len(approvals) == sum(releases.values()), (approvals, releases)
