"""The gateway's reads for models as artifacts and federated evaluation, on the coordinator's
real views (migration 009) in a real PostgreSQL: uploaded models listed and shown, a task's
initial_model checked against them, rounds' federated metrics and a task's latest accuracy,
evaluations listed, and a device asked to evaluate a version fetching it as itself.

No broker and no services: the test writes the coordinator's tables as the coordinator would,
runs the gateway in-process with a producer that records what it would send, and migrates a
fresh database of its own (TEST_DATABASE_URL's server, else an embedded PostgreSQL).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from fedcommon import auth, codec, db, model_files, signing
from fedcommon.messages.v1 import (
    FederatedEvaluationSpec,
    InitialModel,
    TaskCreateRequested,
    TaskSpec,
)
from fedcommon.settings import PostgresSettings
from fedengine import infra
from fedengine_gateway import health
from fedengine_gateway.app import create_app
from fedengine_gateway.health import Dependency
from fedengine_gateway.settings import Settings
from tests.integration.conftest import TestEnvironment, _drop_database, _fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SECRET = "s" * 40
API = "/api/federated"
COORDINATOR_KEY = signing.public_key_bytes(signing.generate_private_key()).hex()
SCHEMAS = {
    "registry": "fedengine_registry",
    "coordinator": "fedengine_coordinator",
    "aggregator": "fedengine_aggregator",
}


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value, key))


async def _up() -> None:
    return None


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    environment = TestEnvironment()
    if environment.database_url is not None:
        server = environment.database_url.get_secret_value()
        url = _fresh_database(server)
        try:
            yield url
        finally:
            _drop_database(server, url)
        return
    pgdata = tmp_path_factory.mktemp("gateway-models") / "pgdata"
    _, url = infra.start_postgres(pgdata)
    try:
        yield url
    finally:
        infra.stop_postgres(pgdata)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    opened = await db.open_pool(PostgresSettings(DATABASE_URL=database_url), name="gateway-models")
    try:
        for schema, package in SCHEMAS.items():
            await db.migrate(opened, schema=schema, package=package)
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def producer() -> RecordingProducer:
    return RecordingProducer()


@pytest_asyncio.fixture(loop_scope="session")
async def api(
    pool: AsyncConnectionPool, producer: RecordingProducer
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr(SECRET),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": COORDINATOR_KEY}},  # type: ignore[arg-type]
        projection_wait_s=0.2,
    )
    app = create_app(settings)  # no lifespan: this pool, this producer, these checks
    app.state.settings = settings
    app.state.pool = pool
    app.state.producer = producer
    app.state.prober = health.Prober(
        {Dependency.DATABASE: _up, Dependency.BROKER: _up}, timeout_s=1.0
    )
    token = auth.issue_token(secret=SECRET, subject="pytest", role=auth.Role.OPERATOR)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=f"http://gateway{API}",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


def _model_file(scale: float = 1.0) -> bytes:
    return model_files.write(
        ["fc.weight", "fc.bias"],
        [np.full((2, 3), scale, dtype=np.float32), np.zeros(2, dtype=np.float32)],
    )


async def _store_model(pool: AsyncConnectionPool, data: bytes, *, name: str) -> uuid.UUID:
    """Keep ``data`` as the coordinator keeps a model.uploaded."""
    model_id = uuid.uuid4()
    tensors = [t.as_json() for t in model_files.inspect(data)]
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO coordinator.uploaded_models (model_id, sha256, data, tensors, name, "
            "uploaded_by) VALUES (%s, %s, %s, %s, %s, 'alice')",
            (model_id, hashlib.sha256(data).hexdigest(), data, Jsonb(tensors), name),
        )
    return model_id


async def _store_task(pool: AsyncConnectionPool, spec: TaskSpec) -> uuid.UUID:
    task_id = uuid.uuid4()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO coordinator.tasks (task_id, task_name, spec, state, created_by, "
            "current_round, started_at) VALUES (%s, %s, %s, 'running', 'alice', 2, now())",
            (task_id, spec.task_name, Jsonb(spec.model_dump(mode="json"))),
        )
    return task_id


async def _store_round(
    pool: AsyncConnectionPool,
    task_id: uuid.UUID,
    number: int,
    *,
    accuracy: float | None,
    fed: tuple[float, float, int, int] | None,
) -> None:
    fed_accuracy, fed_loss, fed_examples, fed_devices = fed or (None, None, None, None)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO coordinator.rounds (round_id, task_id, round_number, attempt, status, "
            "participants, model_version_in, model_version_out, deadline, closed_at, accuracy, "
            "loss, fed_accuracy, fed_loss, fed_examples, fed_devices) VALUES (%s, %s, %s, 0, "
            "'completed', ARRAY['d0'], %s, %s, now(), now(), %s, %s, %s, %s, %s, %s)",
            (
                uuid.uuid4(),
                task_id,
                number,
                number - 1,
                number,
                accuracy,
                None if accuracy is None else 0.5,
                fed_accuracy,
                fed_loss,
                fed_examples,
                fed_devices,
            ),
        )


async def test_uploaded_models_are_listed_newest_first_and_shown_one_by_one(
    api: httpx.AsyncClient, pool: AsyncConnectionPool
) -> None:
    # Prepare
    first = await _store_model(pool, _model_file(1.0), name="first")
    second = await _store_model(pool, _model_file(2.0), name="second")

    # Execute
    page = (await api.get("/models", params={"limit": 500})).json()
    one = await api.get(f"/models/{first}")
    missing = await api.get(f"/models/{uuid.uuid4()}")

    # Assert
    ids = [item["model_id"] for item in page["items"]]
    assert ids.index(str(second)) < ids.index(str(first))
    assert page["total"] >= 2
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["sha256"] == hashlib.sha256(_model_file(1.0)).hexdigest()
    assert (body["name"], body["uploaded_by"], body["size_bytes"]) == (
        "first",
        "alice",
        len(_model_file(1.0)),
    )
    assert body["tensors"] == [
        {"name": "fc.weight", "shape": [2, 3], "dtype": "F32"},
        {"name": "fc.bias", "shape": [2], "dtype": "F32"},
    ]
    assert missing.status_code == 404


async def test_a_task_names_a_stored_model_by_id_and_sha256_or_is_422(
    api: httpx.AsyncClient, pool: AsyncConnectionPool, producer: RecordingProducer
) -> None:
    # Prepare
    data = _model_file(3.0)
    model_id = await _store_model(pool, data, name="net")
    digest = hashlib.sha256(data).hexdigest()

    def body(model: uuid.UUID, sha256: str) -> dict[str, Any]:
        return {
            "task_name": "on my model",
            "initial_model": {"model_id": str(model), "sha256": sha256},
            "federated_evaluation": {"min_devices": 2},
        }

    # Execute
    accepted = await api.post("/tasks", json=body(model_id, digest))
    other_digest = await api.post("/tasks", json=body(model_id, "0" * 64))
    unknown = await api.post("/tasks", json=body(uuid.uuid4(), digest))

    # Assert
    assert accepted.status_code == 202, accepted.text
    ((_, value, _),) = producer.sent
    message = codec.decode(value)
    assert isinstance(message, TaskCreateRequested)
    assert message.spec.initial_model == InitialModel(model_id=model_id, sha256=digest)
    for refused in (other_digest, unknown):
        assert refused.status_code == 422
        (error,) = refused.json()["detail"]
        assert error["loc"] == ["body", "initial_model"]
        assert "is not uploaded (or its sha256 differs)" in error["msg"]


async def test_rounds_show_federated_metrics_and_the_task_its_devices_accuracy(
    api: httpx.AsyncClient, pool: AsyncConnectionPool
) -> None:
    # Prepare: a task evaluated by devices every other round, and a built-in one that is not.
    model_id = await _store_model(pool, _model_file(), name="net")
    uploaded = TaskSpec(
        task_name="evaluated",
        initial_model=InitialModel(
            model_id=model_id, sha256=hashlib.sha256(_model_file()).hexdigest()
        ),
        federated_evaluation=FederatedEvaluationSpec(every_rounds=2),
    )
    evaluated = await _store_task(pool, uploaded)
    await _store_round(pool, evaluated, 1, accuracy=None, fed=None)
    await _store_round(pool, evaluated, 2, accuracy=None, fed=(0.8, 0.4, 1200, 3))
    await _store_round(pool, evaluated, 3, accuracy=None, fed=None)
    central = await _store_task(pool, TaskSpec(task_name="central"))
    await _store_round(pool, central, 1, accuracy=0.7, fed=None)

    # Execute
    rounds = (await api.get(f"/tasks/{evaluated}/rounds")).json()["items"]
    task = (await api.get(f"/tasks/{evaluated}")).json()
    central_task = (await api.get(f"/tasks/{central}")).json()

    # Assert: the latest round the devices evaluated gives the task's accuracy.
    assert [
        (r["fed_accuracy"], r["fed_loss"], r["fed_examples"], r["fed_devices"]) for r in rounds
    ] == [
        (None, None, None, None),
        (0.8, 0.4, 1200, 3),
        (None, None, None, None),
    ]
    assert task["latest_accuracy"] == 0.8
    assert task["initial_model"]["model_id"] == str(model_id)
    assert task["federated_evaluation"]["every_rounds"] == 2
    assert central_task["latest_accuracy"] == 0.7
    assert central_task["federated_evaluation"] is None


async def test_a_tasks_evaluations_are_listed_oldest_first(
    api: httpx.AsyncClient, pool: AsyncConnectionPool
) -> None:
    # Prepare
    task_id = await _store_task(
        pool, TaskSpec(task_name="t", federated_evaluation=FederatedEvaluationSpec())
    )
    closed, open_ = uuid.uuid4(), uuid.uuid4()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO coordinator.evaluations (evaluation_id, task_id, round_number, "
            "model_version, devices, deadline, status, answered, num_examples, loss, accuracy, "
            "metrics, closed_at) VALUES (%s, %s, 1, 1, ARRAY['a', 'b', 'c'], now(), "
            "'completed', 2, 300, 0.25, 0.9, %s, now())",
            (closed, task_id, Jsonb({"accuracy": 0.9, "f1": 0.8})),
        )
        await conn.execute(
            "INSERT INTO coordinator.evaluations (evaluation_id, task_id, round_number, "
            "model_version, devices, deadline) VALUES (%s, %s, 2, 2, ARRAY['a'], now())",
            (open_, task_id),
        )

    # Execute
    page = (await api.get(f"/tasks/{task_id}/evaluations")).json()
    other = (await api.get(f"/tasks/{uuid.uuid4()}/evaluations")).json()

    # Assert
    assert page["total"] == 2
    first, second = page["items"]
    assert (first["evaluation_id"], first["asked"], first["answered"]) == (str(closed), 3, 2)
    assert (first["status"], first["num_examples"], first["loss"], first["accuracy"]) == (
        "completed",
        300,
        0.25,
        0.9,
    )
    assert first["metrics"] == {"accuracy": 0.9, "f1": 0.8}
    assert (second["evaluation_id"], second["status"], second["accuracy"]) == (
        str(open_),
        "open",
        None,
    )
    assert second["closed_at"] is None
    assert other == {"items": [], "total": 0, "limit": 100, "offset": 0}


async def test_a_device_asked_to_evaluate_a_version_fetches_it_as_itself(
    api: httpx.AsyncClient, pool: AsyncConnectionPool
) -> None:
    # Prepare: an enrolled device asked to evaluate version 4, and one that was not asked.
    key = signing.generate_private_key()
    asked, outsider = f"eval-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    task_id = await _store_task(
        pool, TaskSpec(task_name="t", federated_evaluation=FederatedEvaluationSpec())
    )
    data = _model_file(4.0)
    async with pool.connection() as conn:
        for device_id in (asked, outsider):
            await conn.execute(
                "INSERT INTO registry.devices (device_id, device_name, device_type, "
                "privacy_level, capabilities, public_key, status) VALUES (%s, 'd', 'iot', "
                "'none', '{}', %s, 'online')",
                (device_id, signing.public_key_bytes(key)),
            )
        await conn.execute(
            "INSERT INTO coordinator.models (task_id, version, sha256, size_bytes, data) "
            "VALUES (%s, 4, %s, %s, %s)",
            (task_id, hashlib.sha256(data).hexdigest(), len(data), data),
        )
        await conn.execute(
            "INSERT INTO coordinator.evaluations (evaluation_id, task_id, round_number, "
            "model_version, devices, deadline) VALUES (%s, %s, 4, 4, %s, now())",
            (uuid.uuid4(), task_id, [asked]),
        )

    def signed(device_id: str) -> dict[str, str]:
        sent_at_us = time.time_ns() // 1000
        payload = signing.model_fetch_payload(
            device_id=device_id, task_id=task_id, version=4, sent_at_us=sent_at_us
        )
        return {"X-Device-Sent-At": str(sent_at_us), "X-Device-Signature": key.sign(payload).hex()}

    # Execute
    served = await api.get(
        f"/devices/{asked}/tasks/{task_id}/models/4", headers=signed(asked) | {"Authorization": ""}
    )
    refused = await api.get(
        f"/devices/{outsider}/tasks/{task_id}/models/4",
        headers=signed(outsider) | {"Authorization": ""},
    )

    # Assert
    assert served.status_code == 200, served.text
    assert served.content == data
    assert served.headers["X-Model-Version"] == "4"
    assert refused.status_code == 403
