"""Device management and enrolment tokens: /devices and /enrolment-tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID, uuid4

import psycopg
from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from fedcommon import enrolment_tokens, signing, topics
from fedcommon.messages.v1 import (
    DeviceCapabilities,
    DeviceEnrolled,
    DeviceRemoved,
    DeviceRestored,
    DeviceStatus,
    EnrolmentTokenIssued,
    EnrolmentTokenRevoked,
)
from fedengine_gateway import errors, queries
from fedengine_gateway.deps import (
    PREFIX,
    PRODUCER,
    Admin,
    Conn,
    DevicePath,
    Limit,
    Offset,
    Operator,
    Viewer,
    accepted,
    publish,
    settings_of,
    wait_for_projection,
)
from fedengine_gateway.schemas import (
    Accepted,
    DeviceAccepted,
    DeviceCreate,
    DevicePublic,
    EnrolmentTokenCreate,
    EnrolmentTokenIssuedPublic,
    EnrolmentTokenPublic,
    Page,
)

router = APIRouter(prefix=PREFIX)


def _coordinator_key(request: Request) -> bytes:
    return bytes.fromhex(settings_of(request).trust.service_keys["coordinator"])


def _aggregator_key(request: Request) -> bytes | None:
    """The aggregator's key, which devices check secure-aggregation deliveries with; None in a
    deployment that names none (its devices then cannot take part in secure rounds)."""
    key = settings_of(request).trust.service_keys.get("aggregator")
    return None if key is None else bytes.fromhex(key)


async def _device_or_404(conn: psycopg.AsyncConnection, device_id: str) -> dict[str, Any]:
    device = await queries.get_device(conn, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id} not found")
    return device


@router.post(
    "/devices",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeviceAccepted,
    response_model_exclude_none=True,
    responses=errors.responses(400, 401, 403, 409, 413, 422, 503),
)
async def add_device(
    body: DeviceCreate, request: Request, response: Response, conn: Conn, who: Operator
) -> DeviceAccepted:
    """Enrol a device as an operator: the gateway vouches for it as a service.

    The device's own key comes with its signature over it (checked here), or, when
    ``generate_key`` is set, the gateway generates the pair and returns the private key once.
    """
    device_id = body.device_id or f"dev-{uuid4().hex[:16]}"
    if body.device_id is not None:
        existing = await queries.get_device(conn, device_id)
        if existing is not None and existing["status"] == "removed":
            # The registry would refuse it: a removed device comes back only by a restore.
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"device {device_id} was removed; restore it first"
            )
    private_key = None
    if body.public_key is None:
        key = signing.generate_private_key()
        public_key = signing.public_key_bytes(key)
        private_key = signing.private_key_to_bytes(key).hex()
    else:
        public_key = bytes.fromhex(body.public_key)
    location = f"{PREFIX}/devices/{device_id}"
    await publish(
        request,
        topics.DEVICES,
        device_id,
        DeviceEnrolled(
            producer=PRODUCER,
            device_id=device_id,
            device_name=body.device_name,
            device_type=body.device_type,
            privacy_level=body.privacy_level,
            capabilities=DeviceCapabilities(**body.capabilities.model_dump()),
            public_key=public_key,
            issued_by=who.subject,
        ),
        location=location,
    )
    response.headers["Location"] = location
    return DeviceAccepted(
        id=device_id,
        location=location,
        private_key=private_key,
        coordinator_public_key=_coordinator_key(request).hex(),
    )


@router.get(
    "/devices", response_model=Page[DevicePublic], responses=errors.responses(401, 413, 422, 503)
)
async def list_devices(
    conn: Conn,
    _: Viewer,
    status_filter: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    prefix: Annotated[
        str,
        Query(
            max_length=200,
            pattern=r"^[A-Za-z0-9_.:-]*$",
            description="only devices whose id starts with this (a fleet's devices: 'NAME-')",
        ),
    ] = "",
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[DevicePublic]:
    """Devices by id; ``total`` counts every match, so ``limit=1`` counts a fleet's online
    devices in one small answer (what waiting for a fleet polls)."""
    rows, total = await queries.list_devices(
        conn,
        status=None if status_filter is None else status_filter.value,
        prefix=prefix,
        limit=limit,
        offset=offset,
    )
    return Page(items=[DevicePublic(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/devices/{device_id}",
    response_model=DevicePublic,
    responses=errors.responses(401, 404, 413, 422, 503),
)
async def get_device(device_id: DevicePath, conn: Conn, _: Viewer) -> DevicePublic:
    return DevicePublic(**await _device_or_404(conn, device_id))


@router.delete(
    "/devices/{device_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=errors.responses(401, 403, 404, 413, 422, 503),
)
async def remove_device(
    device_id: DevicePath, request: Request, response: Response, conn: Conn, who: Admin
) -> Accepted:
    await _device_or_404(conn, device_id)
    await publish(
        request,
        topics.DEVICES,
        device_id,
        DeviceRemoved(producer=PRODUCER, device_id=device_id, issued_by=who.subject),
    )
    return accepted(response, device_id, f"{PREFIX}/devices/{device_id}")


@router.post(
    "/devices/{device_id}/restore",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=errors.responses(401, 403, 404, 409, 413, 422, 503),
)
async def restore_device(
    device_id: DevicePath, request: Request, response: Response, conn: Conn, who: Admin
) -> Accepted:
    """Bring a removed device back; it is offline until its next heartbeat."""
    device = await _device_or_404(conn, device_id)
    if device["status"] != "removed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"device {device_id} is not removed")
    await publish(
        request,
        topics.DEVICES,
        device_id,
        DeviceRestored(producer=PRODUCER, device_id=device_id, issued_by=who.subject),
    )
    return accepted(response, device_id, f"{PREFIX}/devices/{device_id}")


@router.post(
    "/enrolment-tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrolmentTokenIssuedPublic,
    responses={
        202: {
            "model": EnrolmentTokenIssuedPublic,
            "description": "Issued, but the registry had not recorded it yet (recorded: false)",
        },
        **errors.responses(400, 401, 403, 413, 422, 503),
    },
)
async def issue_enrolment_token(
    body: EnrolmentTokenCreate, request: Request, response: Response, conn: Conn, who: Admin
) -> EnrolmentTokenIssuedPublic:
    """Issue a token with which up to ``max_devices`` devices may enrol themselves into
    ``fleet`` over Kafka. Only its public half is kept; the token is in this answer only.

    The answer waits (a few seconds at most) until the registry has recorded the token, so that
    devices given it at once are not refused; ``recorded`` says whether it had.
    """
    token = enrolment_tokens.issue(
        body.fleet,
        coordinator_key=_coordinator_key(request),
        aggregator_key=_aggregator_key(request),
    )
    expires_at = datetime.now(UTC) + timedelta(seconds=body.expires_in_s)
    await publish(
        request,
        topics.DEVICES,
        str(token.token_id),
        EnrolmentTokenIssued(
            producer=PRODUCER,
            token_id=token.token_id,
            fleet=token.fleet,
            public_key=token.public_key,
            expires_at=expires_at,
            max_devices=body.max_devices,
            issued_by=who.subject,
        ),
        location=f"{PREFIX}/enrolment-tokens/{token.token_id}",
    )
    recorded = (
        await wait_for_projection(
            lambda: queries.get_token(conn, token.token_id),
            wait_s=settings_of(request).projection_wait_s,
        )
        is not None
    )
    response.headers["Location"] = f"{PREFIX}/enrolment-tokens/{token.token_id}"
    if not recorded:
        response.status_code = status.HTTP_202_ACCEPTED
    return EnrolmentTokenIssuedPublic(
        token_id=token.token_id,
        fleet=token.fleet,
        expires_at=expires_at,
        max_devices=body.max_devices,
        token=token.encode(),
        coordinator_public_key=token.coordinator_key.hex(),
        recorded=recorded,
    )


@router.get(
    "/enrolment-tokens",
    response_model=Page[EnrolmentTokenPublic],
    responses=errors.responses(401, 403, 413, 422, 503),
)
async def list_enrolment_tokens(
    conn: Conn, _: Admin, limit: Limit = 100, offset: Offset = 0
) -> Page[EnrolmentTokenPublic]:
    rows, total = await queries.list_tokens(conn, limit=limit, offset=offset)
    return Page(
        items=[EnrolmentTokenPublic(**r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/enrolment-tokens/{token_id}",
    response_model=EnrolmentTokenPublic,
    responses=errors.responses(401, 403, 404, 413, 422, 503),
)
async def get_enrolment_token(token_id: UUID, conn: Conn, _: Admin) -> EnrolmentTokenPublic:
    row = await queries.get_token(conn, token_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"enrolment token {token_id} not found")
    return EnrolmentTokenPublic(**row)


@router.delete(
    "/enrolment-tokens/{token_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=errors.responses(401, 403, 404, 409, 413, 422, 503),
)
async def revoke_enrolment_token(
    token_id: UUID, request: Request, response: Response, conn: Conn, who: Admin
) -> Accepted:
    """Revoke a token: devices enrolled with it stay; no new enrolment with it is accepted."""
    row = await queries.get_token(conn, token_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"enrolment token {token_id} not found")
    if row["revoked_at"] is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"enrolment token {token_id} is revoked")
    await publish(
        request,
        topics.DEVICES,
        str(token_id),
        EnrolmentTokenRevoked(producer=PRODUCER, token_id=token_id, issued_by=who.subject),
    )
    return accepted(response, str(token_id), f"{PREFIX}/enrolment-tokens/{token_id}")
