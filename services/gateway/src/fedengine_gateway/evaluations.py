"""GET /tasks/{task_id}/evaluations: a task's federated evaluations, as the coordinator keeps
them (``coordinator.evaluations_public``); each round's means also show on its round."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from fedengine_gateway import errors, queries
from fedengine_gateway.deps import PREFIX, Conn, Limit, Offset, Viewer
from fedengine_gateway.schemas import EvaluationPublic, Page

router = APIRouter(prefix=PREFIX)


@router.get(
    "/tasks/{task_id}/evaluations",
    response_model=Page[EvaluationPublic],
    responses=errors.responses(401, 413, 422, 503),
    summary="A task's federated evaluations, oldest first",
)
async def list_evaluations(
    task_id: UUID, conn: Conn, _: Viewer, limit: Limit = 100, offset: Offset = 0
) -> Page[EvaluationPublic]:
    """Each evaluation of a version by the devices: how many were asked and answered, by when,
    and the example-weighted loss, accuracy and metrics (None until it closes, or when nobody
    answered in time)."""
    rows, total = await queries.list_evaluations(conn, task_id, limit=limit, offset=offset)
    return Page(
        items=[EvaluationPublic(**r) for r in rows], total=total, limit=limit, offset=offset
    )
