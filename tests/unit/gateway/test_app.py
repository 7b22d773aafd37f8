"""The gateway app in-process, for the paths that need neither the database nor a broker: auth,
validation, the body limit, publishing through a fake producer, and the broker-down answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr

from fedcommon import auth, codec
from fedcommon.messages.v1 import TaskCreateRequested
from fedengine_gateway.app import create_app
from fedengine_gateway.settings import Settings

SECRET = "s" * 40
API = "/api/federated"


class FakeProducer:
    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.error = error

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, value, key))


def _client(producer: FakeProducer, role: auth.Role = auth.Role.ADMIN) -> httpx.AsyncClient:
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr(SECRET),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": "00" * 32}},  # type: ignore[arg-type]
        max_body_bytes=4096,
    )
    app = create_app(settings)  # no lifespan: no pool, and this producer
    app.state.settings = settings
    app.state.producer = producer
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
async def api(producer: FakeProducer) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(producer) as client:
        yield client


async def test_an_accepted_task_is_published_as_the_bus_spec(
    api: httpx.AsyncClient, producer: FakeProducer
) -> None:
    response = await api.post("/tasks", json={"task_name": "t", "seed": 2**32 - 1})
    assert response.status_code == 202, response.text
    ((_, value, _),) = producer.sent
    message = codec.decode(value)
    assert isinstance(message, TaskCreateRequested)
    assert (message.spec.seed, message.issued_by) == (2**32 - 1, "unit")


@pytest.mark.parametrize("subject", ["a\x00b", "x" * 201, ""])
async def test_a_subject_that_is_not_a_name_is_401_before_anything_is_sent(
    api: httpx.AsyncClient, producer: FakeProducer, subject: str
) -> None:
    token = auth.issue_token(secret=SECRET, subject=subject, role=auth.Role.ADMIN)
    response = await api.post("/cleanup", json={}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert producer.sent == []


async def test_a_cross_field_error_is_422_naming_the_rule(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/tasks", json={"task_name": "t", "devices_per_round": 2, "min_devices": 3}
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert "min_devices must not exceed devices_per_round" in error["msg"]


async def test_a_body_over_the_limit_is_413(api: httpx.AsyncClient) -> None:
    response = await api.post("/tasks", json={"task_name": "t" * 5000})
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 4096 bytes"}


async def test_an_unavailable_broker_is_503_with_a_json_body() -> None:
    producer = FakeProducer(error=KafkaConnectionError("no broker"))
    async with _client(producer, auth.Role.OPERATOR) as client:
        response = await client.post("/tasks", json={"task_name": "t"})
    assert response.status_code == 503
    assert "broker unavailable" in response.json()["detail"]
