"""Encode and decode bus messages: msgpack on the wire, bytes fields stay raw bytes."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgpack
from pydantic import TypeAdapter, ValidationError

from fedcommon.errors import InvalidMessage
from fedcommon.messages.v1 import AnyMessage, Envelope

_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(AnyMessage)


def _default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"codec: cannot encode {type(value).__name__}")


def encode(message: Envelope) -> bytes:
    """Return the record value for ``message``."""
    packed: bytes = msgpack.packb(message.model_dump(mode="python"), default=_default)
    return packed


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(item) for item in value]
    return value


def canonical(fields: dict[str, Any]) -> bytes:
    """Pack a message's fields the one way both ends can reproduce: keys sorted at every level.

    A signature over this, taken from the fields a device sent (not from our parsed model),
    still verifies at a consumer that knows fewer or more optional fields than the sender.
    """
    packed: bytes = msgpack.packb(_sorted(fields), default=_default)
    return packed


def fields_of(raw: bytes) -> dict[str, Any]:
    """The map a record value carries, as sent (call after ``decode`` accepted it)."""
    data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    if not isinstance(data, dict):
        raise InvalidMessage("codec: record value is not a map")
    return data


def decode(raw: bytes | None) -> AnyMessage:
    """Parse a record value; raise ``InvalidMessage`` naming what is wrong."""
    if raw is None:
        raise InvalidMessage("codec: empty record value")
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise InvalidMessage(f"codec: not msgpack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise InvalidMessage("codec: record value is not a map")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidMessage(f"codec: {describe(exc)}") from exc
    except RecursionError as exc:  # a map nested past what validation can walk
        raise InvalidMessage("codec: record value nested too deeply") from exc


def describe(exc: ValidationError) -> str:
    """Summarise a validation error by field and reason, never by value.

    Error texts reach logs and dead-letter headers; values may be model updates or keys.
    """
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False, include_context=False)
    ]
    return f"{len(problems)} validation error(s): " + "; ".join(problems)
