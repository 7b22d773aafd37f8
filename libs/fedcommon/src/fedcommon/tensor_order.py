"""The order in which an update lists a model's tensors, carried inside the model file.

A global model travels as safetensors, whose header lists tensors by name in no order a reader
can rely on (the format sorts them by dtype and name). Updates travel as a bare list of arrays
(fedcommon.arrays) in the order the services use, the model's ``state_dict`` order. So every
model file the platform writes names that order in its ``__metadata__`` under
:data:`ORDER_KEY` (a JSON list of names), and a device lists its update in exactly that order.

Parsing the header is a few lines of JSON (the format is: 8 bytes little-endian header length,
then the header), done here by hand so that a device needs no safetensors call to learn the order.
"""

from __future__ import annotations

import json
import struct
from typing import Any

ORDER_KEY = "fedengine.tensor_order"
# A model header is a few KB; anything far larger is not a model this platform wrote.
MAX_HEADER_BYTES = 16 * 1024 * 1024


class BadModelFile(ValueError):
    """The bytes are not a safetensors file with the platform's tensor order."""


def metadata(order: list[str]) -> dict[str, str]:
    """The ``__metadata__`` a model file carries so that devices know the update order."""
    return {ORDER_KEY: json.dumps(order, separators=(",", ":"))}


def header(data: bytes) -> dict[str, Any]:
    """Return the safetensors header of ``data``; raise BadModelFile saying what is wrong."""
    if len(data) < 8:
        raise BadModelFile("model file shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise BadModelFile(f"model header length {length} exceeds the file")
    try:
        parsed = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadModelFile("model header is not JSON") from exc
    except RecursionError as exc:
        raise BadModelFile("model header nested too deeply") from exc
    if not isinstance(parsed, dict):
        raise BadModelFile("model header is not a JSON object")
    return parsed


def order_of(data: bytes) -> list[str]:
    """Return the tensor order a model file names, checked against the tensors it holds."""
    parsed = header(data)
    meta = parsed.get("__metadata__") or {}
    raw = meta.get(ORDER_KEY) if isinstance(meta, dict) else None
    if not isinstance(raw, str):
        raise BadModelFile(f"model file names no tensor order ({ORDER_KEY} in __metadata__)")
    try:
        order = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadModelFile(f"{ORDER_KEY} is not JSON") from exc
    except RecursionError as exc:
        raise BadModelFile(f"{ORDER_KEY} nested too deeply") from exc
    tensors = {name for name in parsed if name != "__metadata__"}
    if (
        not isinstance(order, list)
        or not all(isinstance(name, str) for name in order)
        or len(set(order)) != len(order)
        or set(order) != tensors
    ):
        raise BadModelFile(f"{ORDER_KEY} does not list each of the file's tensors once")
    return order
