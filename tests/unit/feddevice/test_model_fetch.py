"""The signed model fetch against a hand-rolled HTTP server on loopback: what a slow, refusing,
lying or briefly absent gateway leads to."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from fedcommon import signing
from feddevice.model_fetch import FetchRefused, ModelFetcher, fetch_path
from feddevice.state import load_or_create_identity

MODEL = b"model bytes " * 100
SHA = hashlib.sha256(MODEL).hexdigest()
Reply = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


def ok(body: bytes = MODEL) -> Reply:
    async def reply(writer: asyncio.StreamWriter, attempt: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return reply


async def serve(replies: list[Reply]) -> tuple[asyncio.Server, str, list[dict[str, str]]]:
    """A server answering the n-th request with ``replies[n]`` (the last one from then on),
    recording each request's headers."""
    seen: list[dict[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
        headers["path"] = lines[0].split(" ")[1]
        seen.append(headers)
        attempt = len(seen) - 1
        await replies[min(attempt, len(replies) - 1)](writer, attempt)
        try:
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


@pytest.fixture
async def fetcher_for(tmp_path: Path) -> AsyncIterator[Callable[[str], ModelFetcher]]:
    made: list[ModelFetcher] = []
    identity = load_or_create_identity(tmp_path, "dev-1")

    def make(url: str) -> ModelFetcher:
        made.append(ModelFetcher(url, identity, try_s=1.0))
        return made[-1]

    yield make
    for fetcher in made:
        await fetcher.close()


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_the_request_is_signed_by_the_device_and_the_bytes_checked(
    fetcher_for: Callable[[str], ModelFetcher], tmp_path: Path
) -> None:
    server, url, seen = await serve([ok()])
    task = uuid4()
    async with server:
        data = await fetcher_for(url).fetch(task, 3, SHA, until=soon(5))
    assert data == MODEL
    (request,) = seen
    assert request["path"] == fetch_path("dev-1", task, 3)
    identity = load_or_create_identity(tmp_path)
    signing.verify(
        public_key=identity.public_key,
        signature=bytes.fromhex(request["x-device-signature"]),
        payload=signing.model_fetch_payload(
            device_id="dev-1",
            task_id=task,
            version=3,
            sent_at_us=int(request["x-device-sent-at"]),
        ),
    )


async def test_bytes_that_are_not_the_announced_model_are_refused(
    fetcher_for: Callable[[str], ModelFetcher],
) -> None:
    server, url, _ = await serve([ok(b"another model")])
    async with server:
        with pytest.raises(FetchRefused, match="do not match the announced sha256"):
            await fetcher_for(url).fetch(uuid4(), 0, SHA, until=soon(5))


async def test_an_unavailable_gateway_is_tried_again_until_it_answers(
    fetcher_for: Callable[[str], ModelFetcher],
) -> None:
    async def unavailable(writer: asyncio.StreamWriter, attempt: int) -> None:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    server, url, seen = await serve([unavailable, unavailable, ok()])
    async with server:
        assert await fetcher_for(url).fetch(uuid4(), 0, SHA, until=soon(10)) == MODEL
    assert len(seen) == 3


async def test_a_gateway_that_stops_answering_mid_body_is_bounded_and_tried_again(
    fetcher_for: Callable[[str], ModelFetcher],
) -> None:
    async def trickle(writer: asyncio.StreamWriter, attempt: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(MODEL))
        for byte in MODEL[:20]:  # a byte every 0.3 s: never a read timeout, never done
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.3)

    server, url, seen = await serve([trickle, ok()])
    began = asyncio.get_running_loop().time()
    async with server:
        assert await fetcher_for(url).fetch(uuid4(), 0, SHA, until=soon(10)) == MODEL
    assert len(seen) == 2 and asyncio.get_running_loop().time() - began < 5


async def test_past_the_deadline_the_fetch_gives_up(
    fetcher_for: Callable[[str], ModelFetcher],
) -> None:
    async def silent(writer: asyncio.StreamWriter, attempt: int) -> None:
        await asyncio.sleep(10)

    server, url, _ = await serve([silent])
    began = asyncio.get_running_loop().time()
    async with server:
        with pytest.raises(TimeoutError, match="not fetched before the deadline"):
            await fetcher_for(url).fetch(uuid4(), 0, SHA, until=soon(1.5))
    assert asyncio.get_running_loop().time() - began < 4


async def test_a_refusal_is_final_and_only_its_first_500_bytes_are_read(
    fetcher_for: Callable[[str], ModelFetcher],
) -> None:
    body = b"x" * 10_000_000

    async def refuse(writer: asyncio.StreamWriter, attempt: int) -> None:
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)

    server, url, seen = await serve([refuse])
    async with server:
        with pytest.raises(FetchRefused, match="403") as refused:
            await fetcher_for(url).fetch(uuid4(), 0, SHA, until=soon(5))
    assert len(seen) == 1 and len(str(refused.value)) < 700
