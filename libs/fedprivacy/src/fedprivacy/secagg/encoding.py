"""Fixed-point encoding of a device's update, and packing of masked vectors to k bits.

Quantisation (device side). With clip norm C, weight cap W and B quantisation bits:

1. clip the update to L2 norm C, so every coordinate lies in [-C, C];
2. weight it on the device: ``w = min(num_examples, W)`` and ``y = clipped * w / W`` (still
   in [-C, C]); ``w`` itself travels as one more (masked) integer coordinate, so the server
   learns only ``sum(w)`` and the weighted mean is ``W * sum(y) / sum(w)``;
3. map [-C, C] onto the integers 0..2^B-1 with step ``2C / (2^B - 1)`` and stochastic
   rounding (an explicit ``np.random.Generator``), so each coordinate is unbiased and off by
   less than one step.

Extra coordinates follow the vector: the weight ``w`` (needs W <= 2^B - 1), then, with
adaptive clipping, the clip bit (1 if the update's norm was at most C).

Headroom: n devices each send integers below 2^B, so their sum is below n * 2^B <=
2^(B + ceil(log2 n)); the modulus is therefore ``2 ** (B + ceil(log2 n))`` and a masked
element, being uniform modulo that, is packed to exactly ``k = B + ceil(log2 n)`` bits
(``modulus_bits``). Packing is little-endian within the bit stream; the padding bits of the
last byte must be zero, so each vector has exactly one encoding.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.masking import MaskedVector, check_modulus_bits

FloatVector = npt.NDArray[np.float32]


def modulus_bits(*, bits: int, num_clients: int) -> int:
    """Return k = B + ceil(log2 n): the modulus 2^k holds the sum of n B-bit integers."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    k = bits + math.ceil(math.log2(num_clients))
    check_modulus_bits(k)
    return k


def packed_size(*, length: int, bits: int) -> int:
    """Bytes of ``length`` elements packed to ``bits`` bits each."""
    return (length * bits + 7) // 8


def clip_to_norm(update: FloatVector, *, clip_norm: float) -> tuple[FloatVector, bool]:
    """Scale ``update`` down to L2 norm ``clip_norm``; also say whether it was within it."""
    # A plain sum of squares: np.linalg.norm calls BLAS, whose threads fight on busy cores.
    wide = update.astype(np.float64)
    norm = math.sqrt(float(np.sum(wide * wide)))
    if not math.isfinite(norm):
        raise ValueError("update must be finite")
    if norm <= clip_norm:
        return update.astype(np.float32, copy=True), True
    return (update * np.float32(clip_norm / norm)).astype(np.float32), False


def quantize(
    values: FloatVector, *, clip_norm: float, bits: int, rng: np.random.Generator
) -> MaskedVector:
    """Map values in [-C, C] to integers 0..2^B-1 by stochastic rounding."""
    levels = (1 << bits) - 1
    scaled = (np.clip(values.astype(np.float64), -clip_norm, clip_norm) + clip_norm) * (
        levels / (2.0 * clip_norm)
    )
    floor = np.floor(scaled)
    rounded = floor + (rng.random(scaled.shape) < (scaled - floor))
    quantised: MaskedVector = np.clip(rounded, 0, levels).astype(np.uint64)
    return quantised


def dequantize_sum(
    total: MaskedVector, *, count: int, clip_norm: float, bits: int
) -> npt.NDArray[np.float64]:
    """Invert ``quantize`` for a sum of ``count`` quantised vectors (the offsets add up)."""
    levels = (1 << bits) - 1
    return total.astype(np.float64) * (2.0 * clip_norm / levels) - count * clip_norm


def encode_update(
    update: FloatVector,
    *,
    num_examples: int,
    clip_norm: float,
    weight_cap: int,
    bits: int,
    clip_bit: bool,
    rng: np.random.Generator,
) -> MaskedVector:
    """Clip, weight on the device and quantise; append the weight and, if asked, the clip bit.

    Returns ``dim + 1`` (or ``dim + 2`` with ``clip_bit``) integers, each below 2^B.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be finite and > 0, got {clip_norm}")
    if not 1 <= weight_cap <= (1 << bits) - 1:
        raise ValueError(f"weight_cap must be in 1..2^bits-1, got {weight_cap}")
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    clipped, within = clip_to_norm(update, clip_norm=clip_norm)
    weight = min(num_examples, weight_cap)
    weighted = (clipped.astype(np.float64) * (weight / weight_cap)).astype(np.float32)
    quantised = quantize(weighted, clip_norm=clip_norm, bits=bits, rng=rng)
    extras = [weight, int(within)] if clip_bit else [weight]
    return np.concatenate([quantised, np.array(extras, dtype=np.uint64)])


def check_masked_vector(values: npt.NDArray[np.generic], *, length: int, bits: int) -> MaskedVector:
    """Return ``values`` as uint64 after checking integer dtype, shape and range [0, 2^bits).

    Raises
    ------
    InvalidSecAggMessage
        Not integers, wrong length, or a value outside the modulus.
    """
    if values.dtype.kind not in "ui":
        raise InvalidSecAggMessage(f"masked input must be integers, got dtype {values.dtype}")
    if values.shape != (length,):
        raise InvalidSecAggMessage(f"masked input must have shape ({length},), got {values.shape}")
    if length and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
        raise InvalidSecAggMessage(f"masked input has values outside [0, 2^{bits})")
    return values.astype(np.uint64)


def pack(values: MaskedVector, *, bits: int) -> bytes:
    """Pack integers below 2^bits into ``packed_size`` bytes (vectorised, one bit plane at a
    time, so the temporary is ``len(values)`` bytes per plane, not a full bit matrix of words)."""
    planes = np.empty((values.shape[0], bits), dtype=np.uint8)
    for bit in range(bits):
        planes[:, bit] = (values >> np.uint64(bit)) & np.uint64(1)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, *, length: int, bits: int) -> MaskedVector:
    """Inverse of ``pack``; refuse a wrong byte count or nonzero padding bits."""
    expected = packed_size(length=length, bits=bits)
    if len(data) != expected:
        raise InvalidSecAggMessage(f"packed masked input must be {expected} bytes, got {len(data)}")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if flat[length * bits :].any():
        raise InvalidSecAggMessage("packed masked input has nonzero padding bits")
    planes = flat[: length * bits].reshape(length, bits)
    values = np.zeros(length, dtype=np.uint64)
    for bit in range(bits):
        values |= planes[:, bit].astype(np.uint64) << np.uint64(bit)
    return values
