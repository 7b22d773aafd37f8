"""Errors are classified by their source: the data's fault, an outage, or a bug."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from aiokafka import errors as kafka_errors
from pydantic import BaseModel, ValidationError

from fedcommon.background import Backoff
from fedcommon.errors import InvalidMessage, ProtocolViolation, TransientError
from fedcommon.failures import Failure, classify, describe


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidMessage("x"), Failure.INVALID),
        (ProtocolViolation("x"), Failure.INVALID),
        (
            psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
            Failure.INVALID,
        ),
        (psycopg.errors.NumericValueOutOfRange("integer out of range"), Failure.INVALID),
        (psycopg.errors.UniqueViolation("duplicate key"), Failure.INVALID),
        (TransientError("x"), Failure.TRANSIENT),
        (psycopg.OperationalError("connection refused"), Failure.TRANSIENT),
        (psycopg.errors.AdminShutdown("terminating connection"), Failure.TRANSIENT),
        (psycopg_pool.PoolTimeout("couldn't get a connection"), Failure.TRANSIENT),
        (psycopg.InterfaceError("the connection is closed"), Failure.TRANSIENT),
        (psycopg.errors.SerializationFailure("could not serialize"), Failure.TRANSIENT),
        (psycopg.errors.IdleInTransactionSessionTimeout("idle"), Failure.TRANSIENT),
        (psycopg.errors.ReadOnlySqlTransaction("read-only"), Failure.TRANSIENT),
        (kafka_errors.KafkaConnectionError("down"), Failure.TRANSIENT),
        (kafka_errors.KafkaTimeoutError("timed out"), Failure.TRANSIENT),
        (kafka_errors.NotLeaderForPartitionError(), Failure.TRANSIENT),
        (ConnectionRefusedError(), Failure.TRANSIENT),
        (kafka_errors.MessageSizeTooLargeError("too large"), Failure.UNEXPECTED),
        (psycopg.errors.UndefinedTable("no such table"), Failure.UNEXPECTED),
        (KeyError("bug"), Failure.UNEXPECTED),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_each_error_is_classified_by_its_source(error: BaseException, kind: Failure) -> None:
    assert classify(error) == kind


def test_describe_names_fields_and_reasons_never_values() -> None:
    class Body(BaseModel):
        secret: int

    with pytest.raises(ValidationError) as caught:
        Body(secret="hunter2-" * 100)  # type: ignore[arg-type]

    text = describe(caught.value)
    assert "secret" in text and "hunter2" not in text


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=3.0)

    delays = [backoff.next_delay() for _ in range(5)]
    backoff.reset()

    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.next_delay() == 0.5
    with pytest.raises(ValueError, match="first"):
        Backoff(first=0, cap=1)
