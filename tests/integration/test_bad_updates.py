"""NaN, wrong-shape, foreign-signature and replayed updates are rejected and counted while the
round completes with the valid ones. The test plays three devices with keys it holds."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import psycopg
import pytest

from fedcommon import arrays, codec, datasets, models, signing, topics
from fedcommon.messages.v1 import (
    DeviceType,
    ModelArchitecture,
    TrainRequested,
    UpdateMetrics,
    UpdateSubmitted,
)
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.kafka_tools import enrol, find_record, send

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def signed_update(
    request: TrainRequested,
    device_id: str,
    key: Any,
    delta: list[np.ndarray],
    *,
    signer: Any = None,
) -> UpdateSubmitted:
    update = arrays.to_bytes(delta)
    assert request.round_id is not None
    payload = signing.update_payload(
        task_id=request.task_id,
        round_id=request.round_id,
        device_id=device_id,
        round_number=request.round_number,
        model_version=request.model_version,
        num_examples=10,
        update=update,
    )
    return UpdateSubmitted(
        producer="pytest",
        round_id=request.round_id,
        task_id=request.task_id,
        device_id=device_id,
        round_number=request.round_number,
        model_version=request.model_version,
        num_examples=10,
        update=update,
        metrics=UpdateMetrics(train_loss=1.0, train_accuracy=0.5, duration_s=0.01),
        signature=(signer or key).sign(payload),
    )


async def test_bad_updates_are_rejected_and_counted_while_the_round_completes(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    tag = uuid.uuid4().hex[:6]
    names = [f"manual-{tag}-{c}" for c in "abc"]
    keys = {name: await enrol(stack.kafka, name, device_type=DeviceType.DESKTOP) for name in names}
    await client.wait_for_devices(3, prefix=f"manual-{tag}-")
    task_id = await client.create_federated_task(
        task_name="bad updates",
        participating_devices=names,
        devices_per_round=3,
        min_devices=3,
        rounds=1,
        round_timeout_s=30,
    )
    await client.start_federated_training(task_id)
    requests: dict[str, TrainRequested] = {}
    for name in names:
        record = await find_record(
            stack.kafka, topics.DEVICE_COMMANDS, lambda r, n=name: r.key == n.encode()
        )
        message = codec.decode(record.value)
        assert isinstance(message, TrainRequested)
        requests[name] = message
    a, b, c = names
    dataset = datasets.load_dataset("digits")
    shapes = [
        w.shape
        for w in models.get_arrays(
            models.build_model(
                ModelArchitecture.MLP, input_shape=dataset.input_shape, num_classes=10, seed=0
            )
        )
    ]
    good = [np.full(s, 0.001, dtype=np.float32) for s in shapes]
    nan = [g.copy() for g in good]
    nan[0][0, 0] = np.nan
    wrong_shape = [np.zeros((3, 3), dtype=np.float32), *good[1:]]

    valid_a = signed_update(requests[a], a, keys[a], good)
    for update in (
        signed_update(requests[b], b, keys[b], nan),
        signed_update(requests[c], c, keys[c], wrong_shape),
        signed_update(requests[c], c, keys[c], good, signer=keys[a]),
        valid_a,
        valid_a,  # replayed: the very same signed message again
        signed_update(requests[b], b, keys[b], good),
        signed_update(requests[c], c, keys[c], good),
    ):
        await send(stack.kafka, topics.UPDATES, key=task_id, message=update)

    task = await client.wait_for_task(
        task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=60
    )
    assert task["state"] == "completed"
    (round_row,) = await client.get_rounds(task_id)
    assert round_row["status"] == "completed"
    assert sorted(round_row["aggregated"]) == sorted(names)
    assert round_row["rejected"] == {
        "non_finite": 1,
        "wrong_shape": 1,
        "bad_signature": 1,
        "duplicate": 1,
    }
    cursor = await db.execute(
        "SELECT reason, count(*) FROM aggregator.device_results WHERE task_id = %s "
        "AND status = 'rejected' GROUP BY reason ORDER BY reason",
        (uuid.UUID(task_id),),
    )
    assert await cursor.fetchall() == [
        ("bad_signature", 1),
        ("duplicate", 1),
        ("non_finite", 1),
        ("wrong_shape", 1),
    ]
    status = await client.get_status()
    assert status["updates"]["non_finite"] >= 1
    # The applied delta is the mean of three identical valid updates.
    new, _, _ = await client.download_model(task_id, version=1)
    old, _, _ = await client.download_model(task_id, version=0)
    model_new = models.load_into(
        models.build_model(
            ModelArchitecture.MLP, input_shape=dataset.input_shape, num_classes=10, seed=0
        ),
        new,
    )
    model_old = models.load_into(
        models.build_model(
            ModelArchitecture.MLP, input_shape=dataset.input_shape, num_classes=10, seed=0
        ),
        old,
    )
    for after, before in zip(
        models.get_arrays(model_new), models.get_arrays(model_old), strict=True
    ):
        np.testing.assert_allclose(after - before, 0.001, atol=1e-6)
