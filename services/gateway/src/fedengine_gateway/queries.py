"""Read-only SQL over the projections the services own (CQRS: the gateway writes no table).

Only through the public views each owner declares in its own migrations (``*_public``),
never their tables: tests/unit/test_schema_boundaries.py checks it.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

_DEVICE_COLUMNS = (
    "device_id, device_name, device_type, privacy_level, status, capabilities, "
    "encode(public_key, 'hex') AS public_key, fleet, battery_pct, charging, network, "
    "enrolled_at, last_heartbeat_at"
)
_TOKEN_COLUMNS = (
    "t.token_id, t.fleet, t.expires_at, t.max_devices, t.issued_by, t.issued_at, t.revoked_at, "
    "t.revoked_by, (SELECT count(*) FROM registry.devices_public d "
    "WHERE d.enrolment_token_id = t.token_id) AS enrolled"
)
# A task's latest accuracy: its devices' (the latest round they evaluated) when its spec has
# federated_evaluation, whose metrics then drive its stopping rules; else the central one.
_TASK_COLUMNS = (
    "t.task_id, t.task_name, t.state, t.stop_reason, t.current_round, t.model_version, t.spec, "
    "t.created_by, t.created_at, t.started_at, t.finished_at, "
    "CASE WHEN jsonb_typeof(t.spec -> 'federated_evaluation') = 'object' THEN "
    "(SELECT r.fed_accuracy FROM coordinator.rounds_public r WHERE r.task_id = t.task_id "
    " AND r.fed_accuracy IS NOT NULL ORDER BY r.round_number DESC, r.attempt DESC LIMIT 1) "
    "ELSE (SELECT r.accuracy FROM coordinator.rounds_public r WHERE r.task_id = t.task_id "
    " AND r.status = 'completed' ORDER BY r.round_number DESC LIMIT 1) END AS latest_accuracy"
)
_UPLOADED_MODEL_COLUMNS = "model_id, sha256, size_bytes, tensors, name, uploaded_by, uploaded_at"
# A list names each model's tensor count, not its tensors: 4,096 names of 200 characters a
# model, 500 models a page, would be a page of about 400 MB.
_UPLOADED_MODEL_SUMMARY = (
    "model_id, sha256, size_bytes, jsonb_array_length(tensors) AS tensor_count, name, "
    "uploaded_by, uploaded_at"
)
_EVALUATION_COLUMNS = (
    "evaluation_id, round_number, model_version, asked, deadline, status, answered, "
    "num_examples, loss, accuracy, metrics, opened_at, closed_at"
)


async def _all(
    conn: psycopg.AsyncConnection, query: str, params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(query, params)
    return await cursor.fetchall()


async def _page(
    conn: psycopg.AsyncConnection,
    *,
    columns: str,
    source: str,
    where: str,
    params: tuple[Any, ...],
    order: str,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """Return one page of ``source`` and the total count under ``where``.

    Only module constants reach the SQL text; values always travel as parameters.
    """
    rows = await _all(
        conn,
        f"SELECT {columns} FROM {source} {where} ORDER BY {order} LIMIT %s OFFSET %s",
        (*params, limit, offset),
    )
    cursor = await conn.execute(f"SELECT count(*) FROM {source} {where}", params)
    row = await cursor.fetchone()
    return rows, int(row[0]) if row else 0


async def list_devices(
    conn: psycopg.AsyncConnection,
    *,
    status: str | None,
    limit: int,
    offset: int,
    prefix: str = "",
) -> tuple[list[dict[str, Any]], int]:
    conditions: list[str] = []
    values: list[Any] = []
    if status:
        conditions.append("status = %s")
        values.append(status)
    if prefix:
        # starts_with, not LIKE: '_' in a fleet's name is no wildcard.
        conditions.append("starts_with(device_id, %s)")
        values.append(prefix)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    params = tuple(values)
    return await _page(
        conn,
        columns=_DEVICE_COLUMNS,
        source="registry.devices_public",
        where=where,
        params=params,
        order="device_id",
        limit=limit,
        offset=offset,
    )


async def get_device(conn: psycopg.AsyncConnection, device_id: str) -> dict[str, Any] | None:
    rows = await _all(
        conn,
        f"SELECT {_DEVICE_COLUMNS} FROM registry.devices_public WHERE device_id = %s",
        (device_id,),
    )
    return rows[0] if rows else None


async def get_token(conn: psycopg.AsyncConnection, token_id: UUID) -> dict[str, Any] | None:
    rows = await _all(
        conn,
        f"SELECT {_TOKEN_COLUMNS} FROM registry.enrolment_tokens_public t WHERE t.token_id = %s",
        (token_id,),
    )
    return rows[0] if rows else None


async def list_tokens(
    conn: psycopg.AsyncConnection, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    return await _page(
        conn,
        columns=_TOKEN_COLUMNS,
        source="registry.enrolment_tokens_public t",
        where="",
        params=(),
        order="t.issued_at DESC, t.token_id",
        limit=limit,
        offset=offset,
    )


async def list_tasks(
    conn: psycopg.AsyncConnection, *, state: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    where, params = ("WHERE t.state = %s", (state,)) if state else ("", ())
    return await _page(
        conn,
        columns=_TASK_COLUMNS,
        source="coordinator.tasks_public t",
        where=where,
        params=params,
        order="t.created_at DESC",
        limit=limit,
        offset=offset,
    )


async def get_task(conn: psycopg.AsyncConnection, task_id: UUID) -> dict[str, Any] | None:
    rows = await _all(
        conn,
        f"SELECT {_TASK_COLUMNS} FROM coordinator.tasks_public t WHERE t.task_id = %s",
        (task_id,),
    )
    return rows[0] if rows else None


async def list_rounds(
    conn: psycopg.AsyncConnection, task_id: UUID, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the task's rounds; a secure round's carries its SecAgg+ stages (the
    aggregator's public log: counts, seconds and bytes; none for a DP round)."""
    rows, total = await _page(
        conn,
        columns="round_number, attempt, status, participants, aggregated, dropped, rejected, "
        "accuracy, loss, train_loss, num_examples, bytes_up, bytes_down, duration_s, opened_at, "
        "closed_at, failure, epsilon_spent, noise_multiplier, sample_rate, clip_norm, "
        "fed_accuracy, fed_loss, fed_examples, fed_devices",
        source="coordinator.rounds_public",
        where="WHERE task_id = %s",
        params=(task_id,),
        order="round_number, attempt",
        limit=limit,
        offset=offset,
    )
    stages = await _all(
        conn,
        "SELECT round_number, attempt, stage_name, expected, delivered, dropped, rejected, "
        "seconds, bytes_up, bytes_down FROM aggregator.secagg_log_public "
        "WHERE task_id = %s ORDER BY round_number, attempt, stage",
        (task_id,),
    )
    by_try: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for stage in stages:
        key = (stage.pop("round_number"), stage.pop("attempt"))
        by_try.setdefault(key, []).append(stage)
    for row in rows:
        row["secure_stages"] = by_try.get((row["round_number"], row["attempt"]))
    return rows, total


async def list_events(
    conn: psycopg.AsyncConnection, task_id: UUID, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    return await _page(
        conn,
        columns="kind, issued_by, detail, at",
        source="coordinator.task_events_public",
        where="WHERE task_id = %s",
        params=(task_id,),
        order="id",
        limit=limit,
        offset=offset,
    )


async def list_evaluations(
    conn: psycopg.AsyncConnection, task_id: UUID, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the task's federated evaluations, oldest first."""
    return await _page(
        conn,
        columns=_EVALUATION_COLUMNS,
        source="coordinator.evaluations_public",
        where="WHERE task_id = %s",
        params=(task_id,),
        order="round_number, opened_at, evaluation_id",
        limit=limit,
        offset=offset,
    )


async def list_uploaded_models(
    conn: psycopg.AsyncConnection, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the uploaded initial models, newest first (never their bytes)."""
    return await _page(
        conn,
        columns=_UPLOADED_MODEL_SUMMARY,
        source="coordinator.uploaded_models_public",
        where="",
        params=(),
        order="uploaded_at DESC, model_id",
        limit=limit,
        offset=offset,
    )


async def get_uploaded_model(
    conn: psycopg.AsyncConnection, model_id: UUID
) -> dict[str, Any] | None:
    """An uploaded model as the coordinator stored it (never its bytes); None: not (yet)."""
    rows = await _all(
        conn,
        f"SELECT {_UPLOADED_MODEL_COLUMNS} FROM coordinator.uploaded_models_public "
        "WHERE model_id = %s",
        (model_id,),
    )
    return rows[0] if rows else None


async def get_model(
    conn: psycopg.AsyncConnection, task_id: UUID, version: int | None
) -> tuple[int, str, bytes] | None:
    if version is None:
        cursor = await conn.execute(
            "SELECT version, sha256, data FROM coordinator.models_public WHERE task_id = %s "
            "ORDER BY version DESC LIMIT 1",
            (task_id,),
        )
    else:
        cursor = await conn.execute(
            "SELECT version, sha256, data FROM coordinator.models_public "
            "WHERE task_id = %s AND version = %s",
            (task_id, version),
        )
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1], bytes(row[2]))


async def get_device_key(conn: psycopg.AsyncConnection, device_id: str) -> bytes | None:
    """The enrolled public key of ``device_id``; None for an unknown or removed device."""
    cursor = await conn.execute(
        "SELECT public_key FROM registry.devices_public "
        "WHERE device_id = %s AND status <> 'removed'",
        (device_id,),
    )
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


async def was_asked(
    conn: psycopg.AsyncConnection, *, device_id: str, task_id: UUID, version: int
) -> bool:
    """Whether ``device_id`` was asked to train on, or to evaluate, model ``version`` of
    ``task_id`` (``model_requests_public`` lists both)."""
    cursor = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM coordinator.model_requests_public "
        "WHERE task_id = %s AND model_version = %s AND device_id = %s)",
        (task_id, version, device_id),
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


async def round_durations(conn: psycopg.AsyncConnection) -> tuple[int, float]:
    """Return the count and the summed duration of completed rounds."""
    cursor = await conn.execute(
        "SELECT count(*), COALESCE(sum(duration_s), 0) FROM coordinator.rounds_public "
        "WHERE status = 'completed'"
    )
    row = await cursor.fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


async def status_counts(conn: psycopg.AsyncConnection) -> dict[str, dict[str, int]]:
    async def grouped(query: str) -> dict[str, int]:
        cursor = await conn.execute(query)
        return {str(k): int(v) for k, v in await cursor.fetchall()}

    return {
        "devices": await grouped(
            "SELECT status, count(*) FROM registry.devices_public GROUP BY status"
        ),
        "tasks": await grouped(
            "SELECT state, count(*) FROM coordinator.tasks_public GROUP BY state"
        ),
        "rounds": await grouped(
            "SELECT status, count(*) FROM coordinator.rounds_public GROUP BY status"
        ),
        "updates": await grouped(
            "SELECT COALESCE(reason, status), count(*) FROM aggregator.device_results_public "
            "GROUP BY COALESCE(reason, status)"
        ),
        "bytes": await grouped(
            "SELECT 'up', COALESCE(sum(bytes_up), 0) FROM coordinator.rounds_public UNION ALL "
            "SELECT 'down', COALESCE(sum(bytes_down), 0) FROM coordinator.rounds_public"
        ),
    }


_BUDGET_COLUMNS = (
    "task_id, epsilon_budget, epsilon_spent, greatest(epsilon_budget - epsilon_spent, 0) "
    "AS epsilon_remaining, delta, accountant, clip_norm, noise_multiplier, calibrated, "
    "planned_rounds, releases, exhausted_at, created_at, adaptive_clipping"
)


async def list_budgets(
    conn: psycopg.AsyncConnection, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    return await _page(
        conn,
        columns=_BUDGET_COLUMNS,
        source="privacy.budgets_public",
        where="",
        params=(),
        order="created_at, task_id",
        limit=limit,
        offset=offset,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


async def get_device_ledger(conn: psycopg.AsyncConnection, device_id: str) -> dict[str, Any] | None:
    """A device's local-DP ledger, oldest first, with its per-task and lifetime totals (ε only
    grows with releases: the latest row's is the total)."""
    rows = await _all(
        conn,
        "SELECT task_id, round_number, attempt, level, noise_multiplier, sample_rate, steps, "
        "max_grad_norm, delta, epsilon_task_budget, epsilon_lifetime_budget, "
        "epsilon_task_after, epsilon_lifetime_after, task_exhausted, lifetime_exhausted, "
        "recorded_at FROM privacy.device_ledger_public WHERE device_id = %s "
        "ORDER BY recorded_at, task_id, round_number, attempt",
        (device_id,),
    )
    if not rows:
        return None
    tasks: dict[UUID, dict[str, Any]] = {}
    for row in rows:
        task = tasks.setdefault(
            row["task_id"],
            {"task_id": row["task_id"], "releases": 0, "exhausted": False, "epsilon_spent": 0.0},
        )
        task["level"] = row["level"]
        task["epsilon_budget"] = row["epsilon_task_budget"]
        task["epsilon_spent"] = max(task["epsilon_spent"], row["epsilon_task_after"])
        task["releases"] += 1
        task["exhausted"] = task["exhausted"] or row["task_exhausted"]
    for task in tasks.values():
        task["epsilon_spent"] = _finite(task["epsilon_spent"])
    last = rows[-1]
    return {
        "device_id": device_id,
        "level": last["level"],
        "delta": last["delta"],
        "epsilon_lifetime_budget": last["epsilon_lifetime_budget"],
        "epsilon_lifetime_spent": _finite(max(r["epsilon_lifetime_after"] for r in rows)),
        "lifetime_exhausted": any(r["lifetime_exhausted"] for r in rows),
        "tasks": list(tasks.values()),
        "release_log": [
            {
                **{k: r[k] for k in r if k not in ("epsilon_task_after", "epsilon_lifetime_after")},
                "epsilon_task_after": _finite(r["epsilon_task_after"]),
                "epsilon_lifetime_after": _finite(r["epsilon_lifetime_after"]),
            }
            for r in rows
        ],
    }


async def get_budget(conn: psycopg.AsyncConnection, task_id: UUID) -> dict[str, Any] | None:
    """One task's budget with its whole ledger and audit log (a task has at most a few
    thousand rounds: both stay small)."""
    rows = await _all(
        conn,
        f"SELECT {_BUDGET_COLUMNS} FROM privacy.budgets_public WHERE task_id = %s",
        (task_id,),
    )
    if not rows:
        return None
    budget = rows[0]
    budget["release_log"] = await _all(
        conn,
        "SELECT approval_id, round_number, attempt, mechanism, noise_multiplier, sample_rate, "
        "steps, clip_norm, epsilon_after, delta, accountant, released_at, "
        "update_noise_multiplier, count_noise_std "
        "FROM privacy.releases_public WHERE task_id = %s ORDER BY released_at, round_number",
        (task_id,),
    )
    budget["audit"] = await _all(
        conn,
        "SELECT round_number, attempt, requested_by, on_behalf_of, decision, reason, "
        "epsilon_before, epsilon_after, at FROM privacy.audit_public WHERE task_id = %s "
        "ORDER BY audit_id",
        (task_id,),
    )
    return budget
