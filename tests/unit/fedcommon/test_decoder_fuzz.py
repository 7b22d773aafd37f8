"""Fuzzing every decoder of untrusted bytes: whatever arrives, only the codec's own error.

Arbitrary bytes, arbitrary msgpack, msgpack maps shaped like each message type with hostile
values (NUL bytes, NaN, 2**64, deep nesting, wrong types), and mutated real encodings. A
message that does decode must also re-encode and satisfy the storage constraints.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcommon import arrays, codec
from fedcommon.constraints import INT64_MAX, INT64_MIN
from fedcommon.errors import InvalidMessage
from fedcommon.messages import v1
from tests.unit.fedcommon.examples import EXAMPLES

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = sorted(cls.model_fields["type"].default for cls in v1.ALL_MESSAGE_TYPES)

hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # all that msgpack can carry
    st.sampled_from([2**63, 2**64 - 1, -(2**63), 2**31, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["\x00", "a\x00b", "", "x" * 300, "NaN", "1e999", "2026-13-45T25:61:61"]),
    st.binary(max_size=40),
)
msgpack_values = st.recursive(
    hostile_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=30,
)


def _decode_or_refuse(raw: bytes) -> v1.Envelope | None:
    """Decode ``raw``; only ``InvalidMessage`` may come out, and a decoded message must be
    re-encodable and storable."""
    try:
        message = codec.decode(raw)
    except InvalidMessage:
        return None
    again = codec.decode(codec.encode(message))
    assert again == message
    _assert_storable(message.model_dump())
    return message


def _assert_storable(value: Any) -> None:
    if isinstance(value, str):
        assert "\x00" not in value
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        assert INT64_MIN <= value <= INT64_MAX
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _assert_storable(key)
            _assert_storable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _assert_storable(item)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_but_invalid_message(raw: bytes) -> None:
    _decode_or_refuse(raw)


@FUZZ
@given(msgpack_values)
def test_arbitrary_msgpack_never_raises_anything_but_invalid_message(value: Any) -> None:
    _decode_or_refuse(msgpack.packb(value))


@FUZZ
@given(
    st.sampled_from(EXAMPLES),
    st.dictionaries(st.text(max_size=20), msgpack_values, max_size=4),
    st.data(),
)
def test_real_messages_with_hostile_fields_never_raise_anything_but_invalid_message(
    example: v1.Envelope, extra: dict[str, Any], data: st.DataObject
) -> None:
    fields = msgpack.unpackb(codec.encode(example))
    # Overwrite some of the message's own fields with hostile values, and add unknown ones.
    for name in data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        fields[name] = data.draw(msgpack_values)
    fields.update(extra)
    fields["type"] = data.draw(st.sampled_from([example.type, *TYPES]))
    _decode_or_refuse(msgpack.packb(fields))


@FUZZ
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_real_encodings_never_raise_anything_but_invalid_message(
    example: v1.Envelope, data: st.DataObject
) -> None:
    raw = bytearray(codec.encode(example))
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[position] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    _decode_or_refuse(bytes(raw[:cut]))


def test_deeply_nested_msgpack_is_refused_not_crashing() -> None:
    value: Any = 1
    for _ in range(10_000):
        value = [value]
    nested = {"type": "device.removed", "device_id": value}
    try:
        raw = msgpack.packb(nested)
    except ValueError:  # msgpack's own nesting limit stops the attacker's encoder first
        raw = b"\x91" * 100_000 + b"\x01"
    assert _decode_or_refuse(raw) is None


@FUZZ
@given(st.binary(max_size=256))
def test_arbitrary_array_bytes_never_raise_anything_but_invalid_message(raw: bytes) -> None:
    try:
        decoded = arrays.from_bytes(arrays.MAGIC + raw)
    except InvalidMessage:
        return
    again = arrays.from_bytes(arrays.to_bytes(decoded))
    assert arrays.shapes_of(again) == arrays.shapes_of(decoded)
    assert [a.tobytes() for a in again] == [a.tobytes() for a in decoded]


@FUZZ
@given(
    st.integers(min_value=0, max_value=3),
    st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=0, max_size=8),
    st.binary(max_size=64),
)
def test_array_headers_with_huge_dimensions_are_refused(
    count: int, dims: list[int], tail: bytes
) -> None:
    header = arrays.MAGIC + count.to_bytes(4, "little") + b"\x03<f4" + bytes([len(dims)])
    raw = header + b"".join(d.to_bytes(4, "little") for d in dims) + tail
    try:
        decoded = arrays.from_bytes(raw)
    except InvalidMessage:
        return
    assert sum(a.nbytes for a in decoded) <= len(tail)  # only what the bytes really hold
