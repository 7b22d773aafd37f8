"""Classify an exception by its source: a bad message, an outage, or a bug.

The consume loop, the outbox relay and every background job decide with this one function what
to do with an error (style.md, rule 30): a database refusing the data is the message's fault
and dead-letters it; a lost connection or an unavailable broker is an outage, waited out and
never turned into a dead letter; anything else is unexpected and handled loudly.
"""

from __future__ import annotations

from enum import StrEnum

import psycopg
from aiokafka import errors as kafka_errors
from pydantic import ValidationError

from fedcommon import codec
from fedcommon.errors import InvalidMessage, TransientError


class Failure(StrEnum):
    INVALID = "invalid"  # the message can never be processed: dead-letter it
    TRANSIENT = "transient"  # a dependency is down: retry, with no limit
    UNEXPECTED = "unexpected"  # a bug or an unknown condition: count it, stop past a limit


# Kafka errors that say "the broker or the network, not this record": retry.
_KAFKA_OUTAGES: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.NoBrokersAvailable,
)


# SQLSTATE classes that mean the server, not the data: connection exceptions (08), transaction
# rollbacks such as serialization failures and deadlocks (40), insufficient resources (53),
# operator intervention such as a shutdown (57), system errors (58).
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Raised as InternalError: an idle transaction timed out; a read-only server during failover.
_OUTAGE_SQLSTATES = frozenset({"25P03", "25006"})


def classify(exc: BaseException) -> Failure:
    """Return what kind of failure ``exc`` is."""
    if isinstance(exc, InvalidMessage):
        return Failure.INVALID
    if isinstance(exc, TransientError):
        return Failure.TRANSIENT
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        state = exc.sqlstate
        if state[:2] in _OUTAGE_SQLSTATE_CLASSES or state in _OUTAGE_SQLSTATES:
            return Failure.TRANSIENT
    # psycopg: DataError covers invalid values, out-of-range numbers and NUL bytes (the client
    # refuses those before sending); IntegrityError covers constraint violations. Both are the
    # data's fault. OperationalError (lost connection, server shutdown, pool timeout) and
    # InterfaceError (connection closed under us) are outages.
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return Failure.INVALID
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Failure.TRANSIENT
    if isinstance(exc, _KAFKA_OUTAGES):
        return Failure.TRANSIENT
    if isinstance(exc, kafka_errors.KafkaError) and getattr(exc, "retriable", False):
        return Failure.TRANSIENT
    if isinstance(exc, ConnectionError):
        return Failure.TRANSIENT
    return Failure.UNEXPECTED


def describe(exc: BaseException) -> str:
    """Name the error without quoting the data that caused it (values may be secrets or huge).

    psycopg's messages for refused data quote no values; its SQLSTATE names the reason.
    """
    if isinstance(exc, ValidationError):
        return f"{exc.title} is not valid: {codec.describe(exc)}"[:500]
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or "client"
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        return f"database error ({type(exc).__name__}, SQLSTATE {state}): {message}"
    return f"{type(exc).__name__}: {str(exc)[:500]}"
