"""The FastAPI application: /api/federated, JWT roles, commands to Kafka, reads from projections."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID, uuid4

import psycopg
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from fedcommon import background, db, kafka, lifecycle, topics
from fedcommon.constraints import INT32_MAX
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    CleanupRequested,
    TaskCancelRequested,
    TaskCreateRequested,
    TaskPauseRequested,
    TaskResumeRequested,
    TaskStartRequested,
    TaskState,
)
from fedengine_gateway import (
    device_models,
    devices,
    errors,
    evaluations,
    health,
    privacy_budget,
    queries,
    uploaded_models,
)
from fedengine_gateway.body_limit import BodyLimit
from fedengine_gateway.deps import (
    PREFIX,
    PRODUCER,
    Admin,
    Conn,
    Limit,
    Offset,
    Operator,
    Viewer,
    accepted,
    prober_of,
    publish,
    settings_of,
    wait_for_projection,
)
from fedengine_gateway.issued import IssuedIds
from fedengine_gateway.schemas import (
    Accepted,
    CleanupRequest,
    DependencyState,
    Health,
    Page,
    Readiness,
    RoundPublic,
    StatusPublic,
    TaskCreate,
    TaskEventPublic,
    TaskPublic,
)
from fedengine_gateway.settings import Settings

logger = logging.getLogger(__name__)

PROJECTION = Gauge("fedengine_projection", "Counts read from the projections", ["kind", "key"])
ROUND_SECONDS_SUM = Gauge(
    "fedengine_rounds_duration_seconds_sum", "Summed duration of completed rounds"
)
ROUND_SECONDS_COUNT = Gauge("fedengine_rounds_duration_seconds_count", "Completed rounds timed")
DEAD_LETTERS = Gauge(
    "fedengine_dead_letters", "Records in the dead-letter topic", ["original_topic", "error_type"]
)
PROJECTION_WAITS = Histogram(
    "fedengine_gateway_projection_wait_seconds",
    "Time a request on a task this gateway just created waited for its projection",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)

router = APIRouter(prefix=PREFIX)


@router.post(
    "/tasks",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    response_model_exclude_none=True,
    responses=errors.responses(400, 401, 403, 413, 422, 503),
)
async def create_task(
    body: TaskCreate, request: Request, response: Response, who: Operator
) -> Accepted:
    try:
        spec = body.to_spec()
    except ValidationError as exc:  # TaskCreate checks the spec already; kept as the last word
        raise RequestValidationError(
            [
                {**error, "loc": ("body", *error["loc"])}
                for error in exc.errors(include_url=False, include_input=False)
            ]
        ) from exc
    if spec.initial_model is not None:
        await uploaded_models.check_initial_model(request, spec.initial_model)
    task_id = uuid4()
    location = f"{PREFIX}/tasks/{task_id}"
    await publish(
        request,
        topics.TASKS,
        str(task_id),
        TaskCreateRequested(producer=PRODUCER, task_id=task_id, spec=spec, issued_by=who.subject),
        location=location,
    )
    _issued_tasks(request).add(task_id, now=time.monotonic())
    return accepted(response, str(task_id), location)


@router.get(
    "/tasks", response_model=Page[TaskPublic], responses=errors.responses(401, 413, 422, 503)
)
async def list_tasks(
    conn: Conn,
    _: Viewer,
    state: TaskState | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[TaskPublic]:
    rows, total = await queries.list_tasks(
        conn, state=None if state is None else state.value, limit=limit, offset=offset
    )
    return Page(items=[TaskPublic(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/tasks/{task_id}",
    response_model=TaskPublic,
    responses=errors.responses(401, 404, 413, 422, 503),
)
async def get_task(task_id: UUID, request: Request, conn: Conn, _: Viewer) -> TaskPublic:
    return TaskPublic(**await _task_or_404(request, conn, task_id))


def _issued_tasks(request: Request) -> IssuedIds:
    issued: IssuedIds = request.app.state.issued_tasks
    return issued


async def _task_or_404(
    request: Request, conn: psycopg.AsyncConnection, task_id: UUID
) -> dict[str, Any]:
    """Return the task's projection; for a task this process created a moment ago, wait for it
    (``GATEWAY_PROJECTION_WAIT_S``) before answering 404. Any other unknown id is 404 at once.
    """
    row = await queries.get_task(conn, task_id)
    issued = _issued_tasks(request)
    if row is None and issued.pending(task_id, now=time.monotonic()):
        began = time.monotonic()
        row = await wait_for_projection(
            functools.partial(queries.get_task, conn, task_id),
            wait_s=settings_of(request).projection_wait_s,
        )
        PROJECTION_WAITS.observe(time.monotonic() - began)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id} not found")
    issued.discard(task_id)
    return row


_TASK_COMMANDS: dict[
    str, type[TaskStartRequested | TaskPauseRequested | TaskResumeRequested | TaskCancelRequested]
] = {
    "start": TaskStartRequested,
    "pause": TaskPauseRequested,
    "resume": TaskResumeRequested,
    "cancel": TaskCancelRequested,
}


def _task_command(name: str) -> Any:
    command = _TASK_COMMANDS[name]

    async def endpoint(
        task_id: UUID, request: Request, response: Response, conn: Conn, who: Operator
    ) -> Accepted:
        task = await _task_or_404(request, conn, task_id)
        state = TaskState(task["state"])
        if lifecycle.next_state(state, Command(name)) is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"cannot {name} a task that is {state.value}"
            )
        await publish(
            request,
            topics.TASKS,
            str(task_id),
            command(producer=PRODUCER, task_id=task_id, issued_by=who.subject),
        )
        return accepted(response, str(task_id), f"{PREFIX}/tasks/{task_id}")

    endpoint.__name__ = f"{name}_task"
    return endpoint


for _name in _TASK_COMMANDS:
    router.add_api_route(
        f"/tasks/{{task_id}}/{_name}",
        _task_command(_name),
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=Accepted,
        response_model_exclude_none=True,
        responses=errors.responses(401, 403, 404, 409, 413, 422, 503),
        summary=f"{_name.capitalize()} a task",
    )


@router.get(
    "/tasks/{task_id}/rounds",
    response_model=Page[RoundPublic],
    responses=errors.responses(401, 413, 422, 503),
)
async def list_rounds(
    task_id: UUID, conn: Conn, _: Viewer, limit: Limit = 100, offset: Offset = 0
) -> Page[RoundPublic]:
    rows, total = await queries.list_rounds(conn, task_id, limit=limit, offset=offset)
    return Page(items=[RoundPublic(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/tasks/{task_id}/events",
    response_model=Page[TaskEventPublic],
    responses=errors.responses(401, 413, 422, 503),
)
async def list_events(
    task_id: UUID, conn: Conn, _: Viewer, limit: Limit = 100, offset: Offset = 0
) -> Page[TaskEventPublic]:
    rows, total = await queries.list_events(conn, task_id, limit=limit, offset=offset)
    return Page(items=[TaskEventPublic(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/tasks/{task_id}/model",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "safetensors"},
        **errors.responses(401, 404, 413, 422, 503),
    },
)
async def get_model(
    task_id: UUID,
    conn: Conn,
    _: Viewer,
    version: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
) -> Response:
    found = await queries.get_model(conn, task_id, version)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model version for task {task_id}")
    model_version, digest, data = found
    return device_models.model_response(task_id, model_version, digest, data)


@router.get("/status", response_model=StatusPublic, responses=errors.responses(401, 413, 503))
async def get_status(conn: Conn, _: Viewer) -> StatusPublic:
    counts = await queries.status_counts(conn)
    return StatusPublic(
        devices=counts["devices"],
        tasks=counts["tasks"],
        rounds_completed=counts["rounds"].get("completed", 0),
        updates=counts["updates"],
    )


@router.post(
    "/cleanup",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    response_model_exclude_none=True,
    responses=errors.responses(400, 401, 403, 413, 422, 503),
)
async def cleanup(
    request: Request, response: Response, who: Admin, body: CleanupRequest | None = None
) -> Accepted:
    settings = settings_of(request)
    retention = (
        settings.cleanup_retention_s
        if body is None or body.retention_s is None
        else body.retention_s
    )
    message = CleanupRequested(producer=PRODUCER, retention_s=retention, issued_by=who.subject)
    await publish(request, topics.TASKS, "cleanup", message)
    return accepted(response, str(message.message_id), f"{PREFIX}/status")


def _states(results: dict[health.Dependency, health.CheckResult]) -> dict[str, DependencyState]:
    return {
        dependency.value: DependencyState(
            state="up" if result.up else "down",
            seconds=round(result.seconds, 4),
            error=result.error,
        )
        for dependency, result in results.items()
    }


@router.get("/health", response_model=Health, responses=errors.responses(413))
async def get_health(request: Request) -> Health:
    """Liveness: 200 while this process serves, whatever state the database and the broker are
    in (they are in the body). An orchestrator restarts what fails this, and restarting the
    gateway cures neither outage: that is /ready's business."""
    results = await prober_of(request).check_all()
    return Health(status="ok", **_states(results))


@router.get(
    "/ready",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "The database or the broker does not answer, or (a local stack) no "
            "supervisor runs",
        },
        **errors.responses(413),
    },
)
async def get_ready(request: Request, response: Response) -> Readiness:
    """Readiness: 200 when the database and the broker both answer (and, on a local stack, a
    supervisor runs), else 503 naming what is down; within about GATEWAY_HEALTH_TIMEOUT_S,
    since the checks run at once."""
    results = await prober_of(request).check_all()
    down = health.down(results)
    if down:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="unavailable" if down else "ready",
        detail=" and ".join(f"{d.value} down" for d in down) if down else "ready",
        down=[d.value for d in down],
        **_states(results),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **errors.responses(413, 503),
    },
)
async def metrics(conn: Conn) -> Response:
    counts = await queries.status_counts(conn)
    for kind, values in counts.items():
        for key, value in values.items():
            PROJECTION.labels(kind, key).set(value)
    rounds, seconds = await queries.round_durations(conn)
    ROUND_SECONDS_COUNT.set(rounds)
    ROUND_SECONDS_SUM.set(seconds)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def watch_dead_letters(settings: Settings) -> None:
    """Count the dead-letter topic by origin and error type, for /metrics.

    A group of its own per gateway process, read from the start, so every replica reports the
    whole topic; the broker's retention bounds what it counts.
    """
    consumer = kafka.make_consumer(
        settings.kafka,
        group_id=f"gateway-dlq-{uuid4().hex[:8]}",
        topic_bases=(topics.DLQ,),
        client_id="gateway-dlq",
        # Counting dead letters waits on nothing: poll like an idle consumer.
        fetch_max_wait_ms=settings.kafka.idle_fetch_max_wait_ms,
    )
    await background.until_done("gateway.dead_letters.start", consumer.start)
    seen: dict[tuple[str, str], int] = {}

    async def count_new() -> None:
        batches = await consumer.getmany(timeout_ms=1000)
        for records in batches.values():
            for record in records:
                headers = {k: v.decode(errors="replace") for k, v in record.headers}
                key = (headers.get("original_topic", "?"), headers.get("error_type", "?"))
                seen[key] = seen.get(key, 0) + 1
                DEAD_LETTERS.labels(*key).set(seen[key])

    try:
        while True:
            if not await background.run_step("gateway.dead_letters", count_new):
                await asyncio.sleep(1.0)
    finally:
        await consumer.stop()


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the lifespan opens the pool and the producer once."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await db.open_pool(settings.postgres, name="gateway")
        await kafka.create_topics(settings.kafka)
        app.state.producer = kafka.make_producer(
            settings.kafka,
            client_id="gateway",
            signer=settings.trust.signer("gateway"),
            # A command answered 503 after GATEWAY_COMMAND_TIMEOUT_S stops being retried about
            # then too, rather than 40 s later (deps.send_command).
            request_timeout_ms=int(settings.command_timeout_s * 1000) + 1000,
        )
        await app.state.producer.start()
        command_topics = [
            topics.topic_name(settings.kafka.topic_prefix, base)
            for base in (topics.TASKS, topics.DEVICES)
        ]
        checks: dict[health.Dependency, health.Check] = {
            health.Dependency.DATABASE: functools.partial(
                health.database_answers, app.state.pool, timeout_s=settings.health_timeout_s
            ),
            health.Dependency.BROKER: functools.partial(
                health.broker_answers, app.state.producer, command_topics
            ),
        }
        if settings.supervisor_lock is not None:  # started by `fedengine up`
            checks[health.Dependency.SUPERVISOR] = functools.partial(
                health.supervisor_runs, settings.supervisor_lock
            )
        app.state.prober = health.Prober(checks, timeout_s=settings.health_timeout_s)
        dead_letters = asyncio.create_task(watch_dead_letters(settings))
        try:
            yield
        finally:
            dead_letters.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await dead_letters
            await app.state.producer.stop()
            await app.state.pool.close()

    app = FastAPI(
        title="FedEngine",
        version="0.1.0",
        lifespan=lifespan,
        description="Federated learning over Kafka: devices, tasks, rounds, models.",
    )
    # Outlives a lifespan restart in tests; holds only what may be lost (issued.py).
    app.state.issued_tasks = IssuedIds()
    app.state.issued_models = IssuedIds()
    app.include_router(router)
    app.include_router(devices.router)
    app.include_router(device_models.router)
    app.include_router(uploaded_models.router)
    app.include_router(evaluations.router)
    app.include_router(privacy_budget.router)
    errors.install(app)
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_body_bytes,
        routes={
            ("POST", uploaded_models.MODELS_PATH): uploaded_models.upload_limit(
                settings.max_model_bytes
            )
        },
    )
    return app
