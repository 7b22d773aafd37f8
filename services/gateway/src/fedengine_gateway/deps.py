"""What every route module shares: who is asking (JWT roles), the database connection, and
publishing a command to Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool
from pydantic import TypeAdapter, ValidationError

from fedcommon import auth, kafka
from fedcommon.constraints import DEVICE_ID_PATTERN, INT64_MAX, Name
from fedcommon.messages.v1 import Envelope
from fedengine_gateway import errors, health
from fedengine_gateway.schemas import Accepted
from fedengine_gateway.settings import Settings

PREFIX = "/api/federated"
PRODUCER = "gateway"
COMMANDS = Counter("fedengine_gateway_commands_total", "Commands published", ["type"])

T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False)


class Principal:
    def __init__(self, subject: str, role: auth.Role) -> None:
        self.subject = subject
        self.role = role


# A token's subject becomes ``issued_by`` on bus messages, so it must be a valid ``Name``.
_SUBJECT: TypeAdapter[str] = TypeAdapter(Name)


def require(role: auth.Role) -> Any:
    """Return a dependency that admits tokens whose role is at least ``role``."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        settings: Settings = request.app.state.settings
        try:
            subject, token_role = auth.verify_token(
                credentials.credentials, secret=settings.jwt_secret.get_secret_value()
            )
        except auth.TokenError as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                f"invalid token: {exc}",
                headers={"WWW-Authenticate": "Bearer"},
            ) from exc
        try:
            _SUBJECT.validate_python(subject)
        except ValidationError as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid token: its subject must be 1 to 200 characters without NUL bytes",
                headers={"WWW-Authenticate": "Bearer"},
            ) from exc
        if not auth.allows(token_role, role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role {token_role.value} may not do this; needs {role.value}",
            )
        return Principal(subject, token_role)

    return dependency


Viewer = Annotated[Principal, Depends(require(auth.Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(auth.Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(auth.Role.ADMIN))]
Limit = Annotated[int, Query(ge=1, le=500)]
# PostgreSQL's OFFSET takes a bigint.
Offset = Annotated[int, Query(ge=0, le=INT64_MAX)]
DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]


async def _conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.AsyncConnection, Depends(_conn)]


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def prober_of(request: Request) -> health.Prober:
    prober: health.Prober = request.app.state.prober
    return prober


async def publish(
    request: Request, base: str, key: str, message: Envelope, *, location: str | None = None
) -> None:
    """Send a command and wait for the broker's acknowledgement, within bounds.

    The broker is asked first (the shared check of /ready): when it does not answer, the answer
    is 503 at once and nothing enters the producer's buffer, so nothing can go out later. Past
    that check, the acknowledgement is awaited for ``GATEWAY_COMMAND_TIMEOUT_S``; a 503 then
    cannot promise that nothing was sent (``location`` tells the client where to look), because
    aiokafka keeps retrying a buffered record until its producer's ``request_timeout_ms``
    (set to the command timeout plus 1 s) and a record a frozen broker already received is
    written when it resumes.
    """
    settings = settings_of(request)
    if not (await prober_of(request).check(health.Dependency.BROKER)).up:
        raise errors.BrokerUnavailable()
    try:
        async with asyncio.timeout(settings.command_timeout_s):
            await kafka.publish(
                request.app.state.producer, settings.kafka, base, key=key, message=message
            )
    except TimeoutError as exc:
        raise errors.CommandNotConfirmed(settings.command_timeout_s, location) from exc
    COMMANDS.labels(message.type).inc()  # type: ignore[attr-defined]


async def wait_for_projection(
    lookup: Callable[[], Awaitable[T | None]], *, wait_s: float, poll_s: float = 0.05
) -> T | None:
    """Call ``lookup`` until it finds something or ``wait_s`` has passed; return what it found.

    For ids this process has just issued: the services project them within milliseconds, and a
    client acting on the id at once should not see 404 in between.
    """
    deadline = time.monotonic() + wait_s
    while True:
        found = await lookup()
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(poll_s)


def accepted(response: Response, identifier: str, location: str, **extra: Any) -> Accepted:
    response.headers["Location"] = location
    return Accepted(id=identifier, location=location, **extra)
