"""Fetch a global model version from the gateway as this device, signed with its key.

The gateway serves a version only to a device that was asked to train on it (it checks the
signature against the device's enrolled key, and the round's participants), so the request
says who asks and when: ``X-Device-Sent-At`` (microseconds since the epoch) and
``X-Device-Signature`` (hex Ed25519 over ``fedcommon.signing.model_fetch_payload``).
A gateway outage is waited out until the request's deadline; a refusal is not retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx

from fedcommon import signing
from fedcommon.backoff import Backoff
from feddevice.state import Identity

logger = logging.getLogger(__name__)
# Far above any model this platform trains; a bigger answer is not read into memory.
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024
_RETRIED = {408, 425, 429, 500, 502, 503, 504}
# The longest one try may take by default (`feddevice run --fetch-try-s`): the built-in
# models come in well under a second; a large model over a slow link needs more.
DEFAULT_TRY_S = 15.0


class FetchRefused(RuntimeError):
    """The gateway refused the fetch, or answered with bytes that are not the model asked for."""


def fetch_path(device_id: str, task_id: UUID, version: int) -> str:
    return f"/api/federated/devices/{quote(device_id, safe='')}/tasks/{task_id}/models/{version}"


def signed_headers(identity: Identity, task_id: UUID, version: int) -> dict[str, str]:
    sent_at_us = time.time_ns() // 1000
    signature = identity.key.sign(
        signing.model_fetch_payload(
            device_id=identity.device_id, task_id=task_id, version=version, sent_at_us=sent_at_us
        )
    )
    return {"X-Device-Sent-At": str(sent_at_us), "X-Device-Signature": signature.hex()}


class ModelFetcher:
    """Fetches and keeps the latest version of each task's model for one device."""

    def __init__(
        self,
        gateway_url: str,
        identity: Identity,
        *,
        verify: bool | str = True,
        max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        try_s: float = DEFAULT_TRY_S,
    ) -> None:
        self.identity = identity
        self.max_bytes = max_bytes
        self.try_s = try_s
        self._client = httpx.AsyncClient(
            base_url=gateway_url.rstrip("/"), verify=verify, timeout=httpx.Timeout(30.0)
        )
        self._kept: dict[UUID, tuple[int, bytes]] = {}

    async def close(self) -> None:
        await self._client.aclose()

    async def fetch(self, task_id: UUID, version: int, sha256: str, *, until: datetime) -> bytes:
        """The model's bytes, checked against ``sha256``; retried through outages until
        ``until``, then TimeoutError. FetchRefused when the gateway says no."""
        kept = self._kept.get(task_id)
        if kept is not None and kept[0] == version:
            return kept[1]
        backoff = Backoff(first=0.2, cap=5.0)
        while True:
            try:
                # Each try is bounded as a whole (httpx's timeouts are per read: a gateway
                # sending a byte a second would never time out), by the deadline and by
                # ``try_s``, so that a gateway that stopped answering is tried again.
                remaining = max((until - datetime.now(UTC)).total_seconds(), 0.001)
                data = await _within(self._fetch_once(task_id, version), min(remaining, self.try_s))
                break
            except (httpx.TransportError, _Retry, TimeoutError) as exc:
                left = (until - datetime.now(UTC)).total_seconds()
                if left <= 0:
                    raise TimeoutError(
                        f"model v{version} of task {task_id} not fetched before the deadline "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
                delay = min(backoff.next_delay(), left)
                logger.warning("model fetch failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise FetchRefused(
                f"model v{version} of task {task_id}: the bytes do not match the announced sha256"
            )
        self._kept[task_id] = (version, data)
        return data

    async def _fetch_once(self, task_id: UUID, version: int) -> bytes:
        path = fetch_path(self.identity.device_id, task_id, version)
        headers = signed_headers(self.identity, task_id, version)
        async with self._client.stream("GET", path, headers=headers) as response:
            if response.status_code in _RETRIED:
                raise _Retry(f"gateway answered {response.status_code}")
            if response.status_code != 200:
                head = b""
                async for chunk in response.aiter_bytes():  # at most 500 bytes of a refusal
                    head += chunk
                    if len(head) >= 500:
                        break
                body = head[:500].decode(errors="replace")
                raise FetchRefused(
                    f"gateway refused model v{version} of task {task_id}: "
                    f"{response.status_code} {body}"
                )
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchRefused(f"model larger than {self.max_bytes} bytes: not read")
                chunks.append(chunk)
            return b"".join(chunks)


async def _within(work: Coroutine[Any, Any, bytes], seconds: float) -> bytes:
    """``work``'s result, or TimeoutError after ``seconds`` without waiting for it to wind
    down: ``asyncio.wait_for`` waits for the cancelled request to finish, and httpx closing a
    connection to a gateway that stopped answering (SIGSTOP, in a test) waited for as long
    as the gateway did."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        task.add_done_callback(_consume)
        raise TimeoutError(f"no answer within {seconds:.1f} s")
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Retry(Exception):
    """A transient answer (gateway starting, overloaded, its database down)."""
