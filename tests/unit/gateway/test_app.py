"""The gateway app in-process, for the paths that need neither the database nor a broker: auth,
validation, the body limit, publishing through a fake producer, the broker-down answers, and
/health and /ready over checks that are plain coroutines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr

from fedcommon import auth, codec, signing
from fedcommon.messages.v1 import STRATEGY_TYPES, SecureAggregationSpec, TaskCreateRequested
from fedengine_gateway import health
from fedengine_gateway.app import create_app
from fedengine_gateway.health import Dependency
from fedengine_gateway.settings import Settings

SECRET = "s" * 40
API = "/api/federated"
# A sound service key (the all-zero key is refused as small order: fedcommon.ed25519_keys).
COORDINATOR_KEY = signing.public_key_bytes(signing.generate_private_key()).hex()


class FakeProducer:
    def __init__(self, error: Exception | None = None, *, silent: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.error = error
        self.silent = silent  # never acknowledges, like a broker that stopped answering

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if self.error is not None:
            raise self.error
        if self.silent:
            await asyncio.Event().wait()
        self.sent.append((topic, value, key))


async def _up() -> None:
    return None


async def _down() -> None:
    raise ConnectionRefusedError("refused")


def _client(
    producer: FakeProducer,
    role: auth.Role = auth.Role.ADMIN,
    *,
    database: health.Check = _up,
    broker: health.Check = _up,
    **settings_fields: Any,
) -> httpx.AsyncClient:
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr(SECRET),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": COORDINATOR_KEY}},  # type: ignore[arg-type]
        max_body_bytes=4096,
        health_timeout_s=0.2,
        **settings_fields,
    )
    app = create_app(settings)  # no lifespan: no pool, and this producer and these checks
    app.state.settings = settings
    app.state.producer = producer
    app.state.prober = health.Prober(
        {Dependency.DATABASE: database, Dependency.BROKER: broker},
        timeout_s=settings.health_timeout_s,
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


async def test_a_command_while_the_broker_does_not_answer_is_503_and_nothing_is_buffered() -> None:
    producer = FakeProducer()
    async with _client(producer, auth.Role.OPERATOR, broker=_down) as client:
        response = await client.post("/tasks", json={"task_name": "t"})
    assert response.status_code == 503
    assert response.json() == {"detail": "message broker unavailable: the command was not sent"}
    assert producer.sent == []


async def test_a_command_the_broker_does_not_acknowledge_is_503_within_the_bound() -> None:
    producer = FakeProducer(silent=True)
    async with _client(producer, auth.Role.OPERATOR, command_timeout_s=0.1) as client:
        began = time.monotonic()
        response = await client.post("/tasks", json={"task_name": "t"})
        took = time.monotonic() - began
    assert response.status_code == 503
    assert took < 1.0
    detail = response.json()["detail"]
    # Not "not sent": the record may still go out; the client is told where to look first.
    assert "did not acknowledge the command within 0.1 s" in detail
    assert "may still be applied" in detail and "check /api/federated/tasks/" in detail


async def test_health_is_200_with_each_dependency_in_the_body_even_when_both_are_down() -> None:
    async with _client(FakeProducer(), database=_down, broker=_down) as client:
        response = await client.get("/health", headers={"Authorization": ""})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["state"] == body["broker"]["state"] == "down"
    assert body["database"]["error"] == "ConnectionRefusedError"
    assert body["broker"]["seconds"] >= 0


@pytest.mark.parametrize(
    ("database", "broker", "down"),
    [(_down, _up, ["database"]), (_up, _down, ["broker"]), (_down, _down, ["database", "broker"])],
)
async def test_ready_is_503_naming_what_is_down(
    database: health.Check, broker: health.Check, down: list[str]
) -> None:
    async with _client(FakeProducer(), database=database, broker=broker) as client:
        response = await client.get("/ready", headers={"Authorization": ""})
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["down"]) == ("unavailable", down)
    assert body["detail"] == " and ".join(f"{name} down" for name in down)


async def test_ready_is_200_when_both_answer_and_a_hanging_check_is_cut_at_its_bound() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    async with _client(FakeProducer()) as client:
        ready = await client.get("/ready")
    async with _client(FakeProducer(), broker=hangs) as client:
        began = time.monotonic()
        frozen = await client.get("/ready")
        took = time.monotonic() - began
    assert ready.status_code == 200 and ready.json()["down"] == []
    assert (
        frozen.status_code == 503 and frozen.json()["broker"]["error"] == "no answer within 0.2 s"
    )
    assert took < 1.0


async def test_a_task_with_a_strategy_is_published_with_it(
    api: httpx.AsyncClient, producer: FakeProducer
) -> None:
    # Prepare
    strategy = {"name": "fedadam", "params": {"eta": 0.05, "beta1": 0.8}}

    # Execute
    response = await api.post("/tasks", json={"task_name": "t", "strategy": strategy})

    # Assert
    assert response.status_code == 202, response.text
    ((_, value, _),) = producer.sent
    message = codec.decode(value)
    assert isinstance(message, TaskCreateRequested)
    assert message.spec.strategy.model_dump() == {
        "name": "fedadam",
        "params": {"eta": 0.05, "beta1": 0.8, "beta2": 0.99, "tau": 1e-3, "max_examples": 10**8},
    }


@pytest.mark.parametrize(
    ("strategy", "loc", "kind"),
    [
        (
            {"name": "fedadam", "params": {"etaa": 0.1}},
            ["body", "strategy", "fedadam", "params", "etaa"],
            "extra_forbidden",
        ),
        (
            {"name": "fedavgm", "params": {"momentum": 1.5}},
            ["body", "strategy", "fedavgm", "params", "momentum"],
            "less_than",
        ),
        ({"name": "fedsgd"}, ["body", "strategy"], "union_tag_invalid"),
    ],
    ids=["unknown param", "param out of range", "unknown name"],
)
async def test_a_strategy_the_catalog_would_refuse_is_422_naming_the_field(
    api: httpx.AsyncClient,
    producer: FakeProducer,
    strategy: dict[str, Any],
    loc: list[str],
    kind: str,
) -> None:
    # Execute
    response = await api.post("/tasks", json={"task_name": "t", "strategy": strategy})

    # Assert
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["type"]) == (loc, kind)
    assert producer.sent == []


async def test_a_robust_strategy_with_too_few_min_devices_is_422(
    api: httpx.AsyncClient, producer: FakeProducer
) -> None:
    # Execute
    response = await api.post(
        "/tasks",
        json={"task_name": "t", "min_devices": 3, "strategy": {"name": "krum"}},
    )

    # Assert
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert "min_devices 3 is below the 7 updates a round of strategy krum needs" in error["msg"]
    assert producer.sent == []


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, SecureAggregationSpec()),
        (
            {"bits": 12, "neighbours": 4, "threshold": 3, "stage_timeout_s": 5},
            SecureAggregationSpec(bits=12, neighbours=4, threshold=3, stage_timeout_s=5.0),
        ),
    ],
    ids=["all defaults", "chosen"],
)
async def test_a_secure_task_is_published_with_its_section(
    api: httpx.AsyncClient,
    producer: FakeProducer,
    section: dict[str, Any],
    expected: SecureAggregationSpec,
) -> None:
    # Execute
    response = await api.post(
        "/tasks", json={"task_name": "t", "min_devices": 3, "secure_aggregation": section}
    )

    # Assert
    assert response.status_code == 202, response.text
    ((_, value, _),) = producer.sent
    message = codec.decode(value)
    assert isinstance(message, TaskCreateRequested)
    assert message.spec.secure_aggregation == expected


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"strategy": {"name": "median"}, "min_devices": 3},
            "secure aggregation cannot be used with strategy median: the aggregator sees only "
            "the sum",
        ),
        (
            {"strategy": {"name": "trimmed_mean"}, "min_devices": 5},
            "secure aggregation cannot be used with strategy trimmed_mean",
        ),
        (
            {"strategy": {"name": "krum"}, "min_devices": 7},
            "secure aggregation cannot be used with strategy krum",
        ),
        (
            {"strategy": {"name": "multi_krum"}, "min_devices": 7},
            "secure aggregation cannot be used with strategy multi_krum",
        ),
        ({"min_devices": 2}, "secure aggregation needs min_devices >= 3"),
        ({}, "secure aggregation needs min_devices >= 3"),
    ],
    ids=["median", "trimmed_mean", "krum", "multi_krum", "two devices", "default min_devices"],
)
async def test_secure_aggregation_the_task_cannot_use_is_422_naming_the_rule(
    api: httpx.AsyncClient, producer: FakeProducer, body: dict[str, Any], says: str
) -> None:
    # Execute
    response = await api.post("/tasks", json={"task_name": "t", "secure_aggregation": {}} | body)

    # Assert
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert says in error["msg"]
    assert producer.sent == []


@pytest.mark.parametrize(
    ("section", "loc"),
    [
        ({"bitz": 16}, ["body", "secure_aggregation", "bitz"]),
        ({"bits": 40}, ["body", "secure_aggregation", "bits"]),
        ({"neighbours": 5}, ["body", "secure_aggregation"]),
    ],
    ids=["misspelt field", "bits past 32", "odd neighbours"],
)
async def test_a_bad_secure_aggregation_section_is_422_naming_the_field(
    api: httpx.AsyncClient, producer: FakeProducer, section: dict[str, Any], loc: list[str]
) -> None:
    # Execute
    response = await api.post(
        "/tasks", json={"task_name": "t", "min_devices": 3, "secure_aggregation": section}
    )

    # Assert
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert producer.sent == []


async def test_openapi_shows_the_strategy_union(api: httpx.AsyncClient) -> None:
    # Execute
    schema = (await api.get("http://gateway/openapi.json")).json()

    # Assert
    strategy = schema["components"]["schemas"]["TaskCreate"]["properties"]["strategy"]
    assert strategy["discriminator"]["propertyName"] == "name"
    assert set(strategy["discriminator"]["mapping"]) == {
        t.model_fields["name"].default for t in STRATEGY_TYPES
    }
    adam = schema["components"]["schemas"]["AdaptiveParams"]
    assert adam["additionalProperties"] is False


@pytest.mark.parametrize("noise_multiplier", [1e-300, 0.049, 2e6])
async def test_a_noise_multiplier_the_accountant_cannot_use_is_422_naming_the_field(
    api: httpx.AsyncClient, producer: FakeProducer, noise_multiplier: float
) -> None:
    # Execute: 1e-300 once made dp-accounting raise ZeroDivisionError (issue 15).
    response = await api.post(
        "/tasks",
        json={"task_name": "t", "privacy": {"epsilon": 1.0, "noise_multiplier": noise_multiplier}},
    )

    # Assert
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "privacy", "noise_multiplier"]
    assert "noise_multiplier must be in [0.05, 1e+06]" in error["msg"]
    assert producer.sent == []


@pytest.mark.parametrize("delta", [1e-15, 5e-324])
async def test_a_delta_the_pld_accountant_cannot_evaluate_is_422_naming_the_field(
    api: httpx.AsyncClient, producer: FakeProducer, delta: float
) -> None:
    # Execute: PLD answers epsilon = inf at delta <= 1e-15 (issue 15).
    response = await api.post(
        "/tasks", json={"task_name": "t", "privacy": {"epsilon": 1.0, "delta": delta}}
    )

    # Assert
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "privacy", "delta"]
    assert producer.sent == []
