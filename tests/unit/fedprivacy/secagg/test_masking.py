"""Masks from a ChaCha20 keystream modulo 2^k: deterministic, and pairwise masks cancel."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.secagg.masking import add_mod, expand_mask, subtract_mod


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(1, 62),
    length=st.integers(1, 300),
    devices=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_pairwise_masks_cancel_in_the_sum(bits: int, length: int, devices: int, seed: int) -> None:
    # Prepare: one key per pair; the lower index adds the mask, the higher subtracts it.
    rng = np.random.default_rng(seed)
    inputs = [rng.integers(0, 2**bits, length, dtype=np.uint64) for _ in range(devices)]
    keys = {(i, j): os.urandom(32) for i in range(devices) for j in range(i + 1, devices)}

    # Execute
    total = np.zeros(length, dtype=np.uint64)
    for i in range(devices):
        masked = inputs[i]
        for (low, high), key in keys.items():
            mask = expand_mask(key, length=length, bits=bits)
            if i == low:
                masked = add_mod(masked, mask, bits=bits)
            elif i == high:
                masked = subtract_mod(masked, mask, bits=bits)
        total = add_mod(total, masked, bits=bits)

    # Assert
    expected = np.zeros(length, dtype=np.uint64)
    for values in inputs:
        expected = add_mod(expected, values, bits=bits)
    np.testing.assert_array_equal(total, expected)


def test_a_mask_is_deterministic_in_range_and_differs_by_key() -> None:
    key = bytes(range(32))
    first = expand_mask(key, length=1000, bits=23)
    assert first.dtype == np.uint64 and int(first.max()) < 2**23
    np.testing.assert_array_equal(first, expand_mask(key, length=1000, bits=23))
    assert not np.array_equal(first, expand_mask(bytes(32), length=1000, bits=23))
    assert int(expand_mask(key, length=1000, bits=40).max()) >= 2**32  # 64-bit words past 32


def test_bad_mask_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="modulus bits"):
        expand_mask(bytes(32), length=3, bits=63)
    with pytest.raises(ValueError, match="32 bytes"):
        expand_mask(bytes(16), length=3, bits=8)
