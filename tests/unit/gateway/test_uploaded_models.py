"""Models as artifacts in-process: POST /models checks the file and publishes it through a fake
producer; the lookups (GET /models/{id}, a task's initial_model) run against a fake database
that answers only the uploaded-models view. The real views are exercised in
tests/integration/test_gateway_uploaded_models.py."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from safetensors.numpy import save as save_safetensors

from fedcommon import auth, codec, model_files, signing, topics, trust
from fedcommon.messages.v1 import ModelUploaded, TaskCreateRequested
from fedengine_gateway import health
from fedengine_gateway.app import create_app
from fedengine_gateway.health import Dependency
from fedengine_gateway.settings import MODEL_UPLOAD_HEADROOM_BYTES, Settings

SECRET = "s" * 40
API = "/api/federated"
COORDINATOR_KEY = signing.public_key_bytes(signing.generate_private_key()).hex()
OCTETS = {"Content-Type": "application/octet-stream"}
# A small record limit, so that a file past the upload's bound is small too.
MAX_MESSAGE_BYTES = MODEL_UPLOAD_HEADROOM_BYTES + 32 * 1024


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value, key))


async def _up() -> None:
    return None


class FakeCursor:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    async def execute(self, query: str, params: tuple[Any, ...] = ()) -> FakeCursor:
        return self

    async def fetchall(self) -> list[Any]:
        return self.rows

    async def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


class FakeDatabase:
    """The coordinator's uploaded-models view, as rows by model id; every other view is empty.

    ``store_after`` lookups of a model in ``later`` find nothing before it appears (a
    coordinator that stores it a moment after the gateway's 202).
    """

    def __init__(self) -> None:
        self.models: dict[uuid.UUID, dict[str, Any]] = {}
        self.later: dict[uuid.UUID, dict[str, Any]] = {}
        self.store_after = 0
        self.lookups = 0

    def store(self, model_id: uuid.UUID, data: bytes, *, name: str = "model") -> dict[str, Any]:
        row = {
            "model_id": model_id,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "tensors": [t.as_json() for t in model_files.inspect(data)],
            "name": name,
            "uploaded_by": "unit",
            "uploaded_at": datetime.now(UTC),
        }
        self.models[model_id] = row
        return row

    def _rows(self, query: str, params: tuple[Any, ...]) -> list[Any]:
        if "uploaded_models_public" not in query:
            return [(0,)] if query.startswith("SELECT count(*)") else []
        if query.startswith("SELECT count(*)"):
            return [(len(self.models),)]
        if "WHERE model_id" not in query:
            assert "tensor_count" in query  # a list never carries the tensors
            return [
                {k: v for k, v in row.items() if k != "tensors"}
                | {"tensor_count": len(row["tensors"])}
                for row in self.models.values()
            ]
        (model_id,) = params
        self.lookups += 1
        if model_id in self.later and self.lookups > self.store_after:
            self.models[model_id] = self.later.pop(model_id)
        return [self.models[model_id]] if model_id in self.models else []

    def cursor(self, row_factory: Any = None) -> Any:
        database = self

        class Cursor(FakeCursor):
            async def execute(self, query: str, params: tuple[Any, ...] = ()) -> FakeCursor:
                self.rows = database._rows(query, params)
                return self

        return Cursor([])

    async def execute(self, query: str, params: tuple[Any, ...] = ()) -> FakeCursor:
        return FakeCursor(self._rows(query, params))

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[FakeDatabase]:
        yield self


def _client(
    producer: FakeProducer,
    database: FakeDatabase,
    role: auth.Role = auth.Role.OPERATOR,
    **settings_fields: Any,
) -> httpx.AsyncClient:
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr(SECRET),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        kafka={"max_message_bytes": MAX_MESSAGE_BYTES},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": COORDINATOR_KEY}},  # type: ignore[arg-type]
        max_body_bytes=4096,
        **settings_fields,
    )
    app = create_app(settings)  # no lifespan: this producer, this database, these checks
    app.state.settings = settings
    app.state.producer = producer
    app.state.pool = database
    app.state.prober = health.Prober(
        {Dependency.DATABASE: _up, Dependency.BROKER: _up}, timeout_s=0.2
    )
    token = auth.issue_token(secret=SECRET, subject="unit", role=role)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=f"http://gateway{API}",
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def database() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
async def api(producer: FakeProducer, database: FakeDatabase) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(producer, database) as client:
        yield client


def _model(values: float = 0.5) -> bytes:
    """A two-layer model file naming its update order (bias before weight: not sorted)."""
    return model_files.write(
        ["layer.bias", "layer.weight"],
        [np.full(3, values, dtype=np.float32), np.full((3, 4), values, dtype=np.float32)],
    )


# --- upload ----------------------------------------------------------------------------------


async def test_a_good_file_is_202_and_published_as_model_uploaded(
    api: httpx.AsyncClient, producer: FakeProducer
) -> None:
    # Prepare
    data = _model()

    # Execute
    response = await api.post("/models", params={"name": "my net"}, content=data, headers=OCTETS)

    # Assert: the answer names the file's id, digest, size and tensors in update order.
    assert response.status_code == 202, response.text
    body = response.json()
    digest = hashlib.sha256(data).hexdigest()
    assert body == {
        "model_id": body["model_id"],
        "sha256": digest,
        "size_bytes": len(data),
        "name": "my net",
        "tensors": [
            {"name": "layer.bias", "shape": [3], "dtype": "F32"},
            {"name": "layer.weight", "shape": [3, 4], "dtype": "F32"},
        ],
    }
    assert response.headers["Location"] == f"{API}/models/{body['model_id']}"
    ((topic, value, key),) = producer.sent
    assert topic == topics.topic_name("", topics.TASKS)
    assert key == body["model_id"].encode()
    message = codec.decode(value)
    assert isinstance(message, ModelUploaded)
    assert (str(message.model_id), message.sha256, message.data) == (body["model_id"], digest, data)
    assert (message.name, message.uploaded_by, message.producer) == ("my net", "unit", "gateway")


async def test_the_name_defaults_to_model_and_a_missing_content_type_is_taken(
    api: httpx.AsyncClient, producer: FakeProducer
) -> None:
    # Execute: httpx sends raw content without a Content-Type.
    response = await api.post("/models", content=_model())

    # Assert
    assert response.status_code == 202, response.text
    assert response.json()["name"] == "model"
    assert len(producer.sent) == 1


def _f16() -> bytes:
    return bytes(save_safetensors({"w": np.ones((2, 2), dtype=np.float16)}))


def _nan() -> bytes:
    return model_files.write(["w"], [np.array([1.0, np.nan], dtype=np.float32)])


def _inf() -> bytes:
    return model_files.write(["w"], [np.array([np.inf], dtype=np.float32)])


def _truncated() -> bytes:
    return _model()[:-4]


def _random() -> bytes:
    return np.random.default_rng(0).bytes(1000)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_f16, "tensor 'w' is F16: only F32 is taken"),
        (_nan, "tensor 'w' has values that are not finite"),
        (_inf, "tensor 'w' has values that are not finite"),
        (lambda: b"", "model file shorter than its 8-byte header length"),
        (lambda: b"not a safetensors file", "exceeds the file"),
        (_random, "exceeds the file"),
        (lambda: b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "model file holds no tensors"),
        (lambda: b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "model header is not a JSON object"),
        (_truncated, "model file's data is not exactly its tensors"),
    ],
    ids=["f16", "nan", "inf", "empty", "text", "random bytes", "no tensors", "a list", "truncated"],
)
async def test_a_file_the_platform_cannot_train_is_422_saying_why_and_nothing_is_sent(
    api: httpx.AsyncClient, producer: FakeProducer, make: Any, says: str
) -> None:
    # Execute
    response = await api.post("/models", content=make(), headers=OCTETS)

    # Assert
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body"], "bad_model_file")
    assert says in error["msg"]
    assert producer.sent == []


async def test_a_file_past_the_record_limit_is_413_naming_the_bound(
    api: httpx.AsyncClient, producer: FakeProducer
) -> None:
    # Prepare: a sound file, one tensor larger than the record limit less the headroom.
    bound = MAX_MESSAGE_BYTES - MODEL_UPLOAD_HEADROOM_BYTES
    data = model_files.write(["w"], [np.zeros(bound // 4 + 1, dtype=np.float32)])

    # Execute
    response = await api.post("/models", content=data, headers=OCTETS)

    # Assert
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert detail.startswith(f"model file larger than {bound} bytes")
    assert "KAFKA_MAX_MESSAGE_BYTES" in detail
    assert producer.sent == []


async def test_a_file_over_the_ordinary_body_limit_but_within_the_record_is_taken(
    api: httpx.AsyncClient, producer: FakeProducer
) -> None:
    # Prepare: 20 KB, five times the other routes' 4096-byte limit.
    data = model_files.write(["w"], [np.ones(5000, dtype=np.float32)])

    # Execute
    response = await api.post("/models", content=data, headers=OCTETS)
    other = await api.post("/tasks", content=data, headers={"Content-Type": "application/json"})

    # Assert
    assert response.status_code == 202, response.text
    assert other.status_code == 413
    assert len(producer.sent) == 1


def test_the_largest_file_fits_one_record_with_the_longest_names() -> None:
    # Prepare: the default record limit, a file as large as the gateway takes, longest names.
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr(SECRET),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": COORDINATOR_KEY}},  # type: ignore[arg-type]
    )
    message = ModelUploaded(
        producer="gateway",
        model_id=uuid.uuid4(),
        sha256="0" * 64,
        data=b"\xff" * settings.max_model_bytes,
        name="é" * 200,
        uploaded_by="é" * 200,
    )
    value = codec.encode(message)
    key = str(message.model_id).encode()
    signer = trust.Signer("gateway", signing.generate_private_key())

    # Execute
    headers = signer.headers("fed.tasks", key, value)

    # Assert: what the record carries besides the file stays well inside the headroom.
    size = len(value) + len(key) + sum(len(k) + len(v) for k, v in headers)
    assert size - settings.max_model_bytes < MODEL_UPLOAD_HEADROOM_BYTES // 8
    assert size < settings.kafka.max_message_bytes


async def test_a_viewer_may_not_upload(producer: FakeProducer, database: FakeDatabase) -> None:
    # Execute
    async with _client(producer, database, auth.Role.VIEWER) as viewer:
        response = await viewer.post("/models", content=_model(), headers=OCTETS)

    # Assert
    assert response.status_code == 403
    assert "needs operator" in response.json()["detail"]
    assert producer.sent == []


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_a_body_sent_as_a_form_is_415_saying_how_to_send_it(
    api: httpx.AsyncClient, producer: FakeProducer, content_type: str
) -> None:
    # Execute: what curl -d or -F sends.
    response = await api.post("/models", content=_model(), headers={"Content-Type": content_type})

    # Assert
    assert response.status_code == 415
    assert "Content-Type: application/octet-stream" in response.json()["detail"]
    assert producer.sent == []


@pytest.mark.parametrize("name", ["", "a\x00b", "x" * 201])
async def test_a_name_that_is_not_a_name_is_422(
    api: httpx.AsyncClient, producer: FakeProducer, name: str
) -> None:
    # Execute
    response = await api.post("/models", params={"name": name}, content=_model(), headers=OCTETS)

    # Assert
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "name"]
    assert producer.sent == []


# --- reads -------------------------------------------------------------------------------------


async def test_a_model_is_404_until_stored_then_shown_without_its_bytes(
    api: httpx.AsyncClient, database: FakeDatabase
) -> None:
    # Prepare
    model_id = uuid.uuid4()

    # Execute
    missing = await api.get(f"/models/{model_id}")
    database.store(model_id, _model(), name="mine")
    found = await api.get(f"/models/{model_id}")
    listed = await api.get("/models")

    # Assert
    assert missing.status_code == 404
    assert f"model {model_id} not found" in missing.json()["detail"]
    assert found.status_code == 200, found.text
    body = found.json()
    assert (body["name"], body["size_bytes"]) == ("mine", len(_model()))
    assert body["uploaded_by"] == "unit"
    assert [t["name"] for t in body["tensors"]] == ["layer.bias", "layer.weight"]
    assert "data" not in body
    summary = {k: v for k, v in body.items() if k != "tensors"} | {"tensor_count": 2}
    assert listed.json()["items"] == [summary] and listed.json()["total"] == 1


# --- tasks on an uploaded model ----------------------------------------------------------------


async def test_a_task_on_a_stored_model_is_published_with_no_built_in_model(
    api: httpx.AsyncClient, producer: FakeProducer, database: FakeDatabase
) -> None:
    # Prepare
    model_id = uuid.uuid4()
    row = database.store(model_id, _model())
    body = {
        "task_name": "t",
        "initial_model": {"model_id": str(model_id), "sha256": row["sha256"]},
        "federated_evaluation": {"every_rounds": 2, "min_devices": 2},
        "target_accuracy": 0.9,
    }

    # Execute
    response = await api.post("/tasks", json=body)

    # Assert
    assert response.status_code == 202, response.text
    ((_, value, _),) = producer.sent
    message = codec.decode(value)
    assert isinstance(message, TaskCreateRequested)
    spec = message.spec
    assert spec.initial_model is not None and spec.initial_model.model_id == model_id
    assert (spec.model_architecture, spec.dataset) == (None, None)
    assert spec.federated_evaluation is not None
    assert (spec.federated_evaluation.every_rounds, spec.federated_evaluation.min_devices) == (2, 2)


@pytest.mark.parametrize("stored", [False, True], ids=["unknown", "other sha256"])
async def test_a_task_on_a_model_not_uploaded_with_that_sha256_is_422(
    api: httpx.AsyncClient, producer: FakeProducer, database: FakeDatabase, stored: bool
) -> None:
    # Prepare
    model_id = uuid.uuid4()
    if stored:
        database.store(model_id, _model())
    body = {"task_name": "t", "initial_model": {"model_id": str(model_id), "sha256": "ab" * 32}}

    # Execute
    response = await api.post("/tasks", json=body)

    # Assert
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "initial_model"]
    assert error["msg"] == f"initial model {model_id} is not uploaded (or its sha256 differs)"
    assert producer.sent == []


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"dataset": "digits"}, "a task on an uploaded initial_model names no model_architecture"),
        ({"model_architecture": "mlp"}, "names no model_architecture and no dataset"),
        ({"target_accuracy": 0.9}, "target_accuracy and patience need an accuracy"),
    ],
    ids=["dataset", "model_architecture", "a target without federated evaluation"],
)
async def test_a_task_on_an_uploaded_model_against_the_spec_rules_is_422_before_any_lookup(
    api: httpx.AsyncClient,
    producer: FakeProducer,
    database: FakeDatabase,
    extra: dict[str, Any],
    says: str,
) -> None:
    # Prepare
    body = {"task_name": "t", "initial_model": {"model_id": str(uuid.uuid4()), "sha256": "ab" * 32}}

    # Execute
    response = await api.post("/tasks", json=body | extra)

    # Assert
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert says in error["msg"]
    assert database.lookups == 0
    assert producer.sent == []


@pytest.mark.parametrize(
    "body",
    [
        {"dataset": None},
        {"model_architecture": None},
        {"initial_model": {"model_id": str(uuid.uuid4()), "sha256": "ab" * 32, "size": 1}},
        {"federated_evaluation": {"every_rounds": 0}},
        {"federated_evaluation": {"fraction": 1.5}},
    ],
    ids=["no dataset", "no model", "unknown field", "every 0 rounds", "fraction past 1"],
)
async def test_a_task_with_no_model_or_a_bad_section_is_422(
    api: httpx.AsyncClient, producer: FakeProducer, body: dict[str, Any]
) -> None:
    # Execute
    response = await api.post("/tasks", json={"task_name": "t"} | body)

    # Assert
    assert response.status_code == 422, response.text
    assert producer.sent == []


async def test_a_task_right_after_its_upload_waits_for_the_model_to_be_stored(
    api: httpx.AsyncClient, producer: FakeProducer, database: FakeDatabase
) -> None:
    # Prepare: the coordinator stores the model on the third lookup.
    data = _model()
    uploaded = (await api.post("/models", content=data, headers=OCTETS)).json()
    model_id = uuid.UUID(uploaded["model_id"])
    row = database.store(model_id, data)
    database.later[model_id] = database.models.pop(model_id)
    database.store_after = 2
    body = {
        "task_name": "t",
        "initial_model": {"model_id": str(model_id), "sha256": row["sha256"]},
        "federated_evaluation": {},
    }

    # Execute
    response = await api.post("/tasks", json=body)

    # Assert
    assert response.status_code == 202, response.text
    assert database.lookups == 3
    assert len(producer.sent) == 2


async def test_a_built_in_task_keeps_its_defaults_and_takes_federated_evaluation(
    api: httpx.AsyncClient, producer: FakeProducer, database: FakeDatabase
) -> None:
    # Execute
    response = await api.post("/tasks", json={"task_name": "t", "federated_evaluation": {}})

    # Assert: no lookup for a task on a built-in model.
    assert response.status_code == 202, response.text
    message = codec.decode(producer.sent[0][1])
    assert isinstance(message, TaskCreateRequested)
    assert (message.spec.model_architecture, message.spec.dataset) == ("mlp", "digits")
    assert message.spec.federated_evaluation is not None
    assert database.lookups == 0
