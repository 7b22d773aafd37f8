"""The SDK's model calls and ``fedengine models`` against a hand-rolled gateway
(httpx.MockTransport): the upload waits for the coordinator's copy, within a bound; lists read
every page; a task names an upload by id and sha256 only."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from fedcommon import model_files
from fedengine import models_cli
from fedengine.cli import app
from fedengine.sdk import FedEngineClient, FedEngineError

DATA = model_files.write(["w"], [np.ones((2, 2), dtype=np.float32)])
DIGEST = hashlib.sha256(DATA).hexdigest()


class FakeGateway:
    """Answers /models and /tasks as the gateway does; the coordinator stores an upload after
    ``stored_after`` lookups (never, when None)."""

    def __init__(self, *, stored_after: int | None = 0, page_size: int = 2) -> None:
        self.stored_after = stored_after
        self.page_size = page_size
        self.requests: list[httpx.Request] = []
        self.models: dict[str, dict[str, Any]] = {}
        self.lookups = 0
        self.evaluations: list[dict[str, Any]] = []
        self.answer_sha256: str | None = None

    def _page(self, items: list[dict[str, Any]], request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", 0))
        page = items[offset : offset + self.page_size]
        return httpx.Response(
            200, json={"items": page, "total": len(items), "limit": 500, "offset": offset}
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/federated")
        if request.method == "POST" and path == "/models":
            if not request.content.startswith(DATA[:8]):
                return httpx.Response(
                    422, json={"detail": [{"loc": ["body"], "msg": "bad", "type": "x"}]}
                )
            model_id = str(uuid.uuid4())
            body = {
                "model_id": model_id,
                "sha256": self.answer_sha256 or hashlib.sha256(request.content).hexdigest(),
                "size_bytes": len(request.content),
                "name": request.url.params["name"],
                "tensors": [{"name": "w", "shape": [2, 2], "dtype": "F32"}],
            }
            self.models[model_id] = {**body, "uploaded_by": "cli", "uploaded_at": "2026-01-01"}
            return httpx.Response(202, json=body)
        if request.method == "GET" and path == "/models":
            return self._page(list(self.models.values()), request)
        if request.method == "GET" and path.startswith("/models/"):
            self.lookups += 1
            model_id = path.removeprefix("/models/")
            if self.stored_after is None or self.lookups <= self.stored_after:
                return httpx.Response(404, json={"detail": f"model {model_id} not found"})
            return httpx.Response(200, json=self.models[model_id])
        if request.method == "POST" and path == "/tasks":
            return httpx.Response(202, json={"id": "t1", "location": "/tasks/t1"})
        if request.method == "GET" and path == "/tasks/t1":
            return httpx.Response(200, json={"task_id": "t1"})
        if request.method == "GET" and path == "/tasks/t1/evaluations":
            return self._page(self.evaluations, request)
        return httpx.Response(404, json={"detail": "no route"})


def _client(gateway: FakeGateway) -> FedEngineClient:
    return FedEngineClient("http://gateway", "token", transport=httpx.MockTransport(gateway))


async def test_an_upload_is_sent_raw_and_returned_once_the_coordinator_stored_it() -> None:
    # Prepare: stored on the third lookup.
    gateway = FakeGateway(stored_after=2)

    # Execute
    async with _client(gateway) as client:
        stored = await client.upload_model(DATA, name="net", poll_s=0.001)

    # Assert
    post = gateway.requests[0]
    assert (post.method, post.url.params["name"], post.content) == ("POST", "net", DATA)
    assert post.headers["Content-Type"] == "application/octet-stream"
    assert (stored["sha256"], stored["name"], stored["uploaded_by"]) == (DIGEST, "net", "cli")
    assert gateway.lookups == 3


async def test_an_upload_the_coordinator_never_stores_times_out_saying_where_to_look() -> None:
    # Prepare
    gateway = FakeGateway(stored_after=None)

    # Execute
    async with _client(gateway) as client:
        with pytest.raises(TimeoutError) as raised:
            await client.upload_model(DATA, timeout_s=0.05, poll_s=0.01)

    # Assert
    message = str(raised.value)
    assert "was accepted but not stored by the coordinator within 0.05 s" in message
    assert "/api/federated/models/" in message


async def test_a_refused_file_raises_with_the_gateways_detail_and_nothing_is_polled() -> None:
    # Prepare
    gateway = FakeGateway()

    # Execute
    async with _client(gateway) as client:
        with pytest.raises(FedEngineError) as raised:
            await client.upload_model(b"garbage")

    # Assert
    assert raised.value.status_code == 422
    assert gateway.lookups == 0


async def test_an_answer_naming_another_sha256_is_refused() -> None:
    # Prepare: a gateway (or something in between) that changed the file.
    gateway = FakeGateway()
    gateway.answer_sha256 = "0" * 64

    # Execute
    async with _client(gateway) as client:
        with pytest.raises(FedEngineError, match="sha256 is not the file's"):
            await client.upload_model(DATA)


async def test_models_and_evaluations_are_read_across_pages() -> None:
    # Prepare: three uploads and three evaluations, two to a page.
    gateway = FakeGateway()
    gateway.evaluations = [{"evaluation_id": str(i)} for i in range(3)]
    async with _client(gateway) as client:
        for _ in range(3):
            await client.upload_model(DATA)

        # Execute
        models = await client.list_models()
        evaluations = await client.task_evaluations("t1")

    # Assert
    assert len(models) == 3 and len({m["model_id"] for m in models}) == 3
    assert [e["evaluation_id"] for e in evaluations] == ["0", "1", "2"]


async def test_a_task_names_an_upload_by_its_id_and_sha256_only() -> None:
    # Prepare
    gateway = FakeGateway()
    async with _client(gateway) as client:
        stored = await client.upload_model(DATA)
        stored["model_id"] = uuid.UUID(stored["model_id"])  # a UUID goes as its text too

        # Execute
        task_id = await client.create_federated_task(
            task_name="t", initial_model=stored, federated_evaluation={"every_rounds": 2}
        )

    # Assert
    (post,) = [r for r in gateway.requests if r.method == "POST" and r.url.path.endswith("/tasks")]
    body = json.loads(post.content)
    assert task_id == "t1"
    assert body == {
        "task_name": "t",
        "initial_model": {"model_id": str(stored["model_id"]), "sha256": DIGEST},
        "federated_evaluation": {"every_rounds": 2},
    }


async def test_the_upload_command_names_the_model_after_its_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "my-net.safetensors"
    path.write_bytes(DATA)
    gateway = FakeGateway()

    # Execute
    stored = await models_cli.upload(_client(gateway), path, name=None, timeout_s=1.0)

    # Assert
    assert (stored["name"], stored["sha256"]) == ("my-net", DIGEST)


def test_the_commands_without_a_stack_or_a_gateway_url_say_so(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "m.safetensors"
    path.write_bytes(DATA)
    env = {"FEDENGINE_HOME": str(tmp_path / "home"), "FEDENGINE_TOKEN": ""}

    # Execute
    upload = CliRunner().invoke(app, ["models", "upload", str(path)], env=env)
    listed = CliRunner().invoke(app, ["models", "list"], env=env)
    missing = CliRunner().invoke(app, ["models", "upload", str(tmp_path / "absent")], env=env)

    # Assert
    for result in (upload, listed):
        assert result.exit_code == 1
        assert "no stack is running: fedengine up, or pass --gateway-url" in result.output
    assert missing.exit_code == 2
