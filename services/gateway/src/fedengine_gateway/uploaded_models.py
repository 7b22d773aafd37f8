"""Models as artifacts: POST /models takes a safetensors file, GET /models lists what the
coordinator stored, and a task that names an ``initial_model`` is checked against that list.

The file is checked here (``fedcommon.model_files.inspect``: finite F32 tensors, a sound header)
and travels to the coordinator in one signed ``model.uploaded`` record on fed.tasks, so its
size is bounded by the broker's record limit less some headroom
(``Settings.max_model_bytes``; the body limit answers 413 past it). The gateway writes no
table: the coordinator stores the model, and ``uploaded_models_public`` shows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Annotated
from uuid import UUID, uuid4

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from psycopg_pool import AsyncConnectionPool

from fedcommon import topics
from fedcommon.constraints import MAX_NAME_LENGTH
from fedcommon.messages.v1 import InitialModel, ModelUploaded
from fedengine_gateway import errors, queries
from fedengine_gateway.body_limit import RouteLimit
from fedengine_gateway.deps import (
    PREFIX,
    PRODUCER,
    Conn,
    Limit,
    Offset,
    Operator,
    Viewer,
    publish,
    settings_of,
    wait_for_projection,
)
from fedengine_gateway.issued import IssuedIds
from fedengine_gateway.schemas import (
    ErrorBody,
    Page,
    TensorPublic,
    UploadedModelAccepted,
    UploadedModelPublic,
    UploadedModelSummary,
    ValidationErrorBody,
)
from fedengine_gateway.settings import MODEL_UPLOAD_HEADROOM_BYTES

if TYPE_CHECKING:
    from fedcommon import model_files

logger = logging.getLogger(__name__)

MODELS_PATH = f"{PREFIX}/models"
MEDIA_TYPE = "application/octet-stream"

router = APIRouter(prefix=PREFIX)

# The upload's name: what other names take (1 to 200 characters, no NUL byte).
ModelName = Annotated[
    str,
    Query(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=r"^[^\x00]+$",
        description="A name for people to tell uploads apart (1 to 200 characters)",
    ),
]


def upload_limit(max_model_bytes: int) -> RouteLimit:
    """The body limit of POST /models: a file that fits one Kafka record."""
    return RouteLimit(
        max_model_bytes,
        what="model file",
        why=": it travels in one Kafka record (KAFKA_MAX_MESSAGE_BYTES less "
        f"{MODEL_UPLOAD_HEADROOM_BYTES} bytes of headroom)",
    )


def _issued_models(request: Request) -> IssuedIds:
    issued: IssuedIds = request.app.state.issued_models
    return issued


def _inspect(data: bytes) -> tuple[list[model_files.TensorSpec], str]:
    """Check the file and hash it (off the event loop: a file may be 16 MB)."""
    from fedcommon import model_files

    return model_files.inspect(data), hashlib.sha256(data).hexdigest()


@router.post(
    "/models",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadedModelAccepted,
    responses={
        413: {
            "model": ErrorBody,
            "description": "The file is larger than one Kafka record takes "
            "(KAFKA_MAX_MESSAGE_BYTES less 64 KiB)",
        },
        415: {"model": ErrorBody, "description": f"The body is not sent as {MEDIA_TYPE}"},
        422: {
            "model": ValidationErrorBody,
            "description": "Not a model file the platform can train (loc body, type "
            "bad_model_file; the message says why), or a bad name",
        },
        **errors.responses(401, 403, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "description": "The safetensors file itself: finite F32 tensors, at most 4096",
        }
    },
    summary="Upload an initial model (a safetensors file) for tasks to start from",
)
async def upload_model(
    request: Request, response: Response, who: Operator, name: ModelName = "model"
) -> UploadedModelAccepted:
    """Check the raw safetensors body, send it to the coordinator as ``model.uploaded``, and
    answer its id and sha256 (what a task's ``initial_model`` names) with its tensors."""
    content_type = request.headers.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() != MEDIA_TYPE:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send the safetensors file itself as the body, with Content-Type: {MEDIA_TYPE} "
            "(curl --data-binary @model.safetensors -H 'Content-Type: "
            f"{MEDIA_TYPE}'), not as {content_type.split(';')[0][:100]}",
        )
    data = await request.body()
    # numpy and safetensors (about 20 MB) are loaded by the first upload, not by every gateway.
    from fedcommon import model_files

    try:
        tensors, sha256 = await asyncio.to_thread(_inspect, data)
    except model_files.BadModelFile as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": str(exc), "type": "bad_model_file"}]
        ) from exc
    model_id = uuid4()
    location = f"{MODELS_PATH}/{model_id}"
    await publish(
        request,
        topics.TASKS,
        str(model_id),
        ModelUploaded(
            producer=PRODUCER,
            model_id=model_id,
            sha256=sha256,
            data=data,
            name=name,
            uploaded_by=who.subject,
        ),
        location=location,
    )
    _issued_models(request).add(model_id, now=time.monotonic())
    logger.info(
        "model %s uploaded by %s: %d bytes, %d tensors",
        model_id,
        who.subject,
        len(data),
        len(tensors),
        extra={"model_id": str(model_id), "issued_by": who.subject},
    )
    response.headers["Location"] = location
    return UploadedModelAccepted(
        model_id=model_id,
        sha256=sha256,
        size_bytes=len(data),
        name=name,
        tensors=[TensorPublic(name=t.name, shape=list(t.shape), dtype=t.dtype) for t in tensors],
    )


@router.get(
    "/models",
    response_model=Page[UploadedModelSummary],
    responses=errors.responses(401, 413, 422, 503),
)
async def list_models(
    conn: Conn, _: Viewer, limit: Limit = 100, offset: Offset = 0
) -> Page[UploadedModelSummary]:
    """The uploads, newest first, each with its tensor count (not its tensors)."""
    rows, total = await queries.list_uploaded_models(conn, limit=limit, offset=offset)
    return Page(
        items=[UploadedModelSummary(**r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/models/{model_id}",
    response_model=UploadedModelPublic,
    responses=errors.responses(401, 404, 413, 422, 503),
)
async def get_model(model_id: UUID, conn: Conn, _: Viewer) -> UploadedModelPublic:
    """One uploaded model; 404 until the coordinator has stored it (a moment after the 202)."""
    row = await queries.get_uploaded_model(conn, model_id)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"model {model_id} not found (or not stored yet)"
        )
    return UploadedModelPublic(**row)


async def check_initial_model(request: Request, initial_model: InitialModel) -> None:
    """Refuse (422 on ``body.initial_model``) a task naming a model the coordinator has not
    stored with that sha256. A model this process accepted a moment ago is waited for
    (``GATEWAY_PROJECTION_WAIT_S``), as a task is."""
    pool: AsyncConnectionPool = request.app.state.pool
    model_id = initial_model.model_id
    async with pool.connection() as conn:
        row = await queries.get_uploaded_model(conn, model_id)
        issued = _issued_models(request)
        if row is None and issued.pending(model_id, now=time.monotonic()):
            row = await wait_for_projection(
                lambda: queries.get_uploaded_model(conn, model_id),
                wait_s=settings_of(request).projection_wait_s,
            )
    if row is not None:
        issued.discard(model_id)
    if row is None or row["sha256"] != initial_model.sha256:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "initial_model"),
                    "msg": f"initial model {model_id} is not uploaded (or its sha256 differs)",
                    "type": "value_error",
                }
            ]
        )
