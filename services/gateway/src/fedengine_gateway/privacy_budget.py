"""GET /privacy/budget: every DP task's budget, one task's ledger and audit log, or one
device's local-DP ledger (?device_id=).

Read from the privacy service's views (privacy.*_public), which it keeps append-only; nothing
here or in /cleanup changes them.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError

from fedcommon import auth
from fedcommon.constraints import DeviceId
from fedengine_gateway import errors, queries
from fedengine_gateway.deps import PREFIX, Conn, Limit, Offset, Viewer
from fedengine_gateway.schemas import DeviceLedgerPublic, Page, PrivacyBudgetPublic

router = APIRouter(prefix=PREFIX)


@router.get(
    "/privacy/budget",
    response_model=PrivacyBudgetPublic | DeviceLedgerPublic | Page[PrivacyBudgetPublic],
    responses=errors.responses(401, 403, 404, 413, 422, 503),
    summary="Privacy budgets: all DP tasks, one task's ledger and audit log, or one device's "
    "local-DP ledger",
)
async def get_privacy_budget(
    conn: Conn,
    principal: Viewer,
    task_id: Annotated[UUID | None, Query()] = None,
    device_id: Annotated[DeviceId | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PrivacyBudgetPublic | DeviceLedgerPublic | Page[PrivacyBudgetPublic]:
    if task_id is not None and device_id is not None:
        # As every other 422: the field and the reason (errors.py answers it).
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "device_id"),
                    "msg": "give task_id or device_id, not both",
                    "type": "value_error",
                }
            ]
        )
    if device_id is not None:
        # Admins only: a device's ledger lists the rounds it was asked in, which for a task
        # with central DP would publish who the secret Poisson draw chose.
        if not auth.allows(principal.role, auth.Role.ADMIN):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role {principal.role.value} may not read a device's privacy ledger; needs admin",
            )
        ledger = await queries.get_device_ledger(conn, device_id)
        if ledger is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"device {device_id} has no local-DP ledger (yet)"
            )
        return DeviceLedgerPublic(**ledger)
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
