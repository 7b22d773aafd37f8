"""GET /privacy/budget: every DP task's budget, one task's ledger and audit log.

Read from the privacy service's views (privacy.*_public), which it keeps append-only; nothing
here or in /cleanup changes them.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, status

from fedcommon.constraints import DeviceId
from fedengine_gateway import errors, queries
from fedengine_gateway.deps import PREFIX, Conn, Limit, Offset, Viewer
from fedengine_gateway.schemas import Page, PrivacyBudgetPublic

router = APIRouter(prefix=PREFIX)


@router.get(
    "/privacy/budget",
    response_model=PrivacyBudgetPublic | Page[PrivacyBudgetPublic],
    responses=errors.responses(401, 404, 413, 422, 501, 503),
    summary="Privacy budgets: all DP tasks, or one task's ledger and audit log",
)
async def get_privacy_budget(
    conn: Conn,
    _: Viewer,
    task_id: Annotated[UUID | None, Query()] = None,
    device_id: Annotated[DeviceId | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PrivacyBudgetPublic | Page[PrivacyBudgetPublic]:
    if task_id is not None and device_id is not None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "give task_id or device_id")
    if device_id is not None:
        # Device ledgers come with local DP-SGD on devices, which is not built yet.
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED,
            "per-device privacy ledgers come with local DP, which is not built yet",
        )
    if task_id is not None:
        row = await queries.get_budget(conn, task_id)
        if row is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"task {task_id} has no privacy budget (yet)"
            )
        return PrivacyBudgetPublic(**row)
    rows, total = await queries.list_budgets(conn, limit=limit, offset=offset)
    return Page(
        items=[PrivacyBudgetPublic(**r) for r in rows], total=total, limit=limit, offset=offset
    )
