"""The coordinator's SQL. It reads the registry's device table (read-only) for selection."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from fedcommon.messages.v1 import PrivacyLevel, StopReason, TaskSpec, TaskState
from fedengine_coordinator.core.events import DeviceEvaluation
from fedengine_coordinator.core.selection import Candidate, WaitingTask
from fedengine_coordinator.core.state import Evaluation, Round, RoundStatus, Task

SCHEMA = "coordinator"


_TASK_COLUMNS = (
    "task_id, spec, state, current_round, model_version, waiting_since, created_by, dp_clip_norm"
)
_ROUND_COLUMNS = (
    "round_id, task_id, round_number, attempt, status, participants, model_version_in, deadline, "
    "sample_rate, expected_participants, clip_norm"
)
# A task's try in play: open, or (a DP task's) waiting for its privacy spend.
_IN_PLAY = "status IN ('open', 'awaiting_spend')"


def _task(row: tuple[Any, ...], *, validate: bool = True) -> Task:
    spec = row[1] if isinstance(row[1], dict) else json.loads(row[1])
    # A stored spec that no longer validates (written by an older version, or by hand) raises
    # here; the caller fails that task alone. Failing it must not need the spec parsed.
    parsed = TaskSpec.model_validate(spec) if validate else TaskSpec.model_construct(**spec)
    return Task(row[0], parsed, TaskState(row[2]), row[3], row[4], row[5], row[6], row[7])


def _round(row: tuple[Any, ...]) -> Round:
    return Round(
        row[0],
        row[1],
        row[2],
        row[3],
        RoundStatus(row[4]),
        tuple(row[5]),
        row[6],
        row[7],
        sample_rate=row[8],
        expected_participants=row[9],
        clip_norm=row[10],
    )


async def insert_task(
    conn: psycopg.AsyncConnection, *, task_id: UUID, spec: TaskSpec, created_by: str
) -> bool:
    cursor = await conn.execute(
        "INSERT INTO coordinator.tasks (task_id, task_name, spec, state, created_by) "
        "VALUES (%s, %s, %s, 'created', %s) ON CONFLICT DO NOTHING",
        (task_id, spec.task_name, Jsonb(spec.model_dump(mode="json")), created_by),
    )
    return cursor.rowcount == 1


async def lock_task(
    conn: psycopg.AsyncConnection, task_id: UUID, *, validate: bool = True
) -> Task | None:
    cursor = await conn.execute(
        f"SELECT {_TASK_COLUMNS} FROM coordinator.tasks WHERE task_id = %s FOR UPDATE",
        (task_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else _task(row, validate=validate)


async def set_state(
    conn: psycopg.AsyncConnection,
    task_id: UUID,
    state: TaskState,
    *,
    stop_reason: StopReason | None = None,
) -> None:
    finished = state in (TaskState.COMPLETED, TaskState.CANCELLED, TaskState.FAILED)
    await conn.execute(
        "UPDATE coordinator.tasks SET state = %s, stop_reason = COALESCE(%s, stop_reason), "
        "started_at = CASE WHEN %s = 'running' THEN COALESCE(started_at, now()) "
        "ELSE started_at END, "
        "finished_at = CASE WHEN %s THEN now() ELSE finished_at END, updated_at = now() "
        "WHERE task_id = %s",
        (state.value, stop_reason and stop_reason.value, state.value, finished, task_id),
    )


async def set_waiting(conn: psycopg.AsyncConnection, task_id: UUID, since: datetime | None) -> None:
    await conn.execute(
        "UPDATE coordinator.tasks SET waiting_since = %s WHERE task_id = %s", (since, task_id)
    )


async def log_event(
    conn: psycopg.AsyncConnection,
    task_id: UUID,
    kind: str,
    *,
    issued_by: str | None = None,
    detail: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO coordinator.task_events (task_id, kind, issued_by, detail) "
        "VALUES (%s, %s, %s, %s)",
        (task_id, kind, issued_by, detail),
    )


async def insert_model(
    conn: psycopg.AsyncConnection,
    *,
    task_id: UUID,
    version: int,
    sha256: str,
    data: bytes,
    round_number: int | None,
    optimizer_state: bytes | None = None,
) -> None:
    """Store a model version with the server optimizer state that produced it (None: the task
    has no server optimizer, or this is version 0)."""
    await conn.execute(
        "INSERT INTO coordinator.models "
        "(task_id, version, sha256, size_bytes, data, round_number, optimizer_state) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (task_id, version, sha256, len(data), data, round_number, optimizer_state),
    )


_GET_MODEL = "SELECT sha256, data FROM coordinator.models WHERE task_id = %s AND version = %s"


def _model(row: tuple[Any, ...] | None, task_id: UUID, version: int) -> tuple[str, bytes]:
    if row is None:
        raise LookupError(f"model version {version} of task {task_id} is missing")
    return row[0], bytes(row[1])


async def get_model(
    conn: psycopg.AsyncConnection, task_id: UUID, version: int
) -> tuple[str, bytes]:
    cursor = await conn.execute(_GET_MODEL, (task_id, version))
    return _model(await cursor.fetchone(), task_id, version)


async def get_optimizer_state(
    conn: psycopg.AsyncConnection, task_id: UUID, version: int
) -> bytes | None:
    """The server optimizer state stored with a model version (None: none was)."""
    cursor = await conn.execute(
        "SELECT optimizer_state FROM coordinator.models WHERE task_id = %s AND version = %s",
        (task_id, version),
    )
    row = await cursor.fetchone()
    if row is None:
        raise LookupError(f"model version {version} of task {task_id} is missing")
    return None if row[0] is None else bytes(row[0])


async def get_model_digest(conn: psycopg.AsyncConnection, task_id: UUID, version: int) -> str:
    cursor = await conn.execute(
        "SELECT sha256 FROM coordinator.models WHERE task_id = %s AND version = %s",
        (task_id, version),
    )
    row = await cursor.fetchone()
    if row is None:
        raise LookupError(f"model version {version} of task {task_id} is missing")
    return str(row[0])


_ONLINE_CANDIDATES = (
    "SELECT device_id, public_key, battery_pct, privacy_level FROM registry.devices_public "
    "WHERE status = 'online' AND public_key IS NOT NULL"
)


async def online_candidates(conn: psycopg.AsyncConnection) -> list[Candidate]:
    cursor = await conn.execute(_ONLINE_CANDIDATES)
    return [Candidate(r[0], bytes(r[1]), r[2], PrivacyLevel(r[3])) for r in await cursor.fetchall()]


_HAS_EXHAUSTION = "SELECT to_regclass('privacy.device_exhaustion_public') IS NOT NULL"


async def _exhausted_if(
    conn: psycopg.AsyncConnection, has_view: tuple[Any, ...] | None, task_id: UUID
) -> set[str]:
    """Local-DP devices one more round would take past this task's or their lifetime budget
    (the privacy service's device ledger; none before that service has created it)."""
    if has_view is None or not has_view[0]:
        return set()
    cursor = await conn.execute(
        "SELECT DISTINCT device_id FROM privacy.device_exhaustion_public "
        "WHERE lifetime_exhausted OR (task_id = %s AND task_exhausted)",
        (task_id,),
    )
    return {r[0] for r in await cursor.fetchall()}


_ASKS = (
    "SELECT device_id, count(*) FROM coordinator.rounds, unnest(participants) AS device_id "
    "WHERE task_id = %s AND (sample_rate IS NULL OR approval_id IS NOT NULL) "
    "GROUP BY device_id"
)


async def privacy_levels(
    conn: psycopg.AsyncConnection, device_ids: list[str]
) -> dict[str, PrivacyLevel]:
    """The enrolled privacy levels of ``device_ids``."""
    cursor = await conn.execute(
        "SELECT device_id, privacy_level FROM registry.devices_public WHERE device_id = ANY(%s)",
        (device_ids,),
    )
    return {r[0]: PrivacyLevel(r[1]) for r in await cursor.fetchall()}


_BUSY = (
    f"SELECT unnest(participants) FROM coordinator.rounds WHERE {_IN_PLAY} "
    "UNION SELECT unnest(devices) FROM coordinator.evaluations WHERE status = 'open'"
)


async def busy_devices(conn: psycopg.AsyncConnection) -> set[str]:
    """Devices in a round in play, or asked to evaluate while the evaluation is open: a
    device runs one request at a time, so another task's request would wait behind it. (The
    whole evaluation, not just until the device answered: the answers are not read here, so
    that opening a round never waits on them.)"""
    cursor = await conn.execute(_BUSY)
    return {r[0] for r in await cursor.fetchall()}


async def insert_round(conn: psycopg.AsyncConnection, round_: Round) -> None:
    await conn.execute(
        "INSERT INTO coordinator.rounds (round_id, task_id, round_number, attempt, status, "
        "participants, model_version_in, deadline, sample_rate, expected_participants, clip_norm) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            round_.round_id,
            round_.task_id,
            round_.round_number,
            round_.attempt,
            round_.status.value,
            list(round_.participants),
            round_.model_version_in,
            round_.deadline,
            round_.sample_rate,
            round_.expected_participants,
            round_.clip_norm,
        ),
    )


async def approve_round(
    conn: psycopg.AsyncConnection,
    *,
    round_id: UUID,
    approval_id: UUID,
    epsilon_spent: float,
    noise_multiplier: float,
    deadline: datetime,
) -> None:
    """Open a try whose privacy spend was approved: its deadline counts from now."""
    await conn.execute(
        "UPDATE coordinator.rounds SET status = 'open', approval_id = %s, epsilon_spent = %s, "
        "noise_multiplier = %s, deadline = %s WHERE round_id = %s AND status = 'awaiting_spend'",
        (approval_id, epsilon_spent, noise_multiplier, deadline, round_id),
    )


async def public_keys(conn: psycopg.AsyncConnection, device_ids: list[str]) -> dict[str, bytes]:
    """The enrolled keys of ``device_ids``, online or not (a drawn device may have gone quiet
    while its round waited for its spend: it is still asked, and simply may not answer)."""
    cursor = await conn.execute(
        "SELECT device_id, public_key FROM registry.devices_public "
        "WHERE device_id = ANY(%s) AND public_key IS NOT NULL",
        (device_ids,),
    )
    return {r[0]: bytes(r[1]) for r in await cursor.fetchall()}


_NEXT_ATTEMPT = (
    "SELECT COALESCE(max(attempt) + 1, 0) FROM coordinator.rounds "
    "WHERE task_id = %s AND round_number = %s"
)


async def lock_round(conn: psycopg.AsyncConnection, round_id: UUID) -> Round | None:
    cursor = await conn.execute(
        f"SELECT {_ROUND_COLUMNS} FROM coordinator.rounds WHERE round_id = %s FOR UPDATE",
        (round_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else _round(row)


async def open_round_of(conn: psycopg.AsyncConnection, task_id: UUID) -> Round | None:
    cursor = await conn.execute(
        f"SELECT {_ROUND_COLUMNS} FROM coordinator.rounds WHERE task_id = %s AND {_IN_PLAY}",
        (task_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else _round(row)


async def complete_round(
    conn: psycopg.AsyncConnection,
    *,
    round_id: UUID,
    model_version_out: int,
    accuracy: float | None,
    loss: float | None,
    train_loss: float,
    num_examples: int,
    aggregated: list[str],
    dropped: list[str],
    rejected: dict[str, int],
    bytes_up: int,
    bytes_down: int,
    duration_s: float,
) -> None:
    await conn.execute(
        "UPDATE coordinator.rounds SET status = 'completed', closed_at = now(), "
        "model_version_out = %s, accuracy = %s, loss = %s, train_loss = %s, num_examples = %s, "
        "aggregated = %s, dropped = %s, rejected = %s, bytes_up = %s, bytes_down = %s, "
        "duration_s = %s WHERE round_id = %s",
        (
            model_version_out,
            accuracy,
            loss,
            train_loss,
            num_examples,
            aggregated,
            dropped,
            Jsonb(rejected),
            bytes_up,
            bytes_down,
            duration_s,
            round_id,
        ),
    )


async def close_round(
    conn: psycopg.AsyncConnection,
    *,
    round_id: UUID,
    status: RoundStatus,
    failure: str,
    rejected: dict[str, int],
) -> None:
    """End an open try without a result (failed or abandoned)."""
    await conn.execute(
        "UPDATE coordinator.rounds SET status = %s, closed_at = now(), failure = %s, "
        "rejected = %s WHERE round_id = %s",
        (status.value, failure, Jsonb(rejected), round_id),
    )


async def advance_task(
    conn: psycopg.AsyncConnection,
    task_id: UUID,
    *,
    round_number: int,
    model_version: int,
    dp_clip_norm: float | None,
) -> None:
    """Record the applied round; ``dp_clip_norm`` (when not None) is adaptive clipping's C
    for the task's next DP round."""
    await conn.execute(
        "UPDATE coordinator.tasks SET current_round = %s, model_version = %s, "
        "dp_clip_norm = COALESCE(%s, dp_clip_norm), updated_at = now() WHERE task_id = %s",
        (round_number, model_version, dp_clip_norm, task_id),
    )


async def accuracies(
    conn: psycopg.AsyncConnection, task_id: UUID, *, federated: bool = False
) -> list[float]:
    """The accuracies of the task's completed rounds, oldest first: central evaluation's, or
    (``federated``) its devices'; rounds with none are left out."""
    column = "fed_accuracy" if federated else "accuracy"
    cursor = await conn.execute(
        f"SELECT {column} FROM coordinator.rounds WHERE task_id = %s AND status = 'completed' "
        f"AND {column} IS NOT NULL ORDER BY round_number",
        (task_id,),
    )
    return [r[0] for r in await cursor.fetchall()]


async def insert_uploaded_model(
    conn: psycopg.AsyncConnection,
    *,
    model_id: UUID,
    sha256: str,
    data: bytes,
    tensors: list[dict[str, object]],
    name: str,
    uploaded_by: str,
) -> bool:
    """Keep an uploaded model; False if its id is taken (a redelivery: nothing changes)."""
    cursor = await conn.execute(
        "INSERT INTO coordinator.uploaded_models "
        "(model_id, sha256, data, tensors, name, uploaded_by) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (model_id, sha256, data, Jsonb(tensors), name, uploaded_by),
    )
    return cursor.rowcount == 1


async def get_uploaded_model(conn: psycopg.AsyncConnection, model_id: UUID) -> tuple[str, bytes]:
    cursor = await conn.execute(
        "SELECT sha256, data FROM coordinator.uploaded_models WHERE model_id = %s", (model_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        raise LookupError(f"initial model {model_id} was never uploaded")
    return row[0], bytes(row[1])


_EVALUATION_COLUMNS = "evaluation_id, task_id, round_number, model_version, devices, deadline"


def _evaluation(row: tuple[Any, ...]) -> Evaluation:
    return Evaluation(row[0], row[1], row[2], row[3], tuple(row[4]), row[5], row[6])


async def insert_evaluation(conn: psycopg.AsyncConnection, evaluation: Evaluation) -> None:
    await conn.execute(
        f"INSERT INTO coordinator.evaluations ({_EVALUATION_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (
            evaluation.evaluation_id,
            evaluation.task_id,
            evaluation.round_number,
            evaluation.model_version,
            list(evaluation.devices),
            evaluation.deadline,
        ),
    )


async def lock_open_evaluation(conn: psycopg.AsyncConnection, task_id: UUID) -> Evaluation | None:
    """The task's open evaluation, locked (take the task's lock first: the order every
    handler keeps)."""
    cursor = await conn.execute(
        f"SELECT {_EVALUATION_COLUMNS}, answered FROM coordinator.evaluations "
        "WHERE task_id = %s AND status = 'open' FOR UPDATE",
        (task_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else _evaluation(row)


async def task_of_evaluation(conn: psycopg.AsyncConnection, evaluation_id: UUID) -> UUID | None:
    cursor = await conn.execute(
        "SELECT task_id FROM coordinator.evaluations WHERE evaluation_id = %s", (evaluation_id,)
    )
    row = await cursor.fetchone()
    return None if row is None else row[0]


async def record_evaluation_result(
    conn: psycopg.AsyncConnection,
    *,
    evaluation_id: UUID,
    device_id: str,
    num_examples: int,
    loss: float,
    metrics: dict[str, float],
) -> None:
    """Keep one device's answer (a second one of the same device is dropped) and count it in
    the evaluation's ``answered``."""
    await conn.execute(
        "WITH kept AS (INSERT INTO coordinator.evaluation_results "
        "(evaluation_id, device_id, num_examples, loss, metrics) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING RETURNING 1) "
        "UPDATE coordinator.evaluations SET answered = answered + (SELECT count(*) FROM kept) "
        "WHERE evaluation_id = %s",
        (evaluation_id, device_id, num_examples, loss, Jsonb(metrics), evaluation_id),
    )


async def evaluation_results(
    conn: psycopg.AsyncConnection, evaluation_id: UUID
) -> list[DeviceEvaluation]:
    cursor = await conn.execute(
        "SELECT device_id, num_examples, loss, metrics FROM coordinator.evaluation_results "
        "WHERE evaluation_id = %s ORDER BY device_id",
        (evaluation_id,),
    )
    return [DeviceEvaluation(r[0], r[1], r[2], r[3]) for r in await cursor.fetchall()]


async def close_evaluation(
    conn: psycopg.AsyncConnection,
    *,
    evaluation_id: UUID,
    task_id: UUID,
    round_number: int,
    status: str,
    answered: int,
    num_examples: int,
    loss: float | None,
    accuracy: float | None,
    metrics: dict[str, float],
) -> None:
    """Close the evaluation; a completed one's means become its round's federated metrics."""
    await conn.execute(
        "UPDATE coordinator.evaluations SET status = %s, answered = %s, num_examples = %s, "
        "loss = %s, accuracy = %s, metrics = %s, closed_at = now() WHERE evaluation_id = %s",
        (status, answered, num_examples, loss, accuracy, Jsonb(metrics), evaluation_id),
    )
    if status == "completed":
        await conn.execute(
            "UPDATE coordinator.rounds SET fed_accuracy = %s, fed_loss = %s, fed_examples = %s, "
            "fed_devices = %s WHERE task_id = %s AND round_number = %s AND status = 'completed'",
            (accuracy, loss, num_examples, answered, task_id, round_number),
        )


async def overdue_evaluations(conn: psycopg.AsyncConnection) -> list[tuple[UUID, UUID]]:
    """``(task_id, evaluation_id)`` of the open evaluations past their deadline."""
    cursor = await conn.execute(
        "SELECT task_id, evaluation_id FROM coordinator.evaluations "
        "WHERE status = 'open' AND deadline < now()"
    )
    return [(r[0], r[1]) for r in await cursor.fetchall()]


async def tasks_in_state(conn: psycopg.AsyncConnection, state: TaskState) -> list[UUID]:
    """The tasks in ``state``, those waiting for devices first, longest waiting first: the
    tick serves the queue in its order."""
    cursor = await conn.execute(
        "SELECT task_id FROM coordinator.tasks WHERE state = %s "
        "ORDER BY waiting_since NULLS LAST, created_at",
        (state.value,),
    )
    return [r[0] for r in await cursor.fetchall()]


_WAITING_BEFORE = (
    "SELECT spec -> 'participating_devices', (spec ->> 'min_devices')::int "
    "FROM coordinator.tasks WHERE state = 'running' AND waiting_since IS NOT NULL "
    "AND task_id <> %s AND (%s::timestamptz IS NULL OR waiting_since < %s) "
    "ORDER BY waiting_since"
)


def _waiting(rows: list[tuple[Any, ...]]) -> list[WaitingTask]:
    return [WaitingTask(None if not r[0] else frozenset(r[0]), r[1] or 1) for r in rows]


@dataclass(frozen=True)
class OfferReads:
    """What opening a try of a task reads (``offer_reads``)."""

    candidates: list[Candidate]
    model_sha256: str
    model: bytes
    busy: set[str]
    exhausted: set[str]
    asks: dict[str, int]
    attempt: int
    waiting: list[WaitingTask]


async def offer_reads(
    conn: psycopg.AsyncConnection,
    *,
    task_id: UUID,
    model_version: int,
    round_number: int,
    waiting_since: datetime | None,
) -> OfferReads:
    """Read what opening a try needs in one pipeline (sent together, answered together: one
    wait on the database instead of eight on the round's path): the online candidates, the
    model version it trains, busy devices, local-DP devices out of budget, how many opened
    tries of the task asked each device (a DP try counts once approved: one refused while
    awaiting its spend asked nobody), the attempt number the try gets (0 for the first), and
    the other running tasks waiting for devices since before ``waiting_since`` (every
    waiting one when None), with the devices each may use and how many it needs."""
    async with conn.pipeline():
        candidates = await conn.execute(_ONLINE_CANDIDATES)
        model = await conn.execute(_GET_MODEL, (task_id, model_version))
        busy = await conn.execute(_BUSY)
        has_view = await conn.execute(_HAS_EXHAUSTION)
        asked = await conn.execute(_ASKS, (task_id,))
        attempt = await conn.execute(_NEXT_ATTEMPT, (task_id, round_number))
        waiting = await conn.execute(_WAITING_BEFORE, (task_id, waiting_since, waiting_since))
        digest, data = _model(await model.fetchone(), task_id, model_version)
        attempt_row = await attempt.fetchone()
        reads = OfferReads(
            candidates=[
                Candidate(r[0], bytes(r[1]), r[2], PrivacyLevel(r[3]))
                for r in await candidates.fetchall()
            ],
            model_sha256=digest,
            model=data,
            busy={r[0] for r in await busy.fetchall()},
            exhausted=set(),
            asks={r[0]: int(r[1]) for r in await asked.fetchall()},
            attempt=int(attempt_row[0]) if attempt_row else 0,
            waiting=_waiting(await waiting.fetchall()),
        )
        view_row = await has_view.fetchone()
    # The ledger's view exists once the privacy service has started: a second wait then.
    exhausted = await _exhausted_if(conn, view_row, task_id)
    return reads if not exhausted else replace(reads, exhausted=exhausted)


async def overdue_rounds(
    conn: psycopg.AsyncConnection, *, grace_s: float
) -> list[tuple[UUID, UUID]]:
    """Return ``(task_id, round_id)`` of open rounds past their deadline plus ``grace_s``."""
    cursor = await conn.execute(
        "SELECT task_id, round_id FROM coordinator.rounds WHERE status = 'open' "
        "AND deadline < now() - make_interval(secs => %s)",
        (grace_s,),
    )
    return [(r[0], r[1]) for r in await cursor.fetchall()]


async def overdue_spends(
    conn: psycopg.AsyncConnection, *, timeout_s: float
) -> list[tuple[UUID, UUID]]:
    """Return ``(task_id, round_id)`` of tries asked for their spend more than timeout_s ago."""
    cursor = await conn.execute(
        "SELECT task_id, round_id FROM coordinator.rounds WHERE status = 'awaiting_spend' "
        "AND opened_at < now() - make_interval(secs => %s)",
        (timeout_s,),
    )
    return [(r[0], r[1]) for r in await cursor.fetchall()]


async def cleanup_models(conn: psycopg.AsyncConnection, *, retention_s: float) -> int:
    """Delete every model version but the last of tasks finished more than retention_s ago."""
    cursor = await conn.execute(
        """
        DELETE FROM coordinator.models m USING coordinator.tasks t
        WHERE m.task_id = t.task_id AND t.state IN ('completed', 'cancelled', 'failed')
          AND t.finished_at < now() - make_interval(secs => %s)
          AND m.version < t.model_version
        """,
        (retention_s,),
    )
    return cursor.rowcount
