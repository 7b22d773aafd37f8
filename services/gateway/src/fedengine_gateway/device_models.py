"""GET /devices/{device_id}/tasks/{task_id}/models/{version}: a device fetches, as itself, a
model version it was asked to train on or to evaluate.

No JWT: the device signs the request with its enrolled Ed25519 key, over
``fedcommon.signing.model_fetch_payload`` (headers ``X-Device-Sent-At`` and
``X-Device-Signature``). The checks, in order: the headers and the send time (401, pure:
``device_requests``); the signature against the device's enrolled key (401, one answer for an
unknown, removed or wrongly signed device, so that nobody learns which devices exist); a try
that asked this device to train on this version, or an evaluation that asked it to evaluate
it (403, ``coordinator.model_requests_public`` lists both); the version in the store (404).
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Path, Request, Response, status
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool

from fedcommon import signing
from fedcommon.constraints import INT32_MAX
from fedcommon.errors import ProtocolViolation
from fedengine_gateway import errors, queries
from fedengine_gateway.deps import PREFIX, DevicePath, settings_of
from fedengine_gateway.device_requests import (
    SENT_AT_HEADER,
    SIGNATURE_HEADER,
    MalformedHeader,
    OutsideWindow,
    check_headers,
)
from fedengine_gateway.schemas import ErrorBody

logger = logging.getLogger(__name__)


class FetchOutcome(StrEnum):
    SERVED = "served"
    MALFORMED_HEADERS = "malformed_headers"
    OUTSIDE_WINDOW = "outside_window"
    # An unknown or removed device and a signature that does not verify share one outcome:
    # /metrics needs no token, and two counters would tell anyone which device ids exist.
    BAD_SIGNATURE = "bad_signature"
    NOT_ASKED = "not_asked"
    NOT_FOUND = "not_found"


FETCHES = Counter(
    "fedengine_gateway_device_model_fetches_total",
    "Model versions requested by devices signing as themselves, by outcome",
    ["outcome"],
)
for _outcome in FetchOutcome:
    FETCHES.labels(_outcome.value)  # every outcome shows, at 0, from the start

SIGNATURE_REFUSED = "the device signature does not verify"
# Checked against in place of an unknown or removed device's key, so that refusing one costs
# what refusing a wrong signature costs, and the time taken does not tell them apart either.
_STAND_IN_KEY = signing.public_key_bytes(signing.generate_private_key())

VersionPath = Annotated[int, Path(ge=0, le=INT32_MAX)]

router = APIRouter(prefix=PREFIX)


def model_response(task_id: UUID, version: int, digest: str, data: bytes) -> Response:
    """Return a stored model version as its safetensors bytes, with its digest and version."""
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={
            "X-Model-SHA256": digest,
            "X-Model-Version": str(version),
            "Content-Disposition": f'attachment; filename="{task_id}-v{version}.safetensors"',
        },
    )


def _signature_problem(public_key: bytes | None, signature: bytes, payload: bytes) -> str | None:
    """Say why ``signature`` does not speak for the device whose key is ``public_key`` (None:
    unknown or removed), or return None when it does."""
    unknown = "no such device, or it was removed"
    try:
        signing.verify(
            public_key=_STAND_IN_KEY if public_key is None else public_key,
            signature=signature,
            payload=payload,
        )
    except ProtocolViolation as exc:
        return unknown if public_key is None else str(exc)
    return unknown if public_key is None else None


_STATUS = {
    FetchOutcome.MALFORMED_HEADERS: status.HTTP_401_UNAUTHORIZED,
    FetchOutcome.OUTSIDE_WINDOW: status.HTTP_401_UNAUTHORIZED,
    FetchOutcome.BAD_SIGNATURE: status.HTTP_401_UNAUTHORIZED,
    FetchOutcome.NOT_ASKED: status.HTTP_403_FORBIDDEN,
    FetchOutcome.NOT_FOUND: status.HTTP_404_NOT_FOUND,
}


def _refuse(
    outcome: FetchOutcome,
    detail: str,
    *,
    reason: str,
    device_id: str,
    task_id: UUID,
    version: int,
) -> HTTPException:
    """Count and log a refusal (the reason, never the signature); return its answer."""
    FETCHES.labels(outcome.value).inc()
    logger.warning(
        "device %s refused model version %s of task %s (%s): %s",
        device_id,
        version,
        task_id,
        outcome.value,
        reason,
        extra={"device_id": device_id, "task_id": str(task_id), "model_version": version},
    )
    code = _STATUS[outcome]
    headers = {"WWW-Authenticate": "FedEngine-Device"} if code == 401 else None
    return HTTPException(code, detail, headers=headers)


@router.get(
    "/devices/{device_id}/tasks/{task_id}/models/{version}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "safetensors"},
        401: {
            "model": ErrorBody,
            "description": f"{SENT_AT_HEADER} or {SIGNATURE_HEADER} missing or malformed, the "
            "request time outside the window (GATEWAY_DEVICE_REQUEST_WINDOW_S), or a signature "
            "that does not verify with the device's enrolled key",
        },
        403: {
            "model": ErrorBody,
            "description": "The device was not asked to train on (or evaluate) this version "
            "of this task",
        },
        404: {"model": ErrorBody, "description": "The model version is not in the store"},
        **errors.responses(413, 422, 503),
    },
    summary="Fetch, as a device, a model version it was asked to train on or evaluate",
)
async def get_device_model(
    device_id: DevicePath,
    task_id: UUID,
    version: VersionPath,
    request: Request,
    sent_at: Annotated[str | None, Header(alias=SENT_AT_HEADER)] = None,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> Response:
    """Serve the safetensors of model ``version`` of ``task_id`` to ``device_id``, which signs
    ``model_fetch_payload(device_id, task_id, version, sent_at_us)`` with its enrolled key, when
    a round asked it to train on that version; no JWT."""

    def refuse(outcome: FetchOutcome, detail: str, reason: str | None = None) -> HTTPException:
        return _refuse(
            outcome,
            detail,
            reason=detail if reason is None else reason,
            device_id=device_id,
            task_id=task_id,
            version=version,
        )

    try:
        signed = check_headers(
            sent_at=sent_at,
            signature=signature,
            now_us=time.time_ns() // 1000,
            window_s=settings_of(request).device_request_window_s,
        )
    except MalformedHeader as exc:
        raise refuse(FetchOutcome.MALFORMED_HEADERS, str(exc)) from exc
    except OutsideWindow as exc:
        raise refuse(FetchOutcome.OUTSIDE_WINDOW, str(exc)) from exc
    payload = signing.model_fetch_payload(
        device_id=device_id, task_id=task_id, version=version, sent_at_us=signed.sent_at_us
    )
    # Only a request that passed the checks above takes a database connection.
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        problem = _signature_problem(
            await queries.get_device_key(conn, device_id), signed.signature, payload
        )
        if problem is not None:
            raise refuse(FetchOutcome.BAD_SIGNATURE, SIGNATURE_REFUSED, reason=problem)
        if not await queries.was_asked(conn, device_id=device_id, task_id=task_id, version=version):
            raise refuse(
                FetchOutcome.NOT_ASKED,
                f"device {device_id} was not asked to train on model version {version} of task "
                f"{task_id}",
            )
        found = await queries.get_model(conn, task_id, version)
    if found is None:
        raise refuse(
            FetchOutcome.NOT_FOUND, f"model version {version} of task {task_id} is not in the store"
        )
    model_version, digest, data = found
    FETCHES.labels(FetchOutcome.SERVED.value).inc()
    return model_response(task_id, model_version, digest, data)
