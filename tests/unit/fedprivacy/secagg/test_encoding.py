"""Fixed point: clipping, device-side weight, stochastic rounding, headroom and packing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.secagg.encoding import (
    check_masked_vector,
    dequantize_sum,
    encode_update,
    modulus_bits,
    pack,
    packed_size,
    quantize,
    unpack,
)
from fedprivacy.secagg.errors import InvalidSecAggMessage


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 24),
    clip=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
    length=st.integers(1, 200),
)
def test_quantisation_error_is_within_one_step(
    bits: int, clip: float, seed: int, length: int
) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    values = rng.uniform(-clip, clip, length).astype(np.float32)

    # Execute
    back = dequantize_sum(
        quantize(values, clip_norm=clip, bits=bits, rng=rng), count=1, clip_norm=clip, bits=bits
    )

    # Assert
    step = 2 * clip / (2**bits - 1)
    assert np.all(np.abs(back - values) <= step * (1 + 1e-6) + 1e-6 * clip)


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(0)
    values = np.full(200_000, 0.3, dtype=np.float32)
    back = dequantize_sum(
        quantize(values, clip_norm=1.0, bits=3, rng=rng), count=1, clip_norm=1.0, bits=3
    )
    assert abs(float(back.mean()) - 0.3) < 2e-3


def test_the_modulus_has_headroom_for_the_sum_of_n_devices() -> None:
    assert modulus_bits(bits=16, num_clients=100) == 23
    assert modulus_bits(bits=16, num_clients=128) == 23
    assert modulus_bits(bits=16, num_clients=129) == 24
    assert modulus_bits(bits=16, num_clients=1) == 16
    n = 100
    assert n * (2**16 - 1) < 2 ** modulus_bits(bits=16, num_clients=n)


def test_encode_clips_weights_on_the_device_and_appends_weight_and_clip_bit() -> None:
    # Prepare: norm 5 > C = 1, so the update is clipped and the clip bit is 0.
    update = np.array([3.0, 4.0], dtype=np.float32)

    # Execute: 50 examples, cap 10 -> weight 10 (clamped), w / cap = 1.
    encoded = encode_update(
        update,
        num_examples=50,
        clip_norm=1.0,
        weight_cap=10,
        bits=16,
        clip_bit=True,
        rng=np.random.default_rng(0),
    )

    # Assert
    assert encoded.dtype == np.uint64 and encoded.shape == (4,)
    assert (int(encoded[2]), int(encoded[3])) == (10, 0)
    back = dequantize_sum(encoded[:2], count=1, clip_norm=1.0, bits=16)
    np.testing.assert_allclose(back, [0.6, 0.8], atol=2 / (2**16 - 1))


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 62), length=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_round_trips_with_exactly_the_bits_needed(bits: int, length: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 2**bits, length, dtype=np.uint64)
    packed = pack(values, bits=bits)
    assert len(packed) == packed_size(length=length, bits=bits) == (length * bits + 7) // 8
    np.testing.assert_array_equal(unpack(packed, length=length, bits=bits), values)


def test_unpack_refuses_a_wrong_size_or_nonzero_padding() -> None:
    packed = pack(np.array([1, 2, 3], dtype=np.uint64), bits=5)  # 15 bits in 2 bytes
    with pytest.raises(InvalidSecAggMessage, match="must be 2 bytes"):
        unpack(packed + b"\x00", length=3, bits=5)
    with pytest.raises(InvalidSecAggMessage, match="padding"):
        unpack(packed[:1] + bytes([packed[1] | 0x80]), length=3, bits=5)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.array([1, 2], dtype=np.uint64), "shape"),
        (np.array([1, 2, 2**23], dtype=np.uint64), "outside"),
        (np.array([1, -1, 2], dtype=np.int64), "outside"),
        (np.array([1.0, 2.0, 3.0]), "integers"),
    ],
)
def test_a_masked_vector_of_wrong_length_or_range_is_refused(
    values: np.ndarray, match: str
) -> None:
    with pytest.raises(InvalidSecAggMessage, match=match):
        check_masked_vector(values, length=3, bits=23)
