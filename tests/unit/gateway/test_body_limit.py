from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from fedengine_gateway.body_limit import BodyLimit, RouteLimit


class EchoSize:
    """A bare ASGI app that answers with the size of the body it received."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def _client(app: EchoSize, limit: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=BodyLimit(app, max_body_bytes=limit)), base_url="http://t"
    )


async def _chunks(total: int, size: int) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


@pytest.mark.parametrize("size", [0, 1, 1000])
async def test_bodies_up_to_the_limit_reach_the_app_whole(size: int) -> None:
    app = EchoSize()
    async with _client(app, 1000) as client:
        declared = await client.post("/", content=b"x" * size)
        streamed = await client.post("/", content=_chunks(size, 7))
    assert (declared.status_code, declared.text) == (200, str(size))
    assert (streamed.status_code, streamed.text) == (200, str(size))


async def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    app = EchoSize()
    async with _client(app, 1000) as client:
        response = await client.post("/", content=b"x" * 1001)
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 1000 bytes"}
    assert app.calls == 0


async def test_a_streamed_body_is_counted_chunk_by_chunk() -> None:
    app = EchoSize()
    async with _client(app, 1000) as client:
        response = await client.post("/", content=_chunks(10_000, 300))
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "larger than 1000" in response.json()["detail"]
    assert app.calls == 0


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        BodyLimit(EchoSize(), max_body_bytes=-1)


def _routed(app: EchoSize) -> httpx.AsyncClient:
    limits = {("POST", "/big"): RouteLimit(5000, what="model file", why=": one record")}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=BodyLimit(app, max_body_bytes=1000, routes=limits)),
        base_url="http://t",
    )


async def test_a_route_with_a_bound_of_its_own_takes_bodies_up_to_it_and_says_why_past_it() -> None:
    # Prepare
    app = EchoSize()

    # Execute
    async with _routed(app) as client:
        within = await client.post("/big", content=b"x" * 5000)
        streamed = await client.post("/big", content=_chunks(5000, 700))
        past = await client.post("/big", content=b"x" * 5001)
        past_streamed = await client.post("/big", content=_chunks(5001, 700))
        other_route = await client.post("/small", content=b"x" * 1001)
        other_method = await client.put("/big", content=b"x" * 1001)

    # Assert
    assert (within.status_code, within.text) == (200, "5000")
    assert (streamed.status_code, streamed.text) == (200, "5000")
    for refused in (past, past_streamed):
        assert refused.status_code == 413
        assert refused.json() == {"detail": "model file larger than 5000 bytes: one record"}
    for refused in (other_route, other_method):
        assert refused.json() == {"detail": "request body larger than 1000 bytes"}
    assert app.calls == 2


def test_a_negative_route_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        RouteLimit(-1)
