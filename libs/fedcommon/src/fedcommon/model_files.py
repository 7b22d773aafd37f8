"""Models as files of named tensors: what the services check, store and update without ever
building (or importing) the model they belong to.

A global model version is a safetensors file whose ``__metadata__`` names the update order
(fedcommon.tensor_order). A file a user uploads may name it or not: without it, the order is
the tensor names sorted, which is what the format itself lists. Either way the services see a
model as ``(names, arrays)`` in that order, so strategies, DP clipping and secure aggregation
work on any set of tensors, and a device answers with exactly those names and shapes.

Only finite float32 tensors are taken: updates are float32 on the wire, and a float16 or
integer tensor would be silently changed by averaging.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fedcommon import tensor_order
from fedcommon.arrays import NDArrays
from fedcommon.constraints import INT32_MAX
from fedcommon.tensor_order import BadModelFile

__all__ = [
    "BadModelFile",
    "TensorSpec",
    "add",
    "inspect",
    "read",
    "shapes",
    "write",
]

# Bounds on an uploaded file: enough for any model that fits a Kafka record, small enough that
# a header cannot make the services allocate or loop without limit.
MAX_TENSORS = 4096
MAX_NAME_LENGTH = 200
MAX_NDIM = 8
# Each dimension fits what round.opened carries for it (param_shapes: Int32). A dimension
# beside a 0 holds no bytes, so the file's size does not bound it.
MAX_DIM = INT32_MAX
DTYPE = "F32"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = DTYPE

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def inspect(data: bytes) -> list[TensorSpec]:
    """Check that ``data`` is a model the platform can train and return its tensors, in update
    order; raise BadModelFile saying what is wrong.

    Checked: the header (JSON object, length within the file), at most MAX_TENSORS tensors,
    names of printable characters up to MAX_NAME_LENGTH, float32 only, at most MAX_NDIM
    dimensions of at most MAX_DIM each, offsets that tile the data exactly, a tensor order
    (when named) that lists each tensor once, at least one value (an update of none has
    nothing to train, and secure aggregation needs a vector of one), and every value finite.
    """
    names = _order(data)
    arrays = _load(data, names)
    if not any(array.size for array in arrays):
        raise BadModelFile("model file holds no values: every tensor has a dimension of 0")
    specs = []
    for name, array in zip(names, arrays, strict=True):
        if not np.isfinite(array).all():
            raise BadModelFile(f"tensor {name!r} has values that are not finite")
        specs.append(TensorSpec(name, tuple(int(d) for d in array.shape)))
    return specs


def read(data: bytes) -> tuple[list[str], NDArrays]:
    """Return the file's tensor names and arrays, in update order (writable copies)."""
    names = _order(data)
    return names, [np.array(a, dtype=np.float32) for a in _load(data, names)]


def write(names: Sequence[str], arrays: NDArrays) -> bytes:
    """Return a model file of ``arrays`` under ``names``, naming that order in its metadata.

    A 0-d tensor (a scalar parameter) stays 0-d: ``np.ascontiguousarray`` would make it
    shape (1,), and a device's update of the scalar would then no longer fit the model.
    """
    tensors = {
        name: np.asarray(a, dtype=np.float32, order="C")
        for name, a in zip(names, arrays, strict=True)
    }
    data: bytes = save_safetensors(tensors, metadata=tensor_order.metadata(list(names)))
    return data


def shapes(data: bytes) -> list[list[int]]:
    """Return the shapes of the file's tensors in update order, from its header alone."""
    header = tensor_order.header(data)
    return [list(header[name]["shape"]) for name in _order(data, header)]


def add(data: bytes, delta: NDArrays) -> bytes:
    """Return the model ``data`` plus ``delta`` (update order), as a file with the same names.

    Raises
    ------
    ValueError
        The delta's shapes are not the model's, or the sum is not finite.
    """
    names, arrays = read(data)
    if [a.shape for a in arrays] != [np.shape(d) for d in delta]:
        raise ValueError("the delta's shapes do not match the model's")
    summed = [a + np.asarray(d, dtype=np.float32) for a, d in zip(arrays, delta, strict=True)]
    if not all(np.isfinite(a).all() for a in summed):
        raise ValueError("the model plus the delta is not finite")
    return write(names, summed)


def _order(data: bytes, header: dict[str, object] | None = None) -> list[str]:
    header = tensor_order.header(data) if header is None else header
    tensors = [name for name in header if name != "__metadata__"]
    if not tensors:
        raise BadModelFile("model file holds no tensors")
    if len(tensors) > MAX_TENSORS:
        raise BadModelFile(f"model file holds {len(tensors)} tensors, more than {MAX_TENSORS}")
    end = 0
    for name in sorted(tensors, key=lambda n: _offsets(header, n)[0]):
        if len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise BadModelFile(
                f"tensor name {name[:40]!r} is not printable or longer than {MAX_NAME_LENGTH}"
            )
        info = header[name]
        assert isinstance(info, dict)  # _offsets checked it
        if info.get("dtype") != DTYPE:
            raise BadModelFile(f"tensor {name!r} is {info.get('dtype')}: only F32 is taken")
        shape = info.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
            )
        ):
            raise BadModelFile(
                f"tensor {name!r} has no valid shape (at most {MAX_NDIM} dims of at most {MAX_DIM})"
            )
        start, stop = _offsets(header, name)
        if start != end or stop - start != 4 * math.prod(shape):
            raise BadModelFile(f"tensor {name!r}: its offsets do not tile the data")
        end = stop
    (length,) = np.frombuffer(data[:8], dtype="<u8")
    if 8 + int(length) + end != len(data):
        raise BadModelFile("model file's data is not exactly its tensors")
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and tensor_order.ORDER_KEY in meta:
        return tensor_order.order_of(data)
    return sorted(tensors)


def _offsets(header: dict[str, object], name: str) -> tuple[int, int]:
    info = header[name]
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise BadModelFile(f"tensor {name[:40]!r} has no valid data_offsets")
    return offsets[0], offsets[1]


def _load(data: bytes, names: list[str]) -> NDArrays:
    try:
        loaded = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error type for a bad file
        raise BadModelFile(f"model file does not load: {exc}") from exc
    return [loaded[name] for name in names]


def describe(specs: Sequence[TensorSpec]) -> str:
    """The tensors as JSON, for a log line or an error message."""
    return json.dumps([s.as_json() for s in specs], separators=(",", ":"))
