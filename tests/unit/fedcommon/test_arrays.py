from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcommon import arrays
from fedcommon.errors import InvalidMessage

float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
    elements={"allow_nan": True, "allow_infinity": True},
)


@given(st.lists(float_arrays, max_size=5))
def test_round_trip_preserves_dtype_shape_and_bits(values: list[np.ndarray]) -> None:
    decoded = arrays.from_bytes(arrays.to_bytes(values))

    assert len(decoded) == len(values)
    for before, after in zip(values, decoded, strict=True):
        assert after.dtype == before.dtype.newbyteorder("<")
        assert after.shape == before.shape
        assert after.tobytes() == before.astype(after.dtype).tobytes()


def test_big_endian_input_is_written_little_endian() -> None:
    value = np.arange(4, dtype=">f4")

    decoded = arrays.from_bytes(arrays.to_bytes([value]))[0]

    assert decoded.dtype.str == "<f4"
    np.testing.assert_array_equal(decoded, [0, 1, 2, 3])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"XXXX\x00\x00\x00\x00",
        arrays.MAGIC + b"\x01",
        arrays.to_bytes([np.zeros(3, np.float32)])[:-1],
        arrays.to_bytes([np.zeros(3, np.float32)]) + b"\x00",
    ],
)
def test_malformed_input_raises_invalid_message(data: bytes) -> None:
    with pytest.raises(InvalidMessage):
        arrays.from_bytes(data)


def test_object_dtype_is_refused_on_both_sides() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        arrays.to_bytes([np.array(["a"], dtype=object)])
    forged = (
        arrays.MAGIC
        + b"\x01\x00\x00\x00"
        + b"\x03|O8"
        + b"\x01"
        + b"\x01\x00\x00\x00"
        + b"\x00" * 8
    )
    with pytest.raises(InvalidMessage, match="not allowed"):
        arrays.from_bytes(forged)


def test_global_norm_is_the_norm_of_the_concatenation() -> None:
    values = [np.array([3.0], np.float32), np.array([[4.0]], np.float32)]

    assert arrays.global_norm(values) == pytest.approx(5.0)
