"""Errors at the edge: one handler per kind of failure, and the OpenAPI entry for each code.

Validation errors become 422 with the field, the reason and the kind of each problem, never the
value; an outage of the database or the broker becomes 503 (style.md, rule 32). No input is
meant to reach a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from aiokafka import errors as kafka_errors
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fedengine_gateway.schemas import ErrorBody, ValidationErrorBody

logger = logging.getLogger(__name__)

# A 422 answers with at most this many problems, each clipped, so that it never grows with the
# input (a 10 MB string, a list of a million bad items, an unknown key of any length).
MAX_ERRORS = 20
MAX_MESSAGE_CHARS = 300
MAX_LOC_CHARS = 80

_DESCRIPTIONS = {
    400: "The body could not be parsed as JSON (too deeply nested, a number too long)",
    401: "No bearer token, or one that is invalid, expired or names no valid subject",
    403: "The token's role may not do this",
    404: "No such resource",
    409: "The command does not apply to the task in its current state",
    413: "The request body is larger than the gateway's limit (GATEWAY_MAX_BODY_BYTES)",
    422: "A path, query or body value is invalid; each problem names its field and reason",
    501: "The feature is not built yet; the message says which",
    503: "The database or the message broker is unavailable, or the services are starting; "
    "a command the broker did not acknowledge in time says so, and may still be applied",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI ``responses`` entry documenting each error status in ``codes``."""
    return {
        code: {
            "model": ValidationErrorBody if code == 422 else ErrorBody,
            "description": _DESCRIPTIONS[code],
        }
        for code in codes
    }


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Return ``errors`` as ``{loc, msg, type}`` items, without inputs and bounded in size."""
    items: list[dict[str, Any]] = []
    for error in errors[:MAX_ERRORS]:
        loc = [
            part if isinstance(part, int) else _clip(str(part), MAX_LOC_CHARS)
            for part in error.get("loc", ())
        ]
        kind = str(error.get("type", "value_error"))
        message = str(error.get("msg", "invalid value"))
        context = error.get("ctx") or {}
        if kind == "json_invalid" and isinstance(context.get("error"), str):
            # The decoder's own reason ("Expecting value"): fixed text, never the document.
            message = f"{message}: {context['error']}"
        items.append({"loc": loc, "msg": _clip(message, MAX_MESSAGE_CHARS), "type": kind})
    if len(errors) > MAX_ERRORS:
        items.append(
            {
                "loc": [],
                "msg": f"{len(errors) - MAX_ERRORS} more problems not shown",
                "type": "too_many_errors",
            }
        )
    return items


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": field_errors(errors)}, status_code=422)


async def _projections_missing(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "projections not ready: services still starting"}, 503)


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", type(exc).__name__)
    return JSONResponse({"detail": "database unavailable"}, 503)


class BrokerUnavailable(Exception):
    """The broker did not answer the check made before a command: nothing was sent."""


class CommandNotConfirmed(Exception):
    """The broker did not acknowledge a command in time (``GATEWAY_COMMAND_TIMEOUT_S``).

    Unlike a refusal, this is not proof that nothing was sent: the record may sit in the
    producer's buffer, or have reached a broker that stopped answering, and be written later
    (docs/reliability.md, "Commands while the broker is down").
    """

    def __init__(self, timeout_s: float, location: str | None) -> None:
        super().__init__(f"not acknowledged within {timeout_s:g} s")
        self.timeout_s = timeout_s
        self.location = location


async def _broker_down(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("broker unavailable, command not sent: %s", type(exc).__name__)
    return JSONResponse({"detail": "message broker unavailable: the command was not sent"}, 503)


async def _not_confirmed(request: Request, exc: Exception) -> JSONResponse:
    timeout_s = exc.timeout_s if isinstance(exc, CommandNotConfirmed) else 0.0
    location = exc.location if isinstance(exc, CommandNotConfirmed) else None
    logger.warning("broker did not acknowledge a command within %g s", timeout_s)
    where = f"; check {location} before repeating it" if location else ""
    return JSONResponse(
        {
            "detail": f"message broker did not acknowledge the command within {timeout_s:g} s: "
            f"it may still be applied if the broker recovers{where}"
        },
        503,
    )


def install(app: FastAPI) -> None:
    """Register the gateway's exception handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(psycopg.errors.UndefinedTable, _projections_missing)
    # Covers psycopg_pool.PoolTimeout, which subclasses it.
    app.add_exception_handler(psycopg.OperationalError, _database_down)
    # A connection closed under a request (the server went away mid-query).
    app.add_exception_handler(psycopg.InterfaceError, _database_down)
    app.add_exception_handler(kafka_errors.KafkaError, _broker_down)
    app.add_exception_handler(BrokerUnavailable, _broker_down)
    app.add_exception_handler(CommandNotConfirmed, _not_confirmed)
