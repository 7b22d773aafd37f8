"""A task's strategy end to end: chosen over REST, carried to the aggregator and the devices,
and a server optimizer's state stored with every model version it produced."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import numpy as np
import psycopg
import pytest
from aiokafka import ConsumerRecord

from fedcommon import arrays, codec, topics
from fedcommon.messages.v1 import (
    FedAdamStrategy,
    FedProxStrategy,
    RoundAggregated,
    RoundOpened,
    TrainRequested,
)
from fedcommon.server_opt import Adam
from fedengine.sdk import FedEngineClient, FedEngineError
from tests.integration.conftest import Stack
from tests.integration.helpers import run_fleet_task
from tests.integration.kafka_tools import decoded, find_records, send
from tests.integration.manual_devices import constant_delta, mlp_arrays, open_manual_round

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _of_task(task_id: str, kind: type) -> Any:
    def match(record: ConsumerRecord) -> bool:
        message = decoded(record)
        return isinstance(message, kind) and str(getattr(message, "task_id", "")) == task_id

    return match


async def test_a_fedadam_task_steps_its_server_optimizer_and_stores_its_state(
    stack: Stack, client: FedEngineClient, fleet: str, db: psycopg.AsyncConnection
) -> None:
    # Prepare
    strategy = {"name": "fedadam", "params": {"eta": 0.05, "beta1": 0.8}}

    # Execute
    task_id = await run_fleet_task(client, fleet, rounds=3, strategy=strategy)

    # Assert: the task shows its strategy, defaults filled in.
    task = await client.get_task(task_id)
    assert (task["state"], task["stop_reason"]) == ("completed", "max_rounds")
    assert task["strategy"] == {
        "name": "fedadam",
        "params": {"eta": 0.05, "beta1": 0.8, "beta2": 0.99, "tau": 0.001, "max_examples": 10**8},
    }
    # Every version after the first carries the optimizer state that produced it ...
    cursor = await db.execute(
        "SELECT version, data, optimizer_state FROM coordinator.models "
        "WHERE task_id = %s ORDER BY version",
        (UUID(task_id),),
    )
    versions = {v: (bytes(d), s and bytes(s)) for v, d, s in await cursor.fetchall()}
    assert sorted(versions) == [0, 1, 2, 3]
    assert versions[0][1] is None
    optimizer = Adam(eta=0.05, beta1=0.8)
    shapes = [list(a.shape) for a in mlp_arrays(versions[0][0])]
    # ... and each is exactly one Adam step from the one before, on the round's published delta.
    cursor = await db.execute(
        "SELECT round_id, model_version_out FROM coordinator.rounds "
        "WHERE task_id = %s AND status = 'completed' ORDER BY round_number",
        (UUID(task_id),),
    )
    completed = {str(r): v for r, v in await cursor.fetchall()}
    results = await find_records(
        stack.kafka,
        topics.ROUNDS,
        [
            lambda r, rid=rid: (
                isinstance(m := decoded(r), RoundAggregated) and str(m.round_id) == rid
            )
            for rid in completed
        ],
    )
    for record in results:
        result = codec.decode(record.value)
        assert isinstance(result, RoundAggregated)
        version = completed[str(result.round_id)]
        before_data, before_state = versions[version - 1]
        state = (
            optimizer.initial_state(shapes)
            if before_state is None
            else optimizer.load_state(before_state, shapes)
        )
        step = optimizer.step(mlp_arrays(before_data), arrays.from_bytes(result.delta), state)
        after_data, after_state = versions[version]
        for got, want in zip(mlp_arrays(after_data), step.model, strict=True):
            np.testing.assert_array_equal(got, want)
        assert after_state == step.state.to_bytes()
        assert optimizer.load_state(after_state, shapes).step == version
    # The aggregator was told the strategy; the devices were told no proximal term.
    opened, request = await find_records(
        stack.kafka,
        topics.UPDATES,
        [_of_task(task_id, RoundOpened)],
    ) + await find_records(stack.kafka, topics.DEVICE_COMMANDS, [_of_task(task_id, TrainRequested)])
    opened_message = codec.decode(opened.value)
    assert isinstance(opened_message, RoundOpened)
    assert isinstance(opened_message.strategy, FedAdamStrategy)
    assert opened_message.strategy.params.eta == 0.05
    request_message = codec.decode(request.value)
    assert isinstance(request_message, TrainRequested)
    assert request_message.proximal_mu == 0.0


async def test_a_fedprox_task_sends_mu_to_every_device(
    stack: Stack, client: FedEngineClient, fleet: str
) -> None:
    # Execute
    task_id = await run_fleet_task(
        client, fleet, rounds=1, strategy={"name": "fedprox", "params": {"mu": 0.25}}
    )

    # Assert
    task = await client.get_task(task_id)
    assert task["state"] == "completed"
    opened, request = await find_records(
        stack.kafka, topics.UPDATES, [_of_task(task_id, RoundOpened)]
    ) + await find_records(stack.kafka, topics.DEVICE_COMMANDS, [_of_task(task_id, TrainRequested)])
    opened_message, request_message = codec.decode(opened.value), codec.decode(request.value)
    assert isinstance(opened_message, RoundOpened)
    assert opened_message.strategy == FedProxStrategy.model_validate({"params": {"mu": 0.25}})
    assert isinstance(request_message, TrainRequested)
    assert request_message.proximal_mu == 0.25


async def test_a_round_too_short_for_krum_fails_saying_so(
    stack: Stack, client: FedEngineClient
) -> None:
    # Prepare: Krum with f = 0 needs 3 updates; only one device answers.
    manual = await open_manual_round(
        stack,
        client,
        label="krum",
        count=3,
        round_timeout_s=5,
        max_round_retries=0,
        strategy={"name": "krum", "params": {"f": 0}},
    )
    first = manual.names[0]

    # Execute
    await send(
        stack.kafka,
        topics.UPDATES,
        key=manual.task_id,
        message=manual.update(first, constant_delta(0.001)),
    )
    async with manual.heartbeating(stack):
        task = await client.wait_for_task(
            manual.task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=60
        )

    # Assert
    assert (task["state"], task["stop_reason"]) == ("failed", "round_failed")
    (round_,) = await client.get_rounds(manual.task_id)
    assert round_["failure"] == "1 of 3 updates by the deadline (strategy krum needs at least 3)"
    (opened,) = await find_records(
        stack.kafka, topics.UPDATES, [_of_task(manual.task_id, RoundOpened)]
    )
    message = codec.decode(opened.value)
    assert isinstance(message, RoundOpened)
    assert (message.strategy.name, message.min_updates) == ("krum", 3)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            {"strategy": {"name": "fedadam", "params": {"lr": 0.1}}},
            ["body", "strategy", "fedadam", "params", "lr"],
        ),
        ({"strategy": {"name": "fedsgd"}}, ["body", "strategy"]),
        ({"min_devices": 2, "strategy": {"name": "krum"}}, ["body"]),
    ],
    ids=["unknown param", "unknown name", "min_devices below krum's"],
)
async def test_a_strategy_the_aggregator_could_not_run_is_422(
    client: FedEngineClient, body: dict[str, Any], loc: list[str]
) -> None:
    # Execute
    with pytest.raises(FedEngineError) as caught:
        await client.create_federated_task(task_name="refused", devices_per_round=4, **body)

    # Assert
    assert caught.value.status_code == 422
    (error,) = caught.value.detail
    assert error["loc"] == loc


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        # Five devices send constant deltas 0.001 .. 0.004 and one far-off 5.0 (a poisoner
        # inside the norm bound): the median is the middle value, the trimmed mean (one of five
        # trimmed from each side) the mean of the middle three, FedAvg is dragged by 5.0.
        ({"name": "median", "params": {}}, 0.003),
        ({"name": "trimmed_mean", "params": {"beta": 0.2}}, 0.003),
        ({"name": "fedavg", "params": {}}, (0.001 + 0.002 + 0.003 + 0.004 + 5.0) / 5),
    ],
    ids=["median", "trimmed_mean", "fedavg"],
)
async def test_the_aggregator_applies_the_task_s_rule(
    stack: Stack, client: FedEngineClient, strategy: dict[str, Any], expected: float
) -> None:
    # Prepare
    manual = await open_manual_round(
        stack,
        client,
        label=strategy["name"].replace("_", ""),
        count=5,
        max_update_norm=1e6,
        strategy=strategy,
    )
    values = [0.001, 0.002, 0.003, 0.004, 5.0]

    # Execute
    for name, value in zip(manual.names, values, strict=True):
        await send(
            stack.kafka,
            topics.UPDATES,
            key=manual.task_id,
            message=manual.update(name, constant_delta(value)),
        )
    async with manual.heartbeating(stack):
        task = await client.wait_for_task(
            manual.task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=60
        )

    # Assert: the published delta is the rule's, coordinate by coordinate.
    assert task["state"] == "completed", task
    (result,) = await find_records(
        stack.kafka, topics.ROUNDS, [_of_task(manual.task_id, RoundAggregated)]
    )
    message = codec.decode(result.value)
    assert isinstance(message, RoundAggregated)
    for array in arrays.from_bytes(message.delta):
        np.testing.assert_allclose(array, expected, rtol=1e-5)
