"""Every message type round-trips, and every checked-in example decodes (style.md, rule 42)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from fedcommon import codec
from fedcommon.errors import InvalidMessage
from fedcommon.messages import v1
from tests.unit.fedcommon.examples import EXAMPLES

EXAMPLE_DIR = Path(__file__).parents[3] / "libs" / "fedcommon" / "examples"


def test_every_message_type_has_an_example() -> None:
    assert {type(e) for e in EXAMPLES} == set(v1.ALL_MESSAGE_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.type)
def test_encode_decode_round_trip(message: v1.Envelope) -> None:
    assert codec.decode(codec.encode(message)) == message


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$hex"}:
            return bytes.fromhex(value["$hex"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


EXAMPLE_FILES = sorted(EXAMPLE_DIR.glob("*/*.json"))


def test_there_is_a_checked_in_example_per_type() -> None:
    assert {p.parent.name for p in EXAMPLE_FILES} == {
        t.model_fields["type"].default for t in v1.ALL_MESSAGE_TYPES
    }


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.parent.name)
def test_checked_in_examples_decode(path: Path) -> None:
    raw = msgpack.packb(_from_json(json.loads(path.read_text())))

    message = codec.decode(raw)

    assert message.type == path.parent.name


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"type": "nope"}),
        msgpack.packb({"type": "device.removed", "producer": "x"}),
    ],
)
def test_garbage_raises_invalid_message(raw: bytes | None) -> None:
    with pytest.raises(InvalidMessage):
        codec.decode(raw)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    message = EXAMPLES[2]
    data = msgpack.unpackb(codec.encode(message))
    data["added_in_a_later_release"] = 1

    assert codec.decode(msgpack.packb(data)) == message


def test_bytes_travel_raw_not_base64() -> None:
    update = next(e for e in EXAMPLES if isinstance(e, v1.UpdateSubmitted))

    assert update.update in codec.encode(update)


def test_error_text_names_fields_but_never_values() -> None:
    update = next(e for e in EXAMPLES if isinstance(e, v1.UpdateSubmitted))
    data = msgpack.unpackb(codec.encode(update))
    data["update"] = b"SECRET-UPDATE-BYTES"
    data["num_examples"] = -1
    data["signature"] = "not bytes but SECRET-TEXT"

    with pytest.raises(InvalidMessage) as caught:
        codec.decode(msgpack.packb(data))

    text = str(caught.value)
    assert "num_examples" in text and "SECRET" not in text
