"""The one pair of functions that puts arrays on the wire (style.md, rule 9).

Layout, little-endian throughout::

    b"FEA1" | u32 count | count * ( u8 dtype_len | dtype (ASCII, e.g. "<f4") | u8 ndim |
                                     ndim * u32 dim | data (prod(dims) * itemsize bytes) )

Written by hand because ``np.save`` frames one array per file and we want a list with a strict,
validated layout and no pickle anywhere.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import numpy.typing as npt

from fedcommon.errors import InvalidMessage

NDArray = npt.NDArray[np.generic]
NDArrays = list[NDArray]

MAGIC = b"FEA1"
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "<u4", "<u8", "|u1"})
MAX_NDIM = 8


def to_bytes(arrays: NDArrays) -> bytes:
    """Serialise a list of arrays to the explicit layout above."""
    parts = [MAGIC, struct.pack("<I", len(arrays))]
    for array in arrays:
        little = np.asarray(array).astype(array.dtype.newbyteorder("<"), order="C", copy=False)
        dtype = little.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise ValueError(f"arrays: dtype {dtype} is not allowed on the wire")
        if little.ndim > MAX_NDIM:
            raise ValueError(f"arrays: ndim {little.ndim} exceeds {MAX_NDIM}")
        encoded = dtype.encode("ascii")
        parts.append(struct.pack("<B", len(encoded)) + encoded)
        parts.append(struct.pack(f"<B{little.ndim}I", little.ndim, *little.shape))
        parts.append(little.tobytes())
    return b"".join(parts)


def from_bytes(data: bytes) -> NDArrays:
    """Parse :func:`to_bytes` output; raise ``InvalidMessage`` on any malformed input."""
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise InvalidMessage("arrays: bad magic")
    pos = 4
    try:
        (count,) = struct.unpack_from("<I", view, pos)
        pos += 4
        arrays: NDArrays = []
        for _ in range(count):
            (dtype_len,) = struct.unpack_from("<B", view, pos)
            pos += 1
            dtype = bytes(view[pos : pos + dtype_len]).decode("ascii", errors="replace")
            pos += dtype_len
            if dtype not in ALLOWED_DTYPES:
                raise InvalidMessage("arrays: dtype is not allowed")
            (ndim,) = struct.unpack_from("<B", view, pos)
            pos += 1
            if ndim > MAX_NDIM:
                raise InvalidMessage(f"arrays: ndim {ndim} exceeds {MAX_NDIM}")
            shape = struct.unpack_from(f"<{ndim}I", view, pos)
            pos += 4 * ndim
            # Python integers: a product of eight u32 dims must not wrap around.
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            if pos + nbytes > len(view):
                raise InvalidMessage("arrays: truncated data")
            array = np.frombuffer(view[pos : pos + nbytes], dtype=dtype).reshape(shape)
            arrays.append(array.copy())
            pos += nbytes
    except struct.error as exc:
        raise InvalidMessage(f"arrays: truncated header ({exc})") from exc
    except ValueError as exc:  # numpy refuses the shape (an empty array of absurd extent)
        raise InvalidMessage("arrays: shape numpy cannot represent") from exc
    if pos != len(view):
        raise InvalidMessage(f"arrays: {len(view) - pos} trailing bytes")
    return arrays


def shapes_of(arrays: NDArrays) -> list[list[int]]:
    """Return the shapes of ``arrays`` as plain lists (the form messages carry)."""
    return [list(array.shape) for array in arrays]


def global_norm(arrays: NDArrays) -> float:
    """Return the L2 norm of all arrays taken as one flat vector."""
    total = 0.0
    for array in arrays:
        flat = np.asarray(array, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return float(np.sqrt(total))
